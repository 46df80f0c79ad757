"""The HTML report as a person opens it, in headless chromium (the ``browser`` fixture in
tests/conftest.py skips, saying so, without chromium or selenium)."""

from __future__ import annotations

import warnings

import pytest

from qkscore.pipeline import calibrate, evaluate
from qkscore.report.html import write_report
from synthetic_runs import make_run

pytestmark = pytest.mark.browser

#: Every table lies inside <main>: a wide one scrolls in its own box, never the whole page.
OVERFLOW = """
const right = document.querySelector('main').getBoundingClientRect().right;
const page = document.documentElement;
const outside = [...document.querySelectorAll('.scroll, table')]
  .filter(t => !t.closest('.scroll') || t.classList.contains('scroll'))
  .filter(t => t.getBoundingClientRect().right > right + 1)
  .map(t => t.closest('section').id);
return [page.scrollWidth, page.clientWidth, outside];
"""


def test_the_report_never_scrolls_sideways(tmp_path, browser) -> None:
    """Controls, methods and --by tables at a laptop's width and a narrow window: the page stays
    as wide as the window, and a table wider than the text scrolls inside its own box."""
    run = make_run(tmp_path / "run", shortcut=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(run, calib_size=400, seed=0, out=tmp_path / "profile.json")
        result = evaluate(run, profile, n_boot=50, by=["depth"])
    page = write_report(run, tmp_path / "profile.json", result, tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    assert "The chosen reader keeps its accuracy without the real context" in text
    for width in (1200, 800):
        browser.set_window_size(width, 1000)
        browser.get(page.as_uri())
        scroll_width, client_width, outside = browser.execute_script(OVERFLOW)
        assert scroll_width <= client_width, (width, scroll_width, client_width)
        assert outside == [], (width, outside)
    assert browser.execute_script("return document.querySelectorAll('#controls .scroll').length")

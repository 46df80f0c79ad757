"""The dashboard in a real headless chromium, against a live server with a SmolLM2 profile.

The ``browser`` fixture (tests/conftest.py) skips, saying so, when chromium, chromedriver or
selenium is missing; ``bash scripts/install_browser.sh`` installs them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from audit_fixtures import CONTEXT, STATEMENTS, live_server
from qkscore.audit.service import create_app
from tiny_models import few_threads

pytestmark = pytest.mark.browser

KEY = "dashboard-key"
XSS = 'Max is <img src=x onerror="window.__xss=1">red.'


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with few_threads():
        yield


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def test_dashboard_shows_requests_and_charts(judge, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app = create_app(judge, tmp_path / "audit.db", api_key=KEY, raise_unexpected=True)
    with live_server(app) as base:
        headers = {"X-API-Key": KEY}
        sent = {}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
            for i, statement in enumerate([*STATEMENTS[:3], XSS]):
                r = c.post(
                    "/v1/check",
                    json={"context": CONTEXT, "statement": statement, "model_answer": i == 0},
                )
                assert r.status_code == 200, r.text
                sent[statement] = r.json()["verdict"]
            chain = c.post(
                "/v1/verify-chain",
                json={"context": CONTEXT, "steps": STATEMENTS[3:5], "model_answer": False},
            )
            assert chain.status_code == 200, chain.text

        browser.get(base + "/")
        # without the key the data routes refuse, and the page says so
        _wait(browser, lambda d: "API key" in d.find_element(By.ID, "status").text)
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        browser.find_element(By.ID, "save-key").click()
        rows_css = "#verdicts tbody tr[data-id]"
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, rows_css)) == 5)

        rows = browser.find_elements(By.CSS_SELECTOR, rows_css)
        table = browser.find_element(By.ID, "verdicts").text
        for statement, verdict in sent.items():
            row = next(r for r in rows if statement in r.text)
            assert row.get_attribute("data-verdict") == verdict
            assert verdict in row.find_element(By.CSS_SELECTOR, ".badge").text
        assert "chain of 2 steps" in table and STATEMENTS[4] in table
        assert browser.execute_script("return window.__xss === undefined")  # shown as text

        n_cells = judge.lm.n_layers * judge.lm.n_heads
        assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmap rect.cell")) == n_cells
        assert browser.find_elements(By.CSS_SELECTOR, "#heatmap rect.chosen")
        bars = browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")
        assert bars and browser.find_elements(By.CSS_SELECTOR, "#histogram line.threshold")
        assert judge.head in browser.find_element(By.ID, "profile-meta").text
        assert "accuracy" in browser.find_element(By.ID, "calibration").text
        assert browser.execute_script("return localStorage.getItem('qkscore_api_key')") == KEY

        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("QKSCORE_DASHBOARD_SCREENSHOT"):
            shutil.copy(shot, Path(os.environ["QKSCORE_DASHBOARD_SCREENSHOT"]))

        # the verdict filter asks the server for one verdict only
        want = next(iter(sent.values()))
        Select(browser.find_element(By.ID, "f-verdict")).select_by_value(want)
        chain_verdict = "valid" if chain.json()["first_failure"] is None else "invalid"
        expected = [*sent.values(), chain_verdict].count(want)

        def filtered(d):
            from selenium.common.exceptions import StaleElementReferenceException

            found = d.find_elements(By.CSS_SELECTOR, rows_css)
            try:
                verdicts = {r.get_attribute("data-verdict") for r in found}
            except StaleElementReferenceException:  # the table re-rendered mid-read: poll again
                return False
            return len(found) == expected and verdicts == {want}

        _wait(browser, filtered)

        severe = [
            e["message"]
            for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "401" not in e["message"]
        ]
        assert severe == []


def test_a_linear_profile_shows_its_reader_and_the_page_never_scrolls_sideways(
    judge, tmp_path, browser, tmp_path_factory
):
    """With the linear reader the map is its weights and the calibration panel leads with its
    cross-validated figures; at 1400 px the long data path wraps instead of widening the page."""
    from selenium.webdriver.common.by import By

    from audit_fixtures import LONG_DATA, linear_profile
    from qkscore.audit import Judge
    from qkscore.audit.dashboard import reader_view

    linear = Judge(linear_profile(tmp_path_factory.getbasetemp(), judge.lm), model=judge.lm)
    view = reader_view(linear)
    app = create_app(linear, tmp_path / "audit.db", raise_unexpected=True)
    with live_server(app) as base:
        with httpx.Client(base_url=base, timeout=120) as c:
            r = c.post("/v1/check", json={"context": CONTEXT, "statement": STATEMENTS[0]})
            assert r.status_code == 200, r.text
        browser.set_window_size(1400, 1500)
        browser.get(base + "/")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#verdicts tbody tr[data-id]"))
        _wait(browser, lambda d: "weights" in d.find_element(By.ID, "heat-title").text)
        calibration = browser.find_element(By.ID, "calibration").text
        assert f"reader CV AUROC\n{view['cv_auroc']:.3f}" in calibration
        assert LONG_DATA in calibration.replace("\n", "")
        assert f"head {linear.head} accuracy" in calibration  # the head's, named as the head's
        assert "linear reader weighs most" in browser.find_element(By.ID, "ranking-title").text
        top = browser.find_element(By.CSS_SELECTOR, "#ranking tbody tr td").text
        assert top == view["map"]["top"][0]["name"]
        assert "CV AUROC" in browser.find_element(By.ID, "profile-meta").text
        n_cells = judge.lm.n_layers * judge.lm.n_heads
        assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmap rect.cell")) == n_cells
        wide = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert wide[0] <= wide[1], f"the page scrolls sideways: {wide[0]} px in {wide[1]} px"
        shot = tmp_path / "dashboard-linear.png"
        browser.save_screenshot(str(shot))  # the page as it opens
        if os.environ.get("QKSCORE_DASHBOARD_SCREENSHOT_LINEAR"):
            shutil.copy(shot, Path(os.environ["QKSCORE_DASHBOARD_SCREENSHOT_LINEAR"]))
        # the answer to "Try a statement" names whose verdict it is
        browser.find_element(By.ID, "try-context").send_keys(CONTEXT)
        browser.find_element(By.ID, "try-statement").send_keys(STATEMENTS[1])
        browser.find_element(By.CSS_SELECTOR, "#try button").click()
        _wait(browser, lambda d: "linear reader" in d.find_element(By.ID, "try-result").text)

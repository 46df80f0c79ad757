"""The dashboard's page (Jinja2 templates) and the reader's own figures it and /v1/check show."""

from __future__ import annotations

import pytest

from audit_fixtures import CONTEXT, STATEMENTS, asgi_client, linear_profile, run
from qkscore.audit.dashboard import DASHBOARD_HTML, reader_view, render_dashboard
from qkscore.audit.service import create_app
from tiny_models import few_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with few_threads():
        yield


@pytest.fixture(scope="module")
def linear_judge(tmp_path_factory, judge):
    from qkscore.audit import Judge

    return Judge(linear_profile(tmp_path_factory.getbasetemp(), judge.lm), model=judge.lm)


def test_the_page_is_rendered_from_the_templates_whole():
    html = render_dashboard()
    assert html is DASHBOARD_HTML or html == DASHBOARD_HTML
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    for needed in ('id="heatmap"', 'id="calibration"', 'id="ranking-title"', "function refresh"):
        assert needed in html
    assert "{%" not in html and "{{" not in html  # every include was resolved
    assert "<script src" not in html and '<link rel="stylesheet"' not in html  # offline


def test_the_single_head_reader_maps_its_calibration_accuracy(judge):
    view = reader_view(judge)
    assert view["name"] == "head" and view["map"]["metric"] == "accuracy"
    assert view["map"]["values"] == judge.profile.data["selector"]["accuracy"]
    assert view["heads_kept"] is None and view["map"]["top"] is None


def test_a_linear_reader_shows_its_own_figures_in_the_profile_and_every_check(
    linear_judge, tmp_path
):
    judge = linear_judge
    view = reader_view(judge)
    cv = judge.profile.data["reader_choice"]["cv"]["linear"]
    assert view["name"] == "linear" and view["cv_auroc"] == cv["auroc"]
    weights = judge.reader.weights_
    assert view["map"]["metric"] == "weight"
    assert len(view["map"]["values"]) == judge.lm.n_layers
    assert len(view["map"]["values"][0]) == judge.lm.n_heads
    top = view["map"]["top"]
    assert abs(top[0]["weight"]) == pytest.approx(abs(weights).max())
    assert [abs(t["weight"]) for t in top] == sorted((abs(t["weight"]) for t in top), reverse=True)

    async def go():
        app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)
        async with asgi_client(app) as c:
            profile = (await c.get("/v1/profile")).json()
            body = {"context": CONTEXT, "statement": STATEMENTS[0]}
            check = await c.post("/v1/check", json=body)
            return profile, check.json()

    profile, check = run(go())
    assert profile["reader_view"]["cv_auroc"] == view["cv_auroc"]
    assert profile["heatmap"]["metric"] == "accuracy"  # the single head's map is still there
    # the verdict is the linear reader's; the qk_scores are the single head's, and say so
    assert check["reader"] == "linear" and check["reader_figures"]["name"] == "linear"
    assert check["reader_figures"]["cv_auroc"] == view["cv_auroc"]
    assert check["qk_scores_head"] == judge.head == check["head"]
    assert set(check["qk_scores"]) == {"True", "False"}

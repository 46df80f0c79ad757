"""The dashboard page served at ``/``: one self-contained HTML file.

Users may be offline, so the page loads nothing from elsewhere: inline CSS, inline JavaScript
and SVG charts drawn by hand. It fetches ``/v1/profile`` once and ``/v1/audit`` on every refresh
(sending the API key kept in ``localStorage`` when the user saved one) and shows recent verdicts,
the score distribution against the profile's threshold, the map of what the profile's reader
reads (a linear reader's weight per head; the single head's calibration accuracy otherwise) and
the reader's own calibration figures beside the single head's. User text is only ever inserted
with ``textContent``, never parsed as HTML, so logged statements cannot inject script into a
reviewer's browser.

The markup, CSS and script are Jinja2 templates in ``audit/templates/`` (package data, like the
report's), rendered once.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["DASHBOARD_HTML", "check_figures", "reader_view", "render_dashboard"]


@functools.cache
def render_dashboard() -> str:
    """The page's HTML (rendered once per process)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("qkscore.audit", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("dashboard.html.j2").render()


def _weights(reader: Any) -> np.ndarray | None:
    """A reader's weight per head ``[layers, heads]``: a linear reader's own, a hybrid's QK
    part's; None for readers without one (the single head, an ensemble)."""
    for part in (reader, getattr(reader, "qk_", None)):
        try:
            weights = getattr(part, "weights_", None)
        except AttributeError:  # unfitted
            weights = None
        if weights is not None:
            return np.asarray(weights, dtype=np.float64)
    return None


def reader_view(judge: Any) -> dict[str, Any]:
    """The profile reader's own figures: its name, its cross-validated AUROC and accuracy on
    the calibration split (the figures it was chosen by, with the model margin's AUROC on the
    same folds), and the map of what it reads: its weight per head for a linear reader (the
    hybrid's QK part), else the single head's calibration accuracy with the ensemble's heads
    marked. The single head's figures stay in the profile's ``calibration`` and ``heatmap``."""
    data = judge.profile.data
    name = judge.reader_name
    choice = data.get("reader_choice") or {}
    cv = (choice.get("cv") or {}).get(name) or {}
    weights = _weights(judge.reader)
    if weights is not None:
        order = np.argsort(-np.abs(weights), axis=None, kind="stable")
        n_heads = weights.shape[1]
        top = [
            {"name": f"L{i // n_heads}H{i % n_heads}", "weight": float(weights.flat[i])}
            for i in order[:8]
            if weights.flat[i] != 0
        ]
        heat = {"metric": "weight", "values": weights.tolist(), "top": top}
    else:
        sel = data.get("selector") or {}
        heat = {"metric": "accuracy", "values": sel.get("accuracy"), "top": None}
    return {
        "name": name,
        "rule": choice.get("rule"),
        "cv_auroc": cv.get("auroc"),
        "cv_accuracy": cv.get("accuracy"),
        "model_margin_cv_auroc": choice.get("model_margin_auroc"),
        "heads_kept": None if weights is None else int(np.count_nonzero(weights)),
        "map": heat,
    }


def check_figures(judge: Any) -> dict[str, Any]:
    """What ``/v1/check`` adds beside a verdict: whose verdict it is with that reader's
    cross-validated figures, and whose ``qk_scores`` they are (the single head's, for
    reference)."""
    view = reader_view(judge)
    return {
        "reader_figures": {
            k: view[k] for k in ("name", "cv_auroc", "cv_accuracy", "model_margin_cv_auroc")
        },
        "qk_scores_head": judge.head,
    }


DASHBOARD_HTML = render_dashboard()

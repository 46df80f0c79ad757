"""One row of a shortcut-audit table: what `qkscore data shortcuts` says, with intervals.

The audit (`qkscore.data.shortcuts.find_shortcuts`) gives the mean fold accuracy of a
statement-only classifier and of shallow matching; a row adds shallow matching's accuracy and
AUROC over its out-of-fold predictions with 95% bootstrap intervals, the label balance, and the
share of True statements whose words all stand, with the same polarity, in one context sentence
(the goal is there to be copied).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from qkscore.data.items import Item
from qkscore.data.shallow import FEATURE_NAMES, shallow_features
from qkscore.data.shortcuts import find_shortcuts, shallow_out_of_fold
from qkscore.decision import decide
from qkscore.stats import accuracy, auroc, bootstrap_ci

HEADER = (
    "| set | items | True / False | statement-only acc (5-fold) | shallow acc [95% CI] "
    "| shallow AUROC [95% CI] | True goal in one sentence | verdict |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|"
)
_COPIED = FEATURE_NAMES.index("all_words_same_polarity")


def _ci(fn: Any, *arrays: Any) -> str:
    ci = bootstrap_ci(fn, *arrays, n_boot=1000, seed=0)
    return f"{ci.point:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def audit_row(name: str, items: Sequence[Item]) -> dict[str, Any]:
    """The audit of one set as table cells (and the report, for callers that want more)."""
    items = list(items)
    if not items:
        row = f"| {name} | 0 |" + " - |" * 5 + " EMPTY (no item kept) |"
        return {"set": name, "items": 0, "verdict": "EMPTY", "row": row}
    report = find_shortcuts(items)
    counts = Counter(it.label for it in items)
    proba = shallow_out_of_fold(items)
    if proba is None:
        shallow_acc = shallow_auc = "n/a"
    else:
        y = np.array([it.answer_index for it in items])
        shallow_acc = _ci(accuracy, decide(proba), y)
        shallow_auc = _ci(auroc, proba[:, 0], y == 0)
    trues = [it for it in items if it.label == "True"]
    copied = np.mean([shallow_features(it.context, it.statement)[_COPIED] for it in trues])
    stmt = report.statement_only_accuracy
    stmt_cell = "n/a" if stmt is None else f"{stmt:.3f} ± {report.accuracy_std or 0:.3f}"
    why = []
    if stmt is not None and stmt >= report.threshold:
        why.append("statement-only")
    if report.shallow_accuracy is not None and report.shallow_accuracy >= report.threshold:
        why.append("shallow")
    verdict = f"FLAGGED ({', '.join(why) or 'single label'})" if report.flagged else "PASS"
    cells = [
        name,
        str(len(items)),
        f"{counts.get('True', 0)} / {counts.get('False', 0)}",
        stmt_cell,
        shallow_acc,
        shallow_auc,
        f"{copied:.2f}" if trues else "n/a",
        verdict,
    ]
    return {
        "set": name,
        "items": len(items),
        "flagged": report.flagged,
        "verdict": verdict,
        "report": report,
        "row": "| " + " | ".join(cells) + " |",
    }

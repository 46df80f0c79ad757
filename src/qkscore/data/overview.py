"""What is in a set of items: size, label balance, and the same per depth, rule, logic ....

A QK score is only meaningful against the set's floor: on a set that is 92% "True" (Multi-LogiEval
depth 1) always answering True is 92% accurate. ``summarize`` therefore reports, overall and for
every breakdown value, the label counts and the majority share, so skews are visible before any
model is run. The result is plain JSON-ready data; the CLI renders it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from qkscore.data.items import Item

__all__ = ["BREAKDOWN_KEYS", "summarize"]

BREAKDOWN_KEYS: tuple[str, ...] = (
    "source",
    "split",
    "depth",
    "distractors",
    "rule",
    "logic",
    "ontology",
    "theory",
    "negated",
)
"""Meta keys broken down by default (keys no item has are left out)."""

MISSING = "(none)"


def _balance(items: Sequence[Item]) -> dict[str, Any]:
    """Count, label counts (most frequent first) and the majority-label share."""
    labels = Counter(item.label for item in items)
    count = len(items)
    return {
        "count": count,
        "labels": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
        "majority_share": round(max(labels.values()) / count, 4) if count else None,
    }


def _order(value: Any) -> tuple[int, Any]:
    """Natural order for breakdown values: numbers numerically, then text, missing last."""
    if value is MISSING:
        return (3, "")
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def _options_kind(item: Item) -> str:
    if item.is_multiple_choice:
        return f"multiple choice ({len(item.options)})"
    return "/".join(item.options)


def summarize(
    items: Iterable[Item],
    *,
    keys: Sequence[str] = BREAKDOWN_KEYS,
    report: Any | None = None,
) -> dict[str, Any]:
    """Counts, label balance and per-meta breakdowns (each with its own label balance).

    ``keys`` picks the meta keys to break down; a key that no item carries is omitted, and
    items lacking a key that others carry are counted under ``"(none)"`` so totals always add up.
    ``report`` (a loader's ``LoadReport``) is attached under ``"load"`` so skipped records show.
    Breakdown values are strings (JSON object keys), in natural order.
    """
    items = list(items)
    summary: dict[str, Any] = _balance(items)
    summary["options"] = dict(Counter(_options_kind(item) for item in items))
    breakdowns: dict[str, dict[str, Any]] = {}
    for key in keys:
        if not any(key in item.meta for item in items):
            continue
        groups: dict[Any, list[Item]] = {}
        for item in items:
            value = item.meta.get(key, MISSING)
            if isinstance(value, (list, dict)):
                value = str(value)
            groups.setdefault(value, []).append(item)
        breakdowns[key] = {
            str(value): _balance(groups[value]) for value in sorted(groups, key=_order)
        }
    summary["breakdowns"] = breakdowns
    if report is not None:
        summary["load"] = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    return summary

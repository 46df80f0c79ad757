"""A short markdown summary of an evaluation, for the terminal and for pasting into notes."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> bool:
    """A real number that can be printed as one (not None, a bool, NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if finite(value) else "n/a"


def _fmt(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    value, low, high = metric["value"], metric.get("low"), metric.get("high")
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def summary_markdown(report: dict[str, Any]) -> str:
    """Methods table with 95% intervals, McNemar tests, controls and a plain-words verdict."""
    lines = [
        f"### qkscore: {report['model']} on `{report['data']}`",
        "",
        f"Template `{report['template']}`, head **{report['head']}** "
        f"(sign {report.get('sign')}), {report['n_eval']} items ({report['split']}).",
        "",
        "| method | accuracy | balanced accuracy | AUROC |",
        "|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lines.append(
            f"| {name} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('balanced_accuracy'))} "
            f"| {_fmt(m.get('auroc'))} |"
        )
    if report.get("mcnemar"):
        lines += ["", "McNemar (exact for few discordant pairs):"]
        for name, t in report["mcnemar"].items():
            lines.append(f"- {name}: p = {t['pvalue']:.3g}")
    if report.get("controls"):
        lines += [
            "",
            "| control | head accuracy | gap to full context | ensemble accuracy "
            "| model accuracy | flag |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in report["controls"].items():
            lines.append(
                f"| {name} | {c['ablated']:.3f} | {c['gap']:+.3f} | "
                f"{number(c.get('ensemble_accuracy'))} | {number(c.get('model_accuracy'))} | "
                f"{'SHORTCUT?' if c['flagged'] else 'ok'} |"
            )
    lines += ["", verdict(report)]
    return "\n".join(lines)


def verdict(report: dict[str, Any]) -> str:
    """Say plainly whether the head beat the model and chance, rather than dress chance up."""
    methods = report["methods"]
    head = next((m for k, m in methods.items() if k.startswith("head")), None)
    model = methods.get("model (own answer)")
    majority = methods.get("majority class")
    if head is None:
        return ""
    acc = head["accuracy"]
    parts = []
    chance = majority["accuracy"]["value"] if majority else None
    if chance is not None and acc.get("low") is not None and acc["low"] <= chance:
        parts.append(
            "The head's 95% interval includes the majority-class rate: no evidence "
            "of signal beyond chance."
        )
    elif model is not None:
        if acc.get("low") is not None and acc["low"] > model["accuracy"]["value"]:
            parts.append("The head beats the model's own answer.")
        elif model["accuracy"].get("low") is not None and acc["value"] < model["accuracy"]["low"]:
            parts.append("The head does worse than the model's own answer.")
        else:
            parts.append("The head and the model's own answer are not clearly different.")
    if any(c.get("flagged") for c in report.get("controls", {}).values()):
        parts.append(
            "Warning: the head keeps its accuracy without the real context; it likely "
            "reads the statement alone (a shortcut), not the inference."
        )
    return " ".join(parts)

"""A short markdown summary of an evaluation, for the terminal and for pasting into notes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from qkscore.schemas import comparison_records, find_comparison


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


def _chosen(report: dict[str, Any]) -> str | None:
    methods = report.get("methods") or {}
    return next(
        (k for k, m in methods.items() if m.get("chosen")), "head" if "head" in methods else None
    )


def _acc(m: dict[str, Any] | None) -> float | None:
    return None if not m else (m.get("accuracy") or {}).get("value")


def fair_comparison(report: dict[str, Any]) -> list[str]:
    """The lines a summary leads with: the chosen reader beside the model's margin with a
    threshold fit on the same calibration items, and beside shallow matching."""
    methods = report["methods"]
    chosen = _chosen(report)
    if chosen is None:
        return []
    cv = ((report.get("reader_choice") or {}).get("cv") or {}).get(chosen) or {}
    cv_text = f", CV AUROC {number(cv.get('auroc'))} on calibration" if cv.get("auroc") else ""
    lines = [
        f"**Fair comparison** on {report['n_eval']} evaluation items:",
        f"- reader **{methods[chosen].get('label', chosen)}** (chosen{cv_text}): accuracy "
        f"{_fmt(methods[chosen].get('accuracy'))}, AUROC {_fmt(methods[chosen].get('auroc'))}",
    ]
    for key, what in (
        ("model_margin", "model's own margin, threshold fit on the same calibration items"),
        ("shallow", "shallow matching, no model (word overlap and polarity)"),
        ("hidden_probe", methods.get("hidden_probe", {}).get("label", "hidden-state probe")),
    ):
        if key in methods:
            lines.append(
                f"- {what}: accuracy {_fmt(methods[key].get('accuracy'))}, "
                f"AUROC {_fmt(methods[key].get('auroc'))}"
            )
    return lines


def summary_markdown(report: dict[str, Any]) -> str:
    """Fair comparison first, then every method with 95% intervals, McNemar tests, controls
    and a plain-words verdict."""
    lines = [f"### qkscore: {report['model']} on `{report['data']}`", ""]
    lines += fair_comparison(report)
    lines += ["", verdict(report), ""]
    lines += [
        f"Template `{report['template']}`; best single head **{report['head']}** "
        f"(sign {report.get('sign')}); {report['n_eval']} items ({report['split']}).",
        "",
        "| method | accuracy | balanced accuracy | AUROC |",
        "|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        label = m.get("label", name) + (" (chosen)" if m.get("chosen") else "")
        lines.append(
            f"| {label} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('balanced_accuracy'))} "
            f"| {_fmt(m.get('auroc'))} |"
        )
    if report.get("mcnemar"):
        lines += ["", "McNemar (exact for few discordant pairs):"]
        for t in comparison_records(report["mcnemar"]):
            lines.append(f"- {t['a']} vs {t['b']}: p = {t['pvalue']:.3g}")
    lines += controls_table(report.get("controls") or {})
    for field, methods in (report.get("by") or {}).items():
        lines += ["", *group_table(report, field, methods)]
    for note in report.get("notes") or []:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


def controls_table(controls: dict[str, Any]) -> list[str]:
    """Accuracy under each control, one column per control and one row per method: with the
    methods as columns (11 of them) the terminal cut every name to a few letters at 80
    columns."""
    if not controls:
        return []
    names = list(controls)
    methods = list(dict.fromkeys(k for c in controls.values() for k in c.get("accuracy", {})))
    rows = [
        ("chosen reader", [f"{c['ablated']:.3f}" for c in controls.values()]),
        ("gap to full context", [f"{c['gap']:+.3f}" for c in controls.values()]),
        *((m, [number(c.get("accuracy", {}).get(m)) for c in controls.values()]) for m in methods),
        ("flag", ["SHORTCUT?" if c["flagged"] else "ok" for c in controls.values()]),
    ]
    lines = [
        "",
        "Accuracy with the context removed or swapped (shortcut controls):",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    return lines + [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]


#: Baselines a by-field table shows beside the readers, in this order.
GROUP_BASELINES = ("model_margin", "hidden_probe", "shallow", "model_answer")


def group_rows(
    report: Mapping[str, Any], by_method: Mapping[str, Any]
) -> tuple[list[str], list[tuple[str, int, list[str]]]]:
    """A by-field table (``evaluate --by FIELD``) as column names and ``(value, n, cells)``
    rows: the chosen reader, the other readers, then the fair baselines, each cell an accuracy
    with its 95% interval. The one layout the summary and the HTML report both show."""
    methods = report["methods"]
    chosen = _chosen(report)
    readers = [k for k, m in methods.items() if m.get("kind") == "reader" and k != chosen]
    shown = [k for k in (chosen, *readers, *GROUP_BASELINES) if k in by_method]
    values = list(dict.fromkeys(v for k in shown for v in by_method[k]))
    names = [methods[k].get("label", k) + (" (chosen)" if k == chosen else "") for k in shown]
    rows = []
    for value in values:
        cells = [by_method[k].get(value) for k in shown]
        n = next((c["n"] for c in cells if c), 0)
        rows.append((value, n, [_fmt(c) for c in cells]))
    return names, rows


def group_table(report: dict[str, Any], field: str, by_method: dict[str, Any]) -> list[str]:
    """Accuracy [95% CI] per value of ``field`` as Markdown lines (see :func:`group_rows`)."""
    names, rows = group_rows(report, by_method)
    lines = [
        f"Accuracy [95% CI] by `{field}`:",
        "",
        f"| {field} | n | " + " | ".join(names) + " |",
        "|---|---:|" + "---|" * len(names),
    ]
    lines += [f"| {value} | {n} | " + " | ".join(cells) + " |" for value, n, cells in rows]
    return lines


#: "Beats" is said only when McNemar's test rejects equal accuracy at this level.
ALPHA = 0.05


def _compare(report: dict[str, Any], chosen: str, other: str) -> tuple[int, float | None]:
    """+1 if the chosen reader is significantly better than ``other``, -1 if worse, else 0."""
    methods = report["methods"]
    test = find_comparison(report.get("mcnemar"), chosen, other)
    a, b = _acc(methods.get(chosen)), _acc(methods.get(other))
    if test is None or a is None or b is None:
        return 0, None
    p = test.get("pvalue")
    if p is not None and p < ALPHA:
        return (1 if a > b else -1 if a < b else 0), p
    return 0, p


#: Evaluation labels count as imbalanced when the majority class exceeds an even share by this.
IMBALANCE = 0.02


def _signal_sentence(report: dict[str, Any], name: str, acc: dict[str, Any]) -> str:
    """Is there signal beyond chance? Accuracy against the majority-class rate where the
    evaluation labels are balanced (the two then agree); balanced accuracy against an even
    guess (1 / the options present) where they are not, since an imbalanced remainder lifts
    the majority rate and hides a real signal (FOLIO: balanced accuracy 0.437 [0.361, 0.515]
    against a chance of 0.333, while the majority class held 0.500)."""
    counts = [int(v) for v in (report.get("label_counts") or {}).values()]
    majority = report["methods"].get("majority")
    n = sum(counts)
    even = 1.0 / len(counts) if len(counts) >= 2 else None
    if even is not None and max(counts) / n > even + IMBALANCE:
        bal = report["methods"][_chosen(report)].get("balanced_accuracy") or {}
        if bal.get("low") is None:
            return ""
        lead = (
            f"The evaluation labels are imbalanced (majority class {max(counts) / n:.3f}), so "
            f"signal is judged by balanced accuracy against an even guess ({even:.3f}): "
            f"{name[0].lower()}{name[1:]}'s is {bal['value']:.3f} [{bal['low']:.3f}, "
            f"{bal['high']:.3f}]"
        )
        if bal["low"] <= even:
            return f"{lead}; its 95% interval includes chance: no evidence of signal."
        return f"{lead}, above chance."
    chance = majority["accuracy"]["value"] if majority else None
    if chance is not None and acc.get("low") is not None and acc["low"] <= chance:
        return (
            f"{name}'s 95% interval includes the majority-class rate: no evidence of signal "
            "beyond chance."
        )
    return ""


def verdict(report: dict[str, Any]) -> str:
    """Say plainly whether the reader beat the fair baselines and chance; "beats" only when
    McNemar's test says so, never on a point estimate."""
    methods = report["methods"]
    chosen = _chosen(report)
    if chosen is None:
        return ""
    acc = methods[chosen]["accuracy"]
    name = f"The {chosen} reader"
    parts = []
    parts.append(_signal_sentence(report, name, acc))
    for other, what in (("model_margin", "the model's own margin with a calibrated threshold"),
                        ("model_answer", "the model's own answer")):  # fmt: skip
        if other not in methods:
            continue
        sign, p = _compare(report, chosen, other)
        p_text = f" (McNemar p = {p:.3g})" if p is not None else ""
        if sign > 0:
            parts.append(f"{name} beats {what}{p_text}.")
        elif sign < 0:
            parts.append(f"{name} does worse than {what}{p_text}.")
        else:
            parts.append(f"{name} is not clearly different from {what}{p_text}.")
        break  # the fair baseline when there is one, the raw answer otherwise
    if "shallow" in methods:
        sign, p = _compare(report, chosen, "shallow")
        if sign <= 0:
            parts.append(
                f"{name} does no better than shallow matching (word overlap and polarity, no "
                f"model: {number(_acc(methods['shallow']))}): its accuracy here is not evidence "
                "of reasoning."
            )
    if any(c.get("flagged") for c in report.get("controls", {}).values()):
        parts.append(
            "Warning: the reader keeps its accuracy without the real context; it likely "
            "reads the statement alone (a shortcut), not the inference."
        )
    if report["n_eval"] < 50:
        parts.append(f"Only {report['n_eval']} evaluation items: treat every figure as rough.")
    return " ".join(p for p in parts if p)

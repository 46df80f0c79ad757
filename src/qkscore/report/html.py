"""One self-contained HTML report of a calibrated and evaluated run.

Everything the page needs is inside the file: the CSS is inline, the plots are PNGs embedded as
``data:`` URIs, and there is no script, web font or link to fetch, so the report opens the same
on an offline machine or as a mail attachment. Every piece of text from the run, the profile or
the evaluation is escaped with ``html.escape``.

The sections follow the protocol: what was measured (header and verdict), how the head was chosen
(calibration heatmap and ranking), how it reads new items (score distributions on the evaluation
split), how it compares (methods with 95% intervals, McNemar tests, breakdowns), whether it
reads the context at all (controls) and where every number came from (provenance).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qkscore._version import __version__
from qkscore.pipeline import evaluation_indices
from qkscore.profile import Profile
from qkscore.report import plots
from qkscore.report.summary import finite as _finite
from qkscore.report.summary import number as _num
from qkscore.report.summary import verdict as _verdict
from qkscore.run import MAIN, RunFolder

__all__ = ["write_report", "render_report"]

TOP_HEADS = 20

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#4c78a8;
        --bad:#b42318; --badbg:#fef3f2; --warnbg:#fffaeb; --warn:#b54708; --ok:#067647; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: var(--fg); margin: 0; background: #fff; line-height: 1.45;
       font-size: 15px; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 36px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 20px 0 8px; }
p { margin: 6px 0 10px; }
.sub { color: var(--muted); margin: 0 0 18px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 0.88em; }
nav { font-size: 0.9rem; margin: 10px 0 18px; color: var(--muted); }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.9rem; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left;
         vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.chosen td { background: #eef4fb; font-weight: 600; }
tr.flagged td { background: var(--badbg); color: var(--bad); font-weight: 600; }
.ci { color: var(--muted); font-weight: normal; }
table.kv th { width: 220px; background: none; color: var(--muted); font-weight: 500; }
table.kv table.kv { margin: 0; }
table.kv table.kv th { width: auto; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr));
         gap: 10px 18px; margin: 8px 0 18px; }
.fact { background: var(--bg); border-radius: 6px; padding: 8px 12px; }
.fact .k { color: var(--muted); font-size: 0.8rem; text-transform: uppercase;
           letter-spacing: 0.03em; }
.fact .v { font-weight: 600; word-break: break-word; }
.verdict { border-left: 5px solid var(--accent); background: #eef4fb; padding: 12px 16px;
           border-radius: 4px; font-size: 1.02rem; }
.verdict.bad { border-color: var(--bad); background: var(--badbg); }
.note { border-left: 4px solid var(--warn); background: var(--warnbg); padding: 8px 14px;
        border-radius: 4px; margin: 10px 0; font-size: 0.92rem; }
.note ul { margin: 4px 0; padding-left: 20px; }
.bad { color: var(--bad); }
.ok { color: var(--ok); }
.muted { color: var(--muted); }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.88rem; margin-top: 4px; max-width: 900px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.8rem;
         font-weight: 600; }
.badge.bad { background: var(--bad); color: #fff; }
.badge.ok { background: #dcfae6; color: var(--ok); }
footer { margin-top: 40px; color: var(--muted); font-size: 0.85rem; }
"""


# ---------------------------------------------------------------------------------------------
# Small formatting helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _signed_num(value: Any, digits: int = 3) -> str:
    return f"{value:+.{digits}f}" if _finite(value) else "n/a"


def _pvalue(value: Any) -> str:
    if not _finite(value):
        return "n/a"
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"


def _metric(metric: Mapping[str, Any] | None) -> str:
    """``value [low, high]`` cell content (escaped HTML)."""
    if not metric or not _finite(metric.get("value")):
        return '<span class="muted">n/a</span>'
    out = _e(_num(metric["value"]))
    if _finite(metric.get("low")) and _finite(metric.get("high")):
        out += f' <span class="ci">[{_num(metric["low"])}, {_num(metric["high"])}]</span>'
    return out


def _sign_text(sign: Any) -> str:
    if sign is None:
        return "n/a"
    return "+1 (aligned)" if int(sign) > 0 else "-1 (anti-aligned)"


def _table(
    header: list[str],
    rows: list[list[str]],
    numeric: set[int] = frozenset(),
    row_classes: list[str] | None = None,
    cls: str = "",
) -> str:
    """Table from already-escaped cell HTML."""
    head = "".join(
        f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for r, row in enumerate(rows):
        klass = row_classes[r] if row_classes and row_classes[r] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        body.append(f'<tr class="{klass}">{cells}</tr>' if klass else f"<tr>{cells}</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(mapping: Mapping[str, Any], depth: int = 0) -> str:
    """Key/value table of a (nested) mapping; lists of scalars inline, others as JSON."""
    if not mapping:
        return '<span class="muted">(empty)</span>'
    rows = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and depth < 2:
            cell = _kv(value, depth + 1)
        elif isinstance(value, list | tuple) and all(
            isinstance(v, str | int | float | bool) or v is None for v in value
        ):
            cell = (
                _e(", ".join(_plain(v) for v in value))
                if value
                else '<span class="muted">[]</span>'
            )
        elif isinstance(value, Mapping | list | tuple):
            cell = f'<span class="mono">{_e(json.dumps(value, default=str))}</span>'
        else:
            cell = _e(_plain(value))
        rows.append(f"<tr><th>{_e(key)}</th><td>{cell}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def _plain(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _figure(fig: Any, alt: str, caption: str = "") -> str:
    uri = plots.figure_to_data_uri(fig)
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_e(alt)}">{cap}</figure>'


def _note(text_html: str) -> str:
    return f'<div class="note">{text_html}</div>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


# ---------------------------------------------------------------------------------------------
# Reading the pieces


def _load_profile(profile: Profile | str | Path) -> Profile:
    return profile if isinstance(profile, Profile) else Profile.load(profile)


def _array(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    try:
        return np.array(
            [[np.nan if v is None else v for v in row] for row in values], dtype=np.float64
        )
    except (TypeError, ValueError):
        return None


def _head_method(methods: Mapping[str, Any]) -> str | None:
    return "head" if "head" in methods else None


def _chosen_method(ev: Mapping[str, Any]) -> str | None:
    """The evaluation's chosen reader (the single head for evaluations made before readers)."""
    methods = ev.get("methods") or {}
    return next((k for k, m in methods.items() if m.get("chosen")), _head_method(methods))


def _option_names(records: list[dict[str, Any]], n_options: int) -> list[str]:
    """``option 0 (True)`` when every item names option 0 the same, else ``option 0``."""
    names = []
    for o in range(n_options):
        seen = {tuple(r.get("options", []))[o] for r in records if len(r.get("options", [])) > o}
        names.append(f"option {o} ({next(iter(seen))})" if len(seen) == 1 else f"option {o}")
    return names


# ---------------------------------------------------------------------------------------------
# Sections


def _header(meta: Mapping[str, Any], prof: Profile, ev: Mapping[str, Any]) -> str:
    model = meta.get("model", {})
    calib = prof.data.get("calibration", {})
    counts = ", ".join(f"{k}: {v}" for k, v in calib.get("label_counts", {}).items())
    ev_counts = ", ".join(f"{k}: {v}" for k, v in ev.get("label_counts", {}).items())
    threshold = prof.data.get("threshold")
    template = meta.get("template") or {}
    facts = [
        (
            "Model",
            f"{model.get('name', ev.get('model'))}",
            f"fingerprint {model.get('fingerprint', ev.get('fingerprint'))}",
        ),
        ("Data", meta.get("data", ev.get("data")), f"{meta.get('n_items', '?')} items in the run"),
        ("Template", template.get("name", ev.get("template")), _template_line(template)),
        (
            "Reader chosen",
            prof.reader_name,
            _reader_line(prof),
        ),
        (
            "Best single head",
            prof.data.get("head"),
            f"sign {_sign_text(prof.data.get('sign'))}, threshold {_num(threshold, 4)}",
        ),
        (
            "Calibration items",
            calib.get("size"),
            f"labels {counts}; seed {calib.get('seed')}, metric {calib.get('metric')}",
        ),
        ("Evaluation items", ev.get("n_eval"), f"{ev.get('split', '')}; labels {ev_counts}"),
    ]
    cells = "".join(
        f'<div class="fact"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="muted" style="font-size:0.85rem">{_e(d)}</div></div>'
        for k, v, d in facts
    )
    text = _verdict(dict(ev)) if ev.get("methods") else ""
    flagged = any(c.get("flagged") for c in ev.get("controls", {}).values())
    chance = "interval includes the majority-class rate" in text
    klass = "verdict bad" if flagged or chance else "verdict"
    verdict_html = (
        f'<div class="{klass}"><strong>Verdict.</strong> {_e(text)}</div>'
        if text
        else '<div class="verdict">No verdict: the evaluation holds no head method.</div>'
    )
    notes = []
    if ev.get("head") and ev.get("head") != prof.data.get("head"):
        notes.append(
            f"The evaluation reports head {_e(ev.get('head'))} but the profile chose "
            f"{_e(prof.data.get('head'))}: they do not belong together."
        )
    if ev.get("calibration_data") and ev.get("calibration_data") != ev.get("data"):
        notes.append(
            f"Transfer: the head was calibrated on <code>{_e(ev.get('calibration_data'))}</code>"
            f" and is evaluated on every item of <code>{_e(ev.get('data'))}</code>."
        )
    warn = calib.get("warnings") or []
    if warn:
        notes.append(
            "Calibration warnings:<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warn) + "</ul>"
        )
    nav = "".join(
        f'<a href="#{a}">{_e(t)}</a>'
        for a, t in (
            ("heads", "Heads"),
            ("distributions", "Distributions"),
            ("methods", "Methods"),
            ("breakdowns", "Breakdowns"),
            ("controls", "Controls"),
            ("provenance", "Provenance"),
        )
    )
    title = f"{model.get('name', ev.get('model', '?'))} on {meta.get('data', ev.get('data', '?'))}"
    return (
        "<header><h1>qkscore report</h1>"
        f'<p class="sub">{_e(title)}</p>'
        f"<nav>{nav}</nav>"
        f'<div class="facts">{cells}</div>{verdict_html}'
        + "".join(_note(n) for n in notes)
        + "</header>"
    )


def _reader_line(prof: Profile) -> str:
    choice = prof.data.get("reader_choice") or {}
    cv = choice.get("cv") or {}
    scored = ", ".join(
        f"{k} {_num(v.get('auroc'))}" for k, v in cv.items() if v.get("auroc") is not None
    )
    if not scored:
        return "profile made before readers: the single head"
    return f"{choice.get('rule', '')}; CV AUROC {scored}"


def _template_line(template: Mapping[str, Any]) -> str:
    bits = []
    if template.get("scheme") and template.get("scheme") != template.get("name"):
        bits.append(f"scheme {template['scheme']}")
    if template.get("option_style"):
        bits.append(f"options as {template['option_style']}")
    if "k" in template:
        bits.append(f"{template['k']}-shot")
    if "use_chat_template" in template:
        bits.append("chat template" if template["use_chat_template"] else "no chat template")
    return ", ".join(bits)


def _heads_section(prof: Profile) -> str:
    sel = prof.data.get("selector") or {}
    body = []
    acc = _array(sel.get("accuracy"))
    sign = _array(sel.get("sign"))
    n_options = int(sel.get("n_options") or 2)
    chosen = None
    with contextlib.suppress(KeyError, ValueError, TypeError):
        chosen = prof.head
    if acc is not None and acc.ndim == 2 and acc.size:
        if sign is not None and sign.shape != acc.shape:
            sign = None
        fig = plots.head_heatmap(
            acc,
            sign,
            chosen=chosen,
            chance=1.0 / n_options,
            title=f"Calibration accuracy per head (chosen {prof.data.get('head')})",
        )
        anti = int(np.sum(sign < 0)) if sign is not None else None
        caption = (
            f"Accuracy of every head on the {sel.get('n_items', '?')} calibration items "
            "(in-sample, after each head's sign"
            + (" and threshold" if n_options == 2 else "")
            + " was fitted on them, so optimistic). Layers run down, heads across, both "
            f"zero-based; the chosen head {_e(prof.data.get('head'))} is outlined in red. "
            f"The colour scale starts at chance (1/{n_options})."
        )
        if anti is not None:
            caption += (
                f" {anti} of {acc.size} heads read best anti-aligned (sign -1: the wrong option "
                "scores higher); they are orange on the right."
            )
        body.append(_figure(fig, "layer by head calibration accuracy heatmap", caption))
    else:
        body.append(_note("The profile holds no per-head accuracies: heatmap not drawn."))
    ranking = prof.data.get("ranking")
    if not ranking:
        try:
            ranking = prof.selector().ranking_
        except Exception:
            ranking = []
    if ranking:
        rows, classes = [], []
        for i, r in enumerate(ranking[:TOP_HEADS], 1):
            thr = r.get("threshold")
            rows.append(
                [
                    str(i),
                    _e(r.get("name")),
                    _e(_sign_text(r.get("sign"))),
                    _e(_num(thr, 4) if n_options == 2 else "none (multi-option)"),
                    _e(_num(r.get("accuracy"))),
                    _e(_num(r.get("balanced_accuracy"))),
                    _e(_num(r.get("auroc"))),
                ]
            )
            classes.append("chosen" if r.get("name") == prof.data.get("head") else "")
        body.append(f"<h3>Top {min(TOP_HEADS, len(ranking))} heads on the calibration split</h3>")
        body.append(
            _table(
                ["#", "head", "sign", "threshold", "accuracy", "balanced acc.", "AUROC"],
                rows,
                numeric={0, 3, 4, 5, 6},
                row_classes=classes,
            )
        )
        metric = (prof.data.get("calibration") or {}).get("metric", "accuracy")
        body.append(
            f'<p class="muted">Ranked by {_e(metric)}, ties broken by the other metrics. '
            "Thresholds are in signed units: option 0 is predicted when "
            "sign &times; (score<sub>0</sub> &minus; score<sub>1</sub>) exceeds the threshold.</p>"
        )
    body.append(_linear_weights(prof))
    ens = prof.data.get("ensemble")
    if ens and ens.get("heads"):
        body.append(
            f"<p>Top-k ensemble (k={_e(ens.get('k'))}, "
            f"{_e((ens.get('combiner') or {}).get('method', ''))}): "
            f"{_e(', '.join(ens['heads']))}.</p>"
        )
    return _section("heads", "How the head was chosen", "".join(body))


def _linear_weights(prof: Profile) -> str:
    """The linear reader's weights beside the single-head map: where all heads' readout draws
    its evidence (empty when the profile has no linear reader)."""
    saved = (prof.data.get("readers") or {}).get("linear")
    if not saved:
        return ""
    try:
        reader = prof.readers()["linear"]
    except (KeyError, ValueError):
        return ""
    fig = plots.weight_heatmap(
        reader.weights_, title=f"Linear reader (L2, C={reader.C_:g}): weight per head"
    )
    caption = (
        "Weight of each head's standardised True-False margin in the linear reader (logistic "
        "regression over every head, C chosen by cross-validation on the calibration split). "
        "Red pushes towards option 0 (True), blue towards option 1; the signal of one head is "
        "rarely where the weight concentrates."
    )
    return _figure(fig, "layer by head linear reader weights", caption)


def _distribution_section(run: RunFolder, prof: Profile) -> str:
    title = "The chosen head on the evaluation items"
    try:
        selector = prof.selector()
        records = run.items()
        idx = evaluation_indices(run, prof, records)[0]
        if len(idx) == 0:
            return _section("distributions", title, _note("No evaluation items."))
        scores = np.asarray(run.load(MAIN))[idx]
        labels = run.labels(records)[idx]
        margins = selector.margin(scores)
        pred = selector.predict(scores)
    except (FileNotFoundError, ValueError, KeyError) as err:
        return _section("distributions", title, _note(f"Score distributions not drawn: {_e(err)}"))
    head = prof.data.get("head")
    acc = float(np.mean(pred == labels))
    n_options = selector.n_options_
    if n_options == 2:
        threshold = float(selector.threshold_[selector.head_])
        names = _option_names([records[i] for i in idx], 2)
        values = margins + threshold
        groups = {f"gold {names[o]}": values[labels == o] for o in range(2)}
        sign = int(selector.sign_[selector.head_])
        fig = plots.score_distributions(
            groups,
            threshold=threshold,
            xlabel=f"sign × (QK-score option 0 − option 1), sign {sign:+d}",
            title=f"{head}: signed score difference per gold option",
            threshold_label=f"threshold {threshold:.3g} (option 0 predicted to the right)",
        )
        caption = (
            f"Signed QK-score difference of {_e(head)} on the {len(idx)} evaluation items, "
            "split by the gold option. Items right of the dashed line are read as option 0; "
            f"the head is right on {acc:.1%} of them. Overlap between the two histograms is "
            "what the head gets wrong."
        )
    else:
        groups = {"head correct": margins[pred == labels], "head wrong": margins[pred != labels]}
        fig = plots.score_distributions(
            groups,
            threshold=None,
            xlabel="best minus second-best signed QK-score (gold-free confidence)",
            title=f"{head}: margin of its choice, correct vs wrong ({n_options} options)",
        )
        caption = (
            f"{_e(head)} on the {len(idx)} evaluation items with {n_options} options: the margin "
            "by which its chosen option beats the runner-up, for the items it gets right and "
            f"wrong ({acc:.1%} right). Multi-option items have no threshold; a useful head "
            "is more confident when right."
        )
    return _section("distributions", title, _figure(fig, "score distributions", caption))


def _methods_section(ev: Mapping[str, Any]) -> str:
    methods = ev.get("methods") or {}
    if not methods:
        return _section("methods", "Methods compared", _note("The evaluation holds no methods."))
    tests = ev.get("mcnemar") or {}
    chosen = _chosen_method(ev)
    rows, classes = [], []
    for name, m in methods.items():
        t = tests.get(f"{name} vs model_margin") or tests.get(f"{name} vs model")
        rows.append(
            [
                _e(m.get("label", name)) + (" <strong>(chosen)</strong>" if name == chosen else ""),
                _e(m.get("n", (m.get("accuracy") or {}).get("n", ""))),
                _metric(m.get("accuracy")),
                _metric(m.get("balanced_accuracy")),
                _metric(m.get("auroc")),
                _e(f"{_pvalue(t.get('pvalue'))} (stat {_num(t.get('statistic'), 2)})")
                if t
                else ('<span class="muted">reference</span>' if name == "model_margin" else ""),
            ]
        )
        classes.append("chosen" if name == chosen else "")
    body = [
        _table(
            [
                "method",
                "n",
                "accuracy [95% CI]",
                "balanced accuracy [95% CI]",
                "AUROC [95% CI]",
                "McNemar vs calibrated model margin: p",
            ],
            rows,
            numeric={1, 2, 3, 4, 5},
            row_classes=classes,
        ),
        '<p class="muted">Intervals are percentile bootstraps over the evaluation items. '
        "McNemar compares which items a reader and the model's margin (with a threshold fit on "
        "the same calibration items, the fair baseline) get right (exact binomial test for few "
        "discordant pairs). Shallow matching needs no model: word overlap and polarity between "
        "context and statement. AUROC takes option 0 as the positive class and exists only for "
        "two-option items.</p>",
    ]
    missing = []
    if "model_answer" not in methods:
        missing.append(
            "the model's own answer (its option log-probabilities are missing or not finite)"
        )
    if "attention" not in methods:
        missing.append(
            "the attention-score baseline (scan with <code>--attention</code> to store "
            "attention weights)"
        )
    if "ensemble" not in methods:
        missing.append("the top-k ensemble (calibrated without one)")
    if missing:
        body.append(_note("Not in this evaluation: " + "; ".join(missing) + "."))
    return _section("methods", "Methods compared", "".join(body))


def _breakdown_section(ev: Mapping[str, Any], chance: float | None) -> str:
    title = "Accuracy by depth, distractors, rule and logic"
    breakdowns = ev.get("breakdowns") or {}
    chosen = _chosen_method(ev)
    shown = [m for m in dict.fromkeys((chosen, "head", "model_margin")) if m and m in breakdowns]
    keys: list[str] = []
    for m in shown:
        keys += [k for k in breakdowns[m] if k not in keys]
    if not shown or not keys:
        return _section(
            "breakdowns",
            title,
            _note("The items carry no depth, distractors, rule or logic metadata."),
        )
    body = []
    fig = plots.breakdown_bars(
        breakdowns, shown, keys, chance=chance, chance_label="majority-class rate (all items)"
    )
    if fig is not None:
        body.append(
            _figure(
                fig,
                "accuracy breakdown bars",
                "Accuracy on the evaluation items per metadata value; n above each group. Small "
                "groups are noisy: read the n.",
            )
        )
    header = ["key", "value", "n"] + [_e(m) for m in shown]
    if len(shown) >= 2:
        header.append(f"{_e(shown[0])} &minus; {_e(shown[-1])}")
    rows = []
    for key in keys:
        values: list[str] = []
        for m in shown:
            values += [v for v in breakdowns[m].get(key, {}) if v not in values]
        for v in values:
            cells = [breakdowns[m].get(key, {}).get(v, {}) for m in shown]
            n = max((c.get("n", 0) for c in cells), default=0)
            accs = [c.get("accuracy") for c in cells]
            row = [_e(key), _e(v), _e(n)] + [_e(_num(a)) for a in accs]
            if len(shown) >= 2:
                both = _finite(accs[0]) and _finite(accs[-1])
                row.append(_e(_signed_num(accs[0] - accs[-1]) if both else "n/a"))
            rows.append(row)
    body.append(_table(header, rows, numeric=set(range(2, len(header)))))
    return _section("breakdowns", title, "".join(body))


def _controls_section(ev: Mapping[str, Any]) -> str:
    title = "Shortcut controls"
    controls = ev.get("controls") or {}
    if not controls:
        return _section(
            "controls",
            title,
            _note(
                "No control scans in this run, so nothing shows whether the head reads the "
                "context or the statement alone. Scan with <code>--control context-ablated"
                "</code> (and/or <code>context-swapped</code>) to check."
            ),
        )
    rows, classes = [], []
    for name, c in controls.items():
        flagged = bool(c.get("flagged"))
        flag = (
            '<span class="badge bad">SHORTCUT SUSPECTED</span>'
            if flagged
            else '<span class="badge ok">ok</span>'
        )
        rows.append(
            [
                _e(name),
                _e(_num(c.get("full"))),
                _e(_num(c.get("ablated"))),
                _e(_signed_num(c.get("gap"))),
                _e(_num(c.get("ensemble_accuracy"))),
                _e(_num(c.get("model_accuracy"))),
                _e(_num(c.get("flag_at"), 2)),
                flag,
            ]
        )
        classes.append("flagged" if flagged else "")
    body = [
        _table(
            [
                "control",
                "chosen reader acc. (full context)",
                "chosen reader acc. (control)",
                "gap",
                "ensemble acc. (control)",
                "model acc. (control)",
                "flag at",
                "flag",
            ],
            rows,
            numeric={1, 2, 3, 4, 5, 6},
            row_classes=classes,
        ),
        '<p class="muted">The same head, sign and threshold read the same statements with the '
        "context removed (ablated) or taken from another item (swapped). A head that reasons "
        "from the context falls towards chance there; one that keeps an accuracy of "
        "<em>flag at</em> or more is answering from the statement alone.</p>",
    ]
    per_method = [c.get("accuracy") or {} for c in controls.values()]
    methods = list(dict.fromkeys(k for acc in per_method for k in acc))
    if methods:
        body.append("<h3>Every reader under the controls</h3>")
        body.append(
            _table(
                ["control", *[_e(m) for m in methods]],
                [
                    [_e(name), *[_e(_num(acc.get(m))) for m in methods]]
                    for name, acc in zip(controls, per_method)
                ],
                numeric=set(range(1, len(methods) + 1)),
            )
        )
    if any(c.get("flagged") for c in controls.values()):
        body.insert(
            0,
            (
                '<div class="verdict bad"><strong class="bad">Shortcut suspected.</strong> '
                "The head keeps its accuracy without the real context: its accuracy above "
                "does not show that it follows the inference.</div>"
            ),
        )
    return _section("controls", title, "".join(body))


def _provenance_section(
    run: RunFolder, meta: Mapping[str, Any], prof: Profile, ev: Mapping[str, Any]
) -> str:
    model = dict(meta.get("model") or {})
    run_info = {
        "run folder": str(run.path),
        "model": model,
        "qkscore version": meta.get("qkscore_version"),
        "created": meta.get("created"),
        "data": meta.get("data"),
        "rope": meta.get("rope"),
        "attention weights": meta.get("attention_weights"),
        "items x layers x heads x options": " x ".join(
            str(meta.get(k, "?")) for k in ("n_items", "n_layers", "n_heads", "n_options")
        ),
        "chunk size / batch size": f"{meta.get('chunk_size', '?')} / {meta.get('batch_size', '?')}",
        "scans": {
            name: ("complete" if st.get("complete") else "incomplete")
            + (f", finished {st['finished']}" if st.get("finished") else "")
            for name, st in (meta.get("scans") or {}).items()
            if isinstance(st, Mapping)
        },
    }
    calib = dict(prof.data.get("calibration") or {})
    calib.pop("item_ids", None)
    warn = calib.pop("warnings", None) or []
    profile_info = {
        "path": str(prof.path) if prof.path else "not saved (in memory)",
        "content hash (sha256, 16 hex)": prof.digest,
        "file sha256": _file_sha256(prof.path),
        "created": prof.data.get("created"),
        "qkscore version": prof.data.get("qkscore_version"),
        "calibrated on run": prof.data.get("run"),
        "calibration data": prof.data.get("data"),
        "calibration": calib,
        "evaluation items listed": len(prof.data.get("evaluation_ids") or []),
    }
    eval_info = {
        "qkscore version": ev.get("qkscore_version"),
        "run": ev.get("run"),
        "profile": ev.get("profile"),
        "split": ev.get("split"),
        "bootstrap resamples": next(
            (m.get("n_boot") for m in (ev.get("methods") or {}).values() if "n_boot" in m), None
        ),
    }
    warn_html = (
        "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warn) + "</ul>"
        if warn
        else '<p class="ok">none</p>'
    )
    body = (
        "<h3>Run (run.json)</h3>"
        + _kv(run_info)
        + "<h3>Template settings</h3>"
        + _kv(meta.get("template") or {})
        + "<h3>Profile</h3>"
        + _kv(profile_info)
        + "<h3>Calibration warnings</h3>"
        + warn_html
        + "<h3>Evaluation</h3>"
        + _kv(eval_info)
    )
    return _section("provenance", "Provenance", body)


def _file_sha256(path: Path | None) -> str:
    import hashlib

    if path is None or not Path(path).is_file():
        return "n/a"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Entry points


def render_report(
    run_path: str | Path, profile: Profile | str | Path, evaluation: Mapping[str, Any]
) -> str:
    """The report as one HTML string (see ``write_report``)."""
    run = RunFolder(run_path)
    meta = run.meta()
    prof = _load_profile(profile)
    ev = dict(evaluation)
    majority = (ev.get("methods") or {}).get("majority", {}).get("accuracy", {})
    chance = majority.get("value") if _finite(majority.get("value")) else None
    model_name = (meta.get("model") or {}).get("name", ev.get("model", ""))
    generated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [
        _header(meta, prof, ev),
        _heads_section(prof),
        _distribution_section(run, prof),
        _methods_section(ev),
        _breakdown_section(ev, chance),
        _controls_section(ev),
        _provenance_section(run, meta, prof, ev),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>qkscore report: {_e(model_name)} {_e(prof.data.get('head', ''))}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        + "".join(parts)
        + f"<footer>Written by qkscore {_e(__version__)} at {_e(generated)}. QK-score head "
        "selection after Tulchinskii et al. (2025), arXiv 2502.17017. This file is "
        "self-contained: no scripts, fonts or links are fetched.</footer>"
        "</main></body></html>\n"
    )


def write_report(
    run_path: str | Path,
    profile: Profile | str | Path,
    evaluation: Mapping[str, Any],
    out_path: str | Path,
) -> Path:
    """Write one self-contained HTML report of ``evaluation`` (from ``pipeline.evaluate``).

    ``profile`` is the ``Profile`` (or its JSON path) the evaluation used; the run folder is
    read again for the provenance and the chosen head's score distributions on the evaluation
    items. Returns the path written.
    """
    text = render_report(run_path, profile, evaluation)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out

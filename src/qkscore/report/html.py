"""One self-contained HTML report of a calibrated and evaluated run.

Everything the page needs is inside the file: the CSS is inline, the plots are PNGs embedded as
``data:`` URIs, and there is no script, web font or link to fetch, so the report opens the same
on an offline machine or as a mail attachment.

The markup lives in Jinja2 templates (``report/templates/``) rendered with autoescaping: this
module gathers plain values (numbers, names, figure URIs) and every piece of text from the run,
the profile or the evaluation is escaped by the template engine, never by hand.

The sections follow the protocol: what was measured (header and verdict), how the head was chosen
(calibration heatmap and ranking), how it reads new items (score distributions on the evaluation
split), how it compares (methods with 95% intervals, McNemar tests, breakdowns), whether it
reads the context at all (controls) and where every number came from (provenance).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qkscore._version import __version__
from qkscore.io import write_bytes
from qkscore.pipeline import ITEM_LISTS, evaluation_indices
from qkscore.profile import Profile
from qkscore.report import plots
from qkscore.report.summary import finite as _finite
from qkscore.report.summary import group_rows
from qkscore.report.summary import number as _num
from qkscore.report.summary import verdict as _verdict
from qkscore.run import MAIN, RunFolder
from qkscore.schemas import Evaluation, find_comparison

__all__ = ["write_report", "render_report"]

TOP_HEADS = 20


# ---------------------------------------------------------------------------------------------
# Formatting (Jinja filters)


def _signed_num(value: Any, digits: int = 3) -> str:
    return f"{value:+.{digits}f}" if _finite(value) else "n/a"


def _pvalue(value: Any) -> str:
    if not _finite(value):
        return "n/a"
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"


def _sign_text(sign: Any) -> str:
    if sign is None:
        return "n/a"
    return "+1 (aligned)" if int(sign) > 0 else "-1 (anti-aligned)"


def _plain(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@functools.cache
def template_environment() -> Any:
    """The Jinja environment of every qkscore page: the report templates, autoescaping, the
    number filters."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("qkscore.report", "templates"),
        autoescape=True,  # every template, whatever its name: no text goes out unescaped
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, signed=_signed_num, pvalue=_pvalue, percent=lambda v: f"{v:.1%}")
    env.tests["finite_number"] = _finite
    return env


def _kv_rows(mapping: Mapping[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    """Rows of a key/value table of a (nested) mapping: nested mappings as tables (two levels),
    lists of scalars inline, anything else as JSON."""
    rows = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and depth < 2:
            row = {"kind": "kv", "value": _kv_rows(value, depth + 1)}
        elif isinstance(value, list | tuple) and all(
            isinstance(v, str | int | float | bool) or v is None for v in value
        ):
            row = {"kind": "text", "value": ", ".join(_plain(v) for v in value)}
            if not value:
                row = {"kind": "empty", "value": ""}
        elif isinstance(value, Mapping | list | tuple):
            row = {"kind": "json", "value": json.dumps(value, default=str)}
        else:
            row = {"kind": "text", "value": _plain(value)}
        rows.append({"key": key, **row})
    return rows


def _figure(fig: Any, **values: Any) -> dict[str, Any]:
    return {"uri": plots.figure_to_data_uri(fig), **values}


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
# Sections: the values each template section shows


def _header(meta: Mapping[str, Any], prof: Profile, ev: Mapping[str, Any]) -> dict[str, Any]:
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
        ("Reader chosen", prof.reader_name, _reader_line(prof)),
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
    text = _verdict(dict(ev)) if ev.get("methods") else ""
    flagged = any(c.get("flagged") for c in ev.get("controls", {}).values())
    chance = "interval includes the majority-class rate" in text
    mismatch = None
    if ev.get("head") and ev.get("head") != prof.data.get("head"):
        mismatch = (ev.get("head"), prof.data.get("head"))
    transfer = None
    if ev.get("calibration_data") and ev.get("calibration_data") != ev.get("data"):
        transfer = (ev.get("calibration_data"), ev.get("data"))
    title = f"{model.get('name', ev.get('model', '?'))} on {meta.get('data', ev.get('data', '?'))}"
    return {
        "title": title,
        "facts": [(k, "" if v is None else v, d) for k, v, d in facts],
        "verdict": text,
        "verdict_bad": flagged or chance,
        "mismatch": mismatch,
        "transfer": transfer,
        "warnings": calib.get("warnings") or [],
    }


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


def _heads_section(prof: Profile) -> dict[str, Any]:
    sel = prof.data.get("selector") or {}
    acc = _array(sel.get("accuracy"))
    sign = _array(sel.get("sign"))
    n_options = int(sel.get("n_options") or 2)
    out: dict[str, Any] = {"n_options": n_options, "heatmap": None, "ranking": []}
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
        out["heatmap"] = _figure(
            fig,
            n_items=sel.get("n_items", "?"),
            anti=int(np.sum(sign < 0)) if sign is not None else None,
            size=acc.size,
        )
    ranking = prof.data.get("ranking")
    if not ranking:
        try:
            ranking = prof.selector().ranking_
        except Exception:
            ranking = []
    rows = []
    for i, r in enumerate(ranking[:TOP_HEADS], 1):
        threshold = _num(r.get("threshold"), 4) if n_options == 2 else "none (multi-option)"
        rows.append(
            [
                str(i),
                r.get("name"),
                _sign_text(r.get("sign")),
                threshold,
                _num(r.get("accuracy")),
                _num(r.get("balanced_accuracy")),
                _num(r.get("auroc")),
            ]
        )
    out["ranking"] = rows
    out["ranking_classes"] = [
        "chosen" if r.get("name") == prof.data.get("head") else "" for r in ranking[:TOP_HEADS]
    ]
    out["metric"] = (prof.data.get("calibration") or {}).get("metric", "accuracy")
    out["linear"] = _linear_weights(prof)
    ens = prof.data.get("ensemble")
    out["ensemble"] = None
    if ens and ens.get("heads"):
        out["ensemble"] = {
            "k": ens.get("k"),
            "method": (ens.get("combiner") or {}).get("method", ""),
            "heads": list(ens["heads"]),
        }
    return out


def _linear_weights(prof: Profile) -> dict[str, Any] | None:
    """The linear reader's weights beside the single-head map: where all heads' readout draws
    its evidence (None when the profile has no linear reader)."""
    saved = (prof.data.get("readers") or {}).get("linear")
    if not saved:
        return None
    try:
        reader = prof.readers()["linear"]
    except (KeyError, ValueError):
        return None
    fig = plots.weight_heatmap(
        reader.weights_, title=f"Linear reader (L2, C={reader.C_:g}): weight per head"
    )
    return _figure(fig)


def _distribution_section(run: RunFolder, prof: Profile) -> dict[str, Any]:
    try:
        selector = prof.selector()
        records = run.items()
        idx = evaluation_indices(run, prof, records)[0]
        if len(idx) == 0:
            return {"error": "No evaluation items."}
        scores = np.asarray(run.load(MAIN))[idx]
        labels = run.labels(records)[idx]
        margins = selector.margin(scores)
        pred = selector.predict(scores)
    except (FileNotFoundError, ValueError, KeyError) as err:
        return {"error": f"Score distributions not drawn: {err}"}
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
    else:
        groups = {"head correct": margins[pred == labels], "head wrong": margins[pred != labels]}
        fig = plots.score_distributions(
            groups,
            threshold=None,
            xlabel="best minus second-best signed QK-score (gold-free confidence)",
            title=f"{head}: margin of its choice, correct vs wrong ({n_options} options)",
        )
    return _figure(fig, error=None, binary=n_options == 2, n=len(idx), acc=acc, n_options=n_options)


def _methods_section(ev: Mapping[str, Any]) -> dict[str, Any]:
    methods = ev.get("methods") or {}
    tests = ev.get("mcnemar")
    chosen = _chosen_method(ev)
    rows = []
    for name, m in methods.items():
        rows.append(
            {
                "key": name,
                "label": m.get("label", name),
                "chosen": name == chosen,
                "n": m.get("n", (m.get("accuracy") or {}).get("n", "")),
                "accuracy": m.get("accuracy"),
                "balanced_accuracy": m.get("balanced_accuracy"),
                "auroc": m.get("auroc"),
                "test": find_comparison(tests, name, "model_margin")
                or find_comparison(tests, name, "model"),
            }
        )
    missing = [k for k in ("model_answer", "attention", "ensemble") if k not in methods]
    return {"rows": rows, "missing": missing}


def _breakdown_section(ev: Mapping[str, Any], chance: float | None) -> dict[str, Any] | None:
    breakdowns = ev.get("breakdowns") or {}
    chosen = _chosen_method(ev)
    shown = [m for m in dict.fromkeys((chosen, "head", "model_margin")) if m and m in breakdowns]
    keys: list[str] = []
    for m in shown:
        keys += [k for k in breakdowns[m] if k not in keys]
    if not shown or not keys:
        return None
    fig = plots.breakdown_bars(
        breakdowns, shown, keys, chance=chance, chance_label="majority-class rate (all items)"
    )
    header = ["key", "value", "n", *shown]
    if len(shown) >= 2:
        header.append(f"{shown[0]} − {shown[-1]}")
    rows = []
    for key in keys:
        values: list[str] = []
        for m in shown:
            values += [v for v in breakdowns[m].get(key, {}) if v not in values]
        for v in values:
            cells = [breakdowns[m].get(key, {}).get(v, {}) for m in shown]
            n = max((c.get("n", 0) for c in cells), default=0)
            accs = [c.get("accuracy") for c in cells]
            row = [key, v, n, *(_num(a) for a in accs)]
            if len(shown) >= 2:
                both = _finite(accs[0]) and _finite(accs[-1])
                row.append(_signed_num(accs[0] - accs[-1]) if both else "n/a")
            rows.append(row)
    return {
        "figure": None if fig is None else _figure(fig),
        "header": header,
        "rows": rows,
        "numeric": tuple(range(2, len(header))),
    }


def _by_field_section(ev: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table per field ``evaluate --by`` grouped the items by: every reader beside the
    fair baselines, with intervals (the breakdowns above show point accuracies only). A
    method per row and a value per column, so many readers do not widen the page."""
    sections = []
    for field, by_method in (ev.get("by") or {}).items():
        names, rows = group_rows(ev, by_method)
        sections.append(
            {
                "field": field,
                "header": ["method", *(f"{field} {value} (n={n})" for value, n, _ in rows)],
                "rows": [
                    [name, *(cells[i] for _, _, cells in rows)] for i, name in enumerate(names)
                ],
                "numeric": tuple(range(1, len(rows) + 1)),
            }
        )
    return sections


def _controls_section(ev: Mapping[str, Any]) -> dict[str, Any] | None:
    controls = ev.get("controls") or {}
    if not controls:
        return None
    rows = [{"name": name, "flagged": bool(c.get("flagged")), **c} for name, c in controls.items()]
    for row in rows:
        for key in ("full", "ablated", "gap", "ensemble_accuracy", "model_accuracy", "flag_at"):
            row.setdefault(key, None)
    per_method = [c.get("accuracy") or {} for c in controls.values()]
    methods = list(dict.fromkeys(k for acc in per_method for k in acc))
    return {
        "rows": rows,
        "flagged": any(r["flagged"] for r in rows),
        "methods": methods,
        "per_method_header": ["control", *methods],
        "per_method": [
            [name, *(_num(acc.get(m)) for m in methods)] for name, acc in zip(controls, per_method)
        ],
        "per_method_numeric": tuple(range(1, len(methods) + 1)),
    }


def _provenance_section(
    run: RunFolder, meta: Mapping[str, Any], prof: Profile, ev: Mapping[str, Any]
) -> dict[str, Any]:
    model = dict(meta.get("model") or {})
    run_info = {
        "run folder": str(run.path),
        "model": model,
        "qkscore version": meta.get("qkscore_version"),
        "library versions": meta.get("versions")
        or "not recorded (a run folder made before they were)",
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
    for key in ITEM_LISTS:
        calib.pop(key, None)
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
    return {
        "run": _kv_rows(run_info),
        "template": _kv_rows(meta.get("template") or {}),
        "profile": _kv_rows(profile_info),
        "warnings": warn,
        "evaluation": _kv_rows(eval_info),
    }


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
    """The report as one HTML string (see ``write_report``); ``evaluation`` is validated
    (:class:`qkscore.schemas.Evaluation`) before anything is drawn."""
    run = RunFolder(run_path)
    meta = run.meta()
    prof = _load_profile(profile)
    ev = dict(evaluation)
    Evaluation.from_data(ev, "the evaluation passed to the report")
    majority = (ev.get("methods") or {}).get("majority", {}).get("accuracy", {})
    chance = majority.get("value") if _finite(majority.get("value")) else None
    template = template_environment().get_template("report.html.j2")
    return template.render(
        model_name=(meta.get("model") or {}).get("name", ev.get("model", "")),
        head=prof.data.get("head", ""),
        header=_header(meta, prof, ev),
        heads=_heads_section(prof),
        distributions=_distribution_section(run, prof),
        methods=_methods_section(ev),
        breakdowns=_breakdown_section(ev, chance),
        by_field=_by_field_section(ev),
        controls=_controls_section(ev),
        provenance=_provenance_section(run, meta, prof, ev),
        version=__version__,
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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
    out = Path(out_path)
    write_bytes(out, render_report(run_path, profile, evaluation).encode("utf-8"), ".tmp")
    return out

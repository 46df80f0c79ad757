"""Sweep prompt settings and readers, choosing on calibration cross-validation only.

A reader's figure depends on how the prompt was built (template scheme, rotary or not, chat
template, few-shot examples, option order, the statement token read, option letters, the
baseline's answer tokens) as much as on the reader. A sweep scans each setting (cell) of a
grid into its own resumable run folder, fits every reader on the same balanced calibration
split, and ranks every (cell, reader) pair by the cross-validated AUROC it had on that split.
The evaluation split is read for reading only: beside each cell's readers stand the calibrated
model margin, the hidden-state probe, shallow matching and the single head chosen the paper's
way, none of them used to rank.

Cells whose prompts are token for token the same (they differ only in the positions read or
in the baseline's candidates) are scanned in one forward pass
(:func:`qkscore.scanning.scan_shared`), decided from the rendered tokens. A combination that
cannot exist (letter baseline tokens with plain options) is skipped and listed as such.

``out/`` holds one folder per cell (``run/``, ``profile.json``, ``evaluation.json``) and
``leaderboard.json`` / ``leaderboard.md`` / ``leaderboard.csv`` (one flat row per (cell,
reader), its cell's baselines beside it, for a spreadsheet or pandas); ``qkscore sweep`` also
writes ``leaderboard.html`` (:mod:`qkscore.report.leaderboard`). Run it again after a crash and
finished cells are reused as they are.
"""

from __future__ import annotations

import csv
import io
import textwrap
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.dtypes import SCAN_DTYPE
from qkscore.grid import DEFAULT_GRID, TEMPLATE_AXES, parse_grid, settings, slug, slug_parts
from qkscore.io import write_bytes, write_json
from qkscore.pipeline import (
    MIN_CALIBRATION,
    balanced_split,
    calibrate,
    check_calibration_labels,
    evaluate,
    paper_head_report,
)
from qkscore.profile import Profile
from qkscore.run import RunFolder
from qkscore.scanning import ScanOptions, ScanRequest, scan_shared
from qkscore.schemas import Evaluation, read_json

__all__ = [
    "DEFAULT_GRID",
    "ci_text",
    "leaderboard_csv",
    "leaderboard_markdown",
    "parse_grid",
    "sweep",
]


def sweep(
    model: Any,
    data: str,
    out: str | Path,
    grid: str | Mapping[str, Sequence[Any]] = DEFAULT_GRID,
    *,
    calib_size: int = MIN_CALIBRATION,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: str = SCAN_DTYPE,
    seed: int = 0,
    n_boot: int = 1000,
    controls: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Scan, calibrate and evaluate every cell of ``grid``; return the leaderboard.

    ``model`` is loaded once (pass a loaded model to reuse it) and shared by every cell; cells
    with the same prompt tokens share one forward pass. A grid whose every cell is impossible
    is refused before the model loads.
    """
    from qkscore.models import LoadedModel, load_model

    grid = parse_grid(grid) if isinstance(grid, str) else {k: list(v) for k, v in grid.items()}
    cells, skipped = _cells(settings(grid))
    _check_before_loading(data, cells, calib_size, limit, controls, seed)
    root = Path(out)
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
    log(
        f"sweep: {len(cells)} cells" + (f", {len(skipped)} impossible ones skipped" * bool(skipped))
    )
    requests = [
        ScanRequest(
            cell["template"],
            root / cell["setting"] / "run",
            rope=cell["values"]["rope"],
            chat_template=cell["values"]["chat_template"],
            num_fewshot=cell["values"]["num_fewshot"],
        )
        for cell in cells
    ]
    options = ScanOptions(limit, batch_size, tuple(controls), progress=progress, log=log)
    runs = scan_shared(lm, data, requests, options)
    folders = {str(run.path): cell["cell"] for run, cell in zip(runs, cells)}
    rows: list[dict[str, Any]] = []
    summaries = []
    for cell, run in zip(cells, runs):
        profile, report = _fitted(run.path, root / cell["setting"], calib_size, seed, n_boot)
        rows += _rows(cell, profile, report)
        summaries.append(_summary(cell, run, profile, report, folders, n_boot, seed))
    ranked = sorted(rows, key=lambda r: -(r["cv_auroc"] if r["cv_auroc"] is not None else -1))
    result = {
        "model": lm.name,
        "data": data,
        "grid": grid,
        "rule": "ranked by cross-validated AUROC on each setting's calibration split",
        "n_cells": len(cells),
        "n_passes": len({c["shared_pass"] or c["setting"] for c in summaries}),
        "chosen": ranked[0] if ranked else None,
        "rows": ranked,
        "cells": sorted(summaries, key=lambda c: -(c["cv_auroc"] or -1)),
        "skipped": skipped,
    }
    write_json(root / "leaderboard.json", result)
    (root / "leaderboard.md").write_text(leaderboard_markdown(result) + "\n")
    write_bytes(root / "leaderboard.csv", leaderboard_csv(result).encode())
    return result


def _cells(settings: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Each setting with its folder name (``setting``) and template, and the settings that
    cannot exist (a template refusing the combination) with the reason. An unknown template
    name is an error, not a skipped cell."""
    from qkscore.prompts import get_template

    cells, skipped = [], []
    for number, setting in enumerate(settings, 1):
        get_template(setting["template"])
        overrides = {k: setting[k] for k in TEMPLATE_AXES if setting.get(k) is not None}
        cell = {
            "cell": f"c{number}",
            "setting": slug(setting),
            "label": " ".join(slug_parts(setting)),
            "values": dict(setting),
        }
        try:
            cell["template"] = get_template(
                setting["template"], swap_options=setting["swap_options"], **overrides
            )
        except ValueError as err:
            skipped.append({**cell, "reason": str(err)})
            continue
        cells.append(cell)
    if not cells:
        reasons = "; ".join(f"{c['setting']}: {c['reason']}" for c in skipped)
        raise ValueError(f"every setting of the grid is impossible: {reasons}")
    return cells, skipped


def _fitted(run_path: Path, folder: Path, calib_size: int, seed: int, n_boot: int):
    """A cell's profile and evaluation report, read back when an earlier sweep wrote them."""
    profile_path = folder / "profile.json"
    if profile_path.exists():
        profile = Profile.load(profile_path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profile = calibrate(run_path, calib_size=calib_size, seed=seed, out=profile_path)
    eval_path = folder / "evaluation.json"
    if eval_path.exists():
        return profile, Evaluation.checked(read_json(eval_path), eval_path)
    return profile, evaluate(run_path, profile, n_boot=n_boot, seed=seed, out=eval_path)


def _check_before_loading(
    data: str,
    cells: Sequence[Mapping[str, Any]],
    calib_size: int,
    limit: int | None,
    controls: Sequence[str],
    seed: int,
) -> None:
    """Refuse what every setting would fail on, before the model loads (minutes for a big
    one): an unknown control, and a data set whose items (after the few-shot examples a
    setting takes and ``limit``) cannot give a calibration split of ``calib_size`` and leave
    items to evaluate."""
    from qkscore.data import load_items
    from qkscore.data.controls import get_control
    from qkscore.prompts import with_fewshot

    for control in controls:
        get_control(control)
    items = load_items(data)
    for shots in sorted({int(c["values"]["num_fewshot"]) for c in cells}):
        _, rest = with_fewshot(cells[0]["template"], items, shots)
        rest = rest[:limit] if limit is not None else rest
        labels = np.array([it.answer_index for it in rest])
        where = f"sweep over {data!r}" + (f" with num_fewshot={shots}" if shots else "") + ": "
        check_calibration_labels(labels, calib_size, where)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short class is said again by calibrate
            try:
                balanced_split(labels, calib_size, seed)
            except ValueError as err:
                raise ValueError(f"{where}{err}") from None


def _rows(
    cell: Mapping[str, Any], profile: Profile, report: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per reader of a cell: its calibration CV figure and its evaluation figure."""
    cv = (profile.data.get("reader_choice") or {}).get("cv") or {}
    out = []
    for reader, result in cv.items():
        method = report["methods"].get(reader)
        if "skipped" in result or method is None:
            continue
        out.append(
            {
                "cell": cell["cell"],
                "setting": cell["setting"],
                **cell["values"],
                "reader": reader,
                "cv_auroc": result.get("auroc"),
                "cv_accuracy": result.get("accuracy"),
                "accuracy": method.get("accuracy"),
                "auroc": method.get("auroc"),
                "model_margin_accuracy": (report["methods"].get("model_margin") or {}).get(
                    "accuracy"
                ),
            }
        )
    return out


#: The figures beside each cell's readers: evaluation method key -> (the key a cell's
#: ``baselines`` and the CSV columns use, the name the Markdown shows).
CELL_FIGURES = {
    "model_margin": ("model_margin", "model margin"),
    "hidden_probe": ("hidden_probe", "hidden probe"),
    "shallow": ("shallow", "shallow"),
    "head": ("head_by_auroc", "head by AUROC"),
}


def _summary(
    cell: Mapping[str, Any],
    run: RunFolder,
    profile: Profile,
    report: Mapping[str, Any],
    folders: Mapping[str, str],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """A cell's line of the leaderboard: its settings as rendered, how it was scanned, and
    the evaluation figures of its chosen reader beside the fair baselines."""
    meta = run.meta()
    methods = report["methods"]
    reader = report["reader"]
    baselines = {}
    for key, (column, name) in CELL_FIGURES.items():
        if key in methods:
            name = f"{name} {report['head']}" if key == "head" else name
            baselines[column] = {"name": name, **_figure(methods[key])}
    paper = paper_head_report(run.path, profile, n_boot=n_boot, seed=seed)
    baselines["paper_head"] = {"name": f"paper head {paper['head']}", **_figure(paper)}
    figures = {f"reader {reader}": _figure(methods[reader])}
    figures.update((b["name"], _figure(b)) for b in baselines.values())
    shared = meta.get("shared_pass") or {}
    template = meta["template"]
    return {
        "cell": cell["cell"],
        "setting": cell["setting"],
        "label": cell["label"],
        **cell["values"],
        "rendered": {k: template.get(k) for k in ("use_chat_template", *TEMPLATE_AXES)},
        "reader": reader,
        "cv_auroc": ((profile.data.get("reader_choice") or {}).get("cv") or {})
        .get(reader, {})
        .get("auroc"),
        "scan_seconds": (meta["scans"].get("main") or {}).get("seconds"),
        "shared_pass": shared.get("id"),
        "shared_with": [
            folders.get(f, f) for f in shared.get("folders", []) if folders.get(f) != cell["cell"]
        ],  # fmt: skip
        "pass_seconds": shared.get("seconds"),
        "figures": figures,
        "baselines": baselines,
    }


def _figure(method: Mapping[str, Any]) -> dict[str, Any]:
    """A method's evaluation accuracy and AUROC (each with its 95% interval)."""
    return {"accuracy": method.get("accuracy"), "auroc": method.get("auroc")}


def leaderboard_csv(result: Mapping[str, Any]) -> str:
    """The leaderboard as CSV: one row per (cell, reader) in rank order, with the cell's
    settings, the reader's calibration CV and evaluation figures (value, low, high), whether it
    is its cell's pick, and its cell's baselines and scan time beside it."""
    cells = {c["cell"]: c for c in result.get("cells", [])}
    rows = []
    for rank, row in enumerate(result["rows"], 1):
        cell = cells.get(row.get("cell"), {})
        flat = {"rank": rank}
        # the row's model_margin_accuracy is its cell's: the baselines' columns give it
        flat.update(
            (k, v) for k, v in row.items() if k not in (*_CI_FIELDS, "model_margin_accuracy")
        )
        flat["chosen_in_cell"] = row["reader"] == cell.get("reader")
        flat.update(_ci_columns("", row))
        for key, figure in cell.get("baselines", {}).items():
            flat[f"{key}_name"] = figure["name"]
            flat.update(_ci_columns(f"{key}_", figure))
        flat["scan_seconds"] = cell.get("scan_seconds")
        flat["shared_pass"] = cell.get("shared_pass")
        rows.append(flat)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


#: Figures with a 95% interval: the CSV gives each three columns (value, low, high).
_CI_FIELDS = ("accuracy", "auroc")


def _ci_columns(prefix: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name in _CI_FIELDS:
        if name in figures:
            metric = figures[name] or {}
            for part, suffix in (("value", ""), ("low", "_low"), ("high", "_high")):
                out[f"{prefix}{name}{suffix}"] = metric.get(part)
    return out


def ci_text(metric: Mapping[str, Any] | None) -> str:
    """``value [low, high]`` to three decimals, or ``n/a``."""
    if not metric:
        return "n/a"
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _wrapped(text: str, indent: str = "") -> list[str]:
    """``text`` cut into lines of at most 80 columns (continuation lines indented)."""
    return textwrap.wrap(
        text, 80, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False
    )


def leaderboard_markdown(result: Mapping[str, Any]) -> str:
    """The leaderboard as Markdown that reads at 80 columns: cells are named ``c1, c2, ...``
    in the tables and listed with their settings above them."""
    cells = result.get("cells", [])
    skipped = result.get("skipped", [])
    lines = [f"### qkscore sweep: {result['model']}", "", f"Data: `{result['data']}`", ""]
    lines += _wrapped(
        f"{result.get('n_cells', len(cells))} cells scanned in {result.get('n_passes', '?')} "
        f"forward passes; {len(skipped)} skipped. Ranked by "
        f"{result['rule'].removeprefix('ranked by ')}; evaluation figures are shown for "
        "reading, never used to rank."
    )
    lines.append("")
    for cell in sorted([*cells, *skipped], key=lambda c: int(c["cell"][1:])):
        if "reason" in cell:
            how = f"skipped, {cell['reason']}"
        else:
            how = f"scan {_seconds(cell['scan_seconds'])}"
            if cell.get("shared_pass"):
                how += f", one pass shared with {', '.join(cell['shared_with'])}"
        lines += _wrapped(f"- {cell['cell']} {cell.get('label', cell['setting'])}: {how}", "  ")
    lines += [
        "",
        "| # | cell | reader | CV AUROC | accuracy (eval) | AUROC (eval) |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(result["rows"], 1):
        cv = "n/a" if row["cv_auroc"] is None else f"{row['cv_auroc']:.3f}"
        lines.append(
            f"| {i} | {row.get('cell', row['setting'])} | {row['reader']} | {cv} "
            f"| {ci_text(row['accuracy'])} | {ci_text(row['auroc'])} |"
        )
    for cell in cells:
        lines += [
            "",
            f"{cell['cell']}, beside its chosen reader (evaluation items, 95% intervals):",
            "",
            "| method | accuracy | AUROC |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {ci_text(fig['accuracy'])} | {ci_text(fig['auroc'])} |"
            for name, fig in cell["figures"].items()
        ]
    best = result.get("chosen")
    if best:
        label = {c["cell"]: c.get("label") for c in cells}.get(best.get("cell"), best["setting"])
        lines.append("")
        lines += _wrapped(
            f"Chosen on calibration CV: **{best.get('cell', '')} {label} / {best['reader']}**, "
            f"evaluation accuracy {ci_text(best['accuracy'])} beside the calibrated model "
            f"margin's {ci_text(best['model_margin_accuracy'])}."
        )
    return "\n".join(lines)

"""A sweep's leaderboard as one self-contained HTML page (``leaderboard.html``).

``leaderboard.md`` reads at 80 columns, one small table per cell; a grid of 24 cells is easier
to take in as one picture: every cell against its chosen reader and the fair baselines (the
calibrated model margin, the hidden-state probe, shallow matching, the head chosen by AUROC and
the paper's way), accuracy and AUROC side by side, with the figures whose interval excludes
chance in bold. The page then lists the cells and every (cell, reader) pair in the order
calibration CV ranked them. Like the run report it fetches nothing: CSS inline, the figure an
embedded PNG, every text escaped by the template engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.io import write_bytes
from qkscore.report import plots
from qkscore.report.html import template_environment
from qkscore.schemas import read_json
from qkscore.sweep import ci_text

__all__ = ["render_leaderboard", "write_leaderboard"]

#: The columns of the picture and the cell table: a cell's ``baselines`` key (``reader``: its
#: chosen reader) and the name shown.
COLUMNS = (
    ("reader", "chosen reader"),
    ("model_margin", "model margin"),
    ("hidden_probe", "hidden probe"),
    ("shallow", "shallow"),
    ("head_by_auroc", "head by AUROC"),
    ("paper_head", "paper head"),
)
METRICS = (("accuracy", "accuracy"), ("auroc", "AUROC"))


def _cell_figures(cell: Mapping[str, Any], where: str) -> dict[str, Mapping[str, Any]]:
    """The chosen reader's figures and the cell's baselines, by :data:`COLUMNS` key."""
    if "baselines" not in cell:
        raise ValueError(
            f"{where}: cell {cell.get('cell')} has no 'baselines' (a leaderboard written before "
            "they were kept): run the same sweep again, it reuses every finished cell"
        )
    return {"reader": cell["figures"][f"reader {cell['reader']}"], **cell["baselines"]}


def _value(figure: Mapping[str, Any] | None, metric: str) -> tuple[float, bool]:
    """A figure's value (NaN when absent) and whether its interval excludes 0.5."""
    m = (figure or {}).get(metric) or {}
    value = m.get("value")
    if value is None:
        return float("nan"), False
    low, high = m.get("low"), m.get("high")
    return float(value), low is not None and high is not None and (low > 0.5 or high < 0.5)


def _heatmap(cells: list[Mapping[str, Any]], figures: list[dict]) -> dict[str, Any]:
    panels, bold = {}, {}
    for metric, name in METRICS:
        pairs = [[_value(f.get(key), metric) for key, _ in COLUMNS] for f in figures]
        panels[name] = np.array([[v for v, _ in row] for row in pairs])
        bold[name] = np.array([[b for _, b in row] for row in pairs])
    fig = plots.sweep_heatmap(
        [c["cell"] for c in cells],  # the cell table below spells out each cell's settings
        [name for _, name in COLUMNS],
        panels,
        bold,
    )
    return {"uri": plots.figure_to_data_uri(fig)}


def _metric_cells() -> Any:
    """The report's ``metric`` macro (value, then its interval in grey) for table cells built
    here; the leaderboard's tables stack the interval under the value (``table.stacked``)."""
    return template_environment().get_template("macros.html.j2").module.metric


def _short_labels(cells: list[Mapping[str, Any]]) -> tuple[dict[str, str], str]:
    """Each cell's settings as only the parts that vary between cells (``chat / 3shot /
    anchor-last``), and the parts every cell shares, said once."""
    parts = {c["cell"]: str(c.get("label", c["setting"])).split() for c in cells}
    widths = {len(p) for p in parts.values()}
    if len(widths) != 1:  # labels of unlike shapes: show them whole
        return {k: " ".join(p) for k, p in parts.items()}, ""
    columns = list(zip(*parts.values()))
    varying = [i for i, col in enumerate(columns) if len(set(col)) > 1]
    shared = " ".join(col[0] for i, col in enumerate(columns) if i not in varying)
    return {k: " / ".join(p[i] for i in varying) or " ".join(p) for k, p in parts.items()}, shared


def render_leaderboard(result: Mapping[str, Any], where: str = "leaderboard") -> str:
    """The page for a sweep's result (what :func:`qkscore.sweep.sweep` returns)."""
    cells = sorted(result.get("cells", []), key=lambda c: int(c["cell"][1:]))
    figures = [_cell_figures(c, where) for c in cells]
    labels, shared = _short_labels(cells)
    metric = _metric_cells()
    cell_rows = []
    for cell, figs in zip(cells, figures):
        head = (figs.get("head_by_auroc") or {}).get("name", "").removeprefix("head by AUROC ")
        paper = (figs.get("paper_head") or {}).get("name", "").removeprefix("paper head ")
        cv = cell.get("cv_auroc")
        cell_rows.append(
            [
                cell["cell"],
                labels[cell["cell"]].replace("-", "\u2011"),  # lines break between parts only
                f"{cell['reader']} ({'n/a' if cv is None else f'{cv:.3f}'})",
                *(metric((figs.get(key) or {}).get("accuracy")) for key, _ in COLUMNS),
                f"{head} / {paper}",
                "n/a" if cell.get("scan_seconds") is None else f"{cell['scan_seconds']:.0f}",
                ", ".join(cell.get("shared_with") or []) or "-",
            ]
        )
    ranked = [
        [
            str(i),
            row.get("cell", row["setting"]),
            row["reader"],
            "n/a" if row.get("cv_auroc") is None else f"{row['cv_auroc']:.3f}",
            metric(row.get("accuracy")),
            metric(row.get("auroc")),
        ]
        for i, row in enumerate(result.get("rows", []), 1)
    ]
    chosen = result.get("chosen")
    by_cell = {c["cell"]: f for c, f in zip(cells, figures)}
    chosen_figures = by_cell.get((chosen or {}).get("cell"), {})
    template = template_environment().get_template("leaderboard.html.j2")
    return template.render(
        result=result,
        n_passes=result.get("n_passes", "?"),
        heatmap=_heatmap(cells, figures) if cells else None,
        cell_header=[
            "cell",
            "settings",
            "chosen reader (CV AUROC)",
            *(f"{name} accuracy" for _, name in COLUMNS),
            "heads (by AUROC / paper)",
            "scan s",
            "pass shared with",
        ],
        cell_rows=cell_rows,
        cell_numeric=tuple(range(3, 3 + len(COLUMNS))) + (3 + len(COLUMNS) + 1,),
        ranked=ranked,
        chosen=chosen,
        chosen_label=labels.get((chosen or {}).get("cell"), ""),
        shared_settings=shared,
        chosen_accuracy=ci_text((chosen or {}).get("accuracy")),
        margin=ci_text((chosen_figures.get("model_margin") or {}).get("accuracy")),
        skipped=result.get("skipped", []),
    )


def write_leaderboard(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write ``leaderboard.html`` beside a sweep folder's ``leaderboard.json`` (or to ``out``)."""
    folder = Path(folder)
    source = folder / "leaderboard.json"
    if not source.exists():
        raise FileNotFoundError(f"{folder} holds no leaderboard.json: is it a sweep's folder?")
    path = Path(out) if out is not None else folder / "leaderboard.html"
    write_bytes(path, render_leaderboard(read_json(source), str(source)).encode("utf-8"))
    return path

"""Small plotting functions for the HTML report, each returning a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` directly (rendered by Agg), never through
``pyplot``: no GUI backend is touched, no global figure registry grows, and the report can be
written on a headless machine. ``figure_to_data_uri`` turns a figure into an embeddable PNG and
releases it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "figure_to_data_uri",
    "head_heatmap",
    "score_distributions",
    "breakdown_bars",
    "PALETTE",
]

#: Colours shared by the plots and the HTML (aligned / anti-aligned, head / model / others).
PALETTE = {
    "aligned": "#4c78a8",
    "anti": "#f58518",
    "chosen": "#d62728",
    "series": ["#4c78a8", "#9d9d9d", "#54a24b", "#e45756", "#b279a2", "#f58518"],
    "classes": ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2", "#9d755d"],
}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig: Figure, dpi: int = 110, close: bool = True) -> str:
    """``data:image/png;base64,...`` of ``fig``; with ``close`` the figure is cleared after."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    finally:
        if close:
            fig.clear()
            try:  # a figure made through pyplot is also dropped from its registry
                import sys

                plt = sys.modules.get("matplotlib.pyplot")
                if plt is not None:
                    plt.close(fig)
            except Exception:  # pragma: no cover - closing is best effort
                pass
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _integer_axes(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=16))


def head_heatmap(
    accuracy: Any,
    sign: Any | None = None,
    chosen: tuple[int, int] | None = None,
    chance: float | None = None,
    title: str = "Calibration accuracy per head",
) -> Figure:
    """Layer x head accuracy map (layers down, heads across, both zero-based).

    With ``sign`` a second panel shows each head's learned direction (+1 aligned, -1
    anti-aligned). ``chosen`` (layer, head) is outlined in both panels. The colour scale starts
    at ``chance`` (e.g. 1/options) so that chance-level heads look dark; small grids also get
    the values written in.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.ndim != 2 or acc.size == 0:
        raise ValueError(f"accuracy must be a non-empty [layers, heads] array, got {acc.shape}")
    n_layers, n_heads = acc.shape
    sgn = None if sign is None else np.asarray(sign)
    if sgn is not None and sgn.shape != acc.shape:
        raise ValueError(f"sign {sgn.shape} and accuracy {acc.shape} differ in shape")
    panel_w = min(6.5, max(2.4, 0.3 * n_heads + 1.4))
    height = min(12.0, max(3.0, 0.19 * n_layers + 1.5))
    widths = [panel_w + 1.0] if sgn is None else [panel_w + 1.0, panel_w + 1.3]
    fig = _new_figure(sum(widths), height)
    axes = fig.subplots(1, len(widths), squeeze=False, width_ratios=widths)[0]
    finite = acc[np.isfinite(acc)]
    vmin = chance if chance is not None else (float(finite.min()) if finite.size else 0.0)
    vmax = max(float(finite.max()) if finite.size else 1.0, vmin + 0.05)
    ax = axes[0]
    im = ax.imshow(acc, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="upper")
    fig.colorbar(im, ax=ax, label="accuracy (calibration split)", shrink=0.85, pad=0.02)
    ax.set_title(title, fontsize=10)
    if n_layers * n_heads <= 64:
        for (r, c), v in np.ndenumerate(acc):
            if math.isfinite(v):
                light = (v - vmin) / (vmax - vmin) > 0.6
                colour = "black" if light else "white"
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)
    if sgn is not None:
        ax2 = axes[1]
        cmap = ListedColormap([PALETTE["anti"], PALETTE["aligned"]])
        ax2.imshow((sgn > 0).astype(float), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax2.set_title("Learned sign per head", fontsize=10)
        handles = [
            Patch(color=PALETTE["aligned"], label="+1 aligned"),
            Patch(color=PALETTE["anti"], label="−1 anti-aligned"),
            Patch(facecolor="none", edgecolor=PALETTE["chosen"], linewidth=2, label="chosen"),
        ]
        ax2.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=8,
            frameon=False,
            borderaxespad=0,
        )
    for a in axes:
        a.set_xlabel("head (H, zero-based)")
        a.set_ylabel("layer (L, zero-based)")
        _integer_axes(a)
    if chosen is not None:
        layer, head = chosen
        for a in axes:
            for colour, lw in (("white", 4.0), (PALETTE["chosen"], 2.2)):
                a.add_patch(
                    Rectangle(
                        (head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=lw
                    )
                )
    return fig


def weight_heatmap(weights: Any, title: str = "Linear reader weight per head") -> Figure:
    """Layer x head map of a linear reader's weights (standardised units), diverging around 0:
    where the readout of every head draws its evidence, beside the single-head accuracy map."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"weights must be a non-empty [layers, heads] array, got {w.shape}")
    n_layers, n_heads = w.shape
    bound = float(np.max(np.abs(w))) or 1.0
    fig = _new_figure(min(7.5, max(3.4, 0.3 * n_heads + 2.4)), min(12.0, 0.19 * n_layers + 1.5))
    ax = fig.subplots()
    im = ax.imshow(w, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", origin="upper")
    fig.colorbar(im, ax=ax, label="weight (per standardised margin)", shrink=0.85, pad=0.02)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("head (H, zero-based)")
    ax.set_ylabel("layer (L, zero-based)")
    _integer_axes(ax)
    return fig


def score_distributions(
    values_by_group: Mapping[str, Any],
    threshold: float | None = None,
    xlabel: str = "score",
    title: str = "",
    threshold_label: str | None = None,
) -> Figure:
    """Overlaid histograms of one score per group (e.g. per gold option), with a threshold line.

    Groups may be empty (they are listed in the legend with n=0). Bins are shared so the
    groups compare directly.
    """
    groups = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in values_by_group.items()}
    groups = {k: v[np.isfinite(v)] for k, v in groups.items()}
    fig = _new_figure(7.5, 3.9)
    ax = fig.subplots()
    every = np.concatenate([v for v in groups.values()] + [np.zeros(0)])
    if threshold is not None and math.isfinite(threshold):
        every = np.append(every, threshold)
    if every.size:
        lo, hi = float(every.min()), float(every.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        n_total = sum(v.size for v in groups.values())
        n_bins = int(np.clip(np.sqrt(max(n_total, 1)) * 1.5, 8, 50))
        bins = np.linspace(lo, hi, n_bins + 1)
    else:
        bins = np.linspace(-1, 1, 11)
    for i, (name, v) in enumerate(groups.items()):
        color = PALETTE["classes"][i % len(PALETTE["classes"])]
        label = f"{name} (n={v.size})"
        if v.size:
            ax.hist(v, bins=bins, alpha=0.45, color=color, label=label, edgecolor=color)
            ax.hist(v, bins=bins, histtype="step", color=color, linewidth=1.4)
        else:
            ax.plot([], [], color=color, label=label)
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(
            threshold,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=threshold_label or f"threshold = {threshold:.3g}",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items")
    if title:
        ax.set_title(title, fontsize=10)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def breakdown_bars(
    breakdowns: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]],
    methods: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    chance: float | None = None,
    chance_label: str = "chance",
) -> Figure | None:
    """Grouped accuracy bars per metadata value, one panel per key (depth, distractors, ...).

    ``breakdowns`` is ``evaluate(...)["breakdowns"]``: ``{method: {key: {value: {n, accuracy}}}}``.
    Returns None when there is nothing to plot.
    """
    methods = [m for m in (methods or list(breakdowns)) if m in breakdowns]
    if keys is None:
        keys = []
        for m in methods:
            keys += [k for k in breakdowns[m] if k not in keys]
    keys = [k for k in keys if any(breakdowns[m].get(k) for m in methods)]
    if not methods or not keys:
        return None
    widths = []
    for key in keys:
        values = _values(breakdowns, methods, key)
        widths.append(max(1.8, 0.55 * len(values) * max(1, len(methods)) * 0.7 + 0.8))
    total = min(16.0, sum(widths) + 0.6)
    fig = _new_figure(total, 3.5)
    axes = fig.subplots(1, len(keys), squeeze=False, width_ratios=widths)[0]
    bar_w = 0.8 / len(methods)
    for ax, key in zip(axes, keys):
        values = _values(breakdowns, methods, key)
        x = np.arange(len(values))
        for j, m in enumerate(methods):
            table = breakdowns[m].get(key, {})
            acc = [table.get(v, {}).get("accuracy", np.nan) for v in values]
            ax.bar(
                x + (j - (len(methods) - 1) / 2) * bar_w,
                acc,
                bar_w * 0.95,
                color=PALETTE["series"][j % len(PALETTE["series"])],
                label=m,
            )
        ns = [
            max((breakdowns[m].get(key, {}).get(v, {}).get("n", 0) for m in methods), default=0)
            for v in values
        ]
        ax.set_xticks(
            x,
            [_short(v) for v in values],
            fontsize=8,
            rotation=30 if len(values) > 4 or max(map(len, values)) > 8 else 0,
        )
        for xi, n in zip(x, ns):
            ax.text(xi, 1.01, f"n={n}", ha="center", va="bottom", fontsize=7, color="#555")
        if chance is not None:
            ax.axhline(chance, color="black", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1.1)
        ax.set_title(key, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("accuracy (evaluation split)")
    handles, labels = axes[0].get_legend_handles_labels()
    if chance is not None:
        handles.append(axes[0].lines[-1])
        labels.append(chance_label)
    fig.legend(
        handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False
    )
    return fig


def _values(breakdowns: Mapping[str, Any], methods: Sequence[str], key: str) -> list[str]:
    values: list[str] = []
    for m in methods:
        values += [v for v in breakdowns[m].get(key, {}) if v not in values]
    return values


def _short(text: str, limit: int = 14) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sweep_heatmap(
    cells: Sequence[str],
    methods: Sequence[str],
    panels: Mapping[str, Any],
    excludes_chance: Mapping[str, Any],
) -> Figure:
    """Cells (rows) x methods (columns) of a sweep, one panel per metric (accuracy, AUROC),
    diverging around chance (0.5) and annotated; a value whose 95% interval excludes 0.5 is in
    bold. Missing values (NaN) stay blank."""
    n_cells, n_methods = len(cells), len(methods)
    if not n_cells or not n_methods or not panels:
        raise ValueError("a sweep heatmap needs at least one cell, one method and one metric")
    fig = _new_figure(min(12.0, 1.0 + (0.7 * n_methods + 1.0) * len(panels)), 1.4 + 0.26 * n_cells)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (metric, values) in zip(axes, panels.items()):
        v = np.asarray(values, dtype=np.float64).reshape(n_cells, n_methods)
        bold = np.asarray(excludes_chance[metric], dtype=bool).reshape(n_cells, n_methods)
        finite = v[np.isfinite(v)]
        bound = max(0.1, float(np.max(np.abs(finite - 0.5))) if finite.size else 0.1)
        im = ax.imshow(v, cmap="RdBu_r", vmin=0.5 - bound, vmax=0.5 + bound, aspect="auto")
        for (i, j), value in np.ndenumerate(v):
            if np.isfinite(value):
                weight = "bold" if bold[i, j] else "normal"
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, weight=weight)
        ax.set_title(metric, fontsize=10)
        ax.set_xticks(range(n_methods), [_short(m, 16) for m in methods], rotation=30, ha="right")
        ax.set_yticks(range(n_cells), list(cells), fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.6, pad=0.02)
    return fig

"""Metrics and the statistics that say whether a difference between readers is real.

Numpy/scipy only, so reports can be recomputed from saved predictions without a model.

The three metric functions (:func:`accuracy`, :func:`balanced_accuracy`, :func:`auroc`) work
along the last axis: 1-D inputs give a float, 2-D inputs ``[replicates, items]`` give one value
per row. :func:`bootstrap_ci` relies on that to score all resamples in a few array operations
instead of a Python loop; any other metric function can still be passed and is called once per
resample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import binom, chi2, rankdata

__all__ = [
    "ConfidenceInterval",
    "McNemarResult",
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "bootstrap_ci",
    "breakdown",
    "majority_baseline",
    "mcnemar",
    "metric_report",
    "shortcut_gap",
    "transfer_matrix",
]


def _batched(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a metric as row-wise on 2-D input, so bootstrap_ci may vectorise it."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def _out(values: np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(values) == 0 else values


def _pair(pred: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(pred), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
    if p.shape[-1] == 0:
        raise ValueError("no items to score")
    return p, y


@_batched
def accuracy(pred: Any, labels: Any) -> float | np.ndarray:
    """Fraction of items whose prediction equals the label."""
    p, y = _pair(pred, labels)
    return _out(np.mean(p == y, axis=-1))


@_batched
def balanced_accuracy(pred: Any, labels: Any) -> float | np.ndarray:
    """Mean per-class recall over the classes present in ``labels`` (sklearn's definition).

    Unlike accuracy it does not reward always answering the majority option, which matters on
    the unbalanced sets (e.g. many "Unknown" items).
    """
    p, y = _pair(pred, labels)
    recalls = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in np.unique(y):
            mask = y == c
            recalls.append(np.sum(mask & (p == c), axis=-1) / np.sum(mask, axis=-1))
    return _out(np.nanmean(np.stack(recalls), axis=0))


@_batched
def auroc(score: Any, positive: Any) -> float | np.ndarray:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    Computed as the Mann-Whitney U statistic on average ranks, so ties are exact. ``positive`` is
    a boolean mask (or 0/1). NaN when the items hold only one class (AUROC is undefined there).
    """
    s, pos = _pair(score, positive)
    pos = pos.astype(bool)
    ranks = rankdata(s, axis=-1)
    n_pos = pos.sum(axis=-1)
    n_neg = pos.shape[-1] - n_pos
    u = np.sum(ranks * pos, axis=-1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return _out(np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan))


class ConfidenceInterval(NamedTuple):
    point: float
    low: float
    high: float


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    vectorized: bool | None = None,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``, resampling items with replacement.

    All arrays are resampled with the same indices (paired), so e.g. predictions stay with their
    labels. ``vectorized`` (default: the function's ``batched`` mark, set on this module's
    metrics) scores all resamples at once on ``[n_boot, items]`` arrays, in chunks to bound
    memory. Resamples where the metric is undefined (NaN, e.g. AUROC with one class) are
    dropped. Returns ``(point, low, high)``; seeded, so reports are reproducible.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in arrs):
        raise ValueError("arrays must be non-empty and have the same number of items")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    point = float(metric_fn(*arrs))
    if vectorized is None:
        vectorized = bool(getattr(metric_fn, "batched", False)) and all(a.ndim == 1 for a in arrs)
    rng = np.random.default_rng(seed)
    rows = max(1, 2_000_000 // n)  # resamples scored per chunk
    values = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        m = min(rows, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        if vectorized:
            values[start : start + m] = metric_fn(*[a[idx] for a in arrs])
        else:
            for i in range(m):
                values[start + i] = metric_fn(*[a[idx[i]] for a in arrs])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return ConfidenceInterval(point, float("nan"), float("nan"))
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return ConfidenceInterval(point, float(low), float(high))


class McNemarResult(NamedTuple):
    statistic: float
    pvalue: float


def mcnemar(correct_a: Any, correct_b: Any, exact_below: int = 25) -> McNemarResult:
    """Paired test: do readers A and B err on the same items as often as chance allows?

    Only discordant items count: ``b`` (A right, B wrong) and ``c`` (A wrong, B right). With
    fewer than ``exact_below`` discordant items the two-sided exact binomial test is used
    (statistic = min(b, c)); otherwise chi-square with continuity correction,
    ``(|b - c| - 1)^2 / (b + c)``, one degree of freedom.
    """
    a, b_ = _pair(np.asarray(correct_a).astype(bool), np.asarray(correct_b).astype(bool))
    if a.ndim != 1:
        raise ValueError("mcnemar expects 1-D per-item correctness")
    b = int(np.count_nonzero(a & ~b_))
    c = int(np.count_nonzero(~a & b_))
    n = b + c
    if n == 0:
        return McNemarResult(0.0, 1.0)
    if n < exact_below:
        k = min(b, c)
        return McNemarResult(float(k), float(min(1.0, 2.0 * binom.cdf(k, n, 0.5))))
    stat = (abs(b - c) - 1.0) ** 2 / n
    return McNemarResult(float(stat), float(chi2.sf(stat, 1)))


def majority_baseline(train_labels: Any, test_labels: Any) -> dict[str, Any]:
    """Accuracy of always answering the calibration set's most common option on the test set.

    The floor any head must beat: on unbalanced sets a head that tracks the majority option
    looks accurate while reading nothing. Ties go to the lowest option index.
    """
    train = np.asarray(train_labels).astype(np.int64)
    test = np.asarray(test_labels).astype(np.int64)
    if train.size == 0 or test.size == 0:
        raise ValueError("majority_baseline needs non-empty train and test labels")
    majority = int(np.argmax(np.bincount(train)))
    return {"label": majority, "accuracy": float(np.mean(test == majority)), "n": int(test.size)}


def metric_report(
    pred: Any,
    labels: Any,
    score: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    positive: int = 0,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy and (binary items, when ``score`` is given) AUROC with CIs.

    ``score`` is evidence *for option* ``positive`` (default 0, like ``HeadSelector.margin``,
    which is positive for option 0). Each metric is ``{"value", "low", "high", "n"}`` with a
    ``1 - alpha`` percentile bootstrap interval; all metrics share the same resamples (same
    seed). AUROC is reported only when the labels hold exactly two options, 0 and 1.
    """
    p, y = _pair(pred, labels)
    if p.ndim != 1:
        raise ValueError("metric_report expects 1-D predictions and labels")
    n = int(y.shape[0])

    def entry(fn: Callable[..., Any], *arrays: Any) -> dict[str, Any]:
        ci = bootstrap_ci(fn, *arrays, n_boot=n_boot, alpha=alpha, seed=seed)
        return {"value": ci.point, "low": ci.low, "high": ci.high, "n": n}

    report: dict[str, Any] = {
        "n": n,
        "confidence": 1.0 - alpha,
        "n_boot": int(n_boot),
        "accuracy": entry(accuracy, p, y),
        "balanced_accuracy": entry(balanced_accuracy, p, y),
    }
    if score is not None:
        s = np.asarray(score, dtype=np.float64)
        if s.shape != y.shape:
            raise ValueError(f"score {s.shape} and labels {y.shape} differ in shape")
        if set(np.unique(y).tolist()) == {0, 1}:
            report["auroc"] = entry(auroc, s, y == positive)
    return report


def _meta_of(entry: Any) -> Mapping[str, Any]:
    if isinstance(entry, Mapping):
        return entry
    meta = getattr(entry, "meta", None)  # e.g. qkscore Item objects
    if isinstance(meta, Mapping):
        return meta
    raise TypeError(f"breakdown needs mappings or objects with a .meta mapping, got {entry!r}")


def _value_order(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def breakdown(
    pred: Any,
    labels: Any,
    meta_list: Iterable[Any],
    keys: Iterable[str] = ("depth", "distractors", "rule", "logic"),
) -> dict[str, dict[str, dict[str, Any]]]:
    """Accuracy per value of each metadata key: ``result[key][str(value)] = {"n", "accuracy"}``.

    Items lacking a key (or with ``None``) are left out of that key's table; keys no item has
    are omitted. Values are stringified (JSON keys) and ordered numerically when they are
    numbers, so depth 10 comes after depth 9.
    """
    p, y = _pair(pred, labels)
    metas = [_meta_of(m) for m in meta_list]
    if len(metas) != p.shape[0]:
        raise ValueError(f"{len(metas)} metadata entries for {p.shape[0]} predictions")
    correct = p == y
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in keys:
        groups: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            value = meta.get(key)
            if value is not None:
                groups.setdefault(str(value), []).append(i)
        if groups:
            out[key] = {
                v: {"n": len(idx), "accuracy": float(np.mean(correct[idx]))}
                for v, idx in sorted(groups.items(), key=lambda kv: _value_order(kv[0]))
            }
    return out


def shortcut_gap(acc_full: float, acc_ablated: float, flag_at: float = 0.6) -> dict[str, Any]:
    """How much accuracy depends on the premises: full input vs an ablated one.

    If a reader still scores ``flag_at`` or more with the premises removed (or shuffled), it is
    answering from the statement alone, a shortcut, and the item set is ``flagged``.
    """
    full, ablated = float(acc_full), float(acc_ablated)
    return {
        "full": full,
        "ablated": ablated,
        "gap": full - ablated,
        "flag_at": float(flag_at),
        "flagged": bool(ablated >= flag_at),
    }


def transfer_matrix(
    runs: Mapping[str, tuple[Any, Any]],
    make_model: Callable[[], Any],
    eval_runs: Mapping[str, tuple[Any, Any]] | None = None,
    metric: Callable[[Any, Any], float] = accuracy,
) -> tuple[list[str], np.ndarray]:
    """Calibrate on each row's split, test on each column's: does a head transfer across sets?

    ``runs`` maps a name to ``(scores, labels)``; ``make_model()`` returns a fresh estimator with
    ``fit(scores, labels)`` and ``predict(scores)`` (e.g. ``HeadSelector``). Without
    ``eval_runs`` the diagonal is in-sample (optimistic); pass ``eval_runs`` with the same names
    to test on held-out splits instead. Returns ``(names, matrix)``, ``matrix[i, j]`` = metric of
    the model calibrated on ``names[i]`` and tested on ``names[j]``.
    """
    names = list(runs)
    tests = runs if eval_runs is None else eval_runs
    if set(tests) != set(names):
        raise ValueError(f"eval_runs must have the same names as runs: {sorted(names)}")
    matrix = np.empty((len(names), len(names)))
    for i, row in enumerate(names):
        model = make_model().fit(*runs[row])
        for j, col in enumerate(names):
            scores, labels = tests[col]
            matrix[i, j] = float(metric(model.predict(scores), np.asarray(labels)))
    return names, matrix

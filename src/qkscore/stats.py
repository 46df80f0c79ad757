"""Metrics and the statistics that say whether a difference between readers is real.

Numpy/scipy only, so reports can be recomputed from saved predictions without a model. The
per-head kernels at the end (:func:`binary_head_table`, :func:`multi_head_table`,
:func:`auroc_rows` ...) score every head of a ``[items, layers, heads, options]`` array at once;
the estimators in :mod:`qkscore.estimators` choose heads with them.

The three metric functions (:func:`accuracy`, :func:`balanced_accuracy`, :func:`auroc`) work
along the last axis: 1-D inputs give a float, 2-D inputs ``[replicates, items]`` give one value
per row. :func:`bootstrap_ci` relies on that to score all resamples in a few array operations
instead of a Python loop; any other metric function can still be passed and is called once per
resample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import binom, chi2, rankdata

__all__ = [
    "ConfidenceInterval",
    "McNemarResult",
    "accuracy",
    "auroc",
    "auroc_rows",
    "macro_auroc",
    "balanced_accuracy",
    "binary_head_table",
    "bootstrap_ci",
    "MISSING_GROUP",
    "accuracy_by_group",
    "breakdown",
    "head_diffs",
    "majority_baseline",
    "mcnemar",
    "metric_report",
    "multi_head_table",
    "paired_bootstrap",
    "prediction_metric",
    "raw_diff",
    "shortcut_gap",
    "top_two",
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


def _weighted_auroc(score: Any, positive: Any, weights: np.ndarray) -> np.ndarray:
    """AUROC per row of ``weights`` ``[rows, items]``: item ``i`` counted ``weights[r, i]``
    times (ties count 1/2), as if resampled with those multiplicities; NaN where a row holds
    one class only. Sorting once and summing weights per distinct score keeps it O(rows x items).
    """
    s = np.asarray(score, dtype=np.float64)
    pos = np.asarray(positive).astype(bool)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = np.asarray(weights, dtype=np.float64)[:, order]
    p = np.add.reduceat(w * pos[order], starts, axis=1)  # positive weight per distinct score
    q = np.add.reduceat(w * ~pos[order], starts, axis=1)  # negative weight
    below = np.cumsum(q, axis=1) - q
    num = np.sum(p * (below + 0.5 * q), axis=1)
    den = p.sum(axis=1) * q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


auroc.weighted = _weighted_auroc  # type: ignore[attr-defined]  # the cluster bootstrap's path


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
    groups: Any = None,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``, resampling items with replacement.

    All arrays are resampled with the same indices (paired), so e.g. predictions stay with their
    labels. ``vectorized`` (default: the function's ``batched`` mark, set on this module's
    metrics) scores all resamples at once on ``[n_boot, items]`` arrays, in chunks to bound
    memory. Resamples where the metric is undefined (NaN, e.g. AUROC with one class) are
    dropped. Returns ``(point, low, high)``; seeded, so reports are reproducible.

    ``groups`` (one label per item) resamples whole groups instead of items (the cluster
    bootstrap): the steps of one chain of thought are not independent, so an interval over
    steps resamples the problems they come from.
    """
    arrs = _check_resampled(arrays, n_boot, alpha)
    n = arrs[0].shape[0]
    point = float(metric_fn(*arrs))
    if groups is not None:
        values = _group_values(metric_fn, arrs, groups, n_boot, seed)
        return ConfidenceInterval(point, *_percentiles(values, alpha))
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
    return ConfidenceInterval(point, *_percentiles(values, alpha))


def _check_resampled(arrays: Sequence[Any], n_boot: int, alpha: float) -> list[np.ndarray]:
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
    return arrs


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """The ``1 - alpha`` percentile interval of the defined (non-NaN) resampled values."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _group_weights(groups: Any, n_boot: int, seed: int | None) -> Iterable[np.ndarray]:
    """Chunks of ``[resamples, items]`` multiplicities: each resample draws as many groups as
    there are, with replacement, and every item counts as often as its group was drawn."""
    labels = np.asarray([str(g) for g in groups])
    _, inverse = np.unique(labels, return_inverse=True)
    n_groups, rng = int(inverse.max()) + 1, np.random.default_rng(seed)
    rows = max(1, 2_000_000 // len(labels))
    for start in range(0, n_boot, rows):
        m = min(rows, n_boot - start)
        drawn = rng.integers(0, n_groups, size=(m, n_groups))
        counts = np.zeros((m, n_groups))
        np.add.at(counts, (np.arange(m)[:, None], drawn), 1.0)
        yield counts[:, inverse]


def _group_values(metric_fn, arrs: Sequence[np.ndarray], groups, n_boot, seed) -> np.ndarray:
    """The metric on every cluster-bootstrap resample: weighted rows where the metric has a
    weighted form (AUROC), else one call per resample on the items drawn."""
    weighted = getattr(metric_fn, "weighted", None)
    out = []
    for w in _group_weights(groups, n_boot, seed):
        if weighted is not None:
            out.append(weighted(*arrs, w))
            continue
        for row in w:
            idx = np.repeat(np.arange(len(row)), row.astype(int))
            out.append(np.atleast_1d(metric_fn(*[a[idx] for a in arrs])))
    return np.concatenate(out).astype(float)


class PairedDifference(NamedTuple):
    """``metric(a) - metric(b)`` on the same items, its percentile interval and a two-sided
    bootstrap p-value for "no difference"."""

    difference: float
    low: float
    high: float
    pvalue: float


def paired_bootstrap(
    metric_fn: Callable[..., Any],
    score_a: Any,
    score_b: Any,
    *arrays: Any,
    groups: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> PairedDifference:
    """Paired bootstrap of ``metric_fn(score_a, *arrays) - metric_fn(score_b, *arrays)``.

    Both scorers are measured on the very same resample each time (by item, or by whole group
    with ``groups``), so what they share cancels out; e.g. two step scorers' AUROC against the
    same labels, resampled by problem. The p-value is twice the smaller share of resampled
    differences on either side of zero (with the usual +1 correction), at most 1.
    """
    a, b, *rest = _check_resampled([score_a, score_b, *arrays], n_boot, alpha)
    point = float(metric_fn(a, *rest)) - float(metric_fn(b, *rest))
    # every item its own group: the plain bootstrap, drawn the same way
    g = np.arange(len(a)) if groups is None else groups
    values = _group_values(metric_fn, [a, *rest], g, n_boot, seed) - _group_values(
        metric_fn, [b, *rest], g, n_boot, seed
    )
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return PairedDifference(point, float("nan"), float("nan"), float("nan"))
    low, high = _percentiles(defined, alpha)
    side = min(np.sum(defined <= 0), np.sum(defined >= 0))
    pvalue = min(1.0, 2.0 * (side + 1) / (defined.size + 1))
    return PairedDifference(point, low, high, float(pvalue))


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


def outcome(pvalue: float | None, difference: float | None, alpha: float = 0.05) -> str:
    """How a comparison of ``a`` with ``b`` came out: ``better`` or ``worse`` only when
    ``pvalue`` < ``alpha``, else ``no_difference`` (machine keys; prose is made when shown)."""
    if pvalue is None or difference is None or not pvalue < alpha:
        return "no_difference"
    return "better" if difference > 0 else "worse"


def mcnemar_record(a: str, b: str, correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """McNemar of method ``a`` against ``b`` as a record: their names, the accuracy
    difference (``a`` minus ``b``), the statistic, the p-value and the :func:`outcome`."""
    test = mcnemar(correct_a, correct_b)
    difference = float(np.mean(correct_a) - np.mean(correct_b))
    return {
        "a": a,
        "b": b,
        "test": "mcnemar",
        "difference": difference,
        "statistic": test.statistic,
        "pvalue": test.pvalue,
        "outcome": outcome(test.pvalue, difference),
    }


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
    which is positive for option 0), or, for items of three or more options, the option
    probabilities ``[items, options]``, scored by :func:`macro_auroc`. Each metric is
    ``{"value", "low", "high", "n"}`` with a ``1 - alpha`` percentile bootstrap interval; all
    metrics share the same resamples (same seed). A binary score's AUROC is reported only when
    the labels hold exactly two options, 0 and 1.
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
    if score is not None and np.ndim(score) == 2:
        s = np.asarray(score, dtype=np.float64)
        if s.shape[0] != n:
            raise ValueError(f"probabilities {s.shape} and labels {y.shape} differ in items")
        report["auroc"] = entry(macro_auroc, s, y)
    elif score is not None:
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
    p, y, metas = _with_metas(pred, labels, meta_list)
    correct = p == y
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in keys:
        groups = _meta_groups(metas, key)
        if groups:
            out[key] = {
                v: {"n": len(idx), "accuracy": float(np.mean(correct[idx]))} for v, idx in groups
            }
    return out


def _with_metas(pred: Any, labels: Any, meta_list: Iterable[Any]) -> tuple[Any, Any, list]:
    """Predictions, labels and one metadata dict per item, their counts checked."""
    p, y = _pair(pred, labels)
    metas = [_meta_of(m) for m in meta_list]
    if len(metas) != p.shape[0]:
        raise ValueError(f"{len(metas)} metadata entries for {p.shape[0]} predictions")
    return p, y, metas


def _meta_groups(
    metas: Sequence[Mapping[str, Any]], key: str, missing: str | None = None
) -> list[tuple[str, list[int]]]:
    """Item indices per stringified value of ``key``, ordered numerically when the values are
    numbers; items without it (or with None) go to a last group named ``missing``, or are left
    out when ``missing`` is None."""
    groups: dict[str, list[int]] = {}
    for i, meta in enumerate(metas):
        value = meta.get(key)
        if value is not None:
            groups.setdefault(str(value), []).append(i)
        elif missing is not None:
            groups.setdefault(missing, []).append(i)
    return sorted(groups.items(), key=lambda kv: (kv[0] == missing, _value_order(kv[0])))


#: The group of items that lack the field a breakdown is by, so the groups add up to the whole.
MISSING_GROUP = "(none)"


def accuracy_by_group(
    pred: Any,
    labels: Any,
    meta_list: Iterable[Any],
    field: str,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> dict[str, dict[str, Any]]:
    """Accuracy with a ``1 - alpha`` bootstrap interval per value of one metadata field:
    ``result[str(value)] = {"value", "low", "high", "n"}``.

    Unlike :func:`breakdown`, every item lands in a group (those without the field, or with
    ``None``, in :data:`MISSING_GROUP`), so the ``n`` add up to the number of items; groups are
    ordered like :func:`breakdown`'s, the missing group last. Each group resamples its own items
    with the same seed, so two methods' intervals on one group are paired.
    """
    p, y, metas = _with_metas(pred, labels, meta_list)
    out: dict[str, dict[str, Any]] = {}
    for value, idx in _meta_groups(metas, field, MISSING_GROUP):
        ci = bootstrap_ci(accuracy, p[idx], y[idx], n_boot=n_boot, alpha=alpha, seed=seed)
        out[value] = {"value": ci.point, "low": ci.low, "high": ci.high, "n": len(idx)}
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


# --------------------------------------------------------------------------------------------
# Per-head kernels: every head of a QK-score array at once (used by the head estimators)


def _auc_sorted(ds: np.ndarray, pos: np.ndarray, is_start: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per row, P(x_pos > x_neg) + P(tie)/2, from row-sorted values.

    ``ds`` [rows, n] sorted ascending, ``pos`` the positive flags in the same order,
    ``is_start[:, i]`` true where ``ds[:, i]`` starts a new run of equal values.
    """
    rows, n = ds.shape
    pos = pos.astype(np.int64, copy=False)
    n_pos = pos.sum(axis=1)
    n_neg = n - n_pos
    idx = np.arange(n, dtype=np.int64)
    if is_start.all():
        twice_rank_sum = 2 * (pos @ idx) + 2 * n_pos  # ranks are positions + 1
    else:  # ties: every member of a run of equal values gets the run's average rank
        start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=1)
        is_end = np.empty_like(is_start)
        is_end[:, :-1] = is_start[:, 1:]
        is_end[:, -1] = True
        end = np.minimum.accumulate(np.where(is_end, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
        twice_rank_sum = ((start + end) * pos).sum(axis=1) + 2 * n_pos
    u = twice_rank_sum / 2.0 - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auroc_rows(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``x`` [rows, n] against one positive mask ``pos`` [n]."""
    order = np.argsort(x, axis=1)
    ds = np.take_along_axis(x, order, axis=1)
    is_start = np.empty(ds.shape, dtype=bool)
    is_start[:, 0] = True
    np.greater(ds[:, 1:], ds[:, :-1], out=is_start[:, 1:])
    return _auc_sorted(ds, np.asarray(pos, dtype=bool)[order], is_start)


def _mean_recall(recalls: Sequence[np.ndarray | None]) -> np.ndarray:
    """Balanced accuracy: mean recall over the classes present in the labels (as sklearn)."""
    present = [r for r in recalls if r is not None]
    return np.mean(np.stack(present), axis=0)


def _nearest_cut(cand: np.ndarray, c0: np.ndarray, ds: np.ndarray) -> np.ndarray:
    """Among each row's candidate cuts pick the one whose threshold interval is nearest zero.

    Cut ``c`` splits a sorted row after its first ``c`` values; ``c0`` is the cut that contains a
    zero threshold. Preferring the optimum nearest zero keeps the paper's plain argmax whenever it
    is already optimal, and otherwise moves it as little as the data demand.
    """
    n = ds.shape[1]
    rows, cols = np.nonzero(cand)
    c0r = c0[rows]
    below = -ds[rows, np.minimum(cols, n - 1)]  # cut left of zero: interval ends at ds[c] <= 0
    above = ds[rows, np.maximum(cols - 1, 0)]  # cut right of zero: interval starts at ds[c-1]
    dist = np.where(cols == c0r, 0.0, np.where(cols < c0r, below, above))
    order = np.lexsort((cols, dist, rows))
    rows_sorted = rows[order]
    first = np.ones(rows_sorted.shape[0], dtype=bool)
    first[1:] = rows_sorted[1:] != rows_sorted[:-1]
    return cols[order][first]


def _cut_threshold(ds: np.ndarray, cut: np.ndarray, c0: np.ndarray, sign: int) -> np.ndarray:
    """Signed threshold realising cut ``cut`` of each sorted row (0 when the cut contains 0)."""
    n = ds.shape[1]
    r = np.arange(ds.shape[0])
    lo = ds[r, np.clip(cut - 1, 0, n - 1)]
    hi = ds[r, np.clip(cut, 0, n - 1)]
    inner = (cut > 0) & (cut < n)
    q = (lo + hi) / 2.0
    # Adjacent floats: the midpoint rounds onto an end; use the end the rule allows
    # (sign +1 needs lo <= q < hi, sign -1 needs lo < q <= hi).
    rounded = (q >= hi) if sign > 0 else (q <= lo)
    q = np.where(inner & rounded, lo if sign > 0 else hi, q)
    q = np.where(cut == 0, hi - (1.0 + np.abs(hi)), q)
    q = np.where(cut == n, lo + (1.0 + np.abs(lo)), q)
    return np.where(cut == c0, 0.0, sign * q)


def _diff_dtype(dtype: np.dtype) -> type:
    """Float32 (and narrower) scores are subtracted in float32, anything else in float64."""
    narrow = np.issubdtype(dtype, np.floating) and dtype.itemsize <= 4
    return np.float32 if narrow else np.float64


def raw_diff(a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """Option-0 minus option-1 scores as float64, computed exactly as ``head_diffs`` does.

    Float32 inputs are subtracted in float32 so the fit can sort packed integer keys (see
    ``_sort_with_labels``). Fit and predict thus see bit-identical differences, and the stored
    accuracies are exactly what ``predict`` reproduces on the calibration data.
    """
    dtype = _diff_dtype(np.result_type(a0, a1))
    return np.subtract(a0, a1, dtype=dtype).astype(np.float64)


def head_diffs(x: np.ndarray) -> np.ndarray:
    """Differences of every head, [layers*heads, items] contiguous, for the vectorised fit."""
    n, n_layers, n_heads, _ = x.shape
    d = np.subtract(x[..., 0], x[..., 1], dtype=_diff_dtype(x.dtype))
    return np.ascontiguousarray(d.reshape(n, n_layers * n_heads).T)


def _sort_with_labels(d: np.ndarray, y1: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sort each row of ``d`` carrying the label-1 flags along: (values, flags, grouped).

    Float32 rows are sorted as int64 keys ``(order-preserving float bits << 1) | label``: one
    plain sort instead of an argsort plus two gathers, and equal values come out with their
    label-0 items first (``grouped``), which makes the tie correction of the AUROC cheap.
    """
    if d.dtype == np.float32:
        bits = (d + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
        keys = (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64) << 1
        keys |= y1.astype(np.int64)[None, :]
        keys.sort(axis=1)
        ys = (keys & 1).astype(np.int8)
        k32 = (keys >> 1).astype(np.int32)
        ds = (k32 ^ ((k32 >> 31) & np.int32(0x7FFFFFFF))).view(np.float32).astype(np.float64)
        return ds, ys, True
    order = np.argsort(d, axis=1)
    return np.take_along_axis(d, order, axis=1), y1.view(np.int8)[order], False


def _auc_grouped(
    ys: np.ndarray, is_start: np.ndarray, cum1: np.ndarray, n0: int, n1: int
) -> np.ndarray:
    """AUROC with option 0 positive, for rows sorted with label-0 items first within ties.

    ``U1`` counts (label-1, label-0) pairs where the label-1 item scores higher, ties 1/2. For a
    label-1 item at sorted position ``p`` in a run of equal values starting at ``a``, the label-0
    items strictly below are ``cum0[a]`` and the tied ones ``cum0[p] - cum0[a]`` (all of the
    run's label-0 items precede it), so ``U1 = (sum cum0[p] + sum cum0[a_p]) / 2`` over label-1
    items; without ties ``a_p = p``.
    """
    p, n = ys.shape
    if n0 == 0 or n1 == 0:
        return np.full(p, np.nan)
    positions = n * n1 - cum1[:, 1:].sum(axis=1, dtype=np.int64)  # sum of label-1 positions
    u_plain = positions - n1 * (n1 - 1) // 2  # sum of cum0[p] over label-1 items
    u_start = u_plain.copy()
    tied = np.flatnonzero(~is_start.all(axis=1))
    if tied.size:
        rows = slice(None) if tied.size == p else tied  # avoid copies when every row has ties
        start = np.where(is_start[rows], np.arange(n, dtype=np.int32), np.int32(0))
        np.maximum.accumulate(start, axis=1, out=start)
        cum0_start = start - np.take_along_axis(cum1[rows], start, axis=1)
        u_start[rows] = np.add.reduce(cum0_start, axis=1, dtype=np.int64, where=ys[rows].view(bool))
    return 1.0 - (u_plain + u_start) / (2.0 * n0 * n1)


def binary_head_table(d: np.ndarray, y: np.ndarray, fit_threshold: bool) -> dict[int, dict]:
    """Accuracy, balanced accuracy, AUROC and threshold of every head, for both signs.

    ``d`` [heads, items] holds raw option-0 minus option-1 differences. Sign +1 at cut ``c``
    predicts option 1 for the ``c`` smallest differences; sign -1 at the same cut predicts the
    complement, so one sort and one cumulative count serve both directions.
    """
    p, n = d.shape
    y1 = y == 1
    n1 = int(np.count_nonzero(y1))
    n0 = n - n1
    ds, ys, grouped = _sort_with_labels(d, y1)
    is_start = np.empty((p, n), dtype=bool)
    is_start[:, 0] = True
    np.greater(ds[:, 1:], ds[:, :-1], out=is_start[:, 1:])

    cum1 = np.empty((p, n + 1), dtype=np.int32)  # label-1 items among the first c
    cum1[:, 0] = 0
    np.cumsum(ys, axis=1, dtype=np.int32, out=cum1[:, 1:])
    if grouped:
        auc_plus = _auc_grouped(ys, is_start, cum1, n0, n1)
    else:
        auc_plus = 1.0 - _auc_sorted(ds, ys, is_start)  # option 0 is the positive class
    c0_plus = np.count_nonzero(ds <= 0, axis=1)
    c0_minus = np.count_nonzero(ds < 0, axis=1)
    if fit_threshold:
        correct = 2 * cum1
        correct += (n0 - np.arange(n + 1, dtype=np.int32))[None, :]
        valid = np.empty((p, n + 1), dtype=bool)  # a cut may not split equal values
        valid[:, :n] = is_start
        valid[:, n] = True
        masked = np.where(valid, correct, -1)
        cut_plus = _nearest_cut(masked == masked.max(axis=1)[:, None], c0_plus, ds)
        masked = np.where(valid, correct, n + 1)  # sign -1 is right where +1 is wrong
        cut_minus = _nearest_cut(masked == masked.min(axis=1)[:, None], c0_minus, ds)
    else:
        cut_plus, cut_minus = c0_plus, c0_minus

    out: dict[int, dict] = {}
    rows = np.arange(p)
    for sign, cut, c0 in ((1, cut_plus, c0_plus), (-1, cut_minus, c0_minus)):
        c1 = cum1[rows, cut].astype(np.int64)  # label-1 items on the "low" side of the cut
        c0_low = cut - c1
        if sign > 0:  # low side -> option 1
            correct_n = c1 + (n0 - c0_low)
            rec0 = (n0 - c0_low) / n0 if n0 else None
            rec1 = c1 / n1 if n1 else None
        else:  # low side -> option 0
            correct_n = c0_low + (n1 - c1)
            rec0 = c0_low / n0 if n0 else None
            rec1 = (n1 - c1) / n1 if n1 else None
        out[sign] = {
            "accuracy": correct_n / n,
            "balanced_accuracy": _mean_recall([rec0, rec1]),
            "auroc": auc_plus if sign > 0 else 1.0 - auc_plus,
            "threshold": _cut_threshold(ds, cut, c0, sign),
        }
    return out


def top_two(signed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Argmax, best and second-best along the last axis."""
    best_idx = signed.argmax(axis=-1)
    best = np.take_along_axis(signed, best_idx[..., None], axis=-1)[..., 0]
    masked = signed.copy()
    np.put_along_axis(masked, best_idx[..., None], -np.inf, axis=-1)
    return best_idx, best, masked.max(axis=-1)


def multi_head_table(s: np.ndarray, y: np.ndarray) -> dict[int, dict]:
    """Per-head metrics for both signs on multi-option items; ``s`` is [items, heads, options]."""
    n, p, n_options = s.shape
    counts = np.bincount(y, minlength=n_options)
    out: dict[int, dict] = {}
    for sign in (1, -1):
        signed = s if sign > 0 else -s
        pred, best, second = top_two(signed)
        hit = pred == y[:, None]
        recalls = [hit[y == o].mean(axis=0) if counts[o] else None for o in range(n_options)]
        aucs = []
        for o in range(n_options):
            if 0 < counts[o] < n:
                z = signed[..., o] - np.where(pred == o, second, best)
                aucs.append(auroc_rows(np.ascontiguousarray(z.T), y == o))
        out[sign] = {
            "accuracy": hit.mean(axis=0),
            "balanced_accuracy": _mean_recall(recalls),
            "auroc": np.mean(aucs, axis=0) if aucs else np.full(p, np.nan),
            "threshold": np.zeros(p),
        }
    return out


def prediction_metric(
    metric: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray, n_options: int
) -> float:
    """Score held-out predictions (``pred`` and ``proba`` [items, options]) by ``metric``.

    The estimators choose k, C and readers with it on cross-validation folds; AUROC is macro
    one-vs-rest over the options present on both sides.
    """
    if metric == "accuracy":
        return float(np.mean(pred == y))
    if metric == "balanced_accuracy":
        recalls = [np.mean(pred[y == o] == o) for o in range(n_options) if np.any(y == o)]
        return float(np.mean(recalls))
    return macro_auroc(proba, y)


def macro_auroc(proba: np.ndarray, y: np.ndarray) -> float:
    """AUROC of option probabilities ``[items, options]``: binary, of option 0; three or more
    options, the macro average of one-vs-rest AUROCs over the options gold for some but not all
    items (calibration's CV figure and the evaluation's are this one function)."""
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y)
    n_options = proba.shape[1]
    aucs = [
        auroc_rows(proba[None, :, o], y == o)[0]
        for o in range(n_options if n_options > 2 else 1)
        if 0 < np.count_nonzero(y == o) < y.shape[0]
    ]
    return float(np.mean(aucs)) if aucs else float("nan")

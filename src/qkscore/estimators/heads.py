"""Pick the attention head whose QK-scores predict the gold option, and remember its direction.

Tulchinskii et al. (arXiv 2502.17017) read one head: on a small balanced calibration set they keep
the head whose argmax over the options' QK-scores best matches the gold option, then apply that
head to new items. Our own probes found heads that are *anti*-aligned (the wrong option scores
consistently higher), which carry as much information once flipped, so every head here gets a
learned sign (direction) that is stored with the profile.

Input everywhere is ``scores``: float ``[items, layers, heads, options]`` and ``labels``: the gold
option index per item. Heads are named ``L{layer}H{head}``, zero-based.

Conventions (binary items, two options):

* raw difference ``d = score[..., 0] - score[..., 1]``;
* signed, centred margin ``m = sign * d - threshold``; option 0 is predicted when ``m > 0``.

The threshold is kept in *signed* units: it is subtracted after the sign is applied, so a positive
threshold always means "demand more evidence for option 0" whatever the head's direction, and
``margin`` is centred (0 is the decision boundary) for every head. The equivalent raw cut point on
``d`` is ``sign * threshold`` (predict option 0 when ``d > t`` for sign +1, ``d < -t`` for -1).

Multi-option items (three or more options) predict ``argmax_o sign * score[..., o]`` and have no
threshold (stored as 0). Their AUROC is the macro average, over the options that are gold for
some but not all items, of the one-vs-rest AUROC of ``z_o = s*score_o - max_{o' != o}
s*score_o'``: how far option ``o`` beats its best rival. For two options ``z_0`` is the signed
margin and ``z_1 = -z_0``, so this reduces exactly to the binary AUROC, and it only ever compares
scores within an item (QK-scores are not calibrated across items).

Everything is vectorised over heads: the binary fit sorts each head's differences once and reads
every threshold's accuracy off a cumulative count, so ten thousand items x 336 heads fit in well
under a second.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

__all__ = [
    "CalibrationWarning",
    "HeadSelector",
    "TopKEnsemble",
    "head_name",
    "parse_head_name",
    "MIN_CALIBRATION_ITEMS",
    "MIN_CLASS_FRACTION",
]

#: The paper calibrates on about 400 balanced items; fewer makes the chosen head unreliable.
MIN_CALIBRATION_ITEMS = 400
#: Binary calibration sets whose minority option is rarer than this (45/55) are "unbalanced".
MIN_CLASS_FRACTION = 0.45
METRICS = ("accuracy", "balanced_accuracy", "auroc")
DIRECTIONS = ("auto", "positive", "negative")
THRESHOLDS = ("fit", "zero")
METHODS = ("vote", "logistic")
FORMAT_VERSION = 1
_SELECTOR_KIND = "qkscore.HeadSelector"
_ENSEMBLE_KIND = "qkscore.TopKEnsemble"


class CalibrationWarning(UserWarning):
    """The calibration set is smaller or less balanced than the paper's method needs."""


# --------------------------------------------------------------------------------------------
# Head names


_HEAD_RE = re.compile(r"L(0|[1-9][0-9]*)H(0|[1-9][0-9]*)")


def head_name(layer: int, head: int) -> str:
    """``head_name(13, 0) -> "L13H0"``: the one spelling used in profiles, reports and the API."""
    for what, value in (("layer", layer), ("head", head)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return f"L{int(layer)}H{int(head)}"


def parse_head_name(name: str) -> tuple[int, int]:
    """``parse_head_name("L13H0") -> (13, 0)``; strict, so a typo never silently names a head."""
    if not isinstance(name, str):
        raise TypeError(f"head name must be a string like 'L13H0', got {type(name).__name__}")
    match = _HEAD_RE.fullmatch(name)
    if match is None:
        raise ValueError(
            f"bad head name {name!r}: expected 'L{{layer}}H{{head}}' with zero-based integers "
            "and no leading zeros, e.g. 'L13H0'"
        )
    return int(match.group(1)), int(match.group(2))


def _as_head(head: str | Sequence[int]) -> tuple[int, int]:
    if isinstance(head, str):
        return parse_head_name(head)
    layer, index = head
    head_name(layer, index)  # validates
    return int(layer), int(index)


# --------------------------------------------------------------------------------------------
# Validation


def _check_scores(scores: Any) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 4:
        raise ValueError(
            f"scores must have shape [items, layers, heads, options], got shape {arr.shape}"
        )
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"scores must have at least one item, layer and head, got {arr.shape}")
    if arr.shape[3] < 2:
        raise ValueError(f"scores need at least two options, got {arr.shape[3]}")
    if not np.isfinite(arr).all():
        raise ValueError("scores contain NaN or infinite values")
    return arr


def _check_labels(labels: Any, n_items: int, n_options: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n_items:
        raise ValueError(f"labels must have shape [{n_items}] (one per item), got {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        ok = np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y))
        if not np.all(ok):
            raise ValueError(f"labels must be integer option indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_options:
        raise ValueError(
            f"labels must be option indices in [0, {n_options - 1}], "
            f"got values from {y.min()} to {y.max()}"
        )
    return y


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _warn_calibration(y: np.ndarray, n_options: int) -> None:
    """Say so when the calibration set is below what the paper's method relies on."""
    n = y.shape[0]
    if n < MIN_CALIBRATION_ITEMS:
        warnings.warn(
            f"calibrating on {n} items; the paper selects its head on about "
            f"{MIN_CALIBRATION_ITEMS} balanced items and fewer make the choice unreliable",
            CalibrationWarning,
            stacklevel=3,
        )
    if n_options == 2:
        n0 = int(np.count_nonzero(y == 0))
        if min(n0, n - n0) < MIN_CLASS_FRACTION * n:
            warnings.warn(
                f"calibration labels are unbalanced ({n0} option-0 vs {n - n0} option-1 items; "
                f"the paper needs at least {MIN_CLASS_FRACTION:.0%}/{1 - MIN_CLASS_FRACTION:.0%})"
                ": the selected head and threshold may track the majority option",
                CalibrationWarning,
                stacklevel=3,
            )


def _check_saved(data: Mapping[str, Any], kind: str, name: str) -> None:
    """A saved estimator dict must be of this kind and of the format this code reads."""
    if data.get("kind") != kind:
        raise ValueError(f"not a {name} dict (kind={data.get('kind')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported {name} format_version {data.get('format_version')!r}")


def _like_calibration(est: Any, scores: Any) -> np.ndarray:
    """New scores must have the calibration data's layers, heads and options."""
    x = np.asarray(scores)
    expected = (est.n_layers_, est.n_heads_, est.n_options_)
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(
            f"scores must have shape [items, {expected[0]}, {expected[1]}, {expected[2]}] "
            f"like the calibration data, got {x.shape}"
        )
    return x


def _not_fitted(obj: Any) -> NotFittedError:
    return NotFittedError(
        f"this {type(obj).__name__} is not fitted yet: call fit(scores, labels) first "
        "(or restore one with from_dict)"
    )


# --------------------------------------------------------------------------------------------
# Vectorised per-head statistics


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


def _auc_rows(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
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


def _raw_diff(a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """Option-0 minus option-1 scores as float64, computed exactly as ``_head_diffs`` does.

    Float32 inputs are subtracted in float32 so the fit can sort packed integer keys (see
    ``_sort_with_labels``). Fit and predict thus see bit-identical differences, and the stored
    accuracies are exactly what ``predict`` reproduces on the calibration data.
    """
    dtype = _diff_dtype(np.result_type(a0, a1))
    return np.subtract(a0, a1, dtype=dtype).astype(np.float64)


def _head_diffs(x: np.ndarray) -> np.ndarray:
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


def _binary_table(d: np.ndarray, y: np.ndarray, fit_threshold: bool) -> dict[int, dict]:
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


def _top_two(signed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Argmax, best and second-best along the last axis."""
    best_idx = signed.argmax(axis=-1)
    best = np.take_along_axis(signed, best_idx[..., None], axis=-1)[..., 0]
    masked = signed.copy()
    np.put_along_axis(masked, best_idx[..., None], -np.inf, axis=-1)
    return best_idx, best, masked.max(axis=-1)


def _multi_table(s: np.ndarray, y: np.ndarray) -> dict[int, dict]:
    """Per-head metrics for both signs on multi-option items; ``s`` is [items, heads, options]."""
    n, p, n_options = s.shape
    counts = np.bincount(y, minlength=n_options)
    out: dict[int, dict] = {}
    for sign in (1, -1):
        signed = s if sign > 0 else -s
        pred, best, second = _top_two(signed)
        hit = pred == y[:, None]
        recalls = [hit[y == o].mean(axis=0) if counts[o] else None for o in range(n_options)]
        aucs = []
        for o in range(n_options):
            if 0 < counts[o] < n:
                z = signed[..., o] - np.where(pred == o, second, best)
                aucs.append(_auc_rows(np.ascontiguousarray(z.T), y == o))
        out[sign] = {
            "accuracy": hit.mean(axis=0),
            "balanced_accuracy": _mean_recall(recalls),
            "auroc": np.mean(aucs, axis=0) if aucs else np.full(p, np.nan),
            "threshold": np.zeros(p),
        }
    return out


def _key(values: np.ndarray) -> np.ndarray:
    """Metric values for ranking: NaN (undefined AUROC) ranks below everything."""
    return np.where(np.isnan(values), -np.inf, values)


def _metric_order(metric: str) -> list[str]:
    """The selection metric first, then the others as tie-breakers."""
    return [metric, *[m for m in METRICS if m != metric]]


def _choose_signs(table: dict[int, dict], metric: str, direction: str) -> np.ndarray:
    """Per head, the sign that predicts better on ``metric`` (ties: other metrics, then +1)."""
    p = table[1]["accuracy"].shape[0]
    if direction == "positive":
        return np.ones(p, dtype=np.int64)
    if direction == "negative":
        return -np.ones(p, dtype=np.int64)
    minus = np.zeros(p, dtype=bool)
    decided = np.zeros(p, dtype=bool)
    for name in _metric_order(metric):
        kp, km = _key(table[1][name]), _key(table[-1][name])
        minus |= ~decided & (km > kp)
        decided |= km != kp
    return np.where(minus, -1, 1)


def _rank_heads(metric: str, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Flat head indices best first; full ties keep the lowest (layer-major) index first."""
    keys = [-_key(np.ravel(stats[name])) for name in reversed(_metric_order(metric))]
    return np.lexsort(keys)  # lexsort is stable and sorts by the last key first


def _logistic_1d(m: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt scaling: P(positive) = expit(coef * m + intercept), fitted with sklearn.

    The margin is scaled to unit spread first so that sklearn's default L2 penalty (C=1) means the
    same thing whatever the QK-score units, and so that a perfectly separating head still gets a
    finite slope.
    """
    if positive.all() or not positive.any():
        frac = float(np.clip(positive.mean(), 1e-3, 1 - 1e-3))
        return 0.0, float(logit(frac))
    scale = float(np.std(m)) or 1.0
    lr = LogisticRegression(C=1.0).fit((m / scale)[:, None], positive.astype(np.int64))
    return float(lr.coef_[0, 0] / scale), float(lr.intercept_[0])


def _fit_temperature(signed: np.ndarray, y: np.ndarray) -> float:
    """Softmax temperature minimising the calibration log-loss of ``signed`` [items, options]."""
    centred = signed - signed.mean(axis=1, keepdims=True)
    scale = float(np.std(centred)) or 1.0
    rows = np.arange(y.shape[0])

    def nll(log_t: float) -> float:
        return float(-log_softmax(centred / math.exp(log_t), axis=1)[rows, y].mean())

    centre = math.log(scale)
    res = minimize_scalar(nll, bounds=(centre - 10.0, centre + 10.0), method="bounded")
    return float(math.exp(res.x))


def _floats(a: np.ndarray) -> list:
    """Nested lists of plain floats for JSON; NaN (undefined AUROC) becomes None."""
    return [
        _floats(row) if isinstance(row, np.ndarray) else (None if math.isnan(row) else float(row))
        for row in a
    ]


def _array(v: Any, dtype: Any = np.float64) -> np.ndarray:
    def conv(x: Any) -> Any:
        if isinstance(x, list):
            return [conv(e) for e in x]
        return np.nan if x is None else x

    return np.asarray(conv(v), dtype=dtype)


# --------------------------------------------------------------------------------------------
# HeadSelector


class HeadSelector(BaseEstimator):
    """Select the single head (with its sign and threshold) that best predicts the gold option.

    Parameters
    ----------
    direction:
        ``"auto"`` learns each head's sign on the calibration data (the better of +1/-1 on
        ``metric``, ties to the other metrics, then +1); ``"positive"`` is the paper's plain
        reading; ``"negative"`` reads every head flipped.
    metric:
        How heads are ranked: ``"auroc"`` (default: a threshold-free measure, so a head is not
        chosen for a threshold that happens to fit the calibration items), ``"accuracy"`` (the
        paper, with the fitted threshold) or ``"balanced_accuracy"``. Ties are broken by the
        other two metrics, then by the lowest layer-major index.
    threshold:
        ``"fit"`` shifts each binary head's decision boundary to maximise calibration accuracy
        (among equally accurate boundaries, the one nearest zero; zero itself when the plain
        argmax is already optimal), whatever ``metric`` ranks the heads. ``"zero"`` keeps the
        paper's plain argmax. Multi-option items never use a threshold.

    Fitted attributes
    -----------------
    ``accuracy_``, ``balanced_accuracy_``, ``auroc_``, ``sign_``, ``threshold_``: arrays
    ``[layers, heads]`` measured on the calibration data (in-sample: optimistic, by design
    of a selection step). ``head_`` ``(layer, head)`` of the winner and ``head_name_``;
    ``ranking_`` every head best first as ``{"name", "layer", "head", "sign", "threshold",
    "accuracy", "balanced_accuracy", "auroc"}`` dicts (AUROC None when undefined);
    ``n_layers_``, ``n_heads_``, ``n_options_``, ``n_items_``, ``class_counts_``.
    ``proba_coef_``/``proba_intercept_`` (binary) or ``temperature_`` (multi-option) calibrate
    ``predict_proba``.
    """

    def __init__(self, direction: str = "auto", metric: str = "auroc", threshold: str = "fit"):
        self.direction = direction
        self.metric = metric
        self.threshold = threshold

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, scores: Any, labels: Any) -> HeadSelector:
        """Measure every head on the calibration data and keep the best one."""
        self._check_params()
        x = _check_scores(scores)
        n, n_layers, n_heads, n_options = x.shape
        y = _check_labels(labels, n, n_options)
        _warn_calibration(y, n_options)
        p = n_layers * n_heads
        if n_options == 2:
            table = _binary_table(_head_diffs(x), y, self.threshold == "fit")
        else:
            table = _multi_table(x.reshape(n, p, n_options).astype(np.float64), y)
        sign = _choose_signs(table, self.metric, self.direction)
        minus = sign < 0
        shape = (n_layers, n_heads)

        def pick(name: str) -> np.ndarray:
            return np.where(minus, table[-1][name], table[1][name]).reshape(shape)

        self.accuracy_ = pick("accuracy")
        self.balanced_accuracy_ = pick("balanced_accuracy")
        self.auroc_ = pick("auroc")
        self.threshold_ = pick("threshold").astype(np.float64)
        self.sign_ = sign.reshape(shape).astype(np.int64)
        self.n_layers_, self.n_heads_, self.n_options_ = n_layers, n_heads, n_options
        self.n_items_ = n
        self.class_counts_ = np.bincount(y, minlength=n_options)
        self._select()
        self._fit_proba(x, y)
        return self

    def _check_params(self) -> None:
        _check_choice("direction", self.direction, DIRECTIONS)
        _check_choice("metric", self.metric, METRICS)
        _check_choice("threshold", self.threshold, THRESHOLDS)

    def _stats(self) -> dict[str, np.ndarray]:
        return {
            "accuracy": self.accuracy_,
            "balanced_accuracy": self.balanced_accuracy_,
            "auroc": self.auroc_,
        }

    def _select(self) -> None:
        self._order = _rank_heads(self.metric, self._stats())
        layer, head = divmod(int(self._order[0]), self.n_heads_)
        self.head_ = (layer, head)
        self.head_name_ = head_name(layer, head)
        self.ranking_ = self._build_ranking()

    def _build_ranking(self) -> list[dict[str, Any]]:
        order = self._order
        columns = {
            "sign": self.sign_.ravel()[order].tolist(),
            "threshold": self.threshold_.ravel()[order].tolist(),
            "accuracy": self.accuracy_.ravel()[order].tolist(),
            "balanced_accuracy": self.balanced_accuracy_.ravel()[order].tolist(),
            "auroc": self.auroc_.ravel()[order].tolist(),
        }
        ranking = []
        for i, flat in enumerate(order.tolist()):
            layer, head = divmod(flat, self.n_heads_)
            auc = columns["auroc"][i]
            ranking.append(
                {
                    "name": f"L{layer}H{head}",
                    "layer": layer,
                    "head": head,
                    "sign": columns["sign"][i],
                    "threshold": columns["threshold"][i],
                    "accuracy": columns["accuracy"][i],
                    "balanced_accuracy": columns["balanced_accuracy"][i],
                    "auroc": None if math.isnan(auc) else auc,
                }
            )
        return ranking

    def _fit_proba(self, x: np.ndarray, y: np.ndarray) -> None:
        self.proba_coef_: float | None = None
        self.proba_intercept_: float | None = None
        self.temperature_: float | None = None
        if self.n_options_ == 2:
            self.proba_coef_, self.proba_intercept_ = _logistic_1d(self.margin(x), y == 0)
        else:
            self.temperature_ = _fit_temperature(self._signed(x, self.head_), y)

    # -- reading heads ------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise _not_fitted(self)

    def _check_new(self, scores: Any) -> np.ndarray:
        self._check_fitted()
        return _like_calibration(self, scores)

    def _signed(self, x: np.ndarray, head: tuple[int, int]) -> np.ndarray:
        layer, index = head
        col = np.asarray(x[:, layer, index, :], dtype=np.float64)
        if not np.isfinite(col).all():
            raise ValueError(f"scores of head {head_name(layer, index)} contain NaN or inf")
        return self.sign_[layer, index] * col

    def margin(self, scores: Any, head: str | Sequence[int] | None = None) -> np.ndarray:
        """Signed evidence for the prediction of ``head`` (default: the selected head), [items].

        Binary: ``sign * (score0 - score1) - threshold``, positive for option 0. Multi-option:
        best minus second-best signed score (gold-free confidence, always >= 0).
        """
        x = self._check_new(scores)
        layer, index = self.head_ if head is None else _as_head(head)
        if not (0 <= layer < self.n_layers_ and 0 <= index < self.n_heads_):
            raise ValueError(f"no head {head_name(layer, index)} in this selector")
        if self.n_options_ == 2:
            col = x[:, layer, index, :]
            d = _raw_diff(col[:, 0], col[:, 1])
            if not np.isfinite(d).all():
                raise ValueError(f"scores of head {head_name(layer, index)} contain NaN or inf")
            return self.sign_[layer, index] * d - self.threshold_[layer, index]
        _, best, second = _top_two(self._signed(x, (layer, index)))
        return best - second

    def predict(self, scores: Any) -> np.ndarray:
        """Predicted option index per item, from the selected head alone."""
        x = self._check_new(scores)
        if self.n_options_ == 2:
            return np.where(self.margin(x) > 0, 0, 1)
        return self._signed(x, self.head_).argmax(axis=1)

    def predict_proba(self, scores: Any) -> np.ndarray:
        """Calibrated option probabilities [items, options] (Platt / softmax temperature)."""
        x = self._check_new(scores)
        if self.n_options_ == 2:
            p0 = expit(self.proba_coef_ * self.margin(x) + self.proba_intercept_)
            return np.column_stack([p0, 1.0 - p0])
        return softmax(self._signed(x, self.head_) / self.temperature_, axis=1)

    def score(self, scores: Any, labels: Any) -> float:
        """Accuracy of ``predict`` (sklearn's convention for ``score``)."""
        x = self._check_new(scores)
        y = _check_labels(labels, x.shape[0], self.n_options_)
        return float(np.mean(self.predict(x) == y))

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (plain floats, nested lists): ``from_dict`` restores it exactly."""
        self._check_fitted()
        return {
            "kind": _SELECTOR_KIND,
            "format_version": FORMAT_VERSION,
            "params": {
                "direction": self.direction,
                "metric": self.metric,
                "threshold": self.threshold,
            },
            "head": self.head_name_,
            "n_layers": int(self.n_layers_),
            "n_heads": int(self.n_heads_),
            "n_options": int(self.n_options_),
            "n_items": int(self.n_items_),
            "class_counts": [int(c) for c in self.class_counts_],
            "sign": self.sign_.tolist(),
            "thresholds": _floats(self.threshold_),
            "accuracy": _floats(self.accuracy_),
            "balanced_accuracy": _floats(self.balanced_accuracy_),
            "auroc": _floats(self.auroc_),
            "proba": (
                {"coef": self.proba_coef_, "intercept": self.proba_intercept_}
                if self.n_options_ == 2
                else {"temperature": self.temperature_}
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSelector:
        """Rebuild a fitted selector from ``to_dict`` output (e.g. a profile JSON)."""
        _check_saved(data, _SELECTOR_KIND, "HeadSelector")
        obj = cls(**data["params"])
        obj._check_params()
        obj.n_layers_ = int(data["n_layers"])
        obj.n_heads_ = int(data["n_heads"])
        obj.n_options_ = int(data["n_options"])
        obj.n_items_ = int(data["n_items"])
        obj.class_counts_ = np.asarray(data["class_counts"], dtype=np.int64)
        shape = (obj.n_layers_, obj.n_heads_)
        obj.sign_ = np.asarray(data["sign"], dtype=np.int64)
        obj.threshold_ = _array(data["thresholds"])
        obj.accuracy_ = _array(data["accuracy"])
        obj.balanced_accuracy_ = _array(data["balanced_accuracy"])
        obj.auroc_ = _array(data["auroc"])
        for name in ("sign_", "threshold_", "accuracy_", "balanced_accuracy_", "auroc_"):
            if getattr(obj, name).shape != shape:
                raise ValueError(f"{name[:-1]} must have shape {list(shape)}")
        obj._select()
        if obj.head_name_ != data["head"]:
            raise ValueError(
                f"stored head {data['head']!r} is not the best by {obj.metric!r} "
                f"({obj.head_name_}): the dict was edited or is corrupt"
            )
        proba = data["proba"]
        obj.proba_coef_ = obj.proba_intercept_ = obj.temperature_ = None
        if obj.n_options_ == 2:
            obj.proba_coef_ = float(proba["coef"])
            obj.proba_intercept_ = float(proba["intercept"])
        else:
            obj.temperature_ = float(proba["temperature"])
        return obj


# --------------------------------------------------------------------------------------------
# TopKEnsemble


def _metric_value(
    metric: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray, n_options: int
) -> float:
    """Score held-out predictions the way the ensemble's ``metric`` asks (for choosing k)."""
    if metric == "accuracy":
        return float(np.mean(pred == y))
    if metric == "balanced_accuracy":
        recalls = [np.mean(pred[y == o] == o) for o in range(n_options) if np.any(y == o)]
        return float(np.mean(recalls))
    aucs = [
        _auc_rows(proba[None, :, o], y == o)[0]
        for o in range(n_options if n_options > 2 else 1)
        if 0 < np.count_nonzero(y == o) < y.shape[0]
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def _fit_conditional_logit(
    feats: np.ndarray, y: np.ndarray, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-option logistic combination: P(o) = softmax_o(sum_h w_h feats[:, h, o] + b_o).

    One weight per head (shared by all options, so the model stays option-symmetric like the
    heads themselves) plus per-option biases with ``b_0 = 0``; L2 penalty ``1/(2C)`` on both so
    an option never gold in calibration keeps a finite bias.
    """
    n, k, n_options = feats.shape
    rows = np.arange(n)
    onehot = np.zeros((n, n_options))
    onehot[rows, y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        u = np.einsum("nko,k->no", feats, w)
        u[:, 1:] += b
        logp = log_softmax(u, axis=1)
        du = np.exp(logp) - onehot
        grad_w = np.einsum("no,nko->k", du, feats) + w / c
        grad_b = du[:, 1:].sum(axis=0) + b / c
        value = -logp[rows, y].sum() + (w @ w + b @ b) / (2 * c)
        return float(value), np.concatenate([grad_w, grad_b])

    res = minimize(objective, np.zeros(k + n_options - 1), jac=True, method="L-BFGS-B")
    return res.x[:k], np.concatenate([[0.0], res.x[k:]])


class TopKEnsemble(BaseEstimator):
    """Combine the top-k heads of a :class:`HeadSelector` ranking.

    ``method="vote"``: each head votes for its own prediction (binary: sign of its thresholded
    margin; multi-option: its argmax); the most votes win, ties go to the option backed by the
    best-ranked head. ``predict_proba`` gives vote shares. ``method="logistic"``: a logistic
    regression over the k signed margins (binary, sklearn, standardised features) or a
    conditional logit over the k heads' signed scores (multi-option).

    With ``k=None``, k is chosen from ``k_grid`` by stratified ``cv``-fold cross-validation on the
    data passed to ``fit`` only; the head ranking is recomputed inside every fold so the held-out
    fold never influences which heads are used. Ties in mean CV score go to the smallest k.
    ``metric``, ``direction`` and ``threshold`` are passed to the inner HeadSelector; ``metric``
    also scores the folds.

    Fitted: ``k_``, ``heads_`` (list of (layer, head), best first), ``head_names_``, ``signs_``,
    ``thresholds_``, ``selector_`` (the HeadSelector fit on all data), ``k_grid_`` and
    ``cv_scores_`` ([len(k_grid_), folds]; None when k was given), and for ``"logistic"``:
    ``coef_``, ``intercept_`` (binary) or ``coef_``, ``option_bias_`` (multi-option).
    """

    def __init__(
        self,
        k: int | None = None,
        method: str = "vote",
        k_grid: Sequence[int] = (1, 3, 5, 7, 9, 15),
        cv: int = 5,
        random_state: int | None = 0,
        metric: str = "accuracy",
        direction: str = "auto",
        threshold: str = "fit",
    ):
        self.k = k
        self.method = method
        self.k_grid = k_grid
        self.cv = cv
        self.random_state = random_state
        self.metric = metric
        self.direction = direction
        self.threshold = threshold

    def _selector(self) -> HeadSelector:
        return HeadSelector(direction=self.direction, metric=self.metric, threshold=self.threshold)

    def _fit_selector(self, x: np.ndarray, y: np.ndarray) -> HeadSelector:
        with warnings.catch_warnings():  # the caller already heard about the calibration set
            warnings.simplefilter("ignore", CalibrationWarning)
            return self._selector().fit(x, y)

    def fit(self, scores: Any, labels: Any) -> TopKEnsemble:
        """Rank heads on ``scores``, choose k (by CV on these data when ``k`` is None), fit."""
        _check_choice("method", self.method, METHODS)
        self._selector()._check_params()
        x = _check_scores(scores)
        n, n_layers, n_heads, n_options = x.shape
        y = _check_labels(labels, n, n_options)
        _warn_calibration(y, n_options)
        n_total = n_layers * n_heads
        if self.k is not None:
            if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer):
                raise ValueError(f"k must be a positive integer or None, got {self.k!r}")
            if not 1 <= self.k <= n_total:
                raise ValueError(f"k must be between 1 and the {n_total} heads, got {self.k}")
            self.k_ = int(self.k)
            self.k_grid_ = None
            self.cv_scores_ = None
        else:
            self.k_grid_, self.cv_scores_ = self._cross_validate(x, y, n_total)
            means = self.cv_scores_.mean(axis=1)
            self.k_ = int(self.k_grid_[int(np.argmax(_key(means)))])
        self.selector_ = self._fit_selector(x, y)
        self._set_heads(self.selector_, self.k_)
        self._fit_combiner(x, y)
        return self

    def _cross_validate(
        self, x: np.ndarray, y: np.ndarray, n_total: int
    ) -> tuple[tuple[int, ...], np.ndarray]:
        grid = sorted({int(k) for k in self.k_grid if 1 <= int(k) <= n_total})
        if not grid:
            grid = [min(n_total, max(1, min(int(k) for k in self.k_grid)))]
        smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
        if not isinstance(self.cv, int | np.integer) or self.cv < 2:
            raise ValueError(f"cv must be an integer >= 2, got {self.cv!r}")
        if smallest < self.cv:
            raise ValueError(
                f"cannot choose k by {self.cv}-fold CV: the rarest gold option has only "
                f"{smallest} items; pass k explicitly or a smaller cv"
            )
        folds = StratifiedKFold(n_splits=int(self.cv), shuffle=True, random_state=self.random_state)
        cv_scores = np.empty((len(grid), int(self.cv)))
        for j, (train, test) in enumerate(folds.split(np.zeros(len(y)), y)):
            fold = TopKEnsemble(**self.get_params())
            selector = fold._fit_selector(x[train], y[train])  # ranking from this fold only
            for i, k in enumerate(grid):
                fold._set_heads(selector, k)
                fold._fit_combiner(x[train], y[train])
                pred, proba = fold._predict_both(x[test])
                cv_scores[i, j] = _metric_value(self.metric, y[test], pred, proba, x.shape[3])
        return tuple(grid), cv_scores

    def _set_heads(self, selector: HeadSelector, k: int) -> None:
        self.n_layers_ = selector.n_layers_
        self.n_heads_ = selector.n_heads_
        self.n_options_ = selector.n_options_
        self.heads_ = [divmod(int(f), selector.n_heads_) for f in selector._order[:k]]
        self.head_names_ = [head_name(*h) for h in self.heads_]
        layers, heads = np.array(self.heads_).T
        self.signs_ = selector.sign_[layers, heads].astype(np.int64)
        self.thresholds_ = selector.threshold_[layers, heads].astype(np.float64)

    def _features(self, x: np.ndarray) -> np.ndarray:
        """Binary: thresholded signed margins [items, k]; multi: signed scores [items, k, opts]."""
        layers, heads = np.array(self.heads_).T
        cols = x[:, layers, heads, :]
        if self.n_options_ == 2:
            feats = self.signs_ * _raw_diff(cols[..., 0], cols[..., 1]) - self.thresholds_
        else:
            feats = cols.astype(np.float64) * self.signs_[None, :, None]
        if not np.isfinite(feats).all():
            raise ValueError("scores of the ensemble's heads contain NaN or inf")
        return feats

    def _fit_combiner(self, x: np.ndarray, y: np.ndarray) -> None:
        self.coef_ = self.intercept_ = self.option_bias_ = None
        if self.method == "vote":
            return
        feats = self._features(x)
        if self.n_options_ == 2:
            positive = y == 0
            if positive.all() or not positive.any():
                frac = float(np.clip(positive.mean(), 1e-3, 1 - 1e-3))
                self.coef_, self.intercept_ = np.zeros(len(self.heads_)), float(logit(frac))
                return
            mean = feats.mean(axis=0)
            scale = feats.std(axis=0)
            scale[scale == 0] = 1.0
            lr = LogisticRegression(C=1.0, max_iter=1000)
            lr.fit((feats - mean) / scale, positive.astype(np.int64))
            coef = lr.coef_[0] / scale
            self.coef_ = coef
            self.intercept_ = float(lr.intercept_[0] - coef @ mean)
        else:
            feats = feats - feats.mean(axis=2, keepdims=True)
            scale = feats.std(axis=(0, 2))
            scale[scale == 0] = 1.0
            w, b = _fit_conditional_logit(feats / scale[None, :, None], y)
            self.coef_ = w / scale
            self.option_bias_ = b

    def _predict_both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = self._features(x)
        n, k, n_options = x.shape[0], len(self.heads_), self.n_options_
        if self.method == "vote":
            votes = np.where(feats > 0, 0, 1) if n_options == 2 else feats.argmax(axis=2)
            counts = np.zeros((n, n_options), dtype=np.int64)
            first = np.full((n, n_options), k, dtype=np.int64)
            for o in range(n_options):
                hit = votes == o
                counts[:, o] = hit.sum(axis=1)
                first[:, o] = np.where(hit.any(axis=1), hit.argmax(axis=1), k)
            pred = (counts * (k + 1) + (k - first)).argmax(axis=1)
            return pred, counts / k
        if n_options == 2:
            p0 = expit(feats @ self.coef_ + self.intercept_)
            return np.where(p0 > 0.5, 0, 1), np.column_stack([p0, 1.0 - p0])
        u = np.einsum("nko,k->no", feats, self.coef_) + self.option_bias_
        proba = softmax(u, axis=1)
        return proba.argmax(axis=1), proba

    def _check_new(self, scores: Any) -> np.ndarray:
        if not hasattr(self, "k_"):
            raise _not_fitted(self)
        return _like_calibration(self, scores)

    def predict(self, scores: Any) -> np.ndarray:
        """Predicted option index per item."""
        return self._predict_both(self._check_new(scores))[0]

    def predict_proba(self, scores: Any) -> np.ndarray:
        """Option probabilities [items, options] (vote shares for ``method="vote"``)."""
        return self._predict_both(self._check_new(scores))[1]

    def score(self, scores: Any, labels: Any) -> float:
        """Accuracy of ``predict``."""
        x = self._check_new(scores)
        y = _check_labels(labels, x.shape[0], self.n_options_)
        return float(np.mean(self.predict(x) == y))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; ``from_dict`` restores identical predictions."""
        if not hasattr(self, "k_"):
            raise _not_fitted(self)
        params = self.get_params()
        params["k_grid"] = [int(k) for k in params["k_grid"]]
        if params["random_state"] is not None and not isinstance(params["random_state"], int):
            raise ValueError("to_dict needs random_state to be an int or None")
        combiner: dict[str, Any] = {"method": self.method}
        if self.method == "logistic":
            combiner["coef"] = _floats(np.asarray(self.coef_))
            if self.n_options_ == 2:
                combiner["intercept"] = float(self.intercept_)
            else:
                combiner["option_bias"] = _floats(np.asarray(self.option_bias_))
        return {
            "kind": _ENSEMBLE_KIND,
            "format_version": FORMAT_VERSION,
            "params": params,
            "selector": self.selector_.to_dict(),
            "k": self.k_,
            "heads": list(self.head_names_),
            "signs": [int(s) for s in self.signs_],
            "thresholds": _floats(self.thresholds_),
            "k_grid": None if self.k_grid_ is None else list(self.k_grid_),
            "cv_scores": None if self.cv_scores_ is None else _floats(self.cv_scores_),
            "combiner": combiner,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopKEnsemble:
        """Rebuild a fitted ensemble from ``to_dict`` output."""
        _check_saved(data, _ENSEMBLE_KIND, "TopKEnsemble")
        params = dict(data["params"])
        params["k_grid"] = tuple(params["k_grid"])
        obj = cls(**params)
        obj.selector_ = HeadSelector.from_dict(data["selector"])
        obj.k_ = int(data["k"])
        obj._set_heads(obj.selector_, obj.k_)
        if obj.head_names_ != list(data["heads"]):
            raise ValueError("stored heads disagree with the stored selector's ranking")
        obj.signs_ = np.asarray(data["signs"], dtype=np.int64)
        obj.thresholds_ = _array(data["thresholds"])
        obj.k_grid_ = None if data["k_grid"] is None else tuple(int(k) for k in data["k_grid"])
        obj.cv_scores_ = None if data["cv_scores"] is None else _array(data["cv_scores"])
        comb = data["combiner"]
        obj.coef_ = obj.intercept_ = obj.option_bias_ = None
        if comb["method"] != obj.method:
            raise ValueError("combiner method disagrees with params")
        if obj.method == "logistic":
            obj.coef_ = _array(comb["coef"])
            if obj.n_options_ == 2:
                obj.intercept_ = float(comb["intercept"])
            else:
                obj.option_bias_ = _array(comb["option_bias"])
        return obj

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax
from sklearn.linear_model import LogisticRegression

from qkscore.estimators.base import (
    FORMAT_VERSION,
    MIN_CALIBRATION_ITEMS,
    MIN_CLASS_FRACTION,
    CalibrationWarning,
    check_choice,
    check_labels,
    check_saved,
    check_scores,
    json_array,
    json_floats,
    like_calibration,
    not_fitted,
    rank_key,
    warn_calibration,
)
from qkscore.estimators.protocol import Reader, SavedFieldError, register_reader
from qkscore.stats import (
    binary_head_table,
    head_diffs,
    multi_head_table,
    raw_diff,
    top_two,
)

__all__ = [
    "CalibrationWarning",
    "HeadSelector",
    "head_name",
    "parse_head_name",
    "MIN_CALIBRATION_ITEMS",
    "MIN_CLASS_FRACTION",
]

METRICS = ("accuracy", "balanced_accuracy", "auroc")
DIRECTIONS = ("auto", "positive", "negative")
THRESHOLDS = ("fit", "zero")
_SELECTOR_KIND = "qkscore.HeadSelector"


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
        kp, km = rank_key(table[1][name]), rank_key(table[-1][name])
        minus |= ~decided & (km > kp)
        decided |= km != kp
    return np.where(minus, -1, 1)


def _rank_heads(metric: str, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Flat head indices best first; full ties keep the lowest (layer-major) index first."""
    keys = [-rank_key(np.ravel(stats[name])) for name in reversed(_metric_order(metric))]
    return np.lexsort(keys)  # lexsort is stable and sorts by the last key first


def _logistic_1d(m: np.ndarray, positive: np.ndarray) -> float:
    """Platt scaling through the decision boundary: P(positive) = expit(coef * m).

    No intercept, so P = 0.5 falls exactly on the fitted threshold (m = 0) and the verdict, its
    probability and the accuracy a report prints follow one rule. With a free intercept the
    two boundaries differed: on held-out ProntoQA (SmolLM2) they disagreed on 15-22% of the
    items, and "valid" verdicts carried P(valid) < 0.5.

    The margin is scaled to unit spread first so that sklearn's default L2 penalty (C=1) means the
    same thing whatever the QK-score units, and so that a perfectly separating head still gets a
    finite slope. The slope is kept positive (the sign was already chosen): a head no better
    than chance gets a tiny slope, probabilities near 0.5 that still side with its margin.
    """
    scale = float(np.std(m)) or 1.0
    if positive.all() or not positive.any():
        return _MIN_SLOPE / scale
    lr = LogisticRegression(C=1.0, fit_intercept=False).fit(
        (m / scale)[:, None], positive.astype(np.int64)
    )
    return max(float(lr.coef_[0, 0]), _MIN_SLOPE) / scale


#: The smallest Platt slope, in units of the margin's spread: its probabilities stay on the
#: margin's side of 0.5 for any margin above about 1e-9 spreads.
_MIN_SLOPE = 1e-6
#: The slope an older profile's non-positive Platt slope is raised to (margin units unknown).
_LEGACY_SLOPE = 1e-9


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


# --------------------------------------------------------------------------------------------
# HeadSelector


@register_reader("head", help="the paper's single head (with a learned sign and threshold)")
class HeadSelector(Reader):
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
    ``proba_coef_`` (binary: P(option 0) = expit(coef * margin), so 0.5 lies on the threshold)
    or ``temperature_`` (multi-option) calibrate ``predict_proba``; ``predict`` is
    :func:`~qkscore.estimators.base.decide` of it, the rule every reader shares.
    """

    kind = _SELECTOR_KIND

    def __init__(self, direction: str = "auto", metric: str = "auroc", threshold: str = "fit"):
        self.direction = direction
        self.metric = metric
        self.threshold = threshold

    @classmethod
    def build(cls, seed: int = 0, metric: str = "auroc", **settings: Any) -> HeadSelector:
        """The registered single head: ranked by ``metric`` (it has no randomness)."""
        return cls(**{"metric": metric, **settings})

    # -- fitting ------------------------------------------------------------------------------

    def fit(
        self, scores: Any, labels: Any, *, baseline: Any = None, groups: Any = None
    ) -> HeadSelector:
        """Measure every head on the calibration data and keep the best one (``baseline`` and
        ``groups`` are not used: nothing is cross-validated)."""
        self._check_params()
        x = check_scores(scores)
        n, n_layers, n_heads, n_options = x.shape
        y = check_labels(labels, n, n_options)
        warn_calibration(y, n_options)
        p = n_layers * n_heads
        if n_options == 2:
            table = binary_head_table(head_diffs(x), y, self.threshold == "fit")
        else:
            table = multi_head_table(x.reshape(n, p, n_options).astype(np.float64), y)
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
        check_choice("direction", self.direction, DIRECTIONS)
        check_choice("metric", self.metric, METRICS)
        check_choice("threshold", self.threshold, THRESHOLDS)

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
        self.temperature_: float | None = None
        if self.n_options_ == 2:
            self.proba_coef_ = _logistic_1d(self.margin(x), y == 0)
        else:
            self.temperature_ = _fit_temperature(self._signed(x, self.head_), y)

    # -- reading heads ------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise not_fitted(self)

    def _check_new(self, scores: Any) -> np.ndarray:
        self._check_fitted()
        return like_calibration(self, scores)

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
            d = raw_diff(col[:, 0], col[:, 1])
            if not np.isfinite(d).all():
                raise ValueError(f"scores of head {head_name(layer, index)} contain NaN or inf")
            return self.sign_[layer, index] * d - self.threshold_[layer, index]
        _, best, second = top_two(self._signed(x, (layer, index)))
        return best - second

    def decision_function(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """Two options: the selected head's :meth:`margin` (option 0 where it is positive, the
        boundary P(option 0) = 0.5 lies on). More options: its signed scores per option."""
        x = self._check_new(scores)
        if self.n_options_ == 2:
            return self.margin(x)
        return self._signed(x, self.head_)

    @property
    def deepest_layer_(self) -> int:
        self._check_fitted()
        return int(self.head_[0])

    def label(self, name: str) -> str:
        return f"{name} {self.head_name_}"

    def predict_proba(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """Calibrated option probabilities [items, options] (Platt through the threshold /
        softmax temperature)."""
        x = self._check_new(scores)
        if self.n_options_ == 2:
            p0 = expit(self.proba_coef_ * self.margin(x))
            return np.column_stack([p0, 1.0 - p0])
        return softmax(self._signed(x, self.head_) / self.temperature_, axis=1)

    def score(self, scores: Any, labels: Any) -> float:
        """Accuracy of ``predict`` (sklearn's convention for ``score``)."""
        x = self._check_new(scores)
        y = check_labels(labels, x.shape[0], self.n_options_)
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
            "thresholds": json_floats(self.threshold_),
            "accuracy": json_floats(self.accuracy_),
            "balanced_accuracy": json_floats(self.balanced_accuracy_),
            "auroc": json_floats(self.auroc_),
            "proba": (
                {"coef": self.proba_coef_, "intercept": 0.0}
                if self.n_options_ == 2
                else {"temperature": self.temperature_}
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSelector:
        """Rebuild a fitted selector from ``to_dict`` output (e.g. a profile JSON)."""
        check_saved(data, _SELECTOR_KIND, "HeadSelector")
        obj = cls(**data["params"])
        obj._check_params()
        obj.n_layers_ = int(data["n_layers"])
        obj.n_heads_ = int(data["n_heads"])
        obj.n_options_ = int(data["n_options"])
        obj.n_items_ = int(data["n_items"])
        obj.class_counts_ = np.asarray(data["class_counts"], dtype=np.int64)
        shape = (obj.n_layers_, obj.n_heads_)
        obj.sign_ = np.asarray(data["sign"], dtype=np.int64)
        obj.threshold_ = json_array(data["thresholds"])
        obj.accuracy_ = json_array(data["accuracy"])
        obj.balanced_accuracy_ = json_array(data["balanced_accuracy"])
        obj.auroc_ = json_array(data["auroc"])
        for name in ("sign_", "threshold_", "accuracy_", "balanced_accuracy_", "auroc_"):
            if getattr(obj, name).shape != shape:
                raise ValueError(f"{name[:-1]} must have shape {list(shape)}")
        obj._check_saved_heads()
        obj._select()
        if obj.head_name_ != data["head"]:
            raise ValueError(
                f"stored head {data['head']!r} is not the best by {obj.metric!r} "
                f"({obj.head_name_}): the dict was edited or is corrupt"
            )
        proba = data["proba"]
        obj.proba_coef_ = obj.temperature_ = None
        if obj.n_options_ == 2:
            coef, intercept = float(proba["coef"]), float(proba.get("intercept") or 0.0)
            if not (math.isfinite(coef) and math.isfinite(intercept)):
                raise ValueError(f"proba holds a non-finite number: {dict(proba)}")
            if intercept != 0.0:
                # An older profile: its Platt fit had a free intercept, so its 0.5 was not the
                # threshold its verdicts were served by (and a slope could even point against
                # the margin). The intercept is dropped and the slope kept positive: the
                # verdicts those profiles gave stand, and their probabilities now side with them.
                coef = max(coef, _LEGACY_SLOPE)
            elif coef <= 0:
                raise ValueError(f"proba.coef must be positive, got {coef!r}")
            obj.proba_coef_ = coef
        else:
            obj.temperature_ = float(proba["temperature"])
            if not (math.isfinite(obj.temperature_) and obj.temperature_ > 0):
                raise SavedFieldError("proba", "holds a non-finite or non-positive temperature")
        return obj

    def _check_saved_heads(self) -> None:
        """Every head's sign is +1 or -1 and its threshold finite: a sign of 0 would make every
        margin 0 - threshold (one verdict for every item), a NaN threshold every margin NaN."""
        for field, values, ok, why in (
            ("sign", self.sign_, np.isin(self.sign_, (-1, 1)), "a head's sign is +1 or -1"),
            ("thresholds", self.threshold_, np.isfinite(self.threshold_), "thresholds are finite"),
        ):
            bad = np.flatnonzero(~ok)
            if bad.size:
                layer, head = divmod(int(bad[0]), self.n_heads_)
                value = values[layer, head]
                raise SavedFieldError(field, f"holds {value} at {head_name(layer, head)}: {why}")

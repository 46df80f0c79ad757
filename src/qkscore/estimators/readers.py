"""Readers that use every head, the fair baselines beside them, and choosing one without peeking.

The paper reads one head. Our measurements found the signal spread over many heads: a
regularised linear readout of every head's margin is far stronger than the best single head and
still falls to chance when the context is removed. So a *reader* here is any estimator over the
scores array ``[items, layers, heads, options]`` with the scikit-learn surface
(``fit``/``predict``/``predict_proba``/``decision_function``, ``to_dict``/``from_dict``):

* ``head``: :class:`~qkscore.estimators.heads.HeadSelector`, the paper's single head (ranked by
  AUROC);
* ``ensemble``: :class:`~qkscore.estimators.ensemble.TopKEnsemble`, the top-k heads voting;
* ``linear`` / ``linear-l1``: :class:`LinearQKReader`, L2 (or L1) logistic regression over the
  standardised margins of all heads, C chosen by inner cross-validation;
* ``hybrid``: :class:`HybridReader`, the linear reader stacked with the model's own margin,
  cross-fitted so the stacker never sees in-sample QK log-odds.

A comparison is only fair when every contender gets the same chance, so the model's own margin
gets a threshold fitted on the same calibration items (:func:`model_margin_selector`), and a
hidden-state probe (:class:`HiddenStateProbe`) shows what a linear readout of the residual stream
at the same positions reaches. :func:`choose_reader` picks among readers by cross-validated AUROC
on the calibration split alone, so the evaluation split is touched once, afterwards.

Binary items: option 0 (True / valid) is the positive class everywhere. Multi-option items use
a conditional logit (one weight per feature shared by all options). Pure numpy / scikit-learn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit, logit, softmax
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression

from qkscore.estimators.base import (
    CalibrationWarning,
    check_labels,
    check_scores,
    decide,
    json_array,
    json_floats,
    stratified_folds,
)
from qkscore.estimators.conditional_logit import fit_conditional_logit
from qkscore.estimators.ensemble import TopKEnsemble
from qkscore.estimators.heads import HeadSelector
from qkscore.stats import auroc_rows, macro_auroc

__all__ = [
    "READERS",
    "HiddenStateProbe",
    "HybridReader",
    "LinearQKReader",
    "choose_reader",
    "cross_val_scores",
    "margin_cv_auroc",
    "make_reader",
    "model_margin_selector",
    "proba_auroc",
    "reader_deepest_layer",
    "reader_from_dict",
    "reader_predict_proba",
]

FORMAT_VERSION = 1
DEFAULT_CS = (0.003, 0.03, 0.3, 3.0)
_LINEAR_KIND = "qkscore.LinearQKReader"
_HYBRID_KIND = "qkscore.HybridReader"
_PROBE_KIND = "qkscore.HiddenStateProbe"


# --------------------------------------------------------------------------------------------
# Shared pieces


def _folds(
    y: np.ndarray, cv: int, seed: int | None, groups: Sequence[Any] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds; refuses a split whose rarest option cannot fill every fold. With
    ``groups``, each group lies whole in one fold (see :func:`stratified_folds`)."""
    return stratified_folds(y, cv, seed, groups)


def _take(groups: Sequence[Any] | None, idx: np.ndarray) -> np.ndarray | None:
    """The groups of the items ``idx`` (None stays None): inner folds stay grouped."""
    return None if groups is None else np.asarray(groups)[idx]


def proba_auroc(proba: np.ndarray, y: np.ndarray) -> float:
    """Binary: AUROC of P(option 0); multi-option: macro one-vs-rest (as the heads report)."""
    return macro_auroc(proba, y)


def _standardise(x: np.ndarray, axis: int | tuple[int, ...] = 0) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=axis)
    scale = x.std(axis=axis)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale


def _binary_logistic(x: np.ndarray, positive: np.ndarray, c: float, l1: bool, seed) -> tuple:
    """(coef, intercept) of a logistic regression on already standardised features.

    liblinear: on a few hundred items x a few hundred heads it is 3-5x faster than lbfgs, which
    matters because choosing a reader fits a few thousand of these.
    """
    lr = LogisticRegression(
        C=c, l1_ratio=1.0 if l1 else 0.0, solver="liblinear", random_state=seed, max_iter=1000
    )
    lr.fit(x, positive.astype(np.int64))
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def _choose_c(
    fit_score: Callable[[float, np.ndarray, np.ndarray], float],
    y: np.ndarray,
    cs: Sequence[float],
    cv: int,
    seed: int | None,
    groups: Sequence[Any] | None = None,
) -> tuple[float, list[float]]:
    """The C with the best mean held-out score (ties: the smaller C, the stronger penalty)."""
    folds = _folds(y, cv, seed, groups)
    means = []
    for c in cs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on tiny folds
            means.append(float(np.nanmean([fit_score(c, tr, te) for tr, te in folds])))
    best = int(np.nanargmax(np.where(np.isnan(means), -np.inf, means)))
    return float(cs[best]), means


def _check_saved(data: Mapping[str, Any], kind: str) -> None:
    if data.get("kind") != kind:
        raise ValueError(f"not a {kind} dict (kind={data.get('kind')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported {kind} format_version {data.get('format_version')!r}")


def _saved_params(data: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The constructor arguments a ``to_dict`` stored (the C grid back as a tuple)."""
    _check_saved(data, kind)
    params = dict(data["params"])
    params["Cs"] = tuple(params["Cs"])
    return params


# --------------------------------------------------------------------------------------------
# LinearQKReader


class LinearQKReader(BaseEstimator):
    """Logistic regression over every head's standardised QK margin.

    Binary items: features are the raw margins ``score[..., 0] - score[..., 1]`` of all
    ``layers x heads``; the positive class is option 0. Multi-option items: per-option features
    (each head's score of that option, centred over the item's options) and a conditional logit
    with one weight per head. ``C`` comes from ``Cs`` by ``cv``-fold cross-validated
    AUROC on the data given to ``fit`` (or is ``C`` when given); ``penalty="l1"`` keeps few
    heads (``n_kept_``).

    Fitted: ``coef_`` (per head, standardised units, ``[layers * heads]``), ``intercept_``
    (binary) or ``option_bias_`` (multi), ``mean_``/``scale_``, ``C_``, ``cv_scores_`` (mean
    AUROC per C), ``n_kept_``, ``n_layers_``, ``n_heads_``, ``n_options_``.
    """

    needs_baseline = False

    def __init__(
        self,
        penalty: str = "l2",
        Cs: Sequence[float] = DEFAULT_CS,  # noqa: N803 - sklearn's name
        cv: int = 5,
        random_state: int | None = 0,
        C: float | None = None,  # noqa: N803
    ):
        self.penalty = penalty
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state
        self.C = C

    def _select_c(self, score: Callable, y: np.ndarray, groups: Sequence[Any] | None) -> None:
        if self.C is not None:
            self.C_, self.cv_scores_ = float(self.C), [float("nan")] * len(self.Cs)
            return
        self.C_, self.cv_scores_ = _choose_c(score, y, self.Cs, self.cv, self.random_state, groups)

    def _features(self, x: np.ndarray) -> np.ndarray:
        n, n_layers, n_heads, n_options = x.shape
        if n_options == 2:
            d = np.subtract(x[..., 0], x[..., 1], dtype=np.float64)
            return d.reshape(n, n_layers * n_heads)
        s = x.reshape(n, n_layers * n_heads, n_options).astype(np.float64)
        return s - s.mean(axis=2, keepdims=True)

    def fit(self, scores: Any, labels: Any, groups: Sequence[Any] | None = None) -> LinearQKReader:
        """``groups`` (one per item, e.g. its problem) keeps each group in one fold when C is
        chosen by cross-validation."""
        if self.penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {self.penalty!r}")
        x = check_scores(scores)
        n, self.n_layers_, self.n_heads_, self.n_options_ = x.shape
        y = check_labels(labels, n, self.n_options_)
        feats = self._features(x)
        if self.n_options_ == 2:
            self.mean_, self.scale_ = _standardise(feats)
            z = (feats - self.mean_) / self.scale_
            positive = y == 0
            l1 = self.penalty == "l1"

            def score(c, tr, te):
                coef, b = _binary_logistic(z[tr], positive[tr], c, l1, self.random_state)
                return auroc_rows((z[te] @ coef + b)[None, :], positive[te])[0]

            self._select_c(score, y, groups)
            self.coef_, self.intercept_ = _binary_logistic(
                z, positive, self.C_, l1, self.random_state
            )
            self.option_bias_ = None
        else:
            self.mean_ = np.zeros(feats.shape[1])
            self.scale_ = np.where(feats.std(axis=(0, 2)) > 0, feats.std(axis=(0, 2)), 1.0)
            z = feats / self.scale_[None, :, None]

            def score(c, tr, te):
                w, b = fit_conditional_logit(z[tr], y[tr], c, self.penalty)
                u = np.einsum("nko,k->no", z[te], w) + b
                return proba_auroc(softmax(u, axis=1), y[te])

            self._select_c(score, y, groups)
            self.coef_, self.option_bias_ = fit_conditional_logit(z, y, self.C_, self.penalty)
            self.intercept_ = None
        self.n_kept_ = int(np.count_nonzero(self.coef_))
        return self

    def _check_new(self, scores: Any) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise _not_fitted(self)
        x = check_scores(scores)
        if x.shape[1:] != (self.n_layers_, self.n_heads_, self.n_options_):
            raise ValueError(
                f"scores must have shape [items, {self.n_layers_}, {self.n_heads_}, "
                f"{self.n_options_}] like the calibration data, got {x.shape}"
            )
        return x

    def decision_function(self, scores: Any) -> np.ndarray:
        """Binary: log-odds of option 0 ``[items]``; multi-option: utilities ``[items, opts]``."""
        feats = self._features(self._check_new(scores))
        if self.n_options_ == 2:
            return ((feats - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        z = feats / self.scale_[None, :, None]
        return np.einsum("nko,k->no", z, self.coef_) + self.option_bias_

    def predict_proba(self, scores: Any) -> np.ndarray:
        return _proba(self.decision_function(scores), self.n_options_)

    def predict(self, scores: Any) -> np.ndarray:
        return decide(self.predict_proba(scores))

    @property
    def weights_(self) -> np.ndarray:
        """Per-head weights ``[layers, heads]`` in standardised units (the report's heatmap)."""
        return np.asarray(self.coef_).reshape(self.n_layers_, self.n_heads_)

    @property
    def deepest_layer_(self) -> int:
        """The deepest layer with a non-zero weight: a judge can stop the pass there."""
        used = np.flatnonzero(np.abs(self.weights_).sum(axis=1) > 0)
        return int(used.max()) if used.size else 0

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "coef_"):
            raise _not_fitted(self)
        params = self.get_params()
        params["Cs"] = [float(c) for c in params["Cs"]]
        params["C"] = None if params["C"] is None else float(params["C"])
        return {
            "kind": _LINEAR_KIND,
            "format_version": FORMAT_VERSION,
            "params": params,
            "shape": [self.n_layers_, self.n_heads_, self.n_options_],
            "C": self.C_,
            "cv_scores": json_floats(np.asarray(self.cv_scores_)),
            "mean": json_floats(np.asarray(self.mean_)),
            "scale": json_floats(np.asarray(self.scale_)),
            "coef": json_floats(np.asarray(self.coef_)),
            "intercept": self.intercept_,
            "option_bias": None if self.option_bias_ is None else json_floats(self.option_bias_),
            "n_kept": self.n_kept_,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearQKReader:
        obj = cls(**_saved_params(data, _LINEAR_KIND))
        obj.n_layers_, obj.n_heads_, obj.n_options_ = (int(v) for v in data["shape"])
        obj.C_ = float(data["C"])
        obj.cv_scores_ = json_array(data["cv_scores"])
        obj.mean_, obj.scale_ = json_array(data["mean"]), json_array(data["scale"])
        obj.coef_ = json_array(data["coef"])
        if obj.coef_.shape != (obj.n_layers_ * obj.n_heads_,):
            raise ValueError(
                f"coef has {obj.coef_.size} weights but the shape needs "
                f"{obj.n_layers_ * obj.n_heads_}"
            )
        obj.intercept_ = None if data["intercept"] is None else float(data["intercept"])
        ob = data.get("option_bias")
        obj.option_bias_ = None if ob is None else json_array(ob)
        obj.n_kept_ = int(data["n_kept"])
        return obj


def _proba(u: np.ndarray, n_options: int) -> np.ndarray:
    """Option probabilities from binary log-odds of option 0 ``[n]`` or utilities ``[n, o]``."""
    if n_options == 2:
        p0 = expit(u)
        return np.column_stack([p0, 1.0 - p0])
    return softmax(u, axis=1)


def _not_fitted(obj: Any):
    from sklearn.exceptions import NotFittedError

    return NotFittedError(f"this {type(obj).__name__} is not fitted yet: call fit first")


# --------------------------------------------------------------------------------------------
# HybridReader


def _model_features(baseline: Any, n_items: int, n_options: int) -> np.ndarray:
    """The model's own log-probabilities of the options, checked: the hybrid needs them."""
    if baseline is None:
        raise ValueError("the hybrid reader needs the model's own answer (baseline=...)")
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (n_items, n_options):
        raise ValueError(f"baseline must have shape [{n_items}, {n_options}], got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(
            "the hybrid reader needs the model's own answer for every item (the full pass); "
            "the baseline holds NaN"
        )
    return b


class HybridReader(BaseEstimator):
    """The linear QK reader stacked with the model's own margin.

    Cross-fitted: the stacker (a logistic regression over the two features, or a conditional
    logit for multi-option items) learns from the linear reader's *out-of-fold* log-odds, so
    it weighs the QK evidence by how well it generalises, not by how well it fits. Each
    fold's linear reader chooses its own C by inner cross-validation (reusing the C chosen on
    all items would let the out-of-fold log-odds peek: that C is the one that scored best on
    these very folds); the reader used for prediction is then fit on all items.

    Where one part carries no signal, stacking it in only adds noise; so the stacker's inputs
    are chosen by cross-validated AUROC among the model's margin alone, the QK part alone and
    both (``mode_``), by the one-standard-error rule in that order of simplicity: the simplest
    mode within one standard error of the best. The model's margin alone keeps its known
    direction (a higher log-probability of "True" means True), so that mode reads exactly the
    fair baseline; the hybrid then stays within noise of the better of its parts.
    """

    needs_baseline = True
    MODES = {"model": (1,), "qk": (0,), "stacked": (0, 1)}

    def __init__(self, qk: LinearQKReader | None = None, cv: int = 5, random_state: int | None = 0):
        self.qk = qk
        self.cv = cv
        self.random_state = random_state

    def _reader(self) -> LinearQKReader:
        return clone(self.qk) if self.qk is not None else LinearQKReader(cv=self.cv)

    def _stack(self, u: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.n_options_ == 2:
            return np.column_stack([u, b[:, 0] - b[:, 1]])
        return np.stack([u - u.mean(1, keepdims=True), b - b.mean(1, keepdims=True)], axis=1)

    def _fit_stacker(self, feats: np.ndarray, y: np.ndarray, cols: Sequence[int]) -> tuple:
        """(coef over both features, zero where unused; intercept or option biases)."""
        coef = np.zeros(2)
        if self.n_options_ == 2:
            mean, scale = _standardise(feats)
            used, b = _binary_logistic(
                ((feats - mean) / scale)[:, cols], y == 0, 1.0, False, self.random_state
            )
            coef[list(cols)] = used
            if tuple(cols) == (1,) and coef[1] < 0:  # the margin alone never reads backwards
                coef[1], b = 0.0, float(logit(np.clip(np.mean(y == 0), 1e-3, 1 - 1e-3)))
            return coef / scale, b - float((coef / scale) @ mean)
        scale = np.where(feats.std(axis=(0, 2)) > 0, feats.std(axis=(0, 2)), 1.0)
        used, bias = fit_conditional_logit((feats / scale[None, :, None])[:, cols], y)
        coef[list(cols)] = used
        return coef / scale, bias

    def _combine(self, feats: np.ndarray, coef: np.ndarray, bias) -> np.ndarray:
        if self.n_options_ == 2:
            return feats @ coef + bias
        return np.einsum("nko,k->no", feats, coef) + bias

    def fit(
        self,
        scores: Any,
        labels: Any,
        *,
        baseline: Any = None,
        groups: Sequence[Any] | None = None,
    ) -> HybridReader:
        x = check_scores(scores)
        n, _, _, self.n_options_ = x.shape
        y = check_labels(labels, n, self.n_options_)
        b = _model_features(baseline, n, self.n_options_)
        self.qk_ = self._reader().fit(x, y, groups=groups)
        folds = _folds(y, self.cv, self.random_state, groups)
        oof = np.zeros((n,) if self.n_options_ == 2 else (n, self.n_options_))
        for train, test in folds:  # each fold's reader chooses its own C: no peeking via C
            fold = self._reader().fit(x[train], y[train], groups=_take(groups, train))
            oof[test] = fold.decision_function(x[test])
        self.n_layers_, self.n_heads_ = self.qk_.n_layers_, self.qk_.n_heads_
        feats = self._stack(oof, b)
        self.mode_scores_, spread = {}, {}
        for mode, cols in self.MODES.items():
            aucs = []
            for train, test in folds:
                coef, bias = self._fit_stacker(feats[train], y[train], cols)
                held_out = _proba(self._combine(feats[test], coef, bias), self.n_options_)
                aucs.append(proba_auroc(held_out, y[test]))
            self.mode_scores_[mode] = float(np.nanmean(aucs))
            spread[mode] = float(np.nanstd(aucs) / np.sqrt(len(aucs)))
        best = max(self.mode_scores_, key=self.mode_scores_.get)
        floor = self.mode_scores_[best] - spread[best]
        self.mode_ = next(m for m in self.MODES if self.mode_scores_[m] >= floor)
        self.coef_, bias = self._fit_stacker(feats, y, self.MODES[self.mode_])
        self.intercept_ = float(bias) if self.n_options_ == 2 else None
        self.option_bias_ = None if self.n_options_ == 2 else np.asarray(bias)
        return self

    def decision_function(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        if not hasattr(self, "qk_"):
            raise _not_fitted(self)
        u = self.qk_.decision_function(scores)
        b = _model_features(baseline, u.shape[0], self.n_options_)
        bias = self.intercept_ if self.n_options_ == 2 else self.option_bias_
        return self._combine(self._stack(u, b), self.coef_, bias)

    def predict_proba(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        return _proba(self.decision_function(scores, baseline=baseline), self.n_options_)

    def predict(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        return decide(self.predict_proba(scores, baseline=baseline))

    @property
    def deepest_layer_(self) -> int:
        return self.n_layers_ - 1  # the model's own answer needs the whole pass

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "qk_"):
            raise _not_fitted(self)
        return {
            "kind": _HYBRID_KIND,
            "format_version": FORMAT_VERSION,
            "params": {"cv": self.cv, "random_state": self.random_state},
            "qk": self.qk_.to_dict(),
            "n_options": self.n_options_,
            "mode": self.mode_,
            "mode_scores": self.mode_scores_,
            "coef": json_floats(np.asarray(self.coef_)),
            "intercept": self.intercept_,
            "option_bias": None if self.option_bias_ is None else json_floats(self.option_bias_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HybridReader:
        _check_saved(data, _HYBRID_KIND)
        obj = cls(**data["params"])
        obj.qk_ = LinearQKReader.from_dict(data["qk"])
        obj.n_layers_, obj.n_heads_ = obj.qk_.n_layers_, obj.qk_.n_heads_
        obj.n_options_ = int(data["n_options"])
        obj.mode_, obj.mode_scores_ = str(data["mode"]), dict(data["mode_scores"])
        obj.coef_ = json_array(data["coef"])
        obj.intercept_ = None if data["intercept"] is None else float(data["intercept"])
        ob = data.get("option_bias")
        obj.option_bias_ = None if ob is None else json_array(ob)
        return obj


# --------------------------------------------------------------------------------------------
# Registry


#: Reader names (the profile's ``reader`` field) and how to make an unfitted one from a seed and
#: the single-head ranking metric.
READERS: dict[str, Callable[[int, str], Any]] = {
    "head": lambda seed, metric: HeadSelector(metric=metric),
    "ensemble": lambda seed, metric: TopKEnsemble(random_state=seed),
    "linear": lambda seed, metric: LinearQKReader(penalty="l2", random_state=seed),
    "linear-l1": lambda seed, metric: LinearQKReader(penalty="l1", random_state=seed),
    "hybrid": lambda seed, metric: HybridReader(random_state=seed),
}
_KINDS = {
    "qkscore.HeadSelector": HeadSelector,
    "qkscore.TopKEnsemble": TopKEnsemble,
    _LINEAR_KIND: LinearQKReader,
    _HYBRID_KIND: HybridReader,
}


def make_reader(name: str, seed: int = 0, metric: str = "auroc") -> Any:
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; choose from {', '.join(READERS)} or auto")
    return READERS[name](seed, metric)


def reader_from_dict(data: Mapping[str, Any]) -> Any:
    """Restore any saved reader from its ``to_dict`` output (dispatching on ``kind``)."""
    cls = _KINDS.get(data.get("kind"))
    if cls is None:
        raise ValueError(f"unknown reader kind {data.get('kind')!r}")
    return cls.from_dict(data)


def _with_baseline(reader: Any, baseline: Any) -> dict[str, Any]:
    return {"baseline": baseline} if getattr(reader, "needs_baseline", False) else {}


def reader_fit(
    reader: Any,
    scores: Any,
    labels: Any,
    baseline: Any = None,
    *,
    groups: Sequence[Any] | None = None,
    hidden: Any = None,
    hidden_layers: Sequence[int] | None = None,
) -> Any:
    """``fit`` for any reader: the model's answer to those that use it, ``hidden`` to the
    hidden-state probe, and ``groups`` (one per item) to those that cross-validate inside, so
    their folds keep each group whole."""
    with warnings.catch_warnings():  # the calibration warnings were given once already
        warnings.simplefilter("ignore", CalibrationWarning)
        if isinstance(reader, HiddenStateProbe):
            return reader.fit(hidden, labels, hidden_layers, groups=groups)
        kwargs = _with_baseline(reader, baseline)
        if groups is not None and not isinstance(reader, HeadSelector):
            kwargs["groups"] = groups
        return reader.fit(scores, labels, **kwargs)


def reader_predict_proba(
    reader: Any, scores: Any, baseline: Any = None, hidden: Any = None
) -> np.ndarray:
    """``predict_proba`` for any reader, passing the model's answer to those that use it (and
    the residual stream to the hidden-state probe)."""
    if isinstance(reader, HiddenStateProbe):
        return reader.predict_proba(hidden)
    return reader.predict_proba(scores, **_with_baseline(reader, baseline))


def reader_deepest_layer(reader: Any) -> int:
    """The deepest layer a reader reads (a judge's pass may stop after it)."""
    if isinstance(reader, HeadSelector):
        return int(reader.head_[0])
    if isinstance(reader, TopKEnsemble):
        return max(int(layer) for layer, _ in reader.heads_)
    return int(reader.deepest_layer_)


def _make_candidate(name: str, seed: int, metric: str) -> Any:
    """A reader of :data:`READERS`, or the hidden-state probe (``"hidden_probe"``), whose
    cross-validated figures stand beside the readers' on chain steps."""
    if name == "hidden_probe":
        return HiddenStateProbe(random_state=seed)
    return make_reader(name, seed, metric)


def _at(x: Any, idx: np.ndarray) -> Any:
    return None if x is None else np.asarray(x)[idx]


def cross_val_scores(
    name: str,
    scores: np.ndarray,
    labels: np.ndarray,
    baseline: np.ndarray | None = None,
    cv: int = 5,
    seed: int = 0,
    metric: str = "auroc",
    *,
    groups: Sequence[Any] | None = None,
    subsets: Mapping[str, np.ndarray] | None = None,
    hidden: np.ndarray | None = None,
    hidden_layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Mean held-out AUROC and accuracy of reader ``name`` over ``cv`` stratified folds: each
    fold's items are predicted by a reader fit on the other folds only (its own inner choices
    included). Folds are scored one by one and averaged, as ``cross_val_score`` does: pooling
    the folds' probabilities would mix scales that differ from fold to fold.

    ``groups`` keeps each group (e.g. a problem's chain steps) whole in one fold, inner folds
    included; ``subsets`` (name -> item mask) also reports the held-out AUROC on those items
    only (``{"subsets": {name: {"auroc"}}}``); ``name="hidden_probe"`` cross-validates the
    hidden-state probe on ``hidden``."""
    aucs, accs = [], []
    sub: dict[str, list[float]] = {k: [] for k in subsets or {}}
    for train, test in _folds(labels, cv, seed, groups):
        reader = reader_fit(
            _make_candidate(name, seed, metric),
            scores[train],
            labels[train],
            _at(baseline, train),
            groups=_at(groups, train),
            hidden=_at(hidden, train),
            hidden_layers=hidden_layers,
        )
        proba = reader_predict_proba(reader, scores[test], _at(baseline, test), _at(hidden, test))
        aucs.append(proba_auroc(proba, labels[test]))
        accs.append(float(np.mean(decide(proba) == labels[test])))
        for key, mask in (subsets or {}).items():
            keep = np.asarray(mask)[test]
            sub[key].append(_subset_auroc(proba[keep], labels[test][keep]))
    out: dict[str, Any] = {"auroc": float(np.nanmean(aucs)), "accuracy": float(np.mean(accs))}
    if subsets:
        out["subsets"] = {k: {"auroc": _nanmean(v)} for k, v in sub.items()}
    return out


def _subset_auroc(proba: np.ndarray, y: np.ndarray) -> float:
    """AUROC on a fold's subset; NaN where it holds one option only (or nothing)."""
    return proba_auroc(proba, y) if len(np.unique(y)) > 1 else float("nan")


def _nanmean(values: Sequence[float]) -> float | None:
    """Mean over the folds where the figure is defined; None where it is nowhere."""
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def margin_cv_auroc(
    baseline: np.ndarray,
    labels: np.ndarray,
    cv: int = 5,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    subset: np.ndarray | None = None,
) -> float | None:
    """The model margin's AUROC averaged over the same folds the readers are scored on (it has
    nothing to fit: a threshold does not move an AUROC), for comparing with their CV figures;
    ``subset`` (an item mask) scores only those items of each fold."""
    proba = softmax(np.asarray(baseline, dtype=np.float64), axis=1)
    keep = np.ones(len(labels), bool) if subset is None else np.asarray(subset, bool)
    values = [
        _subset_auroc(proba[te[keep[te]]], labels[te[keep[te]]])
        for _, te in _folds(labels, cv, seed, groups)
    ]
    return _nanmean(values)


def choose_reader(
    scores: np.ndarray,
    labels: np.ndarray,
    baseline: np.ndarray | None = None,
    candidates: Sequence[str] = tuple(READERS),
    cv: int = 5,
    seed: int = 0,
    metric: str = "auroc",
    *,
    groups: Sequence[Any] | None = None,
    subsets: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Cross-validated AUROC and accuracy of every candidate on these (calibration) items.

    Returns ``{"chosen", "rule", "cv": {name: {"auroc", "accuracy"} or {"skipped": why}},
    "model_margin_auroc"}``; the best AUROC wins, ties to the earlier (simpler) candidate. The
    hybrid is skipped where the model's own answer is missing. ``groups`` and ``subsets`` as
    in :func:`cross_val_scores` (every fold, inner ones too, keeps a group whole).
    """
    results: dict[str, dict[str, Any]] = {}
    has_model = baseline is not None and bool(np.isfinite(baseline).all())
    for name in candidates:
        if getattr(make_reader(name, seed), "needs_baseline", False) and not has_model:
            results[name] = {"skipped": "no model answer in the scan"}
            continue
        try:
            results[name] = cross_val_scores(
                name, scores, labels, baseline, cv, seed, metric, groups=groups, subsets=subsets
            )
        except ValueError as err:  # e.g. L1 on multi-option items
            results[name] = {"skipped": str(err)}
    scored = {k: v["auroc"] for k, v in results.items() if "auroc" in v}
    if not scored:
        raise ValueError("no reader could be cross-validated on these items")
    best = max(scored.values())
    chosen = next(k for k in candidates if scored.get(k) == best)
    return {
        "chosen": chosen,
        "rule": f"highest {cv}-fold cross-validated AUROC on the calibration split",
        "cv": results,
        "model_margin_auroc": (
            margin_cv_auroc(baseline, labels, cv, seed, groups) if has_model else None
        ),
    }


# --------------------------------------------------------------------------------------------
# Baselines: the model's own margin with a fitted threshold, and a hidden-state probe


def model_margin_selector(baseline: np.ndarray, labels: np.ndarray) -> HeadSelector:
    """The model's own answer given the heads' protocol: its log-probability margin with a
    threshold fitted on the calibration items (binary), or its argmax (multi-option).

    A one-"head" HeadSelector over ``baseline[:, None, None, :]`` with the sign fixed to +1, so
    the threshold is fitted exactly as every head's is.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return HeadSelector(direction="positive", metric="auroc").fit(
            np.asarray(baseline)[:, None, None, :], labels
        )


def as_margin_scores(baseline: np.ndarray) -> np.ndarray:
    """Baseline ``[items, options]`` in the shape :func:`model_margin_selector` reads."""
    return np.asarray(baseline)[:, None, None, :]


class HiddenStateProbe(BaseEstimator):
    """L2 logistic regression on the residual stream at the query positions.

    Input ``hidden`` ``[items, layers kept, options, d_model]`` (``hidden.npy``): each item's
    vectors at its options' query positions, concatenated. The layer (among those the scan
    kept) and C are chosen by ``cv``-fold cross-validated AUROC on the data given to ``fit``.
    Multi-option items use a multinomial logistic regression over the concatenation.
    """

    def __init__(
        self,
        Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0),  # noqa: N803
        cv: int = 5,
        random_state: int | None = 0,
    ):
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state

    @staticmethod
    def _layer_features(hidden: np.ndarray, index: int) -> np.ndarray:
        h = np.asarray(hidden[:, index], dtype=np.float64)
        return h.reshape(h.shape[0], -1)

    def _fit_one(self, x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
        """liblinear for two classes (the probe fits a few hundred models): its dual solver
        when there are fewer items than features (answer sets: 5-8x faster than lbfgs), its
        primal one when there are more (chain steps: thousands of items, where the dual's cost
        grows with the items); lbfgs's multinomial for more options."""
        if np.unique(y).size == 2:
            dual = bool(x.shape[0] < x.shape[1])
            lr = LogisticRegression(C=c, solver="liblinear", dual=dual, max_iter=3000)
            return lr.fit(x, y)
        return LogisticRegression(C=c, max_iter=3000).fit(x, y)

    def fit(
        self,
        hidden: Any,
        labels: Any,
        layers: Sequence[int] | None = None,
        groups: Sequence[Any] | None = None,
    ) -> HiddenStateProbe:
        h = np.asarray(hidden)
        if h.ndim != 4:
            raise ValueError(f"hidden must be [items, layers, options, d_model], got {h.shape}")
        if not np.isfinite(h).all():
            raise ValueError("hidden states contain NaN (a scan stopped early?)")
        n, n_kept, self.n_options_, self.d_model_ = h.shape
        y = check_labels(labels, n, self.n_options_)
        self.layers_ = list(layers) if layers is not None else list(range(n_kept))
        folds = _folds(y, self.cv, self.random_state, groups)
        table = np.full((n_kept, len(self.Cs)), np.nan)
        for li in range(n_kept):
            x = self._layer_features(h, li)
            for ci, c in enumerate(self.Cs):
                aucs = []
                for tr, te in folds:
                    mean, scale = _standardise(x[tr])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        lr = self._fit_one((x[tr] - mean) / scale, y[tr], c)
                    proba = _full_proba(lr, (x[te] - mean) / scale, self.n_options_)
                    aucs.append(proba_auroc(proba, y[te]))
                table[li, ci] = np.nanmean(aucs)
        self.cv_scores_ = table
        li, ci = np.unravel_index(
            np.nanargmax(np.where(np.isnan(table), -np.inf, table)), table.shape
        )
        self.layer_index_, self.C_ = int(li), float(self.Cs[ci])
        self.layer_ = int(self.layers_[li])
        x = self._layer_features(h, self.layer_index_)
        self.mean_, self.scale_ = _standardise(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = self._fit_one((x - self.mean_) / self.scale_, y, self.C_)
        self.classes_ = lr.classes_.astype(np.int64)
        self.coef_, self.intercept_ = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
        return self

    def predict_proba(self, hidden: Any) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise _not_fitted(self)
        x = (self._layer_features(np.asarray(hidden), self.layer_index_) - self.mean_) / self.scale_
        u = x @ self.coef_.T + self.intercept_
        if u.shape[1] == 1:  # binary: sklearn's column is the log-odds of classes_[1]
            p1 = expit(u[:, 0])
            proba = np.zeros((x.shape[0], self.n_options_))
            proba[:, self.classes_[1]] = p1
            proba[:, self.classes_[0]] = 1.0 - p1
            return proba
        proba = np.zeros((x.shape[0], self.n_options_))
        proba[:, self.classes_] = softmax(u, axis=1)
        return proba

    def predict(self, hidden: Any) -> np.ndarray:
        return decide(self.predict_proba(hidden))

    def decision_function(self, hidden: Any) -> np.ndarray:
        """Binary items: the log-odds of option 0 (valid), the scale the readers' margins share."""
        if getattr(self, "n_options_", 2) != 2:
            raise ValueError("decision_function is defined for two-option items only")
        p = np.clip(self.predict_proba(hidden)[:, 0], 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "coef_"):
            raise _not_fitted(self)
        return {
            "kind": _PROBE_KIND,
            "format_version": FORMAT_VERSION,
            "params": {
                "Cs": [float(c) for c in self.Cs],
                "cv": self.cv,
                "random_state": self.random_state,
            },  # fmt: skip
            "layers": self.layers_,
            "layer": self.layer_,
            "layer_index": self.layer_index_,
            "C": self.C_,
            "n_options": self.n_options_,
            "d_model": self.d_model_,
            "cv_scores": json_floats(self.cv_scores_),
            "classes": self.classes_.tolist(),
            "mean": json_floats(self.mean_),
            "scale": json_floats(self.scale_),
            "coef": json_floats(self.coef_),
            "intercept": json_floats(self.intercept_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HiddenStateProbe:
        obj = cls(**_saved_params(data, _PROBE_KIND))
        obj.layers_, obj.layer_ = list(data["layers"]), int(data["layer"])
        obj.layer_index_, obj.C_ = int(data["layer_index"]), float(data["C"])
        obj.n_options_, obj.d_model_ = int(data["n_options"]), int(data["d_model"])
        obj.cv_scores_ = json_array(data["cv_scores"])
        obj.classes_ = np.asarray(data["classes"], dtype=np.int64)
        obj.mean_, obj.scale_ = json_array(data["mean"]), json_array(data["scale"])
        obj.coef_, obj.intercept_ = json_array(data["coef"]), json_array(data["intercept"])
        return obj


def _full_proba(lr: LogisticRegression, x: np.ndarray, n_options: int) -> np.ndarray:
    """Probabilities over all options, also for options a fold never saw as gold."""
    proba = np.zeros((x.shape[0], n_options))
    proba[:, lr.classes_] = lr.predict_proba(x)
    return proba

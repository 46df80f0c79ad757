"""Combine the top-k heads of a :class:`~qkscore.estimators.heads.HeadSelector` ranking."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit, logit, softmax
from sklearn.linear_model import LogisticRegression

from qkscore.estimators.base import (
    FORMAT_VERSION,
    CalibrationWarning,
    check_choice,
    check_labels,
    check_saved,
    check_scores,
    decide,
    json_array,
    json_floats,
    like_calibration,
    not_fitted,
    rank_key,
    stratified_folds,
    warn_calibration,
)
from qkscore.estimators.conditional_logit import fit_conditional_logit
from qkscore.estimators.heads import HeadSelector, head_name
from qkscore.estimators.protocol import Reader, register_reader
from qkscore.stats import (
    prediction_metric,
    raw_diff,
)

__all__ = ["TopKEnsemble"]

METHODS = ("vote", "logistic")
_ENSEMBLE_KIND = "qkscore.TopKEnsemble"
_TIE_NUDGE = 1e-6


@register_reader("ensemble", help="the top-k heads voting (k by cross-validation)")
class TopKEnsemble(Reader):
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

    kind = _ENSEMBLE_KIND

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

    def fit(
        self,
        scores: Any,
        labels: Any,
        *,
        baseline: Any = None,
        groups: Sequence[Any] | None = None,
    ) -> TopKEnsemble:
        """Rank heads on ``scores``, choose k (by CV on these data when ``k`` is None), fit.
        ``groups`` (one per item, e.g. its problem) keeps each group in one fold."""
        check_choice("method", self.method, METHODS)
        self._selector()._check_params()
        x = check_scores(scores)
        n, n_layers, n_heads, n_options = x.shape
        y = check_labels(labels, n, n_options)
        warn_calibration(y, n_options)
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
            self.k_grid_, self.cv_scores_ = self._cross_validate(x, y, n_total, groups)
            means = self.cv_scores_.mean(axis=1)
            self.k_ = int(self.k_grid_[int(np.argmax(rank_key(means)))])
        self.selector_ = self._fit_selector(x, y)
        self._set_heads(self.selector_, self.k_)
        self._fit_combiner(x, y)
        return self

    def _cross_validate(
        self, x: np.ndarray, y: np.ndarray, n_total: int, groups: Sequence[Any] | None = None
    ) -> tuple[tuple[int, ...], np.ndarray]:
        grid = sorted({int(k) for k in self.k_grid if 1 <= int(k) <= n_total})
        if not grid:
            grid = [min(n_total, max(1, min(int(k) for k in self.k_grid)))]
        smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
        if not isinstance(self.cv, int | np.integer) or self.cv < 2:
            raise ValueError(f"cv must be an integer >= 2, got {self.cv!r}")
        if smallest < self.cv and groups is None:  # grouped folds are checked by group
            raise ValueError(
                f"cannot choose k by {self.cv}-fold CV: the rarest gold option has only "
                f"{smallest} items; pass k explicitly or a smaller cv"
            )
        folds = stratified_folds(y, int(self.cv), self.random_state, groups)
        cv_scores = np.empty((len(grid), len(folds)))
        for j, (train, test) in enumerate(folds):
            fold = TopKEnsemble(**self.get_params())
            selector = fold._fit_selector(x[train], y[train])  # ranking from this fold only
            for i, k in enumerate(grid):
                fold._set_heads(selector, k)
                fold._fit_combiner(x[train], y[train])
                proba = fold._proba(x[test])
                pred = decide(proba)
                cv_scores[i, j] = prediction_metric(self.metric, y[test], pred, proba, x.shape[3])
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
            feats = self.signs_ * raw_diff(cols[..., 0], cols[..., 1]) - self.thresholds_
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
            w, b = fit_conditional_logit(feats / scale[None, :, None], y)
            self.coef_ = w / scale
            self.option_bias_ = b

    def _proba(self, x: np.ndarray) -> np.ndarray:
        """Option probabilities; ``predict`` is :func:`decide` of them, as for every reader."""
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
            # vote shares, a tie nudged by a millionth of a vote toward the option the
            # best-ranked head backs, so the most probable option is the vote's winner
            shares = counts + _TIE_NUDGE * (k - first)
            return shares / shares.sum(axis=1, keepdims=True)
        if n_options == 2:
            p0 = expit(feats @ self.coef_ + self.intercept_)
            return np.column_stack([p0, 1.0 - p0])
        u = np.einsum("nko,k->no", feats, self.coef_) + self.option_bias_
        return softmax(u, axis=1)

    def _check_new(self, scores: Any) -> np.ndarray:
        if not hasattr(self, "k_"):
            raise not_fitted(self)
        return like_calibration(self, scores)

    def predict_proba(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """Option probabilities [items, options] (vote shares for ``method="vote"``)."""
        return self._proba(self._check_new(scores))

    def decision_function(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """Two options: P(option 0) - 0.5 (the vote share's lead); more: the probabilities."""
        proba = self.predict_proba(scores)
        return proba[:, 0] - 0.5 if self.n_options_ == 2 else proba

    @property
    def deepest_layer_(self) -> int:
        if not hasattr(self, "k_"):
            raise not_fitted(self)
        return max(int(layer) for layer, _ in self.heads_)

    def label(self, name: str) -> str:
        return f"{name} (k={self.k_})"

    def score(self, scores: Any, labels: Any) -> float:
        """Accuracy of ``predict``."""
        x = self._check_new(scores)
        y = check_labels(labels, x.shape[0], self.n_options_)
        return float(np.mean(self.predict(x) == y))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; ``from_dict`` restores identical predictions."""
        if not hasattr(self, "k_"):
            raise not_fitted(self)
        params = self.get_params()
        params["k_grid"] = [int(k) for k in params["k_grid"]]
        if params["random_state"] is not None and not isinstance(params["random_state"], int):
            raise ValueError("to_dict needs random_state to be an int or None")
        combiner: dict[str, Any] = {"method": self.method}
        if self.method == "logistic":
            combiner["coef"] = json_floats(np.asarray(self.coef_))
            if self.n_options_ == 2:
                combiner["intercept"] = float(self.intercept_)
            else:
                combiner["option_bias"] = json_floats(np.asarray(self.option_bias_))
        return {
            "kind": _ENSEMBLE_KIND,
            "format_version": FORMAT_VERSION,
            "params": params,
            "selector": self.selector_.to_dict(),
            "k": self.k_,
            "heads": list(self.head_names_),
            "signs": [int(s) for s in self.signs_],
            "thresholds": json_floats(self.thresholds_),
            "k_grid": None if self.k_grid_ is None else list(self.k_grid_),
            "cv_scores": None if self.cv_scores_ is None else json_floats(self.cv_scores_),
            "combiner": combiner,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopKEnsemble:
        """Rebuild a fitted ensemble from ``to_dict`` output."""
        check_saved(data, _ENSEMBLE_KIND, "TopKEnsemble")
        params = dict(data["params"])
        params["k_grid"] = tuple(params["k_grid"])
        obj = cls(**params)
        obj.selector_ = HeadSelector.from_dict(data["selector"])
        obj.k_ = int(data["k"])
        obj._set_heads(obj.selector_, obj.k_)
        if obj.head_names_ != list(data["heads"]):
            raise ValueError("stored heads disagree with the stored selector's ranking")
        obj.signs_ = np.asarray(data["signs"], dtype=np.int64)
        obj.thresholds_ = json_array(data["thresholds"])
        obj.k_grid_ = None if data["k_grid"] is None else tuple(int(k) for k in data["k_grid"])
        obj.cv_scores_ = None if data["cv_scores"] is None else json_array(data["cv_scores"])
        comb = data["combiner"]
        obj.coef_ = obj.intercept_ = obj.option_bias_ = None
        if comb["method"] != obj.method:
            raise ValueError("combiner method disagrees with params")
        if obj.method == "logistic":
            obj.coef_ = json_array(comb["coef"])
            if obj.n_options_ == 2:
                obj.intercept_ = float(comb["intercept"])
            else:
                obj.option_bias_ = json_array(comb["option_bias"])
        return obj

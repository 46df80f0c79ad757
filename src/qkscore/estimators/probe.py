"""The hidden-state probe: a fair baseline that reads the residual stream, not QK-scores.

It shows what a linear readout of the residual stream at the readers' own query positions
reaches; it is a baseline beside the readers (its input is ``hidden.npy``, not the scores
array), never a profile's reader.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from qkscore.estimators.base import (
    FORMAT_VERSION,
    check_labels,
    decide,
    json_array,
    json_floats,
    not_fitted,
    saved_params,
    standardise,
    stratified_folds,
)
from qkscore.stats import macro_auroc

__all__ = ["HiddenStateProbe"]

PROBE_KIND = "qkscore.HiddenStateProbe"


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

    def _fit_one(
        self,
        x: np.ndarray,
        y: np.ndarray,
        c: float,
        reduced: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> _Fitted:
        """liblinear for two classes (the probe fits a few hundred models), lbfgs's
        multinomial for more options. With fewer items than features (answer sets: a few
        hundred items, thousands of features) the two-class fit runs in the items' row space
        (:func:`_row_space`; ``reduced`` reuses one across Cs): the same problem, 5x faster than
        liblinear's dual on the full features. With more items (chain steps) its primal
        solver, whose cost does not grow with the items as the dual's does."""
        if _in_row_space(x, y):
            basis, z = _row_space(x) if reduced is None else reduced
            lr = LogisticRegression(
                C=c, solver="liblinear", dual=True, fit_intercept=False, max_iter=3000
            )
            w = basis @ lr.fit(z, y).coef_[0]
            return _Fitted(lr.classes_, w[None, :-1], w[-1:])
        if np.unique(y).size == 2:
            lr = LogisticRegression(C=c, solver="liblinear", max_iter=3000).fit(x, y)
        else:
            lr = LogisticRegression(C=c, max_iter=3000).fit(x, y)
        return _Fitted(lr.classes_, lr.coef_, lr.intercept_)

    def _cv_table(self, h: np.ndarray, y: np.ndarray, folds: Any) -> np.ndarray:
        """Held-out macro AUROC for every (kept layer, C)."""
        aucs = np.full((h.shape[1], len(self.Cs), len(folds)), np.nan)
        for li in range(h.shape[1]):
            x = self._layer_features(h, li)
            for fi, (tr, te) in enumerate(folds):
                mean, scale = standardise(x[tr])
                train, test = (x[tr] - mean) / scale, (x[te] - mean) / scale
                reduced = _row_space(train) if _in_row_space(train, y[tr]) else None
                for ci, c in enumerate(self.Cs):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fitted = self._fit_one(train, y[tr], c, reduced)
                    aucs[li, ci, fi] = macro_auroc(fitted.proba(test, self.n_options_), y[te])
        return np.nanmean(aucs, axis=2)

    def fit(
        self,
        hidden: Any,
        labels: Any,
        layers: Sequence[int] | None = None,
        *,
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
        # One layer and one C leave nothing to choose: no inner folds (a cross-validation of
        # the probe itself fixes both, and the inner search was 20x its cost).
        if n_kept * len(self.Cs) > 1:
            table = self._cv_table(h, y, stratified_folds(y, self.cv, self.random_state, groups))
        else:
            table = np.full((1, 1), np.nan)
        self.cv_scores_ = table
        li, ci = np.unravel_index(
            np.nanargmax(np.where(np.isnan(table), -np.inf, table)), table.shape
        )
        self.layer_index_, self.C_ = int(li), float(self.Cs[ci])
        self.layer_ = int(self.layers_[li])
        x = self._layer_features(h, self.layer_index_)
        self.mean_, self.scale_ = standardise(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = self._fit_one((x - self.mean_) / self.scale_, y, self.C_)
        self.classes_ = np.asarray(fitted.classes, dtype=np.int64)
        self.coef_ = np.asarray(fitted.coef, dtype=np.float64)
        self.intercept_ = np.asarray(fitted.intercept, dtype=np.float64)
        return self

    def predict_proba(self, hidden: Any) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise not_fitted(self)
        x = (self._layer_features(np.asarray(hidden), self.layer_index_) - self.mean_) / self.scale_
        return _Fitted(self.classes_, self.coef_, self.intercept_).proba(x, self.n_options_)

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
            raise not_fitted(self)
        return {
            "kind": PROBE_KIND,
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
        obj = cls(**saved_params(data, PROBE_KIND, "HiddenStateProbe"))
        obj.layers_, obj.layer_ = list(data["layers"]), int(data["layer"])
        obj.layer_index_, obj.C_ = int(data["layer_index"]), float(data["C"])
        obj.n_options_, obj.d_model_ = int(data["n_options"]), int(data["d_model"])
        obj.cv_scores_ = json_array(data["cv_scores"])
        obj.classes_ = np.asarray(data["classes"], dtype=np.int64)
        obj.mean_, obj.scale_ = json_array(data["mean"]), json_array(data["scale"])
        obj.coef_, obj.intercept_ = json_array(data["coef"]), json_array(data["intercept"])
        return obj


@dataclass(frozen=True)
class _Fitted:
    """A fitted logistic regression's parameters, as sklearn lays them out."""

    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def proba(self, x: np.ndarray, n_options: int) -> np.ndarray:
        """Probabilities over all options, also for options a fold never saw as gold (sklearn's:
        the log-odds of ``classes[1]`` for two classes, a softmax for more)."""
        u = x @ self.coef.T + self.intercept
        proba = np.zeros((x.shape[0], n_options))
        if u.shape[1] == 1:
            p1 = expit(u[:, 0])
            proba[:, self.classes[1]] = p1
            proba[:, self.classes[0]] = 1.0 - p1
        else:
            proba[:, self.classes] = softmax(u, axis=1)
        return proba


def _in_row_space(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a fit runs in the items' row space: two classes, fewer items than features."""
    return np.unique(y).size == 2 and x.shape[0] < x.shape[1]


def _with_bias(x: np.ndarray) -> np.ndarray:
    """``x`` with liblinear's bias column (``intercept_scaling=1``, penalised like a weight)."""
    return np.hstack([x, np.ones((x.shape[0], 1))])


def _row_space(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An orthonormal basis ``V`` ``[d + 1, n]`` of the row space of ``[x, 1]``, and the
    rows' coordinates in it, ``z = [x, 1] V`` ``[n, n]``.

    An L2-penalised logistic regression whose bias is penalised like a weight (liblinear's)
    has its weights in that row space: any part orthogonal to every row adds to the penalty
    and to no margin. Fitting ``z = [x, 1] V`` (n columns, not d + 1) and mapping back
    ``w = V beta`` is the same problem and the same optimum, in n dimensions.
    """
    a = _with_bias(x)
    # from the items' Gram matrix (n x n): an SVD of the wide matrix is 10x slower here
    eigenvalues, u = np.linalg.eigh(a @ a.T)
    kept = eigenvalues > eigenvalues[-1] * 1e-10
    root = np.sqrt(eigenvalues[kept])
    return a.T @ (u[:, kept] / root), u[:, kept] * root

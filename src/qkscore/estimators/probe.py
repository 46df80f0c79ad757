"""The hidden-state probe: a fair baseline that reads the residual stream, not QK-scores.

It shows what a linear readout of the residual stream at the readers' own query positions
reaches; it is a baseline beside the readers (its input is ``hidden.npy``, not the scores
array), never a profile's reader.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
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

    def _cv_table(self, h: np.ndarray, y: np.ndarray, folds: Any) -> np.ndarray:
        """Held-out macro AUROC for every (kept layer, C)."""
        table = np.full((h.shape[1], len(self.Cs)), np.nan)
        for li in range(h.shape[1]):
            x = self._layer_features(h, li)
            for ci, c in enumerate(self.Cs):
                aucs = []
                for tr, te in folds:
                    mean, scale = standardise(x[tr])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        lr = self._fit_one((x[tr] - mean) / scale, y[tr], c)
                    proba = _full_proba(lr, (x[te] - mean) / scale, self.n_options_)
                    aucs.append(macro_auroc(proba, y[te]))
                table[li, ci] = np.nanmean(aucs)
        return table

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
            lr = self._fit_one((x - self.mean_) / self.scale_, y, self.C_)
        self.classes_ = lr.classes_.astype(np.int64)
        self.coef_, self.intercept_ = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
        return self

    def predict_proba(self, hidden: Any) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise not_fitted(self)
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


def _full_proba(lr: LogisticRegression, x: np.ndarray, n_options: int) -> np.ndarray:
    """Probabilities over all options, also for options a fold never saw as gold."""
    proba = np.zeros((x.shape[0], n_options))
    proba[:, lr.classes_] = lr.predict_proba(x)
    return proba

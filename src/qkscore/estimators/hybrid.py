"""The hybrid reader: the linear QK reader stacked with the model's own margin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.base import clone

from qkscore.estimators.base import (
    FORMAT_VERSION,
    check_labels,
    check_saved,
    check_scores,
    json_array,
    json_floats,
    not_fitted,
    proba_from_decision,
    standardise,
    stratified_folds,
)
from qkscore.estimators.conditional_logit import fit_conditional_logit
from qkscore.estimators.linear import LinearQKReader, binary_logistic
from qkscore.estimators.protocol import Reader, register_reader
from qkscore.stats import macro_auroc

__all__ = ["HybridReader"]

HYBRID_KIND = "qkscore.HybridReader"


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


@register_reader("hybrid", help="the linear reader stacked with the model's own margin")
class HybridReader(Reader):
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

    kind = HYBRID_KIND
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
            mean, scale = standardise(feats)
            used, b = binary_logistic(
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
        folds = stratified_folds(y, self.cv, self.random_state, groups)
        oof = np.zeros((n,) if self.n_options_ == 2 else (n, self.n_options_))
        for train, test in folds:  # each fold's reader chooses its own C: no peeking via C
            inner = None if groups is None else np.asarray(groups)[train]  # folds stay grouped
            fold = self._reader().fit(x[train], y[train], groups=inner)
            oof[test] = fold.decision_function(x[test])
        self.n_layers_, self.n_heads_ = self.qk_.n_layers_, self.qk_.n_heads_
        feats = self._stack(oof, b)
        self.mode_scores_, spread = {}, {}
        for mode, cols in self.MODES.items():
            aucs = []
            for train, test in folds:
                coef, bias = self._fit_stacker(feats[train], y[train], cols)
                held_out = proba_from_decision(
                    self._combine(feats[test], coef, bias), self.n_options_
                )
                aucs.append(macro_auroc(held_out, y[test]))
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
            raise not_fitted(self)
        u = self.qk_.decision_function(scores)
        b = _model_features(baseline, u.shape[0], self.n_options_)
        bias = self.intercept_ if self.n_options_ == 2 else self.option_bias_
        return self._combine(self._stack(u, b), self.coef_, bias)

    def predict_proba(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        return proba_from_decision(
            self.decision_function(scores, baseline=baseline), self.n_options_
        )

    @property
    def deepest_layer_(self) -> int:
        return self.n_layers_ - 1  # the model's own answer needs the whole pass

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "qk_"):
            raise not_fitted(self)
        return {
            "kind": HYBRID_KIND,
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
        check_saved(data, HYBRID_KIND, "HybridReader")
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

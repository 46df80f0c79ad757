"""Choosing a reader without peeking, and the fair baselines beside the readers.

Every reader (``head``, ``ensemble``, ``linear``, ``linear-l1``, ``hybrid`` and any other
registered with :func:`~qkscore.estimators.protocol.register_reader`) is a
:class:`~qkscore.estimators.protocol.Reader`; they live one module each in this package.

A comparison is only fair when every contender gets the same chance, so the model's own margin
gets a threshold fitted on the same calibration items (:func:`model_margin_selector`), and a
hidden-state probe (:class:`~qkscore.estimators.probe.HiddenStateProbe`) shows what a linear
readout of the residual stream at the same positions reaches. :func:`choose_reader` picks among
readers by cross-validated AUROC on the calibration split alone, so the evaluation split is
touched once, afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import softmax

from qkscore.estimators.base import CalibrationWarning, decide, stratified_folds
from qkscore.estimators.heads import HeadSelector
from qkscore.estimators.hybrid import HybridReader
from qkscore.estimators.linear import LinearQKReader
from qkscore.estimators.probe import HiddenStateProbe
from qkscore.estimators.protocol import (
    READERS,
    Reader,
    make_reader,
    reader_from_dict,
    reader_names,
)
from qkscore.stats import macro_auroc

__all__ = [
    "HIDDEN_PROBE",
    "READERS",
    "HiddenStateProbe",
    "HybridReader",
    "LinearQKReader",
    "as_margin_scores",
    "choose_reader",
    "cross_val_scores",
    "make_reader",
    "margin_cv_auroc",
    "model_margin_selector",
    "proba_auroc",
    "reader_fit",
    "reader_from_dict",
    "reader_predict_proba",
]

#: ``cross_val_scores``' name for the hidden-state probe (a baseline, not a reader).
HIDDEN_PROBE = "hidden_probe"


def proba_auroc(proba: np.ndarray, y: np.ndarray) -> float:
    """Binary: AUROC of P(option 0); multi-option: macro one-vs-rest (as the heads report)."""
    return macro_auroc(proba, y)


def reader_fit(
    reader: Reader,
    scores: Any,
    labels: Any,
    baseline: Any = None,
    *,
    groups: Sequence[Any] | None = None,
) -> Reader:
    """``reader.fit`` with the calibration warnings silenced (they were given once already)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return reader.fit(scores, labels, baseline=baseline, groups=groups)


def reader_predict_proba(reader: Reader, scores: Any, baseline: Any = None) -> np.ndarray:
    """``reader.predict_proba(scores, baseline=baseline)``."""
    return reader.predict_proba(scores, baseline=baseline)


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
    probe_cs: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Mean held-out AUROC and accuracy of reader ``name`` over ``cv`` stratified folds: each
    fold's items are predicted by a reader fit on the other folds only (its own inner choices
    included). Folds are scored one by one and averaged, as ``cross_val_score`` does: pooling
    the folds' probabilities would mix scales that differ from fold to fold.

    ``groups`` keeps each group (e.g. a problem's chain steps) whole in one fold, inner folds
    included; ``subsets`` (name -> item mask) also reports the held-out AUROC on those items
    only (``{"subsets": {name: {"auroc"}}}``); ``name="hidden_probe"`` cross-validates the
    hidden-state probe on ``hidden`` (its C searched among ``probe_cs`` when given)."""
    aucs, accs = [], []
    sub: dict[str, list[float]] = {k: [] for k in subsets or {}}
    for train, test in stratified_folds(labels, cv, seed, groups):
        if name == HIDDEN_PROBE:  # a baseline over the residual stream, not over the scores
            probe = HiddenStateProbe(random_state=seed, **({"Cs": probe_cs} if probe_cs else {}))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                probe.fit(hidden[train], labels[train], hidden_layers, groups=_at(groups, train))
            proba = probe.predict_proba(hidden[test])
        else:
            reader = reader_fit(
                make_reader(name, seed, metric),
                scores[train],
                labels[train],
                _at(baseline, train),
                groups=_at(groups, train),
            )
            proba = reader.predict_proba(scores[test], baseline=_at(baseline, test))
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
        for _, te in stratified_folds(labels, cv, seed, groups)
    ]
    return _nanmean(values)


def choose_reader(
    scores: np.ndarray,
    labels: np.ndarray,
    baseline: np.ndarray | None = None,
    candidates: Sequence[str] | None = None,
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
    candidates = reader_names() if candidates is None else tuple(candidates)
    results: dict[str, dict[str, Any]] = {}
    has_model = baseline is not None and bool(np.isfinite(baseline).all())
    for name in candidates:
        if READERS[name].cls.needs_baseline and not has_model:
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

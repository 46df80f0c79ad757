"""What every estimator over QK-scores shares: input checks, the calibration warning, JSON.

Input everywhere is ``scores``: float ``[items, layers, heads, options]`` and ``labels``: the
gold option index per item. Saved estimators are plain dicts with a ``kind`` and a
``format_version`` so a profile written today is refused, not misread, by other code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.exceptions import NotFittedError

from qkscore.decision import DECISION_RULE, decide

__all__ = [
    "FORMAT_VERSION",
    "MIN_CALIBRATION_ITEMS",
    "MIN_CLASS_FRACTION",
    "CalibrationWarning",
    "check_scores",
    "check_labels",
    "check_choice",
    "decide",
    "DECISION_RULE",
    "warn_calibration",
    "check_saved",
    "saved_params",
    "like_calibration",
    "not_fitted",
    "json_floats",
    "json_array",
    "proba_from_decision",
    "rank_key",
    "standardise",
    "stratified_folds",
]

#: The paper calibrates on about 400 balanced items; fewer makes the chosen head unreliable.
MIN_CALIBRATION_ITEMS = 400
#: Binary calibration sets whose minority option is rarer than this (45/55) are "unbalanced".
MIN_CLASS_FRACTION = 0.45
FORMAT_VERSION = 1


class CalibrationWarning(UserWarning):
    """The calibration set is smaller or less balanced than the paper's method needs."""


def check_scores(scores: Any) -> np.ndarray:
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


def check_labels(labels: Any, n_items: int, n_options: int) -> np.ndarray:
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


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def warn_calibration(y: np.ndarray, n_options: int) -> None:
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


def check_saved(data: Mapping[str, Any], kind: str, name: str) -> None:
    """A saved estimator dict must be of this kind and of the format this code reads."""
    if data.get("kind") != kind:
        raise ValueError(f"not a {name} dict (kind={data.get('kind')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported {name} format_version {data.get('format_version')!r}")


def saved_params(data: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The constructor arguments a ``to_dict`` stored, once its kind and version are checked
    (a grid of C values back as a tuple)."""
    check_saved(data, kind, name)
    params = dict(data["params"])
    if "Cs" in params:
        params["Cs"] = tuple(params["Cs"])
    return params


def like_calibration(est: Any, scores: Any) -> np.ndarray:
    """New scores must have the calibration data's layers, heads and options."""
    x = np.asarray(scores)
    expected = (est.n_layers_, est.n_heads_, est.n_options_)
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(
            f"scores must have shape [items, {expected[0]}, {expected[1]}, {expected[2]}] "
            f"like the calibration data, got {x.shape}"
        )
    return x


def not_fitted(obj: Any) -> NotFittedError:
    return NotFittedError(
        f"this {type(obj).__name__} is not fitted yet: call fit(scores, labels) first "
        "(or restore one with from_dict)"
    )


def rank_key(values: np.ndarray) -> np.ndarray:
    """Metric values for ranking: NaN (undefined AUROC) ranks below everything."""
    return np.where(np.isnan(values), -np.inf, values)


def standardise(x: np.ndarray, axis: int | tuple[int, ...] = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread along ``axis``; a constant feature gets spread 1 (it stays 0)."""
    mean = x.mean(axis=axis)
    scale = x.std(axis=axis)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale


def proba_from_decision(u: np.ndarray, n_options: int) -> np.ndarray:
    """Option probabilities from binary log-odds of option 0 ``[n]`` or utilities ``[n, o]``."""
    if n_options == 2:
        p0 = expit(u)
        return np.column_stack([p0, 1.0 - p0])
    return softmax(u, axis=1)


def json_floats(a: np.ndarray) -> list:
    """Nested lists of plain floats for JSON; NaN (undefined AUROC) becomes None."""
    return [
        json_floats(row)
        if isinstance(row, np.ndarray)
        else (None if math.isnan(row) else float(row))
        for row in a
    ]


def json_array(v: Any, dtype: Any = np.float64) -> np.ndarray:
    def conv(x: Any) -> Any:
        if isinstance(x, list):
            return [conv(e) for e in x]
        return np.nan if x is None else x

    return np.asarray(conv(v), dtype=dtype)


def stratified_folds(
    y: np.ndarray, cv: int, seed: int | None, groups: Sequence[Any] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index pairs of stratified ``cv``-fold cross-validation.

    With ``groups`` (e.g. the problem each chain step comes from), every group lies whole in
    one fold, so no fold is scored by an estimator that saw another part of its group; the
    folds are then as many as the groups allow, at most ``cv``, since a small calibration set
    may hold fewer problems with each label than folds. Without groups, every label must fill
    every fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    values = np.unique(y)
    if len(values) < 2:
        raise ValueError("cross-validation needs items of at least two options")
    if groups is None:
        smallest = int(min(np.sum(y == v) for v in values))
        if smallest < cv:
            raise ValueError(
                f"{cv}-fold cross-validation needs at least {cv} items of every option; the "
                f"rarest has {smallest}"
            )
        folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed)
        return list(folds.split(np.zeros(len(y)), y))
    g = np.asarray([str(x) for x in groups])
    if g.shape != y.shape:
        raise ValueError(f"{len(g)} groups for {len(y)} items")
    # a label found in fewer groups than folds leaves some training folds without it
    spread = min(len(np.unique(g[y == v])) for v in values)
    n_splits = min(int(cv), spread)
    if n_splits < 2:
        raise ValueError(
            "grouped cross-validation needs every option in at least 2 groups (problems); "
            f"one is found in {spread}"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(y)), y, g))

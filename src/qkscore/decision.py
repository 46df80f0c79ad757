"""The one verdict rule: which option a reader's probabilities pick.

A leaf (numpy only) that every layer may import: the shallow-matching baseline in ``data/``, the
readers in ``estimators/``, ``evaluate``, the judge and the lm-eval backend all decide by it, so
the accuracy a report prints is the accuracy of the verdicts served.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DECISION_RULE", "decide"]

#: :func:`decide` in words, stored in every profile so a reader of the file knows the rule.
DECISION_RULE = (
    "option 0 (valid) when the reader's probability of it is > 0.5, else option 1 (invalid); "
    "three or more options: the most probable. The single head's P(option 0) is "
    "expit(proba.coef * (sign * (score0 - score1) - threshold)): 0.5 lies on its threshold."
)


def decide(proba: Any) -> np.ndarray:
    """The one verdict rule of every reader: the option its probabilities favour.

    Why one function: the accuracy a report prints, the verdict ``check`` and the service give,
    and the probability beside it must come from the same rule, or a "valid" verdict can carry
    P(valid) < 0.5. Two options: option 0 only when P(option 0) > 0.5 strictly, so an exact tie
    reads option 1 (for a judge, "invalid": the cautious side, and the side a head's fitted
    threshold gives an item lying on it). Three or more: the argmax, ties to the first option.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must have shape [items, options], got {p.shape}")
    if p.shape[1] == 2:
        return np.where(p[:, 0] > 0.5, 0, 1)
    return p.argmax(axis=1)

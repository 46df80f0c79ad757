"""Adversarial filtering: drop the items whose wording alone gives their label.

Why: in Multi-LogiEval the label is fixed by the rule file (93 of its 104 depth/logic/rule
files hold one label only: every depth-1 modus tollens question is "no", every modus ponens one
"yes"), and each rule has its own wording, so a statement-only classifier reads the rule and
with it the label (0.714 on a label-balanced sample, where chance is 0.5). Within the mixed
non-monotonic files the "no" items negate the consequent of the "yes" items, the cue raw
PARARULE-Plus has. The statements cannot be rewritten the way :mod:`qkscore.data.debias`
rewrites PARARULE-Plus (there is no formal theory to re-prove), so this module *selects*
instead, after AFLite (Le Bras et al., "Adversarial Filters of Dataset Biases", ICML 2020):

1. labels are balanced within every stratum (logic family x depth by default), so neither
   the family nor the depth says anything, and a depth breakdown stays balanced;
2. repeatedly, the statement-only classifier of the shortcut audit
   (:func:`qkscore.data.shortcuts.statement_model`) is fitted on random halves of what is left
   and each item's *predictability* is the share of the halves it was held out of that got it
   right; within each stratum the most predictable items go, as many of each label (so the
   strata stay balanced), until no item of a stratum reaches ``tau`` on both labels.

What is left is a sample on which that classifier is at chance. The check in the audit uses
the same kind of classifier, so it confirms the filter did its job rather than proving that no
cue is left: a model of another kind (or a longer n-gram) may still find one. The tests also
try word bigrams with naive Bayes.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qkscore.data.items import Item

__all__ = ["CueFilterReport", "filter_statement_cues"]


@dataclass
class CueFilterReport:
    """What :func:`filter_statement_cues` kept and dropped."""

    items: int = 0
    balanced: int = 0
    kept: int = 0
    rounds: int = 0
    removed_per_round: list[int] = field(default_factory=list)
    cv_accuracy: list[float | None] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _balanced(items: Sequence[Item], key: Callable[[Item], Hashable], rng: random.Random):
    """Equal labels within every stratum: each label's share is the rarest label's count."""
    by_stratum: dict[Hashable, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    labels = sorted({it.label for it in items})
    for i, it in enumerate(items):
        by_stratum[key(it)][it.label].append(i)
    keep: list[int] = []
    for stratum in sorted(by_stratum, key=repr):
        groups = by_stratum[stratum]
        share = min(len(groups.get(label, [])) for label in labels)
        for label in labels:
            keep += rng.sample(groups[label], share)
    return sorted(keep)


def _predictability(items: Sequence[Item], splits: int, rng: random.Random) -> list[float]:
    """Per item, the share of random halves held out from a statement-only fit that got it
    right (0.5 where an item was never held out)."""
    import numpy as np

    from qkscore.data.shortcuts import statement_model

    x = np.asarray([it.statement for it in items], dtype=object)
    y = np.asarray([it.label for it in items], dtype=object)
    right = np.zeros(len(items))
    seen = np.zeros(len(items))
    for _ in range(splits):
        order = list(range(len(items)))
        rng.shuffle(order)
        train, test = np.array(order[: len(order) // 2]), np.array(order[len(order) // 2 :])
        if len(set(y[train])) < 2:
            continue
        pred = statement_model().fit(x[train], y[train]).predict(x[test])
        right[test] += pred == y[test]
        seen[test] += 1
    return [float(r / s) if s else 0.5 for r, s in zip(right, seen, strict=True)]


def _cv_accuracy(items: Sequence[Item], seed: int) -> float | None:
    """The shortcut audit's figure: 5-fold statement-only accuracy (None: too few items)."""
    from qkscore.data.shortcuts import statement_out_of_fold

    pred = statement_out_of_fold(items, seed=seed)
    if pred is None:
        return None
    return sum(p == it.label for p, it in zip(pred, items, strict=True)) / len(items)


def filter_statement_cues(
    items: Sequence[Item],
    *,
    seed: int = 0,
    strata: Sequence[str] = ("logic", "depth"),
    target: float = 0.55,
    tau: float = 0.75,
    splits: int = 16,
    step: int = 2,
    max_rounds: int = 200,
) -> tuple[list[Item], CueFilterReport]:
    """The items left after balancing labels per stratum and filtering statement-only cues (see
    the module docstring), in their original order, and a :class:`CueFilterReport`.

    Each round first measures the audit's 5-fold statement-only accuracy and stops once it is
    at most ``target``; otherwise it drops up to ``step`` items of each label per stratum, the
    most predictable first, among those at or above ``tau``, and stops when it drops nothing.
    (Filtering on past the target overshoots: the items left then mislead a statement-only
    classifier, which is a cue too, read the other way.)
    """
    rng = random.Random(f"qkscore-cue-filter:{seed}")

    def key(it: Item) -> Hashable:
        return tuple(str(it.meta.get(name)) for name in strata)

    report = CueFilterReport(
        items=len(items),
        params={
            "seed": seed,
            "strata": list(strata),
            "target": target,
            "tau": tau,
            "splits": splits,
            "step": step,
        },
    )
    kept = [items[i] for i in _balanced(items, key, rng)]
    report.balanced = len(kept)
    labels = sorted({it.label for it in kept})
    for _ in range(max_rounds):
        if len(labels) < 2 or len(kept) < 4:
            break
        accuracy = _cv_accuracy(kept, seed)
        report.cv_accuracy.append(accuracy)
        if accuracy is None or accuracy <= target:
            break
        score = _predictability(kept, splits, rng)
        drop: set[int] = set()
        by_stratum: dict[Hashable, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, it in enumerate(kept):
            if score[i] >= tau:
                by_stratum[key(it)][it.label].append(i)
        for groups in by_stratum.values():
            share = min(step, *(len(groups.get(label, [])) for label in labels))
            for label in labels:
                drop.update(sorted(groups[label], key=lambda i: -score[i])[:share])
        if not drop:
            break
        report.rounds += 1
        report.removed_per_round.append(len(drop))
        kept = [it for i, it in enumerate(kept) if i not in drop]
    report.kept = len(kept)
    return kept, report

"""Shape-matched selection: True/False pairs whose wording says nothing about the label.

Why: PrOntoQA-OOD ships only provable goals ("Prove: X."), so the False item of each example is
the grammatical negation of X (:func:`qkscore.data.negation.negate`). Within one file the goals
mostly share one polarity: every 1-hop AndElim, AndIntro, OrElim and OrIntro goal is plain and
every ProofByContra goal is negated, so "not" alone gives the label (the statement-only audit
scores 1.0), and De Morgan's and/or swap adds a second cue. A *valid* True/False set cannot fix
that by rewording: when every provable statement of a file is plain, every false statement built
from them carries a negation.

What can be done is to *select*. Each example is a pair (goal, True) + (counterpart, False). Call
:func:`statement_shape` the statement with its content words (names, concepts) blanked out, so
"Polly is a lempus." and "Max is an impus." share the shape ``X is a X``. A pair goes from shape
``s`` (its True statement) to shape ``t`` (its False one); :func:`match_pairs` keeps, for every
unordered shape pair ``{s, t}``, as many ``s -> t`` pairs as ``t -> s`` pairs (a seeded random
choice of the more common direction), and drops shapes with no mirror at all. Afterwards

* every shape occurs equally often with True and with False, so negation, and/or and every other
  function word carry no information, and
* the content words of a pair are the same in its two items, so names and concepts carry none
  either.

The label can then only be had by relating the statement to the context: by reasoning, or by a
context-statement shortcut such as shallow matching (:mod:`qkscore.data.shallow`), which this
selection does not remove and the audit reports separately. A file whose goals all share one
shape family (1-hop AndElim: all plain) keeps no pair: its label cannot be freed of the
negation cue, and the audit on the unmatched set says so.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Hashable, Sequence

from qkscore.data.items import Item
from qkscore.data.negation import NEGATION_WORDS

__all__ = ["FUNCTION_WORDS", "match_pairs", "statement_shape"]

#: Words a shape keeps; every other word becomes ``X``. "an" is written "a": the article
#: follows the content word, which the two items of a pair share anyway.
FUNCTION_WORDS: frozenset[str] = (
    frozenset(
        (
            "is",
            "are",
            "was",
            "were",
            "a",
            "an",
            "the",
            "and",
            "or",
            "either",
            "if",
            "then",
            "that",
            "it",
            "case",
            "every",
            "each",
            "all",
            "everything",
            "some",
            "something",
        )
    )  # fmt: skip
    | NEGATION_WORDS
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def statement_shape(statement: str) -> str:
    """The statement with every content word replaced by ``X`` ("Max is not an impus." ->
    ``X is not a X``); see the module docstring."""
    words = _WORD.findall(statement.lower().replace("\u2019", "'"))
    out = []
    for word in words:
        if word == "an":
            word = "a"
        out.append(word if word in FUNCTION_WORDS or word.endswith("n't") else "X")
    return " ".join(out)


def match_pairs(
    pairs: Sequence[tuple[Item, Item]], seed: int = 0, stratum: Sequence[Hashable] | None = None
) -> list[tuple[Item, Item]]:
    """Keep a shape-balanced subset of ``(true_item, false_item)`` pairs, in their order.

    ``stratum`` (one key per pair, e.g. the source file) matches within each key separately, so
    a glob over several files keeps every file's balance and its share of rules and depths.
    """
    if stratum is not None and len(stratum) != len(pairs):
        raise ValueError(f"{len(stratum)} strata for {len(pairs)} pairs")
    groups: dict[tuple[Hashable, frozenset[str]], dict[str, list[int]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for i, (true_item, false_item) in enumerate(pairs):
        if true_item.label != "True" or false_item.label != "False":
            raise ValueError(f"pair {i} is not (True, False): {true_item.id}, {false_item.id}")
        s, t = statement_shape(true_item.statement), statement_shape(false_item.statement)
        key = (None if stratum is None else stratum[i], frozenset((s, t)))
        groups[key][s].append(i)
    rng = random.Random(f"qkscore-match:{seed}")
    keep: list[int] = []
    for key in sorted(groups, key=repr):
        directions = groups[key]
        if len(key[1]) == 1:  # the counterpart has the goal's own shape: balanced already
            keep += directions[next(iter(key[1]))]
            continue
        if len(directions) < 2:
            continue
        share = min(len(v) for v in directions.values())
        for shape in sorted(directions):
            keep += rng.sample(directions[shape], share)
    return [pairs[i] for i in sorted(keep)]

"""Shallow matching: how far a set can be answered by matching words, with no reasoning at all.

Why: without distractors, a ProntoQA statement is true exactly when the context sentence that
names its property has the same polarity ("Every jompus is bitter." / "Max is bitter."). A
reader can then score high by lexical matching without following the chain, which is what
ProntoQA's distractor sentences exist to break. The statement-only audit cannot see this
shortcut, because it lives in the *relation* between context and statement; this baseline
can. It needs no model: a few cheap context-statement features (word overlap with each context
sentence, polarity of the best match, whether the statement's property appears with the same or
the opposite polarity, negation of the statement) and a depth-4 decision tree.

Items whose options are one fixed set of answer words (True/False, or True/False/Unknown as in
FOLIO): the features do not depend on the options, so the tree predicts the option index directly.
Items whose options differ from item to item (multiple choice) get no shallow baseline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from qkscore.data.items import Item
from qkscore.data.negation import NEGATION_WORDS, has_negation
from qkscore.decision import decide

__all__ = ["FEATURE_NAMES", "ShallowMatcher", "shallow_features", "supports_shallow"]

_WORD = re.compile(r"[a-z]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_STOP_WORDS = (
    "a an the is are was were be been being every each all some any that this it its of to and "
    "or if then something someone somebody there can we conclude does do did which who in on "
    "for with as by at also true false so thus therefore"
)
_STOP = frozenset(_STOP_WORDS.split())

FEATURE_NAMES = (
    "max_overlap",
    "best_match_same_polarity",
    "statement_negated",
    "property_same_polarity",
    "property_opposite_polarity",
    "all_words_same_polarity",
    "all_words_opposite_polarity",
    "sentences_naming_property",
)


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("es"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _content(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return [_stem(w) for w in words if w not in _STOP and w not in NEGATION_WORDS]


def shallow_features(context: str, statement: str) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of one (context, statement) pair, as floats."""
    stmt = _content(statement)
    negated = has_negation(statement)
    sentences = [s for s in _SENTENCE.split(context) if s.strip()]
    if not stmt or not sentences:
        return np.array([0.0, 0.0, float(negated), 0.0, 0.0, 0.0, 0.0, 0.0])
    wanted = set(stmt)
    prop = stmt[-1]
    overlaps, polarity_same, named_same, named_opp, full_same, full_opp = [], [], 0, 0, 0, 0
    named = 0
    for sentence in sentences:
        words = set(_content(sentence))
        same = has_negation(sentence) == negated
        overlaps.append(len(wanted & words) / len(wanted))
        polarity_same.append(same)
        if prop in words:
            named += 1
            named_same += same
            named_opp += not same
        if wanted <= words:
            full_same += same
            full_opp += not same
    best = int(np.argmax(overlaps))
    return np.array(
        [
            overlaps[best],
            float(polarity_same[best]),
            float(negated),
            float(named_same > 0),
            float(named_opp > 0),
            float(full_same > 0),
            float(full_opp > 0),
            float(named),
        ]
    )


def _options(it: Item | dict[str, Any]) -> tuple[str, ...]:
    return tuple(it.options if isinstance(it, Item) else it.get("options", ()))


def supports_shallow(items: Sequence[Item] | Sequence[dict[str, Any]]) -> bool:
    """Whether shallow matching applies: every item answers one fixed set of options (True /
    False, True / False / Unknown), so an option index means the same answer everywhere."""
    if not items:
        return False
    first = _options(items[0])
    return len(first) >= 2 and all(_options(it) == first for it in items)


def _texts(it: Item | dict[str, Any]) -> tuple[str, str]:
    if isinstance(it, Item):
        return it.context, it.statement
    if "context" not in it or "statement" not in it:
        raise ValueError(
            "items hold no context/statement text (a run folder made before qkscore recorded "
            "them): rescan to get the shallow-matching baseline"
        )
    return it["context"], it["statement"]


class ShallowMatcher:
    """A depth-4 decision tree over :func:`shallow_features`; predicts the option index
    (0 = True). Works on :class:`Item` objects or run-folder item records alike."""

    def __init__(self, max_depth: int = 4, random_state: int = 0) -> None:
        self.max_depth = max_depth
        self.random_state = random_state

    @staticmethod
    def features(items: Sequence[Item] | Sequence[dict[str, Any]]) -> np.ndarray:
        return np.stack([shallow_features(*_texts(it)) for it in items])

    def fit(self, items: Sequence[Any], labels: Sequence[int]) -> ShallowMatcher:
        from sklearn.tree import DecisionTreeClassifier

        y = np.asarray(labels)
        self.n_options_ = max(len(_options(items[0])) if len(items) else 0, int(y.max()) + 1, 2)
        self.tree_ = DecisionTreeClassifier(
            max_depth=self.max_depth, min_samples_leaf=5, random_state=self.random_state
        ).fit(self.features(items), y)
        return self

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        proba = np.zeros((len(items), self.n_options_))
        proba[:, self.tree_.classes_] = self.tree_.predict_proba(self.features(items))
        return proba

    def predict(self, items: Sequence[Any]) -> np.ndarray:
        return decide(self.predict_proba(items))

"""negate() on every real PrOntoQA-OOD goal, plus the hand-picked forms the loader relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkscore.data.formats.helpers import make_item
from qkscore.data.negation import has_negation, lower_first, negate, upper_first
from qkscore.data.shortcuts import find_shortcuts

PROVE = "Prove: "


def _ood_goals(shared_data: Path) -> dict[str, list[str]]:
    """Every "Prove: X." goal of every OOD file: test and in-context examples alike."""
    out: dict[str, list[str]] = {}
    for path in sorted((shared_data / "prontoqa" / "ood_proofs_only_8shot").glob("*.json")):
        records = json.loads(path.read_text(encoding="utf-8"))
        out[path.name] = [
            example["query"][len(PROVE) :]
            for record in records.values()
            for example in record.values()
        ]
    return out


def test_every_ood_goal_negates_and_round_trips(shared_data: Path) -> None:
    goals = _ood_goals(shared_data)
    assert len(goals) == 14
    for name, sentences in goals.items():
        assert len(sentences) == 900, name  # 100 records x (8 shots + 1 test example)
        for sentence in sentences:
            negation = negate(sentence)
            assert negation != sentence, (name, sentence)
            assert negate(negation) == sentence, (name, sentence, negation)
            assert negation.endswith("."), (name, negation)
            assert not negation.startswith("It is not the case"), (name, sentence)


def test_negation_toggles_not_on_single_clauses(shared_data: Path) -> None:
    """A goal that says "not" loses it, so "not" alone cannot tell the goal from its negation."""
    for sentences in _ood_goals(shared_data).values():
        for sentence in sentences:
            if " and " in sentence or " or " in sentence:
                continue
            assert has_negation(sentence) != has_negation(negate(sentence)), sentence


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Max is bitter.", "Max is not bitter."),
        ("Max is not bitter.", "Max is bitter."),
        ("Every wumpus is a jompus.", "Every wumpus is not a jompus."),
        ("Wumpuses are jompuses.", "Wumpuses are not jompuses."),
        ("Wren is a wumpus and Wren is bitter.", "Wren is not a wumpus or Wren is not bitter."),
        ("Polly is slow and a numpus.", "Polly is not slow or not a numpus."),
        ("Polly is slow or a numpus.", "Polly is not slow and not a numpus."),
        (
            "Sam is a dumpus, a vumpus, or a zumpus.",
            "Sam is not a dumpus, not a vumpus, and not a zumpus.",
        ),
        (
            "Sam is not a lempus and Sam is not a sterpus.",
            "Sam is a lempus or Sam is a sterpus.",
        ),
        (
            "Alex is a brimpus, Alex is not a gorpus, and Alex is not a numpus.",
            "Alex is not a brimpus, Alex is a gorpus, or Alex is a numpus.",
        ),
        ("Red, cold things are round.", "Red, cold things are not round."),
        ("Bob and Alice are tall.", "Bob and Alice are not tall."),
        # No copula to negate: the explicit fallback, which negate() undoes.
        ("Max likes cats.", "It is not the case that Max likes cats."),
        (
            "If something is red then it is big.",
            "It is not the case that if something is red then it is big.",
        ),
        ("No cat is red.", "It is not the case that no cat is red."),
        (
            "Polly is a wumpus or Polly likes Rex.",
            "It is not the case that Polly is a wumpus or Polly likes Rex.",
        ),
    ],
)
def test_negate_forms(sentence: str, expected: str) -> None:
    assert negate(sentence) == expected
    assert negate(expected) == sentence


def test_negate_keeps_missing_final_period_and_rejects_empty() -> None:
    assert negate("The cat is red") == "The cat is not red"
    with pytest.raises(ValueError):
        negate("  ")
    with pytest.raises(ValueError):
        negate(".")


def test_has_negation() -> None:
    assert has_negation("Max is not bitter.")
    assert has_negation("Bob doesn't like cats.")
    assert has_negation("No cat is red.")
    assert has_negation("Polly is neither slow nor a numpus.")
    assert not has_negation("Max is bitter.")
    assert not has_negation("Nothingness is a notion.")  # whole words only


def test_case_helpers() -> None:
    assert lower_first("The cat is red") == "the cat is red"
    assert lower_first("Max is red") == "Max is red"  # names keep their capital
    assert upper_first("the cat IS red") == "The cat IS red"


def test_meta_negated_and_the_shortcut_audit_split_agree() -> None:
    """One definition: the loaders' ``meta["negated"]`` and the audit's negated/plain split."""
    statements = [
        "Bob is big.",
        "Bob is not big.",
        "Bob isn\u2019t big.",  # typographic apostrophe
        "Bob is big without a doubt.",  # "without" counts for both
        "Nothingness is a notion.",
        "Neither Bob nor Ann is big.",
        "Bob cannot fly.",
        "Bob is notable.",
    ]
    items = [
        make_item(f"t/{i}", "Bob is big.", s, "True" if i % 2 else "False")
        for i, s in enumerate(statements)
    ]
    flags = [item.meta["negated"] for item in items]
    assert flags == [False, True, True, True, False, True, True, False]
    assert find_shortcuts(items, folds=2).negated["n"] == sum(flags)
    assert find_shortcuts(items, folds=2).plain["n"] == len(flags) - sum(flags)

"""The statement-only shortcut audit, on real sets with known answers and on edge cases.

Items are built here straight from the raw files with ``json`` so that these tests check the
audit, not a loader.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from qkscore.data.items import Item
from qkscore.data.negation import has_negation
from qkscore.data.shortcuts import audit_items, shallow_out_of_fold, statement_out_of_fold
from qkscore.data.spec import load_items
from qkscore.decision import decide

PARARULE_D2_DEV = "pararule_plus/Depth2/PARARULE_Plus_Depth2_shuffled_dev.jsonl"


def _raw_pararule(path: Path, lines: int) -> list[Item]:
    items = []
    with path.open(encoding="utf-8") as fh:
        for line in itertools.islice(fh, lines):
            record = json.loads(line)
            for q in record["questions"]:
                items.append(Item(q["id"], record["context"], q["text"], q["label"].capitalize()))
    return items


def _prontoqa(folder: Path, pattern: str) -> list[Item]:
    items = []
    for path in sorted(folder.glob(pattern)):
        for key, example in json.loads(path.read_text(encoding="utf-8")).items():
            test = example["test_example"]
            statement = test["query"].split(":", 1)[1].strip()  # "True or false: X"
            items.append(Item(f"{path.stem}/{key}", test["question"], statement, test["answer"]))
    return items


def test_raw_pararule_plus_is_flagged_and_the_report_says_why(shared_data: Path) -> None:
    items = _raw_pararule(shared_data / PARARULE_D2_DEV, 400)
    report = audit_items(items)
    assert report.count == len(items) > 3000
    assert report.flagged
    assert report.statement_only_accuracy is not None and report.statement_only_accuracy >= 0.99
    assert report.label_counts["True"] == report.label_counts["False"]  # balanced, yet flagged
    assert report.negated["rates"]["False"] == 1.0 and report.plain["rates"]["True"] == 1.0
    assert report.negation_gap == 1.0
    assert report.cues[0][:2] == ("not", "False")
    assert ("not", pytest.approx(report.cues[0][2])) == report.top_words["False"][0]
    assert any("'not' -> False" in reason for reason in report.reasons)
    json.dumps(report.to_dict())


def test_prontoqa_passes(shared_data: Path) -> None:
    items = _prontoqa(shared_data / "prontoqa" / "truefalse_0shot", "*hop_0shot_random.json")
    assert len(items) == 1000
    report = audit_items(items)
    assert report.statement_only_accuracy is not None
    assert report.statement_only_accuracy < 0.65 and not report.flagged


OOD = "prontoqa/ood_proofs_only_8shot"


def test_prontoqa_ood_and_elim_is_flagged_twice(shared_data: Path) -> None:
    """1-hop AndElim: every goal is plain (so "not" marks the False item) and its words stand in
    one context sentence ("Fae is a tumpus and a grimpus." -> "Fae is a grimpus.")."""
    items = load_items(f"prontoqa-ood:{shared_data / OOD / '1hop_AndElim_random_noadj.json'}")
    report = audit_items(items)
    assert report.flagged and report.label_counts == {"False": 100, "True": 100}
    assert report.statement_only_accuracy == 1.0 and report.shallow_accuracy == 1.0
    assert report.cues[0][:2] == ("not", "False")
    assert any("shallow" in reason for reason in report.reasons)
    # the debiased variant has no plain/negated mirror to keep
    assert load_items(f"prontoqa-ood:{shared_data / OOD / '1hop_AndElim_random_noadj.json'}"
                      "?debias=1") == []  # fmt: skip


def test_prontoqa_ood_debias_removes_the_statement_cue_not_shallow_matching(
    shared_data: Path,
) -> None:
    spec = f"prontoqa-ood:{shared_data / OOD / '*.json'}"
    raw, debiased = audit_items(load_items(spec)), audit_items(load_items(spec + "?debias=1"))
    assert raw.statement_only_accuracy is not None and raw.statement_only_accuracy >= 0.65
    assert debiased.statement_only_accuracy is not None
    assert debiased.statement_only_accuracy < 0.55 and debiased.negation_gap == 0.0
    # The sets have no distractor sentences: word overlap and polarity still give the label.
    assert debiased.flagged and debiased.shallow_accuracy is not None
    assert debiased.shallow_accuracy >= 0.65
    for path in sorted((shared_data / OOD).glob("*.json")):
        items = load_items(f"prontoqa-ood:{path}?debias=1")
        if items:
            report = audit_items(items)
            assert report.statement_only_accuracy is not None, path.name
            assert report.statement_only_accuracy < 0.65, path.name
    proofs_only = audit_items(load_items(f"prontoqa-ood:{shared_data / OOD}/*ProofsOnly*.json"
                                         "?debias=1"))  # fmt: skip
    assert proofs_only.shallow_accuracy == 1.0 and proofs_only.flagged


def test_out_of_fold_predictions_match_the_reports_folds(shared_data: Path) -> None:
    items = load_items(f"prontoqa-ood:{shared_data / OOD / '2hop_Composed_random_noadj.json'}")
    report = audit_items(items)
    proba = shallow_out_of_fold(items)
    assert proba is not None and proba.shape == (len(items), 2)
    y = [it.answer_index for it in items]
    shallow = float((decide(proba) == y).mean())
    assert shallow == pytest.approx(report.shallow_accuracy, abs=0.02)  # mean of equal folds
    labels = statement_out_of_fold(items)
    assert labels is not None and set(labels) <= {"True", "False"}
    accuracy = sum(p == it.label for p, it in zip(labels, items, strict=True)) / len(items)
    assert accuracy == pytest.approx(report.statement_only_accuracy, abs=0.02)
    assert statement_out_of_fold(items[:3]) is None and shallow_out_of_fold(items[:3]) is None


def _tf(i: int, statement: str, label: str, context: str = "") -> Item:
    return Item(f"x{i}", context or f"context {i}", statement, label)


def test_tiny_sets_get_a_message_not_a_crash() -> None:
    report = audit_items([_tf(0, "Bob is big.", "True"), _tf(1, "Bob is not big.", "False")])
    assert report.statement_only_accuracy is None and not report.flagged
    assert any("fewer than folds" in note for note in report.notes)
    empty = audit_items([])
    assert empty.count == 0 and empty.statement_only_accuracy is None and not empty.flagged
    # Enough items but a label too rare to stratify.
    rare = [_tf(i, f"Bob is w{i}.", "True") for i in range(9)] + [_tf(9, "Bob is x.", "False")]
    report = audit_items(rare)
    assert report.statement_only_accuracy is None
    assert any("fewer than 2 times" in note for note in report.notes)


def test_single_label_set_is_flagged() -> None:
    items = [_tf(i, f"Anne is w{i}.", "True") for i in range(12)]
    report = audit_items(items)
    assert report.flagged and report.statement_only_accuracy == 1.0


def test_folds_shrink_to_the_rarest_label() -> None:
    items = [_tf(i, f"Anne is p{i}.", "True") for i in range(20)]
    items += [_tf(20 + i, f"Anne is not q{i}.", "False") for i in range(3)]
    report = audit_items(items, folds=5)
    assert report.folds_used == 3
    assert any("folds reduced" in note for note in report.notes)


def test_unknown_labels_and_threshold_parameter() -> None:
    words = {"True": "alpha", "False": "beta", "Unknown": "gamma"}
    items = [
        Item(f"u{i}", f"ctx {i}", f"Dave is {words[label]} {i}.", label,
             options=("True", "False", "Unknown"))
        for i, label in enumerate(["True", "False", "Unknown"] * 10)
    ]  # fmt: skip
    report = audit_items(items)
    assert set(report.label_counts) == {"True", "False", "Unknown"}
    assert report.flagged and report.statement_only_accuracy == 1.0
    assert {cue[0] for cue in report.cues[:3]} == {"alpha", "beta", "gamma"}
    assert not audit_items(items, threshold=1.01).flagged


def test_multiple_choice_classifies_the_label_letter() -> None:
    options = ("A) True", "B) False", "C) Unknown")
    items = [
        Item(f"m{i}", f"ctx {i}", f"Question {i}: is it so?", "ABC"[i % 3], options=options)
        for i in range(30)
    ]
    report = audit_items(items)
    assert set(report.label_counts) == {"A", "B", "C"}
    assert report.statement_only_accuracy is not None and report.statement_only_accuracy < 0.65


def test_grouping_by_context_keeps_pairs_together() -> None:
    # Each context asks a statement and its negation with opposite labels: ungrouped folds
    # "learn" from the partner and fall far below chance; grouped folds do not.
    items = []
    for i in range(40):
        ctx = f"context {i}"
        items.append(_tf(2 * i, f"E{i} is p{i}.", "True" if i % 2 else "False", ctx))
        items.append(_tf(2 * i + 1, f"E{i} is not p{i}.", "False" if i % 2 else "True", ctx))
    grouped = audit_items(items)
    assert grouped.grouped_by_context
    assert grouped.statement_only_accuracy is not None
    ungrouped = audit_items(items, group_by_context=False)
    assert ungrouped.statement_only_accuracy is not None
    assert ungrouped.statement_only_accuracy < grouped.statement_only_accuracy


def test_has_negation() -> None:
    assert has_negation("Bob is not big.") and has_negation("Bob isn't big.")
    assert has_negation("No cat is red.") and not has_negation("Nothingness is big.")
    assert not has_negation("Bob is notable.")

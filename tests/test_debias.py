"""Debiasing PARARULE-Plus on slices of the real files.

The raw set is answerable from the word "not"; the rewritten one must not be, must hold the four
statement kinds in equal numbers at every depth, and must agree with the original labels
wherever it asks the same question (or explain each disagreement).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from qkscore.data.debias import (
    KINDS,
    debias_pararule,
    debias_report,
    debias_with_report,
)
from qkscore.data.logic import forward_chain, parse_statement, parse_theory
from qkscore.data.shortcuts import audit_items
from qkscore.data.spec import DataSpec

D2_DEV = "pararule_plus/Depth2/PARARULE_Plus_Depth2_shuffled_dev.jsonl"
D3_TEST = "pararule_plus/Depth3/PARARULE_Plus_Depth3_shuffled_test.jsonl"
D4_TEST = "pararule_plus/Depth4/PARARULE_Plus_Depth4_shuffled_test.jsonl"


def _records(path: Path, lines: int) -> list[tuple[str, int, dict]]:
    with path.open(encoding="utf-8") as fh:
        return [
            (str(path), i, json.loads(line))
            for i, line in enumerate(itertools.islice(fh, lines), start=1)
        ]


@pytest.fixture(scope="module")
def d2(shared_data: Path) -> tuple[list, object, list]:
    records = _records(shared_data / D2_DEV, 400)
    items, report = debias_with_report(records, seed=0)
    return records, report, items


def test_every_context_parses(d2: tuple) -> None:
    records, report, items = d2
    assert report.records == 400
    assert report.contexts_parsed == 400 and report.parse_rate == 1.0
    assert report.contexts_skipped == 0 and report.unparsed_examples == []
    assert len(items) == 4 * 400  # one quadruple per context by default


def test_four_kinds_balanced_per_depth(d2: tuple) -> None:
    _, report, items = d2
    per_depth: dict[int, Counter] = defaultdict(Counter)
    for item in items:
        per_depth[item.meta["depth"]][item.meta["kind"]] += 1
        assert item.meta["negated"] == item.meta["kind"].startswith("negated")
        assert item.label == ("True" if item.meta["kind"].endswith("true") else "False")
    assert len(per_depth) >= 2 and min(per_depth) >= 1
    for depth, counts in per_depth.items():
        assert set(counts) == set(KINDS) and len(set(counts.values())) == 1, (depth, counts)
        assert report.per_depth_kind[depth] == dict(counts)


def test_labels_and_depths_are_the_provers(d2: tuple) -> None:
    _, _, items = d2
    for item in items[:400]:
        answer = forward_chain(parse_theory(item.context), "closed").query(
            parse_statement(item.statement)
        )
        assert (answer.label, answer.depth) == (item.label, item.meta["depth"]), item


def test_agreement_with_original_labels(d2: tuple) -> None:
    _, report, items = d2
    assert report.original_questions_checked > 3000
    assert report.original_disagree == 0 and report.original_agree == (
        report.original_questions_checked
    )
    assert report.items_matching_original_text > 0
    assert report.items_agreeing_with_original == report.items_matching_original_text
    for item in items:
        if item.meta["original_label"] is not None:
            assert item.meta["original_label"] == item.label


def test_every_statement_word_is_label_balanced_within_a_quadruple(d2: tuple) -> None:
    _, _, items = d2
    quads: dict[str, list] = defaultdict(list)
    for item in items:
        quads[item.id.rsplit("-", 2)[0]].append(item)  # "<record>-db<k>-<kind>"
    for group in quads.values():
        assert len(group) == 4 and len({it.context for it in group}) == 1
        words: dict[str, Counter] = defaultdict(Counter)
        for it in group:
            for w in it.statement.rstrip(".").split():
                words[w][it.label] += 1
        for w, labels in words.items():
            assert labels["True"] == labels["False"], (w, group)


def test_debiased_passes_the_audit_that_raw_fails(d2: tuple) -> None:
    _, _, items = d2
    report = audit_items(items)
    assert report.statement_only_accuracy is not None
    assert report.statement_only_accuracy < 0.65 and not report.flagged
    assert report.negation_gap == 0.0


def test_deeper_files_and_explained_disagreements(shared_data: Path) -> None:
    records = _records(shared_data / D3_TEST, 150) + _records(shared_data / D4_TEST, 150)
    items, report = debias_with_report(records, per_context=8, seed=1)
    assert report.parse_rate == 1.0
    assert max(report.per_depth_kind) >= 4
    # NegationRule-D4 questions labelled with negation as failure over stated facts only:
    # each disagreement must be reproduced by that reading, none left unexplained.
    assert report.original_disagree > 0  # this slice holds NegationRule-D4 contexts
    assert report.unexplained_disagreements == 0
    assert report.original_disagree == report.explained_by_given_only_naf
    for ex in report.disagreement_examples:
        assert ex["explained_by_given_only_naf"]
    for counts in report.per_depth_kind.values():
        assert len(set(counts.values())) == 1
    assert len(items) == sum(sum(c.values()) for c in report.per_depth_kind.values())
    assert not audit_items(items).flagged


def test_unparsed_context_is_skipped_and_counted(shared_data: Path) -> None:
    records = _records(shared_data / D2_DEV, 5)
    odd = dict(records[0][2], id="odd-1")
    odd["context"] = odd["context"] + " Bob sometimes dreams of big rocks."
    items, report = debias_with_report([*records, ("mem.jsonl", 99, odd), ("mem.jsonl", 100, {})])
    assert report.records == 7 and report.contexts_parsed == 5 and report.contexts_skipped == 2
    assert report.skipped_reasons == {"unparsed sentence": 1, "no context": 1}
    assert report.unparsed_examples[0]["sentence"] == "Bob sometimes dreams of big rocks."
    assert report.unparsed_examples[0]["line"] == 99
    assert not any(it.meta["original_id"] == "odd-1" for it in items)


def test_spec_parameters_determinism_and_report(shared_data: Path) -> None:
    records = _records(shared_data / D2_DEV, 60)
    spec = DataSpec("pararule-plus", "x", {"seed": "4", "per_context": "8", "n": "100"}, "raw")
    items = debias_pararule(records, spec)
    assert len(items) == 100 and len({it.id for it in items}) == 100
    report = debias_pararule.last_report
    assert report["items"] == 100 and report["params"]["per_context"] == 8
    again = debias_pararule(records, spec)
    assert [a.to_dict() for a in again] == [b.to_dict() for b in items]
    other = debias_pararule(records, DataSpec("pararule-plus", "x", {"seed": "5"}, "raw"))
    assert [a.statement for a in other] != [b.statement for b in items[: len(other)]]
    assert debias_report(records, spec)["items"] == 100
    json.dumps(report)
    meta = items[0].meta
    assert meta["source"] == "pararule-plus" and meta["debiased"] is True
    assert meta["split"] == "dev" and meta["entities"] in ("people", "animals")


# ------------------------------------------------------------------------- Multi-LogiEval


@pytest.fixture(scope="module")
def multi_logieval(shared_data: Path) -> tuple[list, list]:
    from qkscore.data.spec import load_items

    folder = shared_data / "multi_logieval" / "data"
    return load_items(f"multi-logieval:{folder}"), load_items(f"multi-logieval:{folder}?debias=1")


def _other_statement_only_accuracy(items: list) -> float:
    """A statement-only classifier of another kind than the audit's: word unigrams and bigrams,
    naive Bayes, 5-fold."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.model_selection import cross_val_score
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(CountVectorizer(ngram_range=(1, 2)), MultinomialNB())
    x, y = [it.statement for it in items], [it.label for it in items]
    return float(cross_val_score(model, x, y, cv=5).mean())


def test_multi_logieval_wording_gives_the_label_raw(multi_logieval: tuple) -> None:
    raw, _ = multi_logieval
    rules: dict[tuple, set] = defaultdict(set)
    for it in raw:
        rules[(it.meta["logic"], it.meta["depth"], it.meta["rule"])].add(it.label)
    assert sum(len(labels) == 1 for labels in rules.values()) == 93 and len(rules) == 104
    report = audit_items(_balanced(raw))
    assert report.flagged and report.statement_only_accuracy >= 0.65


def test_debiased_multi_logieval_is_at_chance_for_the_statement_alone(
    multi_logieval: tuple,
) -> None:
    raw, items = multi_logieval
    assert 300 < len(items) < len(raw) and all(it.meta["debiased"] for it in items)
    assert {it.id for it in items} <= {it.id for it in raw}
    strata = Counter((it.meta["logic"], it.meta["depth"], it.label) for it in items)
    for (logic, depth, _), count in strata.items():  # labels balanced per family and depth
        assert strata[(logic, depth, "True")] == strata[(logic, depth, "False")] == count
    assert {it.meta["depth"] for it in items} == {1, 2, 3, 4, 5}
    report = audit_items(items)
    assert not report.flagged
    for seed in (0, 1, 2):  # the audit's own classifier, on other folds too
        accuracy = audit_items(items, seed=seed).statement_only_accuracy
        assert accuracy is not None and 0.42 <= accuracy <= 0.58, seed
    assert _other_statement_only_accuracy(items) < 0.6
    assert _other_statement_only_accuracy(_balanced(raw)) >= 0.65


def _balanced(items: list) -> list:
    trues = [it for it in items if it.label == "True"]
    falses = [it for it in items if it.label == "False"]
    return trues[: len(falses)] + falses

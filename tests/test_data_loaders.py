"""Loaders on the real benchmark files (counts, labels, meta) and on small bad files."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from qkscore.data import formats
from qkscore.data.items import TRUE_FALSE, TRUE_FALSE_UNKNOWN, DataError, Item
from qkscore.data.matched import statement_shape
from qkscore.data.negation import negate
from qkscore.data.overview import summarize
from qkscore.data.spec import available_formats, load_items

EXPECTED_FORMATS = {
    "prontoqa",
    "prontoqa-ood",
    "pararule-plus",
    "multi-logieval",
    "proofwriter",
    "folio",
    "mmlu",
    "jsonl",
    "csv",
    "hf",
}


def _labels(items: list[Item]) -> Counter[str]:
    return Counter(item.label for item in items)


def _unique_ids(items: list[Item]) -> bool:
    return len({item.id for item in items}) == len(items)


def test_formats_registered_with_descriptions() -> None:
    formats = available_formats()
    assert set(formats) >= EXPECTED_FORMATS
    assert all(formats[name].description for name in EXPECTED_FORMATS)


# ------------------------------------------------------------------------------------ ProntoQA


def test_prontoqa_truefalse_files(shared_data: Path) -> None:
    folder = shared_data / "prontoqa" / "truefalse_0shot"
    files = sorted(folder.glob("*.json"))
    assert len(files) == 18
    for path in files:
        items = load_items(f"prontoqa:{path}")
        assert len(items) == 200, path.name
        assert set(_labels(items)) == {"True", "False"}
        meta = items[0].meta
        assert meta["depth"] == int(path.name[0]), path.name
        assert meta["distractors"] is ("nodistractor" not in path.name)
        expected_ontology = (
            "true"
            if "trueontology" in path.name
            else "false"
            if "falseontology" in path.name
            else "fictional"
        )
        assert meta["ontology"] == expected_ontology
    items = load_items(f"prontoqa:{folder}")
    assert len(items) == 18 * 200 and _unique_ids(items)
    first = items[0]
    assert first.id == "1hop_0shot_random/example1"
    assert not first.statement.startswith("True or false")
    assert first.statement.endswith(".")
    assert first.meta["source"] == "prontoqa" and first.meta["split"] == "test"
    assert first.meta["chain_of_thought"][-1] in (first.statement, negate(first.statement))
    assert all(item.meta["negated"] == (" not " in item.statement) for item in items)


def test_prontoqa_rejects_ood_files(shared_data: Path) -> None:
    path = shared_data / "prontoqa" / "ood_proofs_only_8shot" / "1hop_AndElim_random_noadj.json"
    with pytest.raises(DataError) as err:
        load_items(f"prontoqa:{path}")
    assert err.value.field == "test_example.query" and err.value.line is not None
    assert "prontoqa-ood" in str(err.value)


def test_prontoqa_ood_pairs(shared_data: Path) -> None:
    folder = shared_data / "prontoqa" / "ood_proofs_only_8shot"
    items = load_items(f"prontoqa-ood:{folder}")
    assert len(items) == 14 * 100 * 2 and _unique_ids(items)
    assert _labels(items) == {"True": 1400, "False": 1400}
    by_id = {item.id: item for item in items}
    goals = [item for item in items if item.id.endswith("/goal")]
    assert len(goals) == 1400
    for goal in goals:
        negation = by_id[goal.meta["pair"] + "/negation"]
        assert goal.label == "True" and negation.label == "False"
        assert negation.statement == negate(goal.statement)
        assert negation.context == goal.context and negation.meta["constructed_negation"]
        assert goal.meta["chain_of_thought"]  # the proof of the goal, for the chain verifier
    rules = Counter(item.meta["rule"] for item in goals)
    assert rules == {
        "ProofsOnly": 500,
        "Composed": 400,
        "AndIntro": 100,
        "AndElim": 100,
        "OrIntro": 100,
        "OrElim": 100,
        "ProofByContra": 100,
    }
    assert sum(item.meta["ood"] for item in goals) == 100  # 4hop_OOD_Composed
    assert {item.meta["depth"] for item in goals} == {1, 2, 3, 4, 5}
    # Where goals are a mix of positive and negative (ProofsOnly), "not" is no label cue.
    proofs_only = [item for item in items if item.meta["rule"] == "ProofsOnly"]
    with_not = [item for item in proofs_only if item.meta["negated"]]
    true_share = sum(item.label == "True" for item in with_not) / len(with_not)
    assert 0.4 < true_share < 0.6


def test_prontoqa_ood_debias_keeps_shape_matched_pairs(shared_data: Path) -> None:
    folder = shared_data / "prontoqa" / "ood_proofs_only_8shot"
    raw = load_items(f"prontoqa-ood:{folder}")
    items = load_items(f"prontoqa-ood:{folder}?debias=1")
    assert 0 < len(items) < len(raw) and _unique_ids(items)
    assert {item.id for item in items} <= {item.id for item in raw}
    assert all(item.meta["debiased"] for item in items)
    by_pair: dict[str, list] = {}
    for item in items:
        by_pair.setdefault(item.meta["pair"], []).append(item)
    assert all(sorted(i.label for i in pair) == ["False", "True"] for pair in by_pair.values())
    # every file on its own: each statement shape is True as often as False, so negated
    # statements are half True, half False
    for file in {item.meta["file"] for item in items}:
        in_file = [item for item in items if item.meta["file"] == file]
        shapes = Counter((statement_shape(i.statement), i.label) for i in in_file)
        assert all(shapes[(s, "True")] == shapes[(s, "False")] for s, _ in shapes), file
        negated = Counter(i.label for i in in_file if i.meta["negated"])
        assert negated["True"] == negated["False"] > 0, file
    # goals of one polarity only (every 1-hop AndElim goal is plain) leave nothing to match
    kept_rules = {item.meta["rule"] for item in items}
    assert "AndElim" not in kept_rules and {"ProofsOnly", "Composed"} <= kept_rules
    again = load_items(f"prontoqa-ood:{folder}?debias=1&seed=0")
    assert [i.id for i in again] == [i.id for i in items]
    other = load_items(f"prontoqa-ood:{folder}?debias=1&seed=1")
    assert len(other) == len(items) and {i.id for i in other} != {i.id for i in items}
    with pytest.raises(DataError, match="debiass"):
        load_items(f"prontoqa-ood:{folder}?debiass=1")


def test_prontoqa_shots(shared_data: Path) -> None:
    path = shared_data / "prontoqa" / "ood_proofs_only_8shot" / "1hop_OrElim_random_noadj.json"
    shots = formats.prontoqa_shots(path, record="example3")
    assert len(shots) == 16  # 8 in-context examples, each a goal and its negation
    assert _labels(shots) == {"True": 8, "False": 8}
    assert shots[0].id == "1hop_OrElim_random_noadj/example3/shot0/goal"
    assert len(formats.prontoqa_shots(path)) == 100 * 16
    test_item = next(
        i for i in load_items(f"prontoqa-ood:{path}") if i.meta["record"] == "example3"
    )
    assert all(shot.context != test_item.context for shot in shots)
    with pytest.raises(DataError):
        formats.prontoqa_shots(path, record="no-such-record")


# ------------------------------------------------------------------------------- PARARULE-Plus


def test_pararule_plus_depth2_dev(shared_data: Path) -> None:
    path = shared_data / "pararule_plus" / "Depth2" / "PARARULE_Plus_Depth2_shuffled_dev.jsonl"
    items = load_items(f"pararule-plus:{path}")
    # Counted from the file: 1,796 records (the last line has no newline), 16,204 questions.
    assert len(items) == 16204 and _unique_ids(items)
    assert _labels(items) == {"True": 8102, "False": 8102}
    assert {item.meta["depth"] for item in items} == {2}
    assert {item.meta["split"] for item in items} == {"dev"}
    assert {item.meta["theory"] for item in items} == {"NegationRule", "NonNegationRule"}
    first = items[0]
    assert first.id == "PARARULE_Plus_Depth2_shuffled_dev/NonNegationRule-D2-2052/q1"
    assert (first.statement, first.label) == ("Harry is quiet.", "True")
    assert first.meta["entities"] == "people"
    assert Counter(item.meta["entities"] for item in items)["animals"] > 0
    assert items[1].statement == "Harry is not quiet." and items[1].meta["negated"]


def test_pararule_debias_hands_off_records(shared_data: Path, monkeypatch) -> None:
    path = shared_data / "pararule_plus" / "Depth3" / "PARARULE_Plus_Depth3_shuffled_test.jsonl"
    calls = []

    def fake_debias(records, spec):
        calls.append((records, spec))
        return [Item("x", "c", "s", "True")]

    fake = types.ModuleType("qkscore.data.debias")
    fake.debias_pararule = fake_debias
    monkeypatch.setitem(sys.modules, "qkscore.data.debias", fake)
    items = load_items(f"pararule-plus:{path}?debias=1&seed=3")
    assert [item.id for item in items] == ["x"]
    ((records, spec),) = calls
    assert len(records) == 300 and spec.get("seed") == "3"
    file, line, record = records[0]
    assert (file, line) == (str(path), 1) and isinstance(record, dict) and "questions" in record
    assert records[-1][1] == 300


# ------------------------------------------------------------------------------ Multi-LogiEval


def test_multi_logieval_default_is_the_1556(shared_data: Path) -> None:
    folder = shared_data / "multi_logieval" / "data"
    items = load_items(f"multi-logieval:{folder}")
    assert len(items) == 1556 and _unique_ids(items)
    report = formats.get_last_load_report()
    assert report is not None and report.skipped == 0 and len(report.files) == 104
    assert len([note for note in report.notes if "cp1252" in note]) == 3
    assert Counter(item.meta["depth"] for item in items) == {1: 410, 2: 446, 3: 310, 4: 280, 5: 110}
    assert {item.meta["logic"] for item in items} == {"pl", "fol", "nm"}  # "mm" means nm
    assert not any(item.meta["multivariable"] for item in items)
    assert set(_labels(items)) == {"True", "False"}  # yes/Yes/no/No
    depth1 = [item for item in items if item.meta["depth"] == 1]
    assert 0.91 < sum(item.label == "True" for item in depth1) / len(depth1) < 0.94
    by_id = {item.id: item for item in items}
    assert "Golden Glory\u2019s" in by_id["d1_Data/nm/default_reasoning_open/1"].context
    assert "d\u00e9cor" in " ".join(i.context for i in items if i.meta["rule"] == "CT")
    first = by_id["d1_Data/fol/BD/1"]
    assert first.meta["question"].startswith("Can we say that Neha")
    assert first.statement == (
        "Neha, a doctor in the medical field, either gains expertise or "
        "does not stay updated on research."
    )
    forms = Counter(item.meta["question_form"] for item in items)
    assert set(forms) == {"conclusion", "conditional", "question"}
    assert forms["question"] < len(items) * 0.25
    for item in items:
        if item.meta["question_form"] != "question":
            assert item.statement.endswith(".") and "?" not in item.statement


def test_multi_logieval_multivariable_is_opt_in(shared_data: Path) -> None:
    folder = shared_data / "multi_logieval" / "data"
    items = load_items(f"multi-logieval:{folder}?multivariable=1")
    extra = [item for item in items if item.meta["multivariable"]]
    assert len(items) == 1696 and len(extra) == 140
    assert {item.meta["logic"] for item in extra} == {"fol"}
    assert all("depth" not in item.meta for item in extra)  # their depth field is "-"
    one_file = load_items(f"multi-logieval:{folder}/d2_Data/nm/*_MT.json")
    assert len(one_file) == 120 and {i.meta["depth"] for i in one_file} == {2}


@pytest.mark.parametrize(
    ("question", "statement", "form"),
    [
        (
            "Can we conclude Pam gets an hour lunch break?",
            "Pam gets an hour lunch break.",
            "conclusion",
        ),
        (
            "If a bird cannot fly, can we conclude that cats are warm-blooded?",
            "If a bird cannot fly, then cats are warm-blooded.",
            "conditional",
        ),
        (
            "John watered his flowers. Is it true that he took his pet for a walk?",
            "If John watered his flowers, then he took his pet for a walk.",
            "conditional",
        ),
        (
            "If Sam did not study at the library, did he pull an all-nighter?",
            "If Sam did not study at the library, then he did pull an all-nighter.",
            "conditional",
        ),
        (
            "Given the above context, can we conclude that the essay is improved?",
            "The essay is improved.",
            "conclusion",
        ),
        (
            "In the grand library, does it entail that either patrons read or they sleep?",
            "In the grand library, either patrons read or they sleep.",
            "conclusion",
        ),
        ("Does Sam get enough sleep?", "Sam does get enough sleep.", "conclusion"),
        (
            "If fans do not fill the stadium, are tickets hard to get?",
            "If fans do not fill the stadium, are tickets hard to get?",
            "question",
        ),
    ],
)
def test_multi_logieval_question_forms(question: str, statement: str, form: str) -> None:
    assert formats.multi_logieval_statement(question) == (statement, form)


# --------------------------------------------------------------------------------- ProofWriter


def test_proofwriter_dev(shared_data: Path) -> None:
    items = load_items(f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}")
    assert len(items) == 600 and _unique_ids(items)
    assert _labels(items) == {"True": 200, "False": 200, "Unknown": 200}
    assert all(item.options == TRUE_FALSE_UNKNOWN for item in items)
    first = items[0]
    assert first.id == "dev/ProofWriter_AttNoneg-OWA-D5-1041_Q1"
    assert (first.statement, first.label, first.answer_index) == ("Charlie is kind.", "True", 0)
    assert first.meta["depth"] == 5 and first.meta["theory"] == "AttNoneg"
    assert not any(item.statement.startswith("Based on") for item in items)


# ---------------------------------------------------------------------------------------- MMLU


def test_mmlu_subsets_and_csvs(shared_data: Path) -> None:
    mmlu = shared_data / "mmlu"
    logic = load_items(f"mmlu:{mmlu / 'subset_logic_test.jsonl'}")
    assert len(logic) == 289
    assert Counter(i.meta["subject"] for i in logic) == {
        "logical_fallacies": 163,
        "formal_logic": 126,
    }
    five = load_items(f"mmlu:{mmlu / 'subset_5per_subject_test_seed0.jsonl'}")
    assert len(five) == 285 and len({i.meta["subject"] for i in five}) == 57
    dev = load_items(f"mmlu:{mmlu / 'dev'}")
    assert len(dev) == 57 * 5
    formal = load_items(f"mmlu:{mmlu / 'val'}?subjects=formal_logic")
    assert len(formal) == 14 and formal[0].id == "formal_logic_val/0"
    for item in logic + five + dev:
        assert item.context == "" and len(item.options) == 4 and item.is_multiple_choice
        assert item.label in "ABCD" and item.options[item.answer_index]
    assert five[0].id == "subset_5per_subject_test_seed0/abstract_algebra/5"
    assert dev[0].meta["split"] == "dev" and five[0].meta["split"] == "test"
    # Quoted CSV cells spanning lines stay one row.
    assert sum("\n" in i.statement for i in dev) >= 1


# ------------------------------------------------------------------- FOLIO and generic formats


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_folio(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "folio_v2_validation.jsonl",
        [
            {
                "story_id": 1,
                "example_id": 7,
                "premises": "All cats purr.\nTom is a cat.",
                "conclusion": "Tom purrs.",
                "label": "True",
                "premises-FOL": "...",
                "conclusion-FOL": "",
            },
            {
                "story_id": 1,
                "example_id": 8,
                "premises": ["All cats purr.", "Tom is a cat."],
                "conclusion": "Tom is black.",
                "label": "Uncertain",
            },
            {
                "story_id": 1,
                "example_id": 9,
                "premises": ["All cats purr."],
                "conclusion": "Tom does not purr.",
                "label": "False",
            },
        ],
    )
    items = load_items(f"folio:{path}")
    assert [i.label for i in items] == ["True", "Unknown", "False"]
    assert items[0].context == items[1].context == "All cats purr. Tom is a cat."
    assert all(i.options == TRUE_FALSE_UNKNOWN for i in items)
    assert items[0].id == "folio_v2_validation/7" and items[0].meta["split"] == "val"
    assert items[2].meta["negated"] and not items[0].meta["negated"]


def test_generic_jsonl_mapping(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "nli.jsonl",
        [
            {
                "uid": "a",
                "premises": ["P1.", "P2."],
                "hypothesis": "H.",
                "gold": "entailment",
                "info": {"hops": 2},
            },
            {
                "uid": "b",
                "premises": "P3.",
                "hypothesis": "H2.",
                "gold": "contradiction",
                "info": {"hops": 1},
            },
        ],
    )
    spec = f"jsonl:{path}?context=premises&statement=hypothesis&label=gold&id=uid&meta=info.hops"
    items = load_items(spec)
    assert [(i.id, i.context, i.label) for i in items] == [
        ("nli/a", "P1. P2.", "True"),
        ("nli/b", "P3.", "False"),
    ]
    assert items[0].options == TRUE_FALSE and items[0].meta["info.hops"] == 2
    mc = _write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"statement": "Pick one.", "choices": ["x", "y", "z"], "label": 2},
            {"statement": "Pick again.", "choices": ["x", "y", "z"], "label": "y"},
        ],
    )
    items = load_items(f"jsonl:{mc}?options=choices")
    assert [(i.id, i.label, i.context) for i in items] == [("mc/1", "C", ""), ("mc/2", "B", "")]
    three = _write_jsonl(
        tmp_path / "three.jsonl",
        [
            {"statement": "A.", "label": "yes"},
            {"statement": "B.", "label": "uncertain"},
        ],
    )
    assert {i.options for i in load_items(f"jsonl:{three}")} == {TRUE_FALSE_UNKNOWN}


def test_generic_csv_mapping(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_text('key,facts,claim,answer\nk1,"A.\nB.",C.,no\nk2,D.,E.,TRUE\n', encoding="utf-8")
    items = load_items(f"csv:{path}?context=facts&statement=claim&label=answer&id=key")
    assert [(i.id, i.label) for i in items] == [("set/k1", "False"), ("set/k2", "True")]
    assert items[0].context == "A.\nB."
    default_ids = load_items(f"csv:{path}?context=facts&statement=claim&label=answer")
    assert [i.id for i in default_ids] == ["set/2", "set/4"]  # line where each row starts
    tsv = tmp_path / "set.tsv"
    tsv.write_text("x\tC.\tyes\n", encoding="utf-8")
    items = load_items(f"csv:{tsv}?header=0&context=0&statement=1&label=2")
    assert [(i.context, i.statement, i.label) for i in items] == [("x", "C.", "True")]


def test_hf_without_datasets_names_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails even if installed
    with pytest.raises(ImportError, match="pip install datasets") as err:
        load_items("hf:tasksource/folio?split=validation")
    assert isinstance(err.value, DataError)


def test_hf_mapping_with_a_stand_in_datasets_module(monkeypatch, tmp_path: Path) -> None:
    """The hf loader's own logic (splits, mapping, save_to_disk folders) without the package."""
    rows = [{"premises": ["P."], "conclusion": "C.", "label": "Uncertain", "example_id": 4}]
    calls: list[tuple] = []
    fake = types.ModuleType("datasets")

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        splits = {"train": rows, "validation": rows}
        return splits[split] if split else splits

    fake.load_dataset = load_dataset
    fake.load_from_disk = lambda path: {"test": rows}
    monkeypatch.setitem(sys.modules, "datasets", fake)
    spec = (
        "hf:org/folio?split=validation&config=v2"
        "&context=premises&statement=conclusion&id=example_id"
    )
    items = load_items(spec)
    assert calls == [("org/folio", "v2", "validation")]
    assert [(i.id, i.context, i.label, i.options) for i in items] == [
        ("folio/validation/4", "P.", "Unknown", TRUE_FALSE_UNKNOWN)
    ]
    assert items[0].meta["split"] == "validation" and items[0].meta["source"] == "hf"
    with pytest.raises(DataError, match="train, validation"):
        load_items("hf:org/folio?context=premises&statement=conclusion")
    saved = tmp_path / "saved"
    saved.mkdir()
    items = load_items(f"hf:{saved}?context=premises&statement=conclusion")
    assert [i.id for i in items] == ["saved/test/0"]


# ---------------------------------------------------------------------------------- bad input


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"statement": "A.", "label": "yes"}\n\n{"statement": "B.", \n', encoding="utf-8"
    )
    with pytest.raises(DataError) as err:
        load_items(f"jsonl:{path}")
    assert (err.value.file, err.value.line) == (str(path), 3)
    assert f"{path}:3" in str(err.value) and "malformed JSON" in str(err.value)


def test_missing_field_and_unknown_label(tmp_path: Path) -> None:
    path = tmp_path / "pp.jsonl"
    good = {
        "id": "R-D2-1",
        "context": "C.",
        "questions": [{"text": "A.", "label": "true", "meta": {"QDep": "2"}}],
    }
    missing = {
        "id": "R-D2-2",
        "context": "C.",
        "questions": [{"label": "true", "meta": {"QDep": "2"}}],
    }
    _write_jsonl(path, [good, missing])
    with pytest.raises(DataError) as err:
        load_items(f"pararule-plus:{path}")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 2, "questions.0.text")
    assert f"{path}:2 field 'questions.0.text'" in str(err.value)

    bad_label = dict(good, questions=[{"text": "A.", "label": "maybe", "meta": {"QDep": "2"}}])
    _write_jsonl(path, [good, good, bad_label])
    with pytest.raises(DataError) as err:
        load_items(f"pararule-plus:{path}")
    assert (err.value.line, err.value.field) == (3, "questions.0.label")
    assert "maybe" in str(err.value)


def test_errors_inside_json_documents_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    records = [
        {
            "id": f"ProofWriter_X-OWA-D1-{i}_Q1",
            "context": "C.",
            "question": "Q.",
            "options": ["A) True", "B) False", "C) Unknown"],
            "answer": "A",
        }
        for i in range(3)
    ]
    records[2]["answer"] = "E"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_items(f"proofwriter:{path}")
    assert err.value.field == "answer"
    starts = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line == "  {"]
    assert err.value.line == starts[2]
    path.write_text('[\n {"id": 1,\n  "context": }\n]', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_items(f"proofwriter:{path}")
    assert (err.value.file, err.value.line) == (str(path), 3)


def test_on_error_skip_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"statement": "A.", "label": "yes"}),
                "{not json",
                json.dumps({"label": "no"}),
                json.dumps({"statement": "B.", "label": "perhaps"}),
                json.dumps({"statement": "C.", "label": "false"}),
            ]
        ),
        encoding="utf-8",
    )
    items = load_items(f"jsonl:{path}?on_error=skip")
    assert [i.statement for i in items] == ["A.", "C."]
    report = formats.get_last_load_report()
    assert report is not None and report.on_error == "skip"
    assert (report.loaded, report.skipped) == (2, 3)
    assert [e.split(" ")[0] for e in report.errors] == [f"{path}:2:", f"{path}:3", f"{path}:4"]
    assert summarize(items, report=report)["load"]["skipped"] == 3
    with pytest.raises(DataError, match="on_error"):
        load_items(f"jsonl:{path}?on_error=ignore")


def test_limit_and_missing_path(shared_data: Path, tmp_path: Path) -> None:
    items = load_items(f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}?limit=5")
    assert len(items) == 5
    with pytest.raises(DataError) as err:
        load_items(f"folio:{tmp_path / 'absent.jsonl'}")
    assert err.value.file == str(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "proofwriter", "generated"])
def test_unknown_spec_parameter_is_refused_naming_spec_and_parameter(
    fmt: str, shared_data: Path, tmp_path: Path
) -> None:
    """A typo (``smaple=3``) used to be ignored by jsonl/csv: all items loaded, unsampled."""
    csv_file = tmp_path / "set.csv"
    csv_file.write_text("context,statement,label\nA.,B.,yes\nC.,D.,no\n", encoding="utf-8")
    mmlu = shared_data / "mmlu" / "subset_logic_test.jsonl"
    heads = {
        "jsonl": f"jsonl:{mmlu}?statement=question&options=choices&label=answer",
        "csv": f"csv:{csv_file}?statement=statement",
        "proofwriter": f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}?seed=1",
        "generated": "generated:n=8&seed=1",
    }
    assert load_items(heads[fmt] + "&sample=2")  # the spelling this format takes
    spec = heads[fmt] + "&smaple=2"
    with pytest.raises(DataError, match="unknown parameter 'smaple'") as err:
        load_items(spec)
    assert err.value.field == "smaple"
    assert spec in str(err.value) and "did you mean 'sample'?" in str(err.value)


def test_negative_or_zero_limit_is_an_error_not_a_slice(shared_data: Path) -> None:
    """``limit=-1`` used to slice ``items[:-1]``: every item but the last, without a word."""
    spec = f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}"
    for bad in ("limit=-1", "limit=0", "sample=0", "limit=x"):
        with pytest.raises(DataError, match=f"data spec '.*{bad}'") as err:
            load_items(f"{spec}?{bad}")
        assert err.value.field == bad.split("=")[0]


def test_balance_without_sample_keeps_the_largest_balanced_subset(shared_data: Path) -> None:
    """``balance=1`` alone used to be ignored; depth-1 Multi-LogiEval is about 92% yes."""
    spec = f"multi-logieval:{shared_data / 'multi_logieval' / 'data' / 'd1_Data'}"
    every = _labels(load_items(spec))
    assert every["True"] > 5 * every["False"]
    balanced = load_items(f"{spec}?balance=1&seed=2")
    assert _labels(balanced) == {"True": every["False"], "False": every["False"]}
    assert load_items(f"{spec}?balance=1&seed=2") == balanced  # seeded
    with pytest.raises(DataError, match="balance='2' must be 1 or 0") as err:
        load_items(f"{spec}?balance=2")
    assert err.value.field == "balance"


def test_stratify_balances_labels_within_every_depth(shared_data: Path) -> None:
    """``balance=1`` balances the whole sample only: on ProntoQA's 600 items depth 1 held 52
    False and 60 True. ``stratify=depth`` gives every (depth, label) cell the same share, while
    the samples the findings drew with ``balance=1`` alone stay the same items."""
    from collections import Counter

    spec = f"prontoqa:{shared_data / 'prontoqa' / 'truefalse_0shot'}/*hop_0shot_random.json"
    plain = load_items(f"{spec}?sample=600&balance=1&seed=0")
    cells = Counter((i.meta["depth"], i.label) for i in plain)
    assert len(set(cells.values())) > 1 and _labels(plain) == {"True": 300, "False": 300}
    strat = load_items(f"{spec}?sample=600&balance=1&stratify=depth&seed=0")
    cells = Counter((i.meta["depth"], i.label) for i in strat)
    assert set(cells.values()) == {60} and len(cells) == 10
    assert load_items(f"{spec}?sample=600&balance=1&stratify=depth&seed=0") == strat  # seeded
    by_depth = Counter(i.meta["depth"] for i in load_items(f"{spec}?sample=100&stratify=depth"))
    assert by_depth == {d: 20 for d in range(1, 6)}  # without balance: depths only

    with pytest.raises(DataError, match="stratify needs sample=N or balance=1") as err:
        load_items(f"{spec}?stratify=depth")
    assert err.value.field == "stratify"
    with pytest.raises(DataError, match="item '1hop_0shot_random/example1' has no 'colour'"):
        load_items(f"{spec}?sample=10&stratify=colour")
    with pytest.raises(DataError, match=r"needs 500 items per \(depth, label\) cell, but "):
        load_items(f"{spec}?sample=5000&balance=1&stratify=depth")


def test_repeated_parameter_and_debias_settings_without_debias_are_refused(
    shared_data: Path,
) -> None:
    proofwriter = f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}"
    with pytest.raises(DataError, match="'sample' is given more than once"):
        load_items(f"{proofwriter}?sample=3&sample=5")
    pararule = f"pararule-plus:{shared_data / 'pararule_plus' / 'Depth2' / '*_test.jsonl'}"
    with pytest.raises(DataError, match="'per_context' applies only with debias=1"):
        load_items(f"{pararule}?per_context=2")


def test_generated_size_parameters_are_bounded_before_generating() -> None:
    """``n=99999999999`` took all memory until the OOM killer; a huge depth range too."""
    from qkscore.data.generator import MAX_ITEMS

    for spec, key in (
        ("generated:n=99999999999", "n"),
        (f"generated:n={MAX_ITEMS + 1}", "n"),
        ("generated:n=-1", "n"),
        ("generated:depth=1-999999999999&n=4", "depth"),
    ):
        with pytest.raises(DataError, match="data spec 'generated:") as err:
            load_items(spec)
        assert err.value.field == key and spec in str(err.value)


def test_summarize_breakdowns(shared_data: Path) -> None:
    items = load_items(f"multi-logieval:{shared_data / 'multi_logieval' / 'data'}")
    summary = summarize(items)
    assert summary["count"] == 1556
    assert summary["labels"] == dict(_labels(items).most_common())
    depth = summary["breakdowns"]["depth"]
    assert list(depth) == ["1", "2", "3", "4", "5"]
    assert sum(group["count"] for group in depth.values()) == 1556
    assert 0.91 < depth["1"]["majority_share"] < 0.94
    assert set(summary["breakdowns"]["logic"]) == {"fol", "nm", "pl"}
    assert "ontology" not in summary["breakdowns"]
    json.dumps(summary)  # JSON-ready

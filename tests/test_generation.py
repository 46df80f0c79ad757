"""Generate chains, label their steps with the prover, import chains made elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qkscore.data.items import DataError
from qkscore.generation import GenFolder, generate, parse_answer
from qkscore.generation.byo import import_chains
from qkscore.generation.label import label_steps, parse_coverage
from qkscore.generation.problems import Problem, chain_steps
from qkscore.schemas import RankSummary
from schema_check import SCHEMAS, validate
from tiny_models import few_threads

SPEC = "generated:depth=1-2&n=2&seed=5"
SETTINGS = dict(samples=2, max_new_tokens=8, batch_size=2, progress=False, log=lambda *_: None)


@pytest.fixture(autouse=True)
def _threads():
    with few_threads():
        yield


@pytest.fixture(scope="module")
def generated(tmp_path_factory, smollm2) -> GenFolder:
    with few_threads():
        return generate(smollm2, SPEC, tmp_path_factory.mktemp("gen") / "g", **SETTINGS)


def _texts(folder: GenFolder) -> list[tuple]:
    return [(r["id"], r["sample"], r["text"]) for r in folder.records()]


def test_generation_folder_holds_every_chain_with_provenance(generated):
    meta = generated.meta()
    assert meta["complete"] and meta["kind"] == "generations" and meta["source"] == "generate"
    assert meta["n_problems"] == 2 and meta["samples"] == 2 and meta["data"] == SPEC
    assert meta["model"]["fingerprint"] and meta["temperature"] == 0.7 and meta["seed"] == 0
    assert meta["chat_template"] is True  # SmolLM2-Instruct has one: used by default
    stats = meta["generation"]
    assert stats["tokens"] > 0 and stats["wall_s"] > 0
    assert stats["tokens_per_s"] == pytest.approx(stats["tokens"] / stats["wall_s"], rel=0.01)
    problems = generated.problems()
    assert len(problems) == 2 and all(p.question.startswith("True or false: ") for p in problems)
    records = generated.records()
    assert [(r["problem"], r["sample"]) for r in records] == [
        (p, s) for p in range(2) for s in (0, 1)
    ]
    assert stats["tokens"] == sum(r["tokens"] for r in records)
    for r in records:
        assert 0 < r["tokens"] <= 8 + 1 and r["finish"] in ("answer", "eos", "length")
        assert r["answer"] == parse_answer(r["text"]) and r["steps"] == chain_steps(r["text"])
        assert len(r["labels"]) == len(r["steps"])
        assert r["correct"] == (r["answer"] is not None and r["answer"] == r["gold"])
    # two samples of one problem differ (their own seeds), as sampling should
    assert records[0]["text"] != records[1]["text"]


def _kill_at_append(monkeypatch, n: int, fragment: int = 25) -> dict:
    """Make the ``n``-th chain's append write only ``fragment`` bytes of its line and die (a
    kill -9 mid-write); returns the count of appends, which keeps counting afterwards."""
    real_append = GenFolder.append
    calls = {"n": 0}

    def append(self, records):
        calls["n"] += 1
        if calls["n"] == n:
            with open(self.generations_path, "ab") as fh:
                fh.write(json.dumps(records[0])[:fragment].encode())
            raise KeyboardInterrupt
        real_append(self, records)

    monkeypatch.setattr(GenFolder, "append", append)
    return calls


def test_resume_after_a_kill_mid_write_gives_identical_generations(
    generated, smollm2, tmp_path, monkeypatch
):
    """A kill -9 while the third chain is being written: two whole lines, then a torn
    fragment. The resumed run cuts the fragment before appending (an older one appended glued
    onto it: a chain lost, everything after the glued line unread, and the folder marked
    complete, so rank saw fewer chains without a word) and samples only the two missing
    chains, with the texts of an uninterrupted run."""
    out = tmp_path / "crashed"
    calls = _kill_at_append(monkeypatch, 3)
    before = smollm2.model.config._attn_implementation
    with pytest.raises(KeyboardInterrupt):
        generate(smollm2, SPEC, out, **SETTINGS)
    assert smollm2.model.config._attn_implementation == before  # row attention undone
    assert not GenFolder(out).meta()["complete"]
    assert len(GenFolder(out).raw_records()) == 2  # the fragment is the torn tail
    logs: list[str] = []
    calls["n"] = -100  # no more kills
    generate(smollm2, SPEC, out, **{**SETTINGS, "log": logs.append})
    assert calls["n"] == -98  # two chains appended on resume
    assert any("dropping a torn line" in line for line in logs)
    folder = GenFolder(out)
    assert folder.meta()["complete"]
    assert _texts(folder) == _texts(generated)  # rank's view: every chain, the same texts
    lines = folder.generations_path.read_bytes().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert folder.meta()["generation"]["tokens"] == sum(r["tokens"] for r in folder.records())


def test_texts_do_not_depend_on_batch_composition(generated, smollm2, tmp_path):
    """Each row draws from its own generator and a finished row's place is refilled, so one
    row alone (batch 1) or beside others in another order (batch 3: three start together, the
    fourth joins a batch already under way) writes the texts of batch 2."""
    for batch_size in (1, 3):
        folder = generate(smollm2, SPEC, tmp_path / f"b{batch_size}", **{
            **SETTINGS, "batch_size": batch_size})  # fmt: skip
        assert _texts(folder) == _texts(generated)
        assert folder.meta()["generation"]["decode_steps"] > 0


def test_a_folder_written_batch_by_batch_reads_and_is_never_resumed_mixed(
    generated, smollm2, tmp_path
):
    """A folder of the batch-at-a-time writer (records with a ``batch`` field, drawn with
    torch.multinomial, no ``sampler_version``) is read by rank as before and left alone when
    complete; a partial one is refused rather than finished with another sampler."""
    import shutil

    from qkscore.run import RunMismatchError

    out = tmp_path / "old"
    shutil.copytree(generated.path, out)
    folder = GenFolder(out)
    # in (problem, sample) order, two a batch, as the batch-at-a-time writer had them
    records = [{**r, "batch": i // 2} for i, r in enumerate(folder.records())]
    folder.rewrite(records)
    meta = {k: v for k, v in folder.meta().items() if k != "sampler_version"}
    folder.write_meta(meta)
    assert [r["batch"] for r in folder.records()] == [0, 0, 1, 1]
    logs: list[str] = []
    generate(smollm2, SPEC, out, **{**SETTINGS, "log": logs.append})
    assert logs == [f"{out} is complete: nothing to do"]
    head = b"".join(folder.generations_path.read_bytes().splitlines(keepends=True)[:3])
    folder.generations_path.write_bytes(head + b'{"id": "gen-')  # half of batch 1, torn
    folder.write_meta({**meta, "complete": False})
    with pytest.raises(RunMismatchError, match="sampler_version"):
        generate(smollm2, SPEC, out, **SETTINGS)
    assert folder.generations_path.read_bytes() == head + b'{"id": "gen-'  # untouched


def test_refill_decoding_matches_each_prompt_decoded_alone(smollm2):
    """The cache surgery of the refill loop: a row leaves the batch mid-way and a prompt of
    another length joins the row still running (left padding, positions, mask). Greedy
    tokens equal those of each prompt decoded alone by full forward passes, no cache."""
    import torch

    from qkscore.generation.generate import _Decoder

    prompts = [
        "Every cat is a mammal. Tom is a cat. Is Tom a mammal? Answer:",
        "List three colours:",
        "Every wumpus is a zumpus. Every zumpus is a tumpus. Polly is a wumpus. Polly is a",
    ]
    decoder = _Decoder(
        smollm2, batch_size=2, max_new_tokens=8, temperature=0.0, top_p=1.0,
        add_special_tokens=True,
    )  # fmt: skip
    decoder.start([(i, p, 0) for i, p in enumerate(prompts)])
    results, batches = {}, []
    with torch.inference_mode(), decoder.attention():
        while decoder.queue or decoder.rows:
            results.update((key, (text, n)) for key, text, n, _ in decoder.advance())
            batches.append([(row.key, len(row.tokens)) for row in decoder.rows])
    assert set(results) == {0, 1, 2}
    # SmolLM2 ends prompt 0 at once (EOS) and prompt 2 joins prompt 1 already under way
    assert results[0] == ("", 1) and [(1, 3), (2, 2)] in batches
    tok = smollm2.tokenizer
    for key, (text, n) in results.items():
        ids = tok(prompts[key], return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            for _ in range(n):
                nxt = smollm2.model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        want = tok.decode(ids[0, -n:].tolist(), skip_special_tokens=True)
        assert text == want and n > 0


def test_nucleus_from_candidates_equals_a_full_sort():
    """Top-p from the most likely tokens equals sorting the whole vocabulary bit for bit,
    with ties (bfloat16 logits), nuclei past the candidates and whole-vocabulary rows."""
    import torch

    from qkscore.generation.generate import nucleus

    def by_sorting(probs, top_p):
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        sorted_p[sorted_p.cumsum(dim=-1) - sorted_p >= top_p] = 0.0
        return torch.zeros_like(probs).scatter(-1, order, sorted_p)

    def dense(sets, like):
        out = torch.zeros_like(like)
        for row, (ids, p) in zip(out, sets):
            assert bool((ids[1:] > ids[:-1]).all())  # ascending token ids
            row[ids] = p
        return out

    gen = torch.Generator().manual_seed(0)
    for scale in (0.3, 3.0, 12.0):  # flat (nucleus past the candidates) to peaked
        logits = (torch.randn(8, 3000, generator=gen) * scale).bfloat16().float()
        logits[:2, :40] = logits[:2, :1]  # a tie group across the candidates' edge
        probs = torch.softmax(logits / 0.7, dim=-1)
        for top_p in (0.5, 0.95):
            want = by_sorting(probs, top_p)
            assert torch.equal(dense(nucleus(probs, top_p, candidates=32), probs), want)
            small = probs[:, :20]
            assert torch.equal(dense(nucleus(small, top_p), small), by_sorting(small, top_p))


def test_sampling_draws_from_the_nucleus_in_proportion(smollm2):
    """The exponential race picks each nucleus token with its renormalised probability and
    never a token outside the nucleus."""
    import torch

    from qkscore.generation.generate import _Decoder, _Row

    decoder = _Decoder(
        smollm2, batch_size=1, max_new_tokens=1, temperature=1.0, top_p=0.75,
        add_special_tokens=True,
    )  # fmt: skip
    probs = torch.tensor([0.5, 0.05, 0.3, 0.1, 0.05])  # nucleus: tokens 0, 2 (mass 0.8 > 0.75)
    rows = [_Row(i, torch.Generator().manual_seed(i), 0) for i in range(4000)]
    logits = probs.log().expand(len(rows), -1)
    counts = torch.bincount(torch.tensor(decoder._sample(logits, rows)), minlength=5)
    assert counts[[1, 3, 4]].sum() == 0
    assert counts[0] / len(rows) == pytest.approx(0.5 / 0.8, abs=0.03)


def test_a_folder_missing_chains_is_never_read_as_complete(generated, smollm2, tmp_path):
    """A folder damaged before the fix (marked complete, a chain lost to a glued line) is
    refused by rank's reader with the missing pairs named, and the same generate command
    repairs it."""
    import shutil

    from qkscore.data.items import DataError
    from qkscore.run import RunFolderError

    out = tmp_path / "damaged"
    shutil.copytree(generated.path, out)
    folder = GenFolder(out)
    folder.rewrite(folder.records())  # (problem, sample) order, not the order chains ended
    lines = folder.generations_path.read_bytes().splitlines(keepends=True)
    # what the old resume wrote: batch 1's first line glued onto a fragment of itself
    folder.generations_path.write_bytes(b"".join(lines[:2]) + lines[2][:25] + b"".join(lines[2:]))
    with pytest.raises(DataError, match=r"generations\.jsonl:3: .*damaged in the middle"):
        folder.records()
    folder.generations_path.write_bytes(b"".join(lines[:2]) + lines[3])
    with pytest.raises(RunFolderError, match=r"1 chain\(s\) missing \(problem 1 sample 0\)"):
        folder.records()
    folder.generations_path.write_bytes(b"".join(lines) + lines[0])
    with pytest.raises(RunFolderError, match=r"repeated \(problem 0 sample 0\)"):
        folder.records()
    folder.generations_path.write_bytes(b"".join(lines[:2]) + lines[2][:25] + b"".join(lines[2:]))
    logs: list[str] = []
    generate(smollm2, SPEC, out, **{**SETTINGS, "log": logs.append})
    assert any("marked complete but" in line for line in logs)
    assert any("generations.jsonl:3 is damaged" in line for line in logs)
    assert _texts(folder) == _texts(generated)


def test_a_folder_made_with_other_settings_is_refused(generated, smollm2):
    from qkscore.run import RunMismatchError

    with pytest.raises(RunMismatchError, match="seed"):
        generate(smollm2, SPEC, generated.path, **{**SETTINGS, "seed": 1})
    with pytest.raises(RunMismatchError, match="model"):  # known from the alias, before loading
        generate("qwen2.5-coder-0.5b", SPEC, generated.path, **SETTINGS)
    log: list[str] = []
    generate(smollm2, SPEC, generated.path, **{**SETTINGS, "log": log.append})
    assert log == [f"{generated.path} is complete: nothing to do"]


# ---- labels ----------------------------------------------------------------------------

CONTEXT = (
    "Every cat is a mammal. Every mammal is an animal. Cats are not green. Tom is a cat. "
    "Every dog is loud."
)


def test_prover_labels_hand_written_steps_exactly():
    steps = [
        "Tom is a cat.",  # restated premise
        "Every cat is a mammal.",  # restated rule
        "Tom is a mammal.",  # one hop
        "Tom is an animal.",  # two hops
        "Tom is green.",  # contradicted
        "Tom is a dog.",  # not entailed
        "Tom is loud.",  # follows from the unsupported step before: locally valid
        "Every cat is an animal.",  # a derived rule
        "Every animal is a cat.",  # not entailed
        "So the answer is clear.",  # the parser reads nothing
        "Tom is not green.",
    ]
    labels = label_steps(CONTEXT, steps)
    assert [lab["label"] for lab in labels] == [
        "valid", "valid", "valid", "valid", "invalid", "invalid", "valid", "valid", "invalid",
        "unparsed", "valid",
    ]  # fmt: skip
    assert [lab["depth"] for lab in labels] == [0, 0, 1, 2, None, None, 1, 2, None, None, 1]
    assert [lab["reason"] for lab in labels][4:6] == ["contradicted", "not entailed"]
    assert labels[6]["grounded"] is False and labels[3]["grounded"] is True
    assert labels[6]["reason"] == "follows from an unsupported earlier step"
    assert [lab["kind"] for lab in labels][:2] == ["fact", "rule"] and labels[9]["kind"] is None
    cov = parse_coverage(labels)
    assert (cov["steps"], cov["valid"], cov["invalid"], cov["unparsed"]) == (11, 7, 3, 1)
    assert cov["coverage"] == pytest.approx(10 / 11)


def test_a_contradicted_step_is_not_built_upon():
    labels = label_steps(CONTEXT, ["Tom is green.", "Tom is green."])
    assert [lab["label"] for lab in labels] == ["invalid", "invalid"]


def test_answer_line_and_steps_are_read_from_the_text():
    text = "1. Tom is a cat.\n2. Every cat is a mammal. Tom is a mammal.\nAnswer: True\nmore"
    assert chain_steps(text) == ["Tom is a cat.", "Every cat is a mammal.", "Tom is a mammal."]
    assert parse_answer(text) is True
    assert parse_answer("answer: false") is False
    assert parse_answer("Tom is a mammal.") is None


# ---- bring your own --------------------------------------------------------------------


def _write(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {
    "id": "p1",
    "context": CONTEXT,
    "question": "True or false: Tom is a mammal.",
    "gold": True,
    "generations": ["Tom is a cat. Tom is a mammal.\nAnswer: True", "Tom is green.\nAnswer: False"],
}


def test_imported_chains_make_the_same_folder(tmp_path):
    other = {**GOOD, "id": "p2", "answer": "False", "generations": ["Answer: False"], "hops": 2}
    del other["gold"]
    folder = import_chains(_write(tmp_path / "c.jsonl", [GOOD, other]), tmp_path / "g")
    meta = folder.meta()
    assert meta["complete"] and meta["source"] == "import" and meta["n_problems"] == 2
    records = folder.records()
    assert [(r["id"], r["sample"], r["answer"], r["correct"]) for r in records] == [
        ("p1", 0, True, True),
        ("p1", 1, False, False),
        ("p2", 0, False, True),
    ]
    assert [lab["label"] for lab in records[0]["labels"]] == ["valid", "valid"]
    assert records[1]["labels"][0]["reason"] == "contradicted"
    assert folder.problems()[1] == Problem("p2", CONTEXT, GOOD["question"], False, 2)


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ("{not json", "c.jsonl:2: not valid JSON"),
        ({**GOOD, "id": "p3", "gold": "yes"}, "c.jsonl:2 field 'gold': expected true or false"),
        ({**GOOD, "id": "p3", "generations": []}, "c.jsonl:2 field 'generations'"),
        ({**GOOD, "id": "p3", "generations": ["a", 3]}, "c.jsonl:2 field 'generations[1]'"),
        ({k: v for k, v in GOOD.items() if k != "context"}, "c.jsonl:2 field 'context'"),
        (GOOD, "c.jsonl:2 field 'id': duplicate id 'p1'"),
    ],
)
def test_a_malformed_record_names_file_line_and_field(tmp_path, bad, where):
    path = _write(tmp_path / "c.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as err:
        import_chains(path, tmp_path / "g")
    assert where in str(err.value)
    assert not (tmp_path / "g").exists()


# ---- rank ------------------------------------------------------------------------------

NAMES = ["Tom", "Max", "Sam", "Ann", "Liz", "Bob"]


def _problem_record(name: str, pid: str) -> dict:
    context = CONTEXT.replace("Tom", name)
    right = f"{name} is a cat. Every cat is a mammal. {name} is a mammal.\nAnswer: True"
    wrong = f"{name} is green. {name} is not a mammal.\nAnswer: False"
    # the right chain comes first for half the problems
    gens = [right, wrong] if NAMES.index(name) % 2 == 0 else [wrong, right]
    return {
        "id": pid,
        "context": context,
        "question": f"True or false: {name} is a mammal.",
        "gold": True,
        "generations": gens,
        "hops": 1,
    }


def test_solution_readers_never_see_the_problem_they_score():
    from qkscore.generation.rank import cross_fit_solution

    rng = np.random.default_rng(0)
    qk = rng.normal(size=(40, 3, 2)).astype(np.float32)
    correct = rng.random(40) < 0.5
    groups = [f"p{i // 4}" for i in range(40)]
    base, chosen = cross_fit_solution(qk, correct, groups, folds=5)
    assert len(chosen) == 5 and all(c["head"] for c in chosen)
    assert np.isfinite(base["qk_solution_head"]).all()
    flipped = correct.copy()
    flipped[:4] = ~flipped[:4]  # problem p0's own labels change
    again, _ = cross_fit_solution(qk, flipped, groups, folds=5)
    for name in base:
        np.testing.assert_array_equal(base[name][:4], again[name][:4])
        assert not np.array_equal(base[name], again[name])  # the other folds did use them


def test_rank_end_to_end_with_a_profile(tmp_path, tmp_path_factory, smollm2):
    from audit_fixtures import build_profile
    from qkscore.generation.rank import rank

    profile = build_profile(tmp_path_factory.getbasetemp(), smollm2)
    calib_id = json.loads(profile.read_text())["calibration"]["item_ids"][0]
    records = [_problem_record(n, f"p-{n}") for n in NAMES]
    records.append(_problem_record("Tom", calib_id))
    records[0]["generations"].append("I cannot tell.")  # a step the parser cannot read, no answer
    gen = import_chains(_write(tmp_path / "c.jsonl", records), tmp_path / "gen")
    summary = rank(gen.path, profile, tmp_path / "ranked", model=smollm2, folds=2, progress=False)

    assert summary["calibration_overlap"] == {"problems": 1, "excluded": True, "ids": [calib_id]}
    # an answer profile still judges steps, and says where its verdicts come from
    assert summary["profile_unit"] == "answer" and "calibrated on answers" in summary["warning"]
    assert (summary["n_problems"], summary["n_chains"]) == (6, 13)
    rows = [json.loads(x) for x in (tmp_path / "ranked" / "ranked.jsonl").read_text().splitlines()]
    assert len(rows) == 13 and calib_id not in {r["id"] for r in rows}
    qk = np.load(tmp_path / "ranked" / "solution_qk.npy")
    assert qk.shape == (13, smollm2.n_layers, smollm2.n_heads) and np.isfinite(qk).all()
    for r in rows:
        assert set(r["scores"]) >= {
            "qk_reader_min", "qk_reader_mean", "qk_reader_last", "qk_head_min",
            "qk_solution_head", "qk_solution_linear", "logprob_mean", "logprob_min",
            "neg_entropy", "self_certainty",
        }  # fmt: skip
        assert r["scores"]["logprob_min"] <= r["scores"]["logprob_mean"] < 0
        assert r["scores"]["self_certainty"] > 0
        for step in r["steps"]:
            assert step["verdict"] in ("valid", "invalid") and 0 <= step["probability"] <= 1
    steps = rows[0]["steps"]
    assert [s["label"] for s in steps] == ["valid", "valid", "valid"]
    assert rows[0]["scores"]["qk_reader_min"] == pytest.approx(min(s["qk_reader"] for s in steps))
    assert rows[0]["scores"]["qk_reader_last"] == pytest.approx(steps[-1]["qk_reader"])
    # a step the parser cannot read is judged by QK but left out of the step-level figures
    unread = next(r for r in rows if r["answer"] is None)
    assert [s["label"] for s in unread["steps"]] == ["unparsed"] and not unread["correct"]

    best = summary["best_of_n"]
    assert best["oracle"]["accuracy"] == 1.0
    assert best["first_sample"]["accuracy"] == pytest.approx(0.5)
    assert best["majority_vote"]["accuracy"] == pytest.approx(0.5)  # 1-1 ties: the first answer
    for entry in best.values():
        assert entry["ci"][0] <= entry["accuracy"] <= entry["ci"][1]
    assert summary["chain_level"]["logprob_mean"]["n"] == 13
    assert summary["step_level"]["qk_reader"]["overall"]["n"] == 6 * 3 + 6 * 2
    # the two restated premises of each right chain are left out of the derived-only figure
    derived = summary["step_level"]["qk_reader"]["derived_only"]
    assert (derived["n"], derived["positives"]) == (6 * 1 + 6 * 2, 6)
    assert summary["parse_coverage"]["unparsed"] == 1
    # comparisons are records with machine keys; summary.md says them in words
    vote = next(c for c in summary["comparisons"] if c["b"] == "majority_vote")
    assert vote["a"] == summary["best_qk_selector"] and vote["test"] == "mcnemar"
    assert vote["outcome"] in ("better", "worse", "no_difference")
    words = {"better": "beats", "worse": "is beaten by", "no_difference": "does not beat"}
    assert f"`{vote['a']}` {words[vote['outcome']]} `majority_vote`" in (
        (tmp_path / "ranked" / "summary.md").read_text()
    )
    md = (tmp_path / "ranked" / "summary.md").read_text()
    assert "**Warning: these step verdicts come from a profile calibrated on answers" in md
    assert "Problems in the profile's calibration split: 1 (excluded" in md
    assert "12 valid steps restate a premise (depth 0)" in md
    # by depth: each depth's valid steps against every invalid step; intervals by problem
    by_depth = summary["step_level"]["qk_reader"]["by_depth"]
    assert {d: e["positives"] for d, e in by_depth.items()} == {"0": 12, "1": 6}
    assert all(e["n"] == e["positives"] + 12 for e in by_depth.values())
    paired = [(p["a"], p["b"], p["subset"]) for p in summary["step_paired"]]
    subsets = ("overall", "derived_only", "grounded_only")
    assert paired == [  # an answer profile: no probe and no answer reader beside it
        (a, b, s) for a, b in (("qk_reader", "model_logodds"), ("qk_reader", "step_logprob"))
        for s in subsets
    ]  # fmt: skip
    # the summary as written validates against docs/schemas/rank-summary.schema.json's model
    written = json.loads((tmp_path / "ranked" / "summary.json").read_text())
    assert written["format_version"] == 2
    schema = json.loads((SCHEMAS / "rank-summary.schema.json").read_text())
    validate(written, schema)
    RankSummary.from_data(written, "summary.json")
    with pytest.raises(AssertionError, match="outcome"):  # the check does check
        validate({**written, "comparisons": [{**vote, "outcome": "beats"}]}, schema)
    assert {s["step_logprob"] < 0 for s in steps} == {True}  # the step's own tokens
    assert f"`{summary['best_qk_selector']}`" in md


def _ranked_scores(out: Path) -> list[dict]:
    rows = [json.loads(x)["scores"] for x in (out / "ranked.jsonl").read_text().splitlines()]
    return [{k: np.nan if v is None else v for k, v in r.items()} for r in rows]


def test_a_killed_rank_resumes_from_its_cache(tmp_path, tmp_path_factory, smollm2, monkeypatch):
    from audit_fixtures import build_profile
    from qkscore.generation import rank as rank_module

    profile = build_profile(tmp_path_factory.getbasetemp(), smollm2)
    records = [_problem_record(n, f"p-{n}") for n in NAMES[:3]]
    gen = import_chains(_write(tmp_path / "c.jsonl", records), tmp_path / "gen")
    out = tmp_path / "ranked"
    kwargs = dict(model=smollm2, folds=2, batch_size=2, progress=False, log=lambda *_: None)
    full = rank_module.rank(gen.path, profile, out, **kwargs)
    before = _ranked_scores(out)

    # a kill -9 mid-run: two chains' steps kept and a torn third line; one solution batch kept
    steps_file, solutions_file = out / "cache" / "steps.jsonl", out / "cache" / "solutions.jsonl"
    lines = steps_file.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    steps_file.write_bytes(b"".join(lines[:2]) + lines[2][:25])
    solutions_file.write_bytes(b"".join(solutions_file.read_bytes().splitlines(True)[:2]))
    passes = []
    real = rank_module._step_verdicts
    monkeypatch.setattr(rank_module, "_step_verdicts", lambda *a: passes.append(1) or real(*a))
    resumed = rank_module.rank(gen.path, profile, out, **kwargs)
    assert len(passes) == 4  # only the chains the cache lacked were judged again
    for a, b in zip(before, _ranked_scores(out), strict=True):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5, nan_ok=True)
    assert resumed["best_of_n"] == full["best_of_n"]

    # a finished folder only recomputes the summary
    passes.clear()
    rank_module.rank(gen.path, profile, out, **kwargs)
    assert passes == [] and len(steps_file.read_bytes().splitlines()) == 6


def test_a_rank_cache_made_with_other_settings_is_set_aside(tmp_path):
    from qkscore.generation.rank_cache import RankCache

    notes = []
    cache = RankCache(tmp_path, {"profile_sha256": "a"}, notes.append)
    cache.add_steps("p#0", [{"qk_reader": 1.5}])
    assert RankCache(tmp_path, {"profile_sha256": "a"}, notes.append).steps() == {
        "p#0": [{"qk_reader": 1.5}]
    }
    assert RankCache(tmp_path, {"profile_sha256": "b"}, notes.append).steps() == {}
    assert (tmp_path / "cache.stale-1" / "steps.jsonl").exists()
    assert notes and "other settings" in notes[0]


def test_token_stats_match_the_full_logits(smollm2):
    import torch

    from qkscore.extraction import extract

    ids = smollm2.tokenizer("Every cat is a mammal. Tom is a cat.", return_tensors="pt")
    input_ids = ids["input_ids"]
    n = input_ids.shape[1]
    out = extract(smollm2, input_ids, None, [[(n - 1, 0)]], token_spans=[(3, n)])
    with torch.inference_mode():
        logp = smollm2.model(input_ids).logits[0].float().log_softmax(-1)
    want = logp[2 : n - 1].gather(-1, input_ids[0, 3:n, None])[:, 0]
    stats = out.token_stats[0]
    assert stats.shape == (n - 3, 3)
    np.testing.assert_allclose(stats[:, 0], want.numpy(), atol=1e-4)
    entropy = -(logp[2 : n - 1].exp() * logp[2 : n - 1]).sum(-1)
    np.testing.assert_allclose(stats[:, 1], entropy.numpy(), atol=1e-3)
    uniform_kl = -logp[2 : n - 1].mean(-1) - np.log(logp.shape[-1])
    np.testing.assert_allclose(stats[:, 2], uniform_kl.numpy(), atol=1e-3)
    with pytest.raises(IndexError, match="token span"):
        extract(smollm2, input_ids, None, [[(n - 1, 0)]], token_spans=[(0, n)])


def test_generate_command_imports_and_names_a_bad_line(tmp_path):
    from typer.testing import CliRunner

    from qkscore.cli import app

    env = {"COLUMNS": "200", "QKSCORE_DEBUG": None}
    good = _write(tmp_path / "good.jsonl", [GOOD])
    args = ["generate", "--from", str(good), "-o", str(tmp_path / "g")]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 problems, 2 chains; final answer parsed in 2/2, correct in 1/2" in text
    assert "steps: 2 valid, 1 invalid, 0 unparsed (parse coverage 100.0%)" in text
    bad = _write(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "id": "p2", "question": ""}])
    args = ["generate", "--from", str(bad), "-o", str(tmp_path / "g2")]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2
    assert "bad.jsonl:2 field 'question': expected non-empty text" in result.output
    result = CliRunner().invoke(app, ["generate", "-o", str(tmp_path / "g3")], env=env)
    assert result.exit_code == 2 and "give --model and --data" in result.output


def test_answer_control_flags_a_scorer_that_only_reads_finishing():
    """A scorer equal to "reached an answer line" looks strong at chain level (unanswered
    chains count as wrong) but is flagged; a scorer of the right answer is not."""
    from qkscore.generation.rank import answer_control, group_by_problem

    rng = np.random.default_rng(0)
    n = 200
    answered = np.arange(n) % 2 == 0
    correct = answered & (rng.random(n) < 0.5)
    scores = {
        "qk_finishing": answered.astype(float) + rng.normal(0, 0.01, n),
        "qk_rightness": correct.astype(float) + rng.normal(0, 0.01, n),
        "logprob_mean": rng.normal(0, 1, n),
    }
    records = [
        {"id": f"p{i // 4}", "answer": bool(c) if a else None, "gold": True, "correct": bool(c)}
        for i, (a, c) in enumerate(zip(answered, correct))
    ]
    control = answer_control(scores, records, group_by_problem(records), n_boot=200)[
        "answer_control"
    ]
    assert control["reads_finishing"] == ["qk_finishing"]
    among = control["chain_level_among_answered"]
    assert among["qk_rightness"]["auroc"] > 0.99
    assert abs(among["qk_finishing"]["auroc"] - 0.5) < 0.15
    assert control["answered_vs_not"]["qk_finishing"]["auroc"] > 0.99
    assert control["chains_answered"] == answered.sum()
    best = control["best_of_n_among_answered"]
    assert best["qk_rightness"]["accuracy"] >= best["qk_finishing"]["accuracy"]


def test_four_unanswered_chains_are_too_few_to_flag_a_scorer():
    """Qwen2.5-Coder-1.5B's pilot left 4 of 84 chains unanswered. A bootstrap interval over 4
    chains excluded 0.5 for an AUROC of 0.25 that a rank test puts at p = 0.08: with fewer than
    5 chains of a class no AUROC is reported, with fewer than 10 on a side nothing is flagged,
    and the summary says why."""
    from qkscore.generation.rank import _answer_control_markdown, answer_control, group_by_problem

    rng = np.random.default_rng(1)
    answered = np.arange(84) >= 4
    correct = answered & (rng.random(84) < 0.5)
    swinging = np.concatenate([[0.55, 0.65, 0.85, 0.95], np.linspace(0, 1, 80)])
    records = [
        {"id": f"p{i // 4}", "answer": bool(c) if a else None, "gold": True, "correct": bool(c)}
        for i, (a, c) in enumerate(zip(answered, correct))
    ]
    scores = {"qk_swinging": swinging, "logprob_mean": -swinging}
    control = answer_control(scores, records, group_by_problem(records), n_boot=500)
    entry = control["answer_control"]["answered_vs_not"]["qk_swinging"]
    assert entry["auroc"] is None and entry["too_few"] and entry["n"] - entry["positives"] == 4
    assert control["answer_control"]["reads_finishing"] == []
    assert control["answer_control"]["finishing_testable"] is False
    assert "Too few chains on one side" in "\n".join(
        _answer_control_markdown(control["answer_control"])
    )


@pytest.mark.parametrize(
    "raw, kept",
    [
        (b'{"a":1}\n{"a":2}\n{"a"', b'{"a":1}\n{"a":2}\n'),  # torn mid-line
        (b'{"a":1}\n{"a":2}', b'{"a":1}\n{"a":2}\n'),  # cut just before the newline
        (b'{"a":1}\n\n{"a":2}\n', b'{"a":1}\n\n{"a":2}\n'),  # whole: left alone
        (b'{"a":1}\n{"a":2}\n{"a"\n\n', b'{"a":1}\n{"a":2}\n'),  # torn, blank lines after
    ],
)
def test_a_torn_jsonl_tail_is_cut_before_the_next_append(tmp_path, raw, kept):
    from qkscore.io import append_jsonl, drop_torn_tail, read_jsonl

    path = tmp_path / "log.jsonl"
    path.write_bytes(raw)
    drop_torn_tail(path)
    assert path.read_bytes() == kept
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_a_jsonl_line_damaged_in_the_middle_is_an_error_not_a_silent_stop(tmp_path):
    """A bad line that is not the last one is damage: reading it names file and line instead
    of dropping the whole lines after it, and cutting the tail refuses too (it would cut
    them off). The rank cache reads through the same helper."""
    from qkscore.data.items import DataError
    from qkscore.generation.rank_cache import RankCache
    from qkscore.io import drop_torn_tail, read_jsonl

    path = tmp_path / "log.jsonl"
    raw = b'{"a":1}\n{"a"{"a":2}\n{"a":3}\n'
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"log\.jsonl:2: .*damaged in the middle"):
        read_jsonl(path)
    with pytest.raises(DataError, match=r"log\.jsonl:2"):
        drop_torn_tail(path)
    assert path.read_bytes() == raw  # nothing cut

    cache = RankCache(tmp_path / "ranked", {"profile_sha256": "a"})
    cache.add_steps("p#0", [{"qk_reader": 1.0}])
    cache.add_steps("p#1", [{"qk_reader": 2.0}])
    with open(cache.steps_path, "ab") as fh:
        fh.write(b'{"key": "p#2", "verd')  # a kill mid-write
    cache = RankCache(tmp_path / "ranked", {"profile_sha256": "a"})
    cache.add_steps("p#2", [{"qk_reader": 3.0}])
    assert list(cache.steps()) == ["p#0", "p#1", "p#2"]
    lines = cache.steps_path.read_bytes().splitlines(keepends=True)
    cache.steps_path.write_bytes(lines[0] + b"{oops\n" + lines[1] + lines[2])
    with pytest.raises(DataError, match=r"steps\.jsonl:2"):
        RankCache(tmp_path / "ranked", {"profile_sha256": "a"})

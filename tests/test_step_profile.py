"""Step profiles: step sets grouped by problem, calibration on chain steps, and the step
verdicts of verify-chain, the service and rank, on SmolLM2 and on hand-written steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qkscore.data.items import DataError
from qkscore.generation.byo import import_chains
from qkscore.generation.steps import read_steps_file, steps_from_generations
from tiny_models import few_threads

CONTEXT = (
    "Every cat is a mammal. Every mammal is an animal. Cats are not green. Tom is a cat. "
    "Every dog is loud."
)
NAMES = ["Tom", "Max", "Sam", "Ann", "Liz", "Bob"]
ENV = {"COLUMNS": "200", "QKSCORE_DEBUG": None}


@pytest.fixture(autouse=True)
def _threads():
    with few_threads():
        yield


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _step_rows(name: str, problem: str) -> list[dict]:
    """A problem's labelled steps as a user brings them: a right chain and a wrong one."""
    context = CONTEXT.replace("Tom", name)
    right = [f"{name} is a cat.", f"{name} is a mammal.", f"{name} is an animal."]
    wrong = [f"{name} is green.", f"{name} is a dog."]
    rows = []
    for chain, label in ((right, "valid"), (wrong, "invalid")):
        for i, step in enumerate(chain):
            rows.append(
                {"problem": problem, "context": context, "earlier": chain[:i], "step": step,
                 "label": label, "depth": i if label == "valid" else None}
            )  # fmt: skip
    return rows


# ---- step sets -------------------------------------------------------------------------------


def test_a_labelled_steps_file_reads_as_steps_grouped_by_problem(tmp_path):
    path = _write(tmp_path / "s.jsonl", [r for n in NAMES[:3] for r in _step_rows(n, n)])
    steps = read_steps_file(path)
    assert steps.counts() == {
        "problems": 3, "chains": 3, "steps": 15, "valid": 9, "invalid": 6, "valid_derived": 6,
    }  # fmt: skip
    assert steps.source == {"kind": "file", "path": str(path)}
    assert list(steps.labels()[:5]) == [0, 0, 0, 1, 1]  # option 0 = valid, as the readers read
    assert list(steps.groups()[:6]) == ["Tom"] * 5 + ["Max"]
    assert list(steps.derived()[:5]) == [False, True, True, True, True]  # a restated premise out
    # the judge's pair: the context, then the earlier steps
    assert steps.steps[2].pair == (CONTEXT + " Tom is a cat. Tom is a mammal.", "Tom is an animal.")
    calib, rest = steps.split(2, seed=3)
    assert len(calib) == 2 and sorted(calib + rest) == sorted(NAMES[:3])
    assert {s.problem for s in steps.subset(calib).steps} == set(calib)  # never split a problem
    assert steps.split(None) == steps.split(1)  # half by default, rounded down


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ("{not json", "s.jsonl:2: not valid JSON"),
        ({"context": CONTEXT, "step": "a.", "label": "valid"}, "s.jsonl:2 field 'problem'"),
        ({"problem": "p", "context": CONTEXT, "label": "valid"}, "s.jsonl:2 field 'step': missing"),
        ({"problem": "p", "context": CONTEXT, "step": "a.", "label": "maybe"},
         "s.jsonl:2 field 'label': expected \"valid\" or \"invalid\""),
        ({"problem": "p", "context": CONTEXT, "step": "a.", "label": "valid", "earlier": "x"},
         "s.jsonl:2 field 'earlier'"),
        ({"problem": "p", "context": CONTEXT, "step": "a.", "label": "valid", "earlier": ["a", 3]},
         "s.jsonl:2 field 'earlier[1]'"),
        ({"problem": "p", "context": CONTEXT, "step": "a.", "label": "valid", "depth": -1},
         "s.jsonl:2 field 'depth'"),
        ({"problem": "Tom", "context": "Another context.", "step": "a.", "label": "valid"},
         "s.jsonl:2 field 'context': problem 'Tom' has another context on line 1"),
    ],
)  # fmt: skip
def test_a_malformed_steps_line_names_file_line_and_field(tmp_path, bad, where):
    path = _write(tmp_path / "s.jsonl", [_step_rows("Tom", "Tom")[0], bad])
    with pytest.raises(DataError) as err:
        read_steps_file(path)
    assert where in str(err.value)


def test_the_steps_of_a_generation_folder_keep_unparsed_steps_before_them(tmp_path):
    record = {
        "id": "p1", "context": CONTEXT, "question": "True or false: Tom is a mammal.", "gold": True,
        "generations": ["Tom is a cat. So let us see. Tom is a mammal. Tom is green.\n"
                        "Answer: True"],
        "hops": 1,
    }  # fmt: skip
    gen = import_chains(_write(tmp_path / "c.jsonl", [record]), tmp_path / "g")
    steps = steps_from_generations(gen.path)
    assert [(s.step, s.valid, s.depth) for s in steps.steps] == [
        ("Tom is a cat.", True, 0), ("Tom is a mammal.", True, 1), ("Tom is green.", False, None),
    ]  # fmt: skip
    assert steps.steps[1].earlier == ("Tom is a cat.", "So let us see.")  # as the judge sees it
    assert steps.steps[1].chain == "p1#0" and steps.steps[1].hops == 1
    assert steps.source["kind"] == "generations" and steps.source["problems_sha256"]


def test_calibration_needs_each_label_in_two_problems_before_loading_a_model(tmp_path):
    from qkscore.step_calibration import calibrate_steps

    rows = _step_rows("Tom", "Tom") + [r for r in _step_rows("Max", "Max") if r["label"] == "valid"]
    steps = read_steps_file(_write(tmp_path / "s.jsonl", rows))
    with pytest.raises(ValueError, match="every option in at least 2 groups"):
        calibrate_steps(steps, "no-such-model", calib_size=2)
    only_valid = steps.subset(["Max"])
    with pytest.raises(ValueError, match="both valid and invalid steps"):
        calibrate_steps(only_valid, "no-such-model", calib_size=1)


# ---- SmolLM2 end to end: generate, calibrate on steps, judge, rank ---------------------------

SPEC = "generated:depth=1-2&n=8&seed=5"


def _workable_seed(steps) -> int:
    """A seed whose half of the problems holds valid and invalid steps in two problems each
    (what grouped cross-validation needs), found the way a user would try seeds."""
    for seed in range(50):
        calib = steps.subset(steps.split(None, seed)[0])
        labels, groups = calib.labels(), calib.groups()
        if all(len(set(groups[labels == v])) >= 2 for v in (0, 1)):
            return seed
    raise AssertionError("no seed gives a workable calibration half")


@pytest.fixture(scope="module")
def gen(tmp_path_factory, smollm2):
    from qkscore.generation import generate

    out = tmp_path_factory.mktemp("steps") / "gen"
    with few_threads():
        generate(smollm2, SPEC, out, samples=1, max_new_tokens=32, batch_size=8,
                 progress=False, log=lambda *_: None)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def step_profile(gen, smollm2):
    """``qkscore calibrate GEN`` on half of the folder's problems."""
    from qkscore.cli import app

    seed = _workable_seed(steps_from_generations(gen))
    out = gen.parent / "step.json"
    with few_threads():
        result = CliRunner().invoke(
            app, ["calibrate", str(gen), "-o", str(out), "--seed", str(seed), "--json"], env=ENV
        )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def answer_profile(tmp_path_factory, smollm2):
    from audit_fixtures import build_profile

    return build_profile(tmp_path_factory.getbasetemp(), smollm2)


def test_a_step_profile_records_its_candidates_and_problems(gen, step_profile, smollm2):
    from qkscore.audit import Judge
    from qkscore.audit.chain import step_pairs
    from qkscore.profile import Profile
    from qkscore.prompts import template_from_description
    from qkscore.step_calibration import step_features

    data = json.loads(step_profile.read_text())
    assert data["unit"] == "step" and Profile.load(step_profile).unit == "step"
    steps = steps_from_generations(gen)
    calib, rest = data["calibration"]["item_ids"], data["evaluation_ids"]
    assert sorted(calib + rest) == sorted(steps.problems())
    assert len(calib) == len(steps.problems()) // 2
    assert data["calibration"]["grouped_by"] == "problem"
    assert data["calibration"]["size"] == len(steps.subset(calib))
    choice = data["reader_choice"]
    assert choice["chosen"] == data["reader"] and "grouped by problem" in choice["rule"]
    assert set(choice["cv"]) == {"head", "ensemble", "linear", "linear-l1", "hybrid"}
    assert 0 <= choice["cv"]["head"]["auroc"] <= 1 and "derived" in choice["cv"]["head"]["subsets"]
    for entry in choice["cv"].values():  # a few problems are too few for some inner folds
        assert "auroc" in entry or "CV" in entry["skipped"] or "cross-val" in entry["skipped"]
    assert set(choice["baselines"]) == {"model_logodds", "hidden_probe"}
    assert data["baselines"]["hidden_probe"]["layers"] == data["steps"]["hidden_layers"]
    assert data["steps"]["source"]["kind"] == "generations"

    # served, the profile reads the very prompts and positions it was calibrated on
    from qkscore.generation import GenFolder
    from qkscore.generation.steps import StepSet

    folder = GenFolder(gen)
    record = next(r for r in folder.records() if r["id"] in calib and r["steps"])
    context = folder.problems()[record["problem"]].context
    pairs = step_pairs(context, record["steps"])  # what verify-chain judges
    parsed = [i for i, lab in enumerate(record["labels"]) if lab["label"] != "unparsed"]
    one = StepSet([s for s in steps.steps if s.chain == f"{record['id']}#{record['sample']}"])
    assert one.pairs() == [pairs[i] for i in parsed]
    feats = step_features(smollm2, template_from_description(data["template"]), one)
    served = Judge(step_profile, model=smollm2).features(pairs)
    np.testing.assert_allclose(served.scores[parsed], feats.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(served.baseline[parsed], feats.baseline, rtol=1e-4, atol=1e-4)


def test_a_second_calibration_reads_the_pass_from_its_features_file(gen, step_profile, smollm2):
    """The pass is kept beside the profile: calibrating again (another reader, a crash after
    the pass) does not run the model again, and a file made for other steps is recomputed."""
    from qkscore.step_calibration import calibrate_steps

    cache = Path(str(step_profile) + ".features.npz")
    assert cache.is_file()
    data = json.loads(step_profile.read_text())
    steps, seed = steps_from_generations(gen), data["calibration"]["seed"]
    said: list[str] = []
    with few_threads():
        again = calibrate_steps(steps, smollm2, step_profile.parent / "again.json", seed=seed,
                                progress=False, log=said.append)  # fmt: skip
    assert not any("read from" in line for line in said)  # another out path, its own file
    said.clear()
    with few_threads():
        twice = calibrate_steps(steps, smollm2, step_profile.parent / "again.json", seed=seed,
                                progress=False, log=said.append)  # fmt: skip
    assert any("read from" in line for line in said)
    assert twice.data["readers"] == again.data["readers"]
    said.clear()
    with few_threads():  # no residual stream kept: another pass
        calibrate_steps(steps, smollm2, step_profile.parent / "again.json", seed=seed,
                        hidden_layers="none", progress=False,
                        log=said.append)  # fmt: skip
    assert not any("read from" in line for line in said)


def test_a_pass_stopped_midway_resumes_from_its_partial_file(
    gen, step_profile, smollm2, monkeypatch
):
    """A calibration killed during its pass keeps the chains it scored: the next run scores
    only the rest, and its features equal those of an uninterrupted pass."""
    import qkscore.scoring
    import qkscore.step_calibration as sc

    data = json.loads(step_profile.read_text())
    steps, seed = steps_from_generations(gen), data["calibration"]["seed"]
    n_chains = len(steps.subset(data["calibration"]["item_ids"]).chains())
    assert n_chains >= 3
    real, calls = qkscore.scoring.score_pairs, []

    def counting(*args, **kwargs):
        calls.append(1)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(qkscore.scoring, "score_pairs", counting)
    monkeypatch.setattr(sc, "CHECKPOINT_EVERY_S", 0.0)
    out = step_profile.parent / "resumed.json"
    partial = Path(str(out) + ".features.partial.npz")
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        sc.calibrate_steps(steps, smollm2, out, seed=seed, progress=False, log=lambda *_: None)
    with np.load(partial) as z:
        assert int(z["done"].sum()) == 2
    assert not out.exists()
    calls.clear()
    stop_after, said = None, []
    sc.calibrate_steps(steps, smollm2, out, seed=seed, progress=False, log=said.append)
    assert len(calls) == n_chains - 2
    assert any("resuming the pass: 2/" in line for line in said)
    assert not partial.exists()
    with (
        np.load(Path(str(out) + ".features.npz")) as got,
        np.load(Path(str(step_profile) + ".features.npz")) as whole,
    ):
        for name in ("scores", "baseline", "hidden"):
            np.testing.assert_array_equal(got[name], whole[name])
        assert "done" not in got.files


def test_verify_chain_warns_only_with_an_answer_profile_json_and_audit_row(
    step_profile, answer_profile, smollm2, tmp_path
):
    from audit_fixtures import asgi_client, run
    from qkscore.audit import Judge
    from qkscore.audit.check import ANSWER_PROFILE_ON_STEPS
    from qkscore.audit.service import create_app
    from qkscore.cli import app

    chain = _write(tmp_path / "chain.json", [json.dumps(["Tom is a cat.", "Tom is green."])])
    outputs = {}
    for name, profile in (("step", step_profile), ("answer", answer_profile)):
        args = ["verify-chain", "-p", str(profile), "-c", CONTEXT, "--chain", str(chain), "--json"]
        result = CliRunner().invoke(app, args, env=ENV)
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads(result.stdout)
    assert outputs["step"]["profile_unit"] == "step" and outputs["step"]["warning"] is None
    assert outputs["answer"]["profile_unit"] == "answer"
    assert outputs["answer"]["warning"] == ANSWER_PROFILE_ON_STEPS
    text = CliRunner().invoke(
        app, ["verify-chain", "-p", str(answer_profile), "-c", CONTEXT, "--chain", str(chain)],
        env=ENV,
    )  # fmt: skip
    assert "calibrated on answers" in " ".join(text.output.split())

    judge = Judge(answer_profile, model=smollm2)
    app_ = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with asgi_client(app_) as c:
            r = await c.post(
                "/v1/verify-chain", json={"context": CONTEXT, "steps": ["Tom is a cat."]}
            )
            assert r.status_code == 200, r.text
            assert r.json()["warning"] == ANSWER_PROFILE_ON_STEPS
            row = (await c.get("/v1/audit", params={"kind": "chain"})).json()["items"][0]
            assert row["result"]["warning"] == ANSWER_PROFILE_ON_STEPS
            profile = (await c.get("/v1/profile")).json()
            assert profile["unit"] == "answer" and profile["step_warning"]

    run(go())


def test_rank_with_a_step_profile_judges_only_the_problems_it_never_saw(
    gen, step_profile, answer_profile, smollm2, tmp_path, monkeypatch
):
    import qkscore.generation.rank as rank_module
    from qkscore.generation.rank import rank

    # the few generated problems hold a handful of invalid steps: let every class size count
    monkeypatch.setattr(rank_module, "MIN_PER_CLASS", 1)
    calib = json.loads(step_profile.read_text())["calibration"]["item_ids"]
    kwargs = dict(model=smollm2, folds=2, progress=False, n_boot=50, log=lambda *_: None)
    with pytest.raises(ValueError, match="refused"):
        rank(gen, step_profile, tmp_path / "r0", include_calibration=True, **kwargs)
    from qkscore.generation.folder import GenFolder

    reads = []
    real_records = GenFolder.records
    monkeypatch.setattr(GenFolder, "records", lambda self: reads.append(1) or real_records(self))
    summary = rank(gen, step_profile, tmp_path / "r", answer_profile=answer_profile, **kwargs)
    assert len(reads) == 1  # shallow matching's calibration steps come from the same read
    assert summary["profile_unit"] == "step" and summary["warning"] is None
    assert summary["calibration_overlap"]["problems"] == len(calib)
    assert summary["calibration_overlap"]["excluded"]
    rows = [json.loads(x) for x in (tmp_path / "r" / "ranked.jsonl").read_text().splitlines()]
    assert rows and not {r["id"] for r in rows} & set(calib)
    level = summary["step_level"]
    assert {
        "qk_reader", "model_logodds", "hidden_probe", "shallow_matching", "step_logprob",
        "answer_reader",
    } <= set(level)  # fmt: skip
    for entry in level.values():
        assert {"overall", "derived_only", "grounded_only", "by_depth", "by_hops"} <= set(entry)
    paired = {(p["a"], p["b"], p["subset"]) for p in summary["step_paired"]}
    assert paired == {  # the fair baseline, the probe, wording, logit confidence, answers
        ("qk_reader", b, s)
        for b in (
            "model_logodds",
            "hidden_probe",
            "shallow_matching",
            "step_logprob",
            "answer_reader",
        )  # fmt: skip
        for s in ("overall", "derived_only", "grounded_only")
    }
    selectors = {(c["a"], c["b"]) for c in summary["step_reader_vs_majority"]}
    assert selectors == {("qk_reader_min", "majority_vote"), ("qk_reader_mean", "majority_vote")}
    control = summary["answer_control"]["step_reader_vs_majority_among_answered"]
    assert {c["a"] for c in control} == {"qk_reader_min", "qk_reader_mean"}
    step = next(s for r in rows for s in r["steps"] if s["label"] != "unparsed")
    assert {
        "qk_reader",
        "hidden_probe",
        "answer_reader",
        "step_logprob",
        "shallow_matching",
    } <= set(step)
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "Step verdicts come from a step profile" in md and "resample whole problems" in md


def test_calibrate_on_a_steps_file_and_a_malformed_one(tmp_path, smollm2):
    from qkscore.cli import app

    rows = [r for i, n in enumerate(NAMES) for r in _step_rows(n, f"p{i}")]
    good = _write(tmp_path / "s.jsonl", rows)
    out = tmp_path / "p.json"
    args = ["calibrate", "--steps", str(good), "-m", "smollm2-135m", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--hidden-layers", "4,20"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "step profile written" in " ".join(result.output.split())
    data = json.loads(out.read_text())
    assert data["unit"] == "step" and data["calibration"]["item_ids"] == [f"p{i}" for i in range(6)]
    assert data["evaluation_ids"] == [] and data["calibration"]["cv_folds"] == 5
    choice = data["reader_choice"]
    for entry in [*choice["cv"].values(), *choice["baselines"].values()]:  # six problems: enough
        assert 0 <= entry["auroc"] <= 1 and 0 <= entry["subsets"]["derived"]["auroc"] <= 1
    assert data["baselines"]["hidden_probe"]["layer"] in (4, 20)
    bad = _write(tmp_path / "bad.jsonl", [*rows[:3], {**rows[3], "label": "wrong"}])
    args = ["calibrate", "--steps", str(bad), "-m", "smollm2-135m", "-o", str(tmp_path / "q.json")]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 2
    assert "bad.jsonl:4 field 'label'" in " ".join(result.output.split())
    assert not (tmp_path / "q.json").exists()


def test_an_auroc_over_too_few_of_a_class_is_reported_as_too_few():
    """One right answer among 200 chains gave a chain-level AUROC with an interval; an AUROC
    needs a few items of each class, and the summary says when it has not."""
    from qkscore.generation.rank import MIN_PER_CLASS, _auroc_entry, _fmt

    rng = np.random.default_rng(0)
    score = rng.normal(size=200)
    few = np.zeros(200, dtype=bool)
    few[: MIN_PER_CLASS - 1] = True
    entry = _auroc_entry(score, few, 50)
    assert entry["auroc"] is None and entry["too_few"] and entry["positives"] == MIN_PER_CLASS - 1
    assert _fmt(entry, "auroc").startswith("too few")
    enough = np.zeros(200, dtype=bool)
    enough[:MIN_PER_CLASS] = True
    assert _auroc_entry(score, enough, 50)["auroc"] is not None

"""qkscore inside lm-evaluation-harness: the ``qkscore`` model, the packaged tasks, the wrapper.

The first tests need only the tokenizer; the model tests share one small SmolLM2 scan
(one test of calibration is marked slow).

The end-to-end test runs lm-eval's own ``simple_evaluate`` with SmolLM2 on a few ProntoQA items
and checks every choice against what ``qkscore evaluate`` decides for the same items, reader and
split. Everything runs offline.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402

from qkscore.integrations.lm_eval import QKScoreLM, lm_eval_argv, register  # noqa: E402
from qkscore.integrations.lm_eval_tasks import (  # noqa: E402
    TASKS_DIR,
    packaged_task,
    packaged_tasks,
    task_config,
)
from qkscore.prompts import find_listed_options, get_template  # noqa: E402

N_ITEMS, N_CALIB = 16, 10


def _spec(shared_data) -> str:
    folder = shared_data / "prontoqa" / "truefalse_0shot"
    return f"prontoqa:{folder}/*hop_0shot_random.json?sample={N_ITEMS}&balance=1&seed=0"


@pytest.fixture(scope="module")
def pronto(tmp_path_factory, shared_data, smollm2):
    """A float32 scan of a few ProntoQA items (with distractors) and its calibrated profile."""
    from qkscore.pipeline import calibrate
    from qkscore.scanning import scan

    out = tmp_path_factory.mktemp("lm_eval")
    run = scan(
        smollm2, _spec(shared_data), "answer-statement", out / "run",
        hidden_layers=None, progress=False, log=lambda _: None,
    )  # fmt: skip
    with pytest.warns(Warning):  # a 10-item calibration split is small, and says so
        calibrate(run.path, calib_size=N_CALIB, reader="head", out=out / "profile.json")
    return run.path, out / "profile.json"


@pytest.fixture(scope="module")
def qk_model(pronto, smollm2):
    return QKScoreLM(pretrained=smollm2, profile=str(pronto[1]), batch_size=8)


def test_registered_with_lm_eval_beside_its_own_models():
    from lm_eval.api.registry import get_model

    register()
    register()  # idempotent
    assert get_model("qkscore") is QKScoreLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours did not hide lm-eval's own


def test_wrapper_adds_the_packaged_tasks_unless_an_include_path_is_given():
    args = ["run", "--model", "qkscore", "--tasks", "qkscore_prontoqa_distractors"]
    assert lm_eval_argv(args) == [*args, "--include_path", str(TASKS_DIR)]
    mine = [*args, "--include_path", "/my/tasks"]
    assert lm_eval_argv(mine) == mine
    assert lm_eval_argv(["--help"]) == ["--help"]
    names = set(packaged_tasks())
    assert {"qkscore_prontoqa_distractors", "qkscore_mmlu_logic", "qkscore_folio"} <= names


def test_debiased_multi_logieval_task_holds_the_debiased_items_split_as_calibrate_does(
    shared_data,
):
    from qkscore.data import load_items

    splits = packaged_task("qkscore_multi_logieval_debiased")
    spec = f"multi-logieval:{shared_data / 'multi_logieval' / 'data'}?debias=1&seed=0"
    items = load_items(spec)
    assert len(splits.validation) == 400 and len(splits.test) == len(items) - 400
    assert {it.id for it in splits.validation} | {it.id for it in splits.test} == {
        it.id for it in items
    }
    assert sorted(it.label for it in splits.validation).count("True") == 200


def test_listed_options_are_found_as_the_template_renders_them(smollm2_tokenizer):
    from qkscore.data import Item

    item = Item("x", "Every cat is a mammal. Tom is a cat.", "Tom is a mammal.", "True")
    for name in ("answer-statement", "last-option"):
        tmpl = get_template(name)
        own = tmpl.render(item, smollm2_tokenizer).parts[0]
        listed = tmpl.render_listed(tmpl.text(item), [" A", " B"], smollm2_tokenizer).parts[0]
        assert listed.text == own.text and listed.input_ids == own.input_ids
        assert listed.pairs == own.pairs and listed.candidate_ids == own.candidate_ids
    plain = "Tom is a cat.\nIs Tom a mammal?\nTrue\nFalse\nAnswer:"
    block = find_listed_options(plain, [" True", " False"])
    assert [plain[s:e] for s, e in block.options] == ["True", "False"]
    assert plain[slice(*block.statement)] == "Is Tom a mammal?"


def test_a_prompt_that_does_not_list_its_choices_has_no_positions(smollm2_tokenizer):
    tmpl = get_template("last-option")
    bare = "Every cat is a mammal. Tom is a cat.\nTom is a mammal.\nAnswer:"
    with pytest.raises(ValueError, match="does not list its 2 choices"):
        tmpl.render_listed(bare, [" A", " B"], smollm2_tokenizer)
    wrong_order = "Tom is a mammal.\nB. False\nA. True\nAnswer:"
    with pytest.raises(ValueError, match="reads 'B. False'"):
        tmpl.render_listed(wrong_order, [" A", " B"], smollm2_tokenizer)
    with pytest.raises(ValueError, match="cannot read a prompt written elsewhere"):
        get_template("candidate-appended").render_listed(bare, [" A", " B"], smollm2_tokenizer)


def _requests(context: str, choices: list[str], task: str = "t", doc_id: int = 0) -> list:
    return [
        Instance("loglikelihood", {}, (context, c), idx=j, metadata=(task, doc_id, 1))
        for j, c in enumerate(choices)
    ]


def test_a_prompt_without_its_choices_is_refused_saying_why(qk_model):
    reqs = _requests(
        "Every cat is a mammal. Tom is a cat.\nTom is a mammal.\nAnswer:", [" A", " B"]
    )
    with pytest.raises(ValueError, match="does not list its 2 choices.*positions cannot be found"):
        qk_model.loglikelihood(reqs)
    three = _requests("Tom is a cat.\nA. True\nB. False\nC. Unknown\nAnswer:", [" A", " B", " C"])
    with pytest.raises(ValueError, match="3 choices but .* 2-option items"):
        qk_model.loglikelihood(three)


def test_generation_is_passed_to_lm_eval_hf_model_on_the_same_weights(qk_model, smollm2):
    import torch

    prompt = "Every cat is a mammal. Tom is a cat. So Tom is a"
    req = Instance(
        "generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": 4, "do_sample": False}), 0
    )
    (text,) = qk_model.generate_until([req])
    assert qk_model.hf.model is smollm2.model
    ids = smollm2.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        greedy = smollm2.model.generate(ids, max_new_tokens=4, do_sample=False)
    expected = smollm2.tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True)
    assert text == expected.split("\n")[0] and text.strip()


def test_lm_eval_choices_equal_qkscore_evaluate_on_the_same_items(pronto, qk_model, shared_data):
    """simple_evaluate with the qkscore model on the task's test split == `qkscore evaluate`."""
    from lm_eval import simple_evaluate

    from qkscore.pipeline import _reader_proba, _scan_inputs, evaluate, evaluation_indices
    from qkscore.profile import Profile
    from qkscore.run import MAIN, RunFolder

    run_path, profile_path = pronto
    task = task_config(
        "qkscore_test_pronto", spec=_spec(shared_data), template="answer-statement",
        validation_size=N_CALIB,
    )  # fmt: skip
    out = simple_evaluate(model=qk_model, tasks=[task], log_samples=True, verbosity="ERROR")
    samples = out["samples"]["qkscore_test_pronto"]
    assert len(samples) == N_ITEMS - N_CALIB
    # filtered_resps: one (log-probability, is_greedy) per choice
    lm_eval_choice = {
        s["doc"]["id"]: int(np.argmax([float(r[0]) for r in s["filtered_resps"]])) for s in samples
    }

    prof, run = Profile.load(profile_path), RunFolder(run_path)
    idx, _ = evaluation_indices(run, prof)
    records = run.items()
    proba = _reader_proba(prof.reader(), _scan_inputs(run, MAIN, idx))
    qk_choice = {records[i]["id"]: int(p) for i, p in zip(idx, proba.argmax(-1))}
    assert lm_eval_choice == qk_choice  # same items (the test split), same choices
    report = evaluate(run_path, prof)
    acc = out["results"]["qkscore_test_pronto"]["acc,none"]
    assert acc == pytest.approx(report["methods"]["head"]["accuracy"]["value"])
    assert out["config"]["qkscore_reader"] == "head"
    first = simple_evaluate(model=qk_model, tasks=[task], limit=2, log_samples=True)
    got = first["samples"]["qkscore_test_pronto"]
    assert [lm_eval_choice[s["doc"]["id"]] for s in got] == [
        int(np.argmax([float(r[0]) for r in s["filtered_resps"]])) for s in got
    ]
    assert len(got) == 2


@pytest.mark.slow  # scans 12 items
def test_calibrate_fits_on_its_own_items_and_refuses_to_score_them(tmp_path, smollm2, shared_data):
    from qkscore.data import load_items

    folder = shared_data / "prontoqa" / "truefalse_0shot"
    spec = f"prontoqa:{folder}/1hop_0shot_random.json?sample=12&balance=1&seed=3"
    with pytest.warns(Warning):  # 12 calibration items are few, and it says so
        model = QKScoreLM(
            pretrained=smollm2, calibrate=spec, reader="head", calibrate_out=str(tmp_path)
        )
    assert (tmp_path / "profile.json").is_file()
    assert model.profile.data["calibration"]["size"] == 12
    seen = get_template("answer-statement").text(load_items(spec)[0])
    with pytest.raises(ValueError, match="one of the calibration items"):
        model.loglikelihood(_requests(seen, [" A", " B"]))


def test_a_misspelt_model_argument_is_an_error_before_the_model_loads(monkeypatch, shared_data):
    """`reder=head` used to be a logged warning, and lm-eval ran with the default reader."""
    from typer.testing import CliRunner

    import qkscore.integrations.lm_eval as integration
    from qkscore.cli import app

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(integration, "load_model", no_loading)
    with pytest.raises(ValueError, match=r"unknown model_args 'reder' \(did you mean 'reader'\?\)"):
        QKScoreLM(pretrained="smollm2-135m", profile="p.json", reder="head")
    args = ["lm-eval", "run", "--model", "qkscore", "--tasks", "qkscore_prontoqa_distractors"]
    args += ["--model_args", "pretrained=smollm2-135m,profile=p.json,reder=head", "--limit", "1"]
    env = {"QKSCORE_SHARED_DATA": str(shared_data), "QKSCORE_DEBUG": None}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert "error: model qkscore: unknown model_args 'reder'" in result.output

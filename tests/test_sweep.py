"""Sweeps over prompt settings and the scan flags they use (chat template, few-shot), SmolLM2."""

from __future__ import annotations

import json
import warnings

import pytest

from qkscore.data import load_items
from qkscore.prompts import get_template, with_fewshot
from qkscore.run import RunFolder
from qkscore.scanning import scan
from qkscore.sweep import parse_grid, sweep

SPEC = "generated:depth=1-2&n=48&distractors=0&seed=4"


def test_parse_grid_fills_defaults_and_refuses_unknown_settings():
    grid = parse_grid("rope=false;num_fewshot=0,3;swap_options")
    assert grid["num_fewshot"] == [0, 3] and grid["swap_options"] == [False, True]
    assert grid["template"] == ["answer-statement"] and grid["chat_template"] == [False]
    with pytest.raises(ValueError, match="unknown grid setting 'temperature'"):
        parse_grid("temperature=0.7")
    with pytest.raises(ValueError, match="not true or false"):
        parse_grid("rope=maybe")


def test_fewshot_examples_are_balanced_and_never_scored():
    items = load_items(SPEC)
    template, rest = with_fewshot(get_template("answer-statement"), items, 3)
    shots = template.k_shot
    assert len(shots) == 3 and len(rest) == len(items) - 3
    assert {s.label for s in shots} == {"True", "False"}
    assert not {s.id for s in shots} & {it.id for it in rest}
    with pytest.raises(ValueError, match="leave none"):
        with_fewshot(get_template("answer-statement"), items[:2], 2)


def test_scan_records_chat_template_and_fewshot(smollm2, tmp_path):
    run = scan(
        smollm2,
        SPEC,
        "answer-statement",
        tmp_path / "run",
        limit=6,
        chat_template=True,
        num_fewshot=2,
        hidden_layers="none",
        progress=False,
        log=lambda *_: None,
    )
    meta = run.meta()
    assert meta["template"]["use_chat_template"] and meta["template"]["k"] == 2
    shot_ids = {s["id"] for s in meta["template"]["k_shot"]}
    assert meta["n_items"] == 6 and not shot_ids & {r["id"] for r in run.items()}
    assert "<|im_start|>" in smollm2.tokenizer.decode(
        get_template("answer-statement", use_chat_template=True)
        .render(load_items(SPEC)[0], smollm2.tokenizer)
        .parts[0]
        .input_ids
    )


def test_sweep_ranks_on_calibration_cv_and_resumes(smollm2, tmp_path):
    out = tmp_path / "sweep"
    grid = "template=answer-statement;swap_options=false,true"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sweep(smollm2, SPEC, out, grid, calib_size=32, n_boot=50, progress=False,
                       log=lambda *_: None)  # fmt: skip
    settings = {row["setting"] for row in result["rows"]}
    assert settings == {
        "answer-statement_prerope_plain_0shot_inorder",
        "answer-statement_prerope_plain_0shot_swapped",
    }
    cv = [row["cv_auroc"] for row in result["rows"]]
    assert cv == sorted(cv, reverse=True) and result["chosen"] == result["rows"][0]
    readers = {row["reader"] for row in result["rows"]}
    assert {"head", "linear", "hybrid"} <= readers
    assert json.loads((out / "leaderboard.json").read_text())["chosen"] == result["chosen"]
    assert "Chosen on calibration CV" in (out / "leaderboard.md").read_text()
    swapped = RunFolder(out / "answer-statement_prerope_plain_0shot_swapped" / "run").meta()
    assert swapped["template"]["swap_options"] is True
    profile = out / "answer-statement_prerope_plain_0shot_inorder" / "profile.json"
    stamp = profile.stat().st_mtime_ns
    again = sweep(smollm2, SPEC, out, grid, calib_size=32, n_boot=50, progress=False,
                  log=lambda *_: None)  # fmt: skip
    assert again["rows"] == result["rows"] and profile.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("grid", "calib_size", "words"),
    [
        ("template=nosuch", 32, "unknown template 'nosuch'"),
        ("template=answer-statement", 4, "at least 5 items of each option"),
        ("template=answer-statement;num_fewshot=0,3", 48, "leaves no items to evaluate"),
    ],
    ids=["template", "calib-size 4", "calib-size of every item"],
)
def test_sweep_refuses_bad_settings_before_loading_the_model(
    monkeypatch, tmp_path, grid, calib_size, words
):
    """`template=nosuch` and `--calib-size 4` used to be found only after the model loaded."""
    import qkscore.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(qkscore.models, "load_model", no_loading)
    with pytest.raises(ValueError, match=words):
        sweep("smollm2-135m", SPEC, tmp_path / "out", grid, calib_size=calib_size,
              progress=False, log=lambda *_: None)  # fmt: skip
    assert not (tmp_path / "out").exists()

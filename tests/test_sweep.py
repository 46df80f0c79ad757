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


# ---- shared passes (issue 20) ----------------------------------------------

PRONTOQA = "prontoqa:../shared/data/prontoqa/truefalse_0shot/1hop_0shot_random.json"


def _quiet(**kwargs):
    return {"progress": False, "log": lambda *_: None, **kwargs}


def _options(**kwargs):
    from qkscore.scanning import ScanOptions

    return ScanOptions(**_quiet(**kwargs))


class _PassCounter:
    """Counts forward passes: every call of the extraction function scoring makes."""

    def __init__(self, monkeypatch):
        import qkscore.scoring

        self.calls = 0
        real = qkscore.scoring.extract

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(qkscore.scoring, "extract", counted)

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def _arrays(run: RunFolder) -> dict:
    import numpy as np

    return {n: np.load(run.array_path("main", n)) for n in ("scores", "baseline", "hidden")}


def test_settings_with_the_same_tokens_share_one_pass_and_equal_solo_scans(
    smollm2, tmp_path, monkeypatch
):
    """statement_anchor last/last_word and the last-option scheme render the same tokens: one
    pass scores all three, and each folder equals its solo scan in float32, to the bit."""
    import numpy as np

    from qkscore.scanning import ScanRequest, scan_shared

    data = f"{PRONTOQA}?limit=10"
    templates = {
        "last": get_template("answer-statement"),
        "word": get_template("answer-statement", statement_anchor="last_word"),
        "option": get_template("last-option"),
    }
    counter = _PassCounter(monkeypatch)
    requests = [ScanRequest(t, tmp_path / "shared" / k) for k, t in templates.items()]
    runs = scan_shared(smollm2, data, requests, _options(batch_size=4, chunk_size=6))
    shared_calls = counter.take()
    metas = [run.meta() for run in runs]
    assert len({m["shared_pass"]["id"] for m in metas}) == 1
    assert sorted(metas[0]["shared_pass"]["folders"]) == sorted(str(r.path) for r in runs)
    assert metas[0]["shared_pass"]["seconds"] == metas[0]["scans"]["main"]["seconds"] > 0
    for (key, template), run in zip(templates.items(), runs):
        solo = scan(smollm2, data, template, tmp_path / "solo" / key, batch_size=4, chunk_size=6,
                    **_quiet())  # fmt: skip
        assert counter.take() == shared_calls  # the shared pass cost what one scan costs
        assert "shared_pass" not in solo.meta()
        assert solo.items() == run.items()
        for name, array in _arrays(solo).items():
            np.testing.assert_array_equal(_arrays(run)[name], array, err_msg=f"{key} {name}")
    last, word = (_arrays(r)["scores"] for r in runs[:2])
    assert not np.allclose(last, word)  # the anchors read other keys


def test_fewshot_answers_split_letters_and_words_into_two_passes(smollm2, tmp_path, monkeypatch):
    """0-shot letters and words share the text; with 3 shots the shown answers differ."""
    from qkscore.scanning import ScanRequest, scan_shared

    requests = [
        ScanRequest(
            get_template("answer-statement", baseline_tokens=tokens),
            tmp_path / f"{k}{tokens}",
            num_fewshot=k,
        )  # fmt: skip
        for k in (0, 3)
        for tokens in ("letters", "words")
    ]
    counter = _PassCounter(monkeypatch)
    runs = scan_shared(smollm2, f"{PRONTOQA}?limit=12", requests, _options())
    metas = [run.meta() for run in runs]
    assert metas[0]["shared_pass"]["id"] == metas[1]["shared_pass"]["id"]
    assert "shared_pass" not in metas[2] and "shared_pass" not in metas[3]
    assert counter.take() == 3 * 2  # three passes of two batches (12 items, batch 8)


def test_a_shared_pass_killed_midway_resumes_every_folder(smollm2, tmp_path, monkeypatch):
    import numpy as np

    from qkscore.scanning import ScanRequest, scan_shared

    data = f"{PRONTOQA}?limit=8"
    templates = [
        get_template("answer-statement", statement_anchor=a) for a in ("last", "last_word")
    ]

    def requests(root):
        return [ScanRequest(t, root / t.statement_anchor) for t in templates]

    whole = scan_shared(smollm2, data, requests(tmp_path / "whole"), _options(chunk_size=4))
    real, written = RunFolder.write_chunk, []

    def dies_after_three(self, *args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        written.append(self.path)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunFolder, "write_chunk", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        scan_shared(smollm2, data, requests(tmp_path / "killed"), _options(chunk_size=4))
    monkeypatch.setattr(RunFolder, "write_chunk", real)
    counter = _PassCounter(monkeypatch)
    resumed = scan_shared(smollm2, data, requests(tmp_path / "killed"), _options(chunk_size=4))
    assert counter.take() == 1  # the one chunk a folder lacked, scored once for both
    for a, b in zip(whole, resumed):
        for name, array in _arrays(a).items():
            np.testing.assert_array_equal(_arrays(b)[name], array)

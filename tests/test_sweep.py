"""Sweeps over prompt settings and the scan flags they use (chat template, few-shot), SmolLM2."""

from __future__ import annotations

import json
import time
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


def test_a_cells_grid_spec_parses_back_to_that_one_cell():
    from qkscore.grid import grid_spec, settings

    grid = parse_grid("chat_template=true;num_fewshot=3;statement_anchor=last_word;option_style")
    for setting in settings(grid):
        spec = grid_spec(setting)
        assert settings(parse_grid(spec)) == [setting]
    assert "chat_template=true" in spec and "num_fewshot=3" in spec
    old = {k: v[0] for k, v in parse_grid("template=answer-statement").items()}
    assert "statement_anchor" not in grid_spec(old)  # left to the template, as it was


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
        ("option_style=plain;baseline_tokens=letters", 32, "every setting of the grid is imp"),
    ],
    ids=["template", "calib-size 4", "calib-size of every item", "every cell impossible"],
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


# ---- template axes and shared passes (issue 20) ----------------------------------------------

PRONTOQA = "prontoqa:../shared/data/prontoqa/truefalse_0shot/1hop_0shot_random.json"
AXES = "statement_anchor=last,last_word;option_style=letters,plain;baseline_tokens=letters,words"


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


def test_parse_grid_template_axes_keep_old_grids_and_their_folders():
    from qkscore.grid import slug

    grid = parse_grid("statement_anchor;option_style=plain;baseline_tokens=words")
    assert grid["statement_anchor"] == ["last", "last_word"]
    assert grid["option_style"] == ["plain"] and grid["baseline_tokens"] == ["words"]
    old = parse_grid("template=answer-statement")
    assert old["statement_anchor"] == old["option_style"] == old["baseline_tokens"] == [None]
    setting = {k: v[0] for k, v in old.items()}
    assert slug(setting) == "answer-statement_prerope_plain_0shot_inorder"
    named = slug({**setting, "statement_anchor": "last_word", "baseline_tokens": "words"})
    assert named.endswith("_inorder_anchor-lastword_answers-words")
    with pytest.raises(ValueError, match="not one of letters, plain"):
        parse_grid("option_style=bullets")


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
    resumed_at = time.time()
    resumed = scan_shared(smollm2, data, requests(tmp_path / "killed"), _options(chunk_size=4))
    assert counter.take() == 1  # the one chunk a folder lacked, scored once for both
    # the pass's time counts the chunks the killed call scored, not only the resumed call's
    earlier = resumed[0].chunk_seconds("main", before=resumed_at)
    assert earlier > 0
    assert resumed[0].meta()["scans"]["main"]["seconds"] >= earlier
    for a, b in zip(whole, resumed):
        for name, array in _arrays(a).items():
            np.testing.assert_array_equal(_arrays(b)[name], array)


@pytest.fixture(scope="module")
def axes_sweep(smollm2, tmp_path_factory):
    """A sweep over every template axis: 8 combinations, 2 impossible (letter answers with
    plain options), 6 cells in 2 passes; the forward passes it made are counted."""
    import qkscore.scoring

    out = tmp_path_factory.mktemp("axes") / "sweep"
    data = f"{PRONTOQA}?limit=48"
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        real = qkscore.scoring.extract
        mp.setattr(qkscore.scoring, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sweep(smollm2, data, out, AXES, calib_size=32, n_boot=50, **_quiet())
        swept = len(calls)
        scan(smollm2, data, "answer-statement", out.parent / "solo", **_quiet())
    return {"out": out, "data": data, "result": result, "calls": swept, "solo": len(calls) - swept}


def test_sweep_runs_one_pass_per_prompt_text_and_skips_impossible_cells(axes_sweep):
    result, out = axes_sweep["result"], axes_sweep["out"]
    assert result["n_cells"] == 6 and result["n_passes"] == 2
    assert axes_sweep["calls"] == 2 * axes_sweep["solo"]
    skipped = {c["setting"] for c in result["skipped"]}
    assert len(skipped) == 2 and all("options-plain_answers-letters" in s for s in skipped)
    assert all("option_style='letters'" in c["reason"] for c in result["skipped"])
    passes = {}
    for cell in result["cells"]:
        meta = RunFolder(out / cell["setting"] / "run").meta()
        assert meta["shared_pass"]["id"] == cell["shared_pass"]
        passes.setdefault(cell["shared_pass"], set()).add(cell["setting"])
        assert cell["scan_seconds"] == meta["scans"]["main"]["seconds"]
    assert sorted(len(p) for p in passes.values()) == [2, 4]
    for settings in passes.values():  # plain options make another text than letter options
        assert len({"options-plain" in s for s in settings}) == 1


def test_sweep_leaderboard_puts_baselines_beside_each_cell_and_reads_at_80_columns(axes_sweep):
    result, out = axes_sweep["result"], axes_sweep["out"]
    cv = [row["cv_auroc"] for row in result["rows"]]
    assert cv == sorted(cv, reverse=True) and result["chosen"] == result["rows"][0]
    for cell in result["cells"]:
        names = set(cell["figures"])
        assert {"model margin", "hidden probe"} <= names
        assert any(n.startswith("paper head L") for n in names)
        assert any(n.startswith("head by AUROC L") for n in names)
        assert any(n == f"reader {cell['reader']}" for n in names)
        for figure in cell["figures"].values():
            assert figure["accuracy"]["low"] <= figure["accuracy"]["value"] <= 1
    saved = json.loads((out / "leaderboard.json").read_text())
    assert saved["n_passes"] == 2 and len(saved["skipped"]) == 2
    md = (out / "leaderboard.md").read_text()
    assert "6 cells scanned in 2 forward passes; 2 skipped" in md
    assert max(len(line) for line in md.splitlines() if not line.startswith("Data:")) <= 80
    assert "- c3 answer-statement prerope plain 0shot inorder anchor-last" in md


def test_sweep_leaderboard_csv_holds_every_row_with_its_cells_baselines(axes_sweep):
    """leaderboard.csv: the JSON's ranked rows, flat, one per (cell, reader), each with its
    interval columns and its cell's baselines, and one pick per cell."""
    import csv

    result, out = axes_sweep["result"], axes_sweep["out"]
    with open(out / "leaderboard.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(result["rows"])
    cells = {c["cell"]: c for c in result["cells"]}
    for rank, (line, row) in enumerate(zip(table, result["rows"]), 1):
        assert int(line["rank"]) == rank and (line["cell"], line["reader"]) == (
            row["cell"],
            row["reader"],
        )
        assert float(line["cv_auroc"]) == pytest.approx(row["cv_auroc"])
        assert float(line["accuracy_low"]) == pytest.approx(row["accuracy"]["low"])
        cell = cells[row["cell"]]
        margin = cell["baselines"]["model_margin"]["accuracy"]
        assert float(line["model_margin_accuracy_high"]) == pytest.approx(margin["high"])
        assert line["paper_head_name"].startswith("paper head L")
        assert line["statement_anchor"] == str(cell["statement_anchor"])
    picks = [(line["cell"], line["reader"]) for line in table if line["chosen_in_cell"] == "True"]
    assert sorted(picks) == sorted((c, cells[c]["reader"]) for c in cells)
    for name in ("hidden_probe_auroc", "shallow_accuracy", "head_by_auroc_name", "scan_seconds"):
        assert name in table[0]


def test_template_axes_round_trip_through_run_profile_and_check(axes_sweep):
    """`qkscore check` rebuilds the template from the profile: its verdict reads the same
    anchor, option lines and answer tokens as the scan (equal QK-scores and model answer)."""
    import numpy as np
    from typer.testing import CliRunner

    from qkscore.cli import app
    from qkscore.profile import Profile

    out = axes_sweep["out"]
    slug = (
        "answer-statement_prerope_plain_0shot_inorder_anchor-lastword_options-plain_answers-words"
    )
    axes = {"statement_anchor": "last_word", "option_style": "plain", "baseline_tokens": "words"}
    run = RunFolder(out / slug / "run")
    profile = Profile.load(out / slug / "profile.json")
    for recorded in (run.meta()["template"], profile.data["template"]):
        assert {k: recorded[k] for k in axes} == axes
    item = load_items(axes_sweep["data"])[0]
    args = ["check", "-p", str(out / slug / "profile.json"), "-c", item.context,
            "-s", item.statement, "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    verdict = json.loads(res.stdout[res.stdout.index("{") :])
    layer, head = profile.head
    scanned = np.load(run.array_path("main", "scores"))[0, layer, head]
    assert [verdict["qk_scores"]["True"], verdict["qk_scores"]["False"]] == pytest.approx(
        scanned.tolist(), abs=1e-3
    )
    logp = np.load(run.array_path("main", "baseline"))[0].astype(float)
    p_true = float(np.exp(logp[0] - np.logaddexp(logp[0], logp[1])))
    assert verdict["model_probability"] == pytest.approx(p_true, abs=1e-4)


def test_the_sweep_command_writes_a_page_of_every_cell_beside_the_baselines(axes_sweep):
    """`qkscore sweep` run again over a finished sweep reuses every cell and writes
    leaderboard.html: self-contained, one picture, a row per cell and per ranked pair."""
    from typer.testing import CliRunner

    from qkscore.cli import app

    out, result = axes_sweep["out"], axes_sweep["result"]
    (out / "leaderboard.html").unlink(missing_ok=True)
    args = ["sweep", "-m", "smollm2-135m", "-d", axes_sweep["data"], "-o", str(out)]
    args += ["--grid", AXES, "--calib-size", "32", "--dtype", "float32"]  # the fixture's scan
    ran = CliRunner().invoke(app, args)
    assert ran.exit_code == 0, ran.output
    text = (out / "leaderboard.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "http" not in text.replace("http-equiv", "")
    assert text.count('<img src="data:image/png;base64,') == 1 and "<script" not in text
    chosen = result["chosen"]
    assert f"Chosen on calibration CV:</strong> {chosen['cell']} " in text
    assert f"/ {chosen['reader']} (CV AUROC {chosen['cv_auroc']:.3f})" in text
    for cell in result["cells"]:
        assert f"<td>{cell['cell']}</td>" in text
    assert text.count('<tr><td class="num">') == len(result["rows"])  # the ranked pairs
    assert "Every cell: <code>answer-statement prerope plain 0shot inorder</code>" in text
    (out / "leaderboard.html").unlink()  # `qkscore report FOLDER` writes the page again
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / "leaderboard.html").read_text(encoding="utf-8") == text


def test_a_leaderboard_without_baselines_is_refused_with_the_fix(axes_sweep, tmp_path):
    from qkscore.report.leaderboard import write_leaderboard

    old = json.loads((axes_sweep["out"] / "leaderboard.json").read_text())
    for cell in old["cells"]:
        del cell["baselines"]
    (tmp_path / "leaderboard.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="run the same sweep again, it reuses every finished"):
        write_leaderboard(tmp_path)
    with pytest.raises(FileNotFoundError, match="no leaderboard.json: is it a sweep's folder"):
        write_leaderboard(tmp_path / "nothing")


@pytest.mark.browser
def test_the_leaderboard_page_never_scrolls_sideways(axes_sweep, tmp_path, browser):
    from qkscore.report.leaderboard import write_leaderboard

    page = write_leaderboard(axes_sweep["out"], tmp_path / "page.html")
    for width in (1200, 800):
        browser.set_window_size(width, 1000)
        browser.get(page.as_uri())
        wide = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert wide[0] <= wide[1], (width, wide)

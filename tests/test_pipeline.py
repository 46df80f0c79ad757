"""Calibrate and evaluate over run folders: splits, controls, transfer and refusals."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from qkscore.estimators.base import CalibrationWarning
from qkscore.estimators.heads import head_name
from qkscore.pipeline import balanced_split, calibrate, evaluate, transfer
from qkscore.profile import Profile, ProfileMismatchError
from qkscore.report import summary_markdown
from synthetic_runs import SHORTCUT, SIGNAL, make_run


def test_balanced_split_is_balanced_disjoint_and_seeded():
    labels = np.array([0] * 700 + [1] * 300)
    calib, rest = balanced_split(labels, 400, seed=1)
    assert np.bincount(labels[calib]).tolist() == [200, 200]
    assert set(calib).isdisjoint(rest) and len(calib) + len(rest) == 1000
    assert np.array_equal(calib, balanced_split(labels, 400, seed=1)[0])
    assert not np.array_equal(calib, balanced_split(labels, 400, seed=2)[0])
    with pytest.warns(UserWarning, match="only 100 items"):
        balanced_split(np.array([0] * 500 + [1] * 100), 400)
    with pytest.raises(ValueError, match="leaves no items"):
        balanced_split(np.array([0, 1] * 100), 400)


def test_calibrate_finds_the_planted_anti_aligned_head(tmp_path):
    run = make_run(tmp_path / "run")
    profile = calibrate(run, calib_size=400, seed=0, out=tmp_path / "p.json")
    assert profile.data["head"] == head_name(*SIGNAL) and profile.data["sign"] == -1
    cal = profile.data["calibration"]
    assert cal["size"] == 400 and cal["label_counts"] == {"0": 200, "1": 200}
    assert set(cal["item_ids"]).isdisjoint(profile.data["evaluation_ids"])
    assert len(cal["item_ids"]) + len(profile.data["evaluation_ids"]) == 600
    saved = Profile.load(tmp_path / "p.json")
    assert saved.data["head"] == profile.data["head"] and saved.deepest_layer >= SIGNAL[0]


def test_small_calibration_warns_and_records_it(tmp_path):
    run = make_run(tmp_path / "run", n=200)
    with pytest.warns(CalibrationWarning):
        profile = calibrate(run, calib_size=100)
    assert any("400" in w for w in profile.data["calibration"]["warnings"])


def test_evaluate_reports_on_the_evaluation_split_only(tmp_path):
    run = make_run(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(run, calib_size=400, reader="head")
    report = evaluate(run, profile, n_boot=200)
    assert report["n_eval"] == 200 and report["split"].startswith("evaluation split")
    head = report["methods"]["head"]
    assert head["label"] == f"head {head_name(*SIGNAL)}" and head["chosen"]
    assert head["accuracy"]["value"] > 0.8
    assert head["accuracy"]["low"] <= head["accuracy"]["value"] <= head["accuracy"]["high"]
    assert {"model_answer", "model_margin", "majority"} <= set(report["methods"])
    assert 0.4 <= report["methods"]["majority"]["accuracy"]["value"] <= 0.6
    pairs = {(t["a"], t["b"]) for t in report["mcnemar"]}
    assert pairs >= {("head", "model_margin"), ("head", "model_answer")}
    for t in report["mcnemar"]:  # a record: the two methods, the difference, the test's figures
        acc = {k: report["methods"][t[k]]["accuracy"]["value"] for k in ("a", "b")}
        assert t["difference"] == pytest.approx(acc["a"] - acc["b"])
        assert 0 <= t["pvalue"] <= 1 and t["outcome"] in ("better", "worse", "no_difference")
        assert t["outcome"] == "no_difference" or t["pvalue"] < 0.05
    assert "depth" in report["breakdowns"]["head"]
    # the context-reading head falls to chance without its context: no shortcut flag
    assert not any(c["flagged"] for c in report["controls"].values())
    for c in report["controls"].values():  # the ensemble is held to the same control
        assert 0.0 <= c["ensemble_accuracy"] <= 1.0
    json.dumps(report)  # the report is plain JSON
    assert head_name(*SIGNAL) in summary_markdown(report)


def test_evaluate_by_meta_fields_adds_up_to_the_whole(tmp_path, shared_data):
    """Real Multi-LogiEval items (planted scores, no model): every method's accuracy per
    depth, rule and logic family, with intervals, in the report, the file and the summary."""
    from qkscore.data import load_items
    from qkscore.schemas import Evaluation

    spec = f"multi-logieval:{shared_data / 'multi_logieval' / 'data'}?sample=400&balance=1"
    run = make_run(tmp_path / "run", items_from=load_items(spec), controls=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(run, calib_size=200, reader="head")
    by = ("depth", "rule", "logic", "no_such_field")
    report = evaluate(run, profile, n_boot=100, by=by, out=tmp_path / "evaluation.json")
    assert list(report["by"]) == list(by)
    n_eval = report["n_eval"]
    for field, methods in report["by"].items():
        assert set(methods) == set(report["methods"])
        for key, groups in methods.items():
            assert sum(g["n"] for g in groups.values()) == n_eval, (field, key)
            overall = sum(g["value"] * g["n"] for g in groups.values()) / n_eval
            assert overall == pytest.approx(report["methods"][key]["accuracy"]["value"])
            assert all(g["low"] <= g["value"] <= g["high"] for g in groups.values())
    assert list(report["by"]["depth"]["head"]) == ["1", "2", "3", "4", "5"]
    assert set(report["by"]["logic"]["shallow"]) == {"fol", "nm", "pl"}
    assert list(report["by"]["no_such_field"]["head"]) == ["(none)"]
    saved = Evaluation.load(tmp_path / "evaluation.json")
    assert saved.by["depth"]["head"]["3"].n == report["by"]["depth"]["head"]["3"]["n"]
    text = summary_markdown(report)
    assert "Accuracy [95% CI] by `rule`:" in text and "| logic | n |" in text
    assert "shallow matching" in text.split("by `depth`")[1]


def test_shortcut_head_is_flagged_by_the_ablated_control(tmp_path):
    run = make_run(tmp_path / "run", shortcut=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(run, calib_size=400, reader="head")
    assert profile.data["head"] == head_name(*SHORTCUT)
    report = evaluate(run, profile, n_boot=100)
    assert report["controls"]["context-ablated"]["flagged"]
    assert not report["controls"]["context-swapped"]["flagged"]
    text = summary_markdown(report)
    assert "shortcut" in text.lower()
    # one column per control, one row per method: it reads at 80 columns (11 method columns
    # were cut to a few letters each)
    assert "| method | context-ablated | context-swapped |" in text
    assert "| flag | SHORTCUT? | ok |" in text
    assert re.search(r"^\| head \| 0\.\d{3} \| 0\.\d{3} \|$", text, re.M)


def test_profile_refuses_a_run_of_another_model(tmp_path):
    run = make_run(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(run, calib_size=400)
    meta_path = run / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["fingerprint"] = "0000000000000000"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ProfileMismatchError, match="fingerprint"):
        evaluate(run, profile)


def _set_at_head(path, value):
    """An edit setting the per-head array at ``path`` ("selector.sign") at the chosen head."""

    def edit(data):
        target = data
        for key in path.split("."):
            target = target[key]
        target[data["layer"]][data["head_index"]] = value

    return edit


PROFILE_EDITS = {
    # the output named L0H1 while the verdict and margin still came from the selector's head
    "head": (lambda d: d.update(head="L0H1"), "field 'head'"),
    "layer": (lambda d: d.update(layer=0), "field 'layer'"),
    # a sign of 0 made every verdict the same
    "sign 0 at the top": (lambda d: d.update(sign=0), "field 'sign'"),
    "sign 5 in the selector": (_set_at_head("selector.sign", 5), "field 'selector.sign'"),
    "sign 0 in the head reader": (
        _set_at_head("readers.head.sign", 0),
        "field 'readers.head.sign'",
    ),
    # a missing reader fell back to the head without a word
    "missing reader": (lambda d: d.pop("reader"), "field 'reader' missing"),
    # a NaN threshold reached the judge and was blamed on the model's dtype
    "NaN threshold": (
        _set_at_head("selector.thresholds", float("nan")),
        "field 'selector.thresholds'",
    ),
    "NaN top-level threshold": (lambda d: d.update(threshold=float("nan")), "field 'threshold'"),
}


@pytest.fixture(scope="module")
def saved_profile(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrate(make_run(root / "run"), calib_size=400, out=root / "p.json")
    return json.loads((root / "p.json").read_text())


@pytest.mark.parametrize("edit", sorted(PROFILE_EDITS))
def test_a_profile_that_contradicts_itself_is_refused_naming_file_and_field(
    saved_profile, tmp_path, edit
):
    change, field = PROFILE_EDITS[edit]
    data = json.loads(json.dumps(saved_profile))
    change(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(field)) as err:
        Profile.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_an_unedited_and_a_pre_reader_profile_still_load(saved_profile, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(saved_profile))
    assert Profile.load(path).reader_name == saved_profile["reader"]
    old = {k: v for k, v in saved_profile.items() if k not in ("reader", "readers")}
    path.write_text(json.dumps(old))
    assert Profile.load(path).reader_name == "head"  # made before readers: the head judges


def _pronto_texts(shared_data, n):
    from qkscore.data import load_items

    folder = shared_data / "prontoqa" / "truefalse_0shot"
    items = load_items(f"prontoqa:{folder}/*hop_0shot_random.json?sample={n}&seed=0")
    return [(it.context, it.statement) for it in items]


def test_calibration_items_under_other_ids_and_another_spec_are_left_out(shared_data, tmp_path):
    """The hostile re-test renamed the ids and changed the spec string: 12 of 24 'evaluation'
    items were calibration items (accuracy 0.750 against a CV of 0.569)."""
    texts = _pronto_texts(shared_data, 300)
    calib_run = make_run(tmp_path / "calib", n=200, texts=texts[:200], data="prontoqa:a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(calib_run, calib_size=100, reader="head")
    assert len(profile.data["calibration"]["item_hashes"]) == 100
    calib_ids = set(profile.data["calibration"]["item_ids"])
    reused = [i for i in range(200) if f"syn-{i:05d}" in calib_ids][:40]
    # 40 calibration items (re-spaced, other ids) and 80 unseen ones, under another spec
    mixed = [(" ".join(texts[i][0].split()) + "\n", texts[i][1]) for i in reused] + texts[200:280]
    ids = [f"renamed/{k}" for k in range(120)]
    other = make_run(tmp_path / "other", n=120, seed=3, texts=mixed, ids=ids, data="jsonl:b")
    with pytest.warns(UserWarning, match="40 items of .* have the content of calibration items"):
        report = evaluate(other, profile, n_boot=50)
    assert report["n_eval"] == 80 and "40 items" in report["split"]
    assert "renamed/0" in report["split"]
    # a profile made before content hashes still evaluates every item (matched by id only)
    del profile.data["calibration"]["item_hashes"]
    assert evaluate(other, profile, n_boot=50)["n_eval"] == 120


def test_transfer_matrix_tests_each_calibration_on_every_run(tmp_path):
    runs = [make_run(tmp_path / "a", seed=0), make_run(tmp_path / "b", seed=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = transfer(runs, calib_size=400)
    matrix = np.array(result["accuracy"])
    assert matrix.shape == (2, 2) and (matrix > 0.8).all()
    assert result["heads"] == [head_name(*SIGNAL)] * 2

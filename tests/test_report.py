"""The self-contained HTML report: synthetic run folders (fast) and one real tiny scan."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from qkscore.pipeline import calibrate, evaluate
from qkscore.report import plots
from qkscore.report.html import render_report, write_report
from synthetic_runs import N_HEADS, N_LAYERS, make_run

IMG = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"')


def _check_self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", text)
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert "@import" not in text and "url(" not in text
    for src in re.findall(r'src="([^"]*)"', text):
        assert src.startswith("data:image/png;base64,")


def _pipeline(run: Path, tmp_path: Path, calib_size: int = 400):
    profile = calibrate(
        run, calib_size=calib_size, seed=0, out=tmp_path / "profile.json", reader="head"
    )
    result = evaluate(run, profile, n_boot=200)
    return profile, result


def test_report_synthetic_shortcut(tmp_path):
    run = make_run(tmp_path / "run", shortcut=True)
    profile, result = _pipeline(run, tmp_path)
    assert profile.data["head"] == "L1H0"  # the shortcut head is the strongest
    assert result["controls"]["context-ablated"]["flagged"]
    assert not result["controls"]["context-swapped"]["flagged"]

    out = write_report(run, tmp_path / "profile.json", result, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    text = out.read_text(encoding="utf-8")
    _check_self_contained(text)
    # head heatmap, linear reader weights, distributions, breakdown bars
    assert len(IMG.findall(text)) == 4
    assert "in the linear reader (logistic regression over every head" in text
    assert "Reader chosen" in text

    # header, verdict and head
    assert "L1H0" in text and "synthetic-model" in text and "answer-statement" in text
    assert "synthetic:n=600&amp;options=2" in text
    assert "Verdict." in text and "shortcut" in text
    # methods, McNemar and breakdowns
    for method in ("head L1H0", "ensemble (k=", "model (own answer)", "majority class"):
        assert method in text
    assert "McNemar" in text
    assert ("head", "model_margin") in {(t["a"], t["b"]) for t in result["mcnemar"]}
    assert "model margin (threshold fit on calibration)" in text
    assert "attention-score baseline" in text  # missing, and said so
    for key in ("depth", "distractors", "rule", "modus_tollens"):
        assert f"<td>{key}</td>" in text
    # controls: the ablated control is flagged in red, the swapped one is not
    assert "SHORTCUT SUSPECTED" in text
    assert re.search(r'<tr class="flagged"><td class="nowrap">context-ablated</td>', text)
    assert not re.search(r'<tr class="flagged"><td class="nowrap">context-swapped</td>', text)
    # provenance, with run text escaped
    for field in ("feedc0ffee123456", "float32", "2025-01-01T00:00:00+00:00", "0.1.0"):
        assert field in text
    assert "planted &lt;b&gt;signal&lt;/b&gt; &amp; noise" in text
    assert "<b>signal</b>" not in text
    assert profile.digest in text and str(tmp_path / "profile.json") in text
    assert "use_chat_template" in text and "answer_cue" in text
    assert "Calibration warnings" in text


def test_report_clean_head_and_profile_object(tmp_path):
    run = make_run(tmp_path / "run", seed=1)
    profile, result = _pipeline(run, tmp_path)
    assert profile.data["head"] == "L2H1" and profile.data["sign"] == -1
    assert not any(c["flagged"] for c in result["controls"].values())
    text = render_report(run, profile, result)  # a Profile object works as well as a path
    _check_self_contained(text)
    assert "SHORTCUT SUSPECTED" not in text
    assert "-1 (anti-aligned)" in text
    assert '<tr class="chosen"><td class="num">1</td><td>L2H1</td>' in text
    for layer in range(N_LAYERS):  # the top heads table holds all 12 heads
        for head in range(N_HEADS):
            assert f"<td>L{layer}H{head}</td>" in text
    assert len(IMG.findall(text)) == 4


def test_report_multi_option_without_baseline_or_controls(tmp_path):
    run = make_run(
        tmp_path / "run",
        n=450,
        n_options=3,
        controls=False,
        baseline=False,
        metadata=False,
    )
    profile, result = _pipeline(run, tmp_path, calib_size=300)
    assert "model_answer" not in result["methods"]
    out = write_report(run, profile, result, tmp_path / "report.html")
    text = out.read_text()
    _check_self_contained(text)
    # heatmap, linear weights and margin distributions, no breakdowns
    assert len(IMG.findall(text)) == 3
    assert "No control scans in this run" in text
    assert "own answer (its option log-probabilities are missing" in text
    assert "no depth, distractors, rule or logic metadata" in text
    assert "none (multi-option)" in text


def test_plots_return_figures():
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.5, 0.9, size=(5, 4))
    sign = np.where(rng.uniform(size=(5, 4)) > 0.5, 1, -1)
    fig = plots.head_heatmap(acc, sign, chosen=(2, 3), chance=0.5)
    assert len(fig.axes) == 3  # accuracy, colour bar, sign
    uri = plots.figure_to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,") and not fig.axes
    fig = plots.score_distributions({"a": rng.normal(size=30), "b": []}, threshold=0.1)
    assert plots.figure_to_data_uri(fig).startswith("data:image/png;base64,")
    assert plots.breakdown_bars({}) is None
    bd = {"head L0H0": {"depth": {"1": {"n": 3, "accuracy": 0.5}}}}
    assert plots.breakdown_bars(bd) is not None


def test_report_real_tiny_scan(tmp_path, smollm2):
    from qkscore.scanning import scan

    scan(
        smollm2,
        "generated:depth=1&n=40&seed=0",
        "answer-statement",
        tmp_path / "run",
        controls=["context-ablated"],
        progress=False,
        log=lambda _m: None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(tmp_path / "run", calib_size=20, out=tmp_path / "profile.json")
    notes = profile.data["calibration"]["warnings"]
    assert any("calibrating on 20 items" in w for w in notes)
    result = evaluate(tmp_path / "run", profile, n_boot=200)
    out = write_report(tmp_path / "run", profile, result, tmp_path / "report.html")
    text = out.read_text()
    _check_self_contained(text)
    assert len(IMG.findall(text)) == 4
    assert profile.data["head"] in text and "smollm2-135m" in text
    assert "calibrating on 20 items" in text
    assert "context-ablated" in text
    assert profile.fingerprint in text


def test_mcnemar_records_and_the_string_keys_of_older_evaluations_read_alike():
    from qkscore.schemas import comparison_records, find_comparison

    old = {"head vs model_margin": {"statistic": 3.0, "pvalue": 0.04}}
    new = [{"a": "head", "b": "model_margin", "statistic": 3.0, "pvalue": 0.04}]
    assert comparison_records(old) == new == comparison_records(new)
    assert find_comparison(old, "head", "model_margin")["pvalue"] == 0.04
    assert find_comparison(new, "head", "model_answer") is None


def test_report_shows_evaluate_by_tables_with_the_summarys_figures(tmp_path):
    from qkscore.report.summary import group_table

    run = make_run(tmp_path / "run", seed=1)
    profile = calibrate(run, calib_size=400, seed=0, reader="head")
    result = evaluate(run, profile, n_boot=200, by=["depth"])
    text = render_report(run, profile, result)
    _check_self_contained(text)
    assert "Accuracy [95% CI] by depth (<code>evaluate --by depth</code>)" in text
    markdown = group_table(result, "depth", result["by"]["depth"])
    rows = [line for line in markdown if line.startswith("| ") and "---" not in line][1:]
    assert rows  # one per depth value
    table = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    names = [c.strip() for c in markdown[2].strip("|").split("|")][2:]
    for i, name in enumerate(names):  # the report's row per method holds the summary's column
        cells = "".join(f'<td class="num">{row[2 + i]}</td>' for row in table)
        assert f"<td>{name}</td>{cells}" in text
    for value, n, *_ in table:
        assert f"depth {value} (n={n})" in text
    no_by = render_report(run, profile, evaluate(run, profile, n_boot=200))
    assert "evaluate --by" not in no_by

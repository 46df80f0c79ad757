"""Typed outputs: the models accept what qkscore writes (today's and the findings' files),
refuse damaged files naming file and field, match the committed JSON Schemas, and an
evaluation's per-item predictions load back as DataFrames that agree with its metrics."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from qkscore import load_run
from qkscore.pipeline import calibrate, evaluate
from qkscore.profile import Profile
from qkscore.run import RunFolder, RunFolderError
from qkscore.schemas import (
    METHOD_KEYS,
    SCHEMA_DIR,
    SCHEMA_VERSION,
    Evaluation,
    ProfileModel,
    ResultFileError,
    RunMeta,
    schema_texts,
    versions,
)
from synthetic_runs import make_run

FINDINGS = Path(__file__).resolve().parents[1].parent / "main" / "runs" / "findings"
FINDING_FOLDERS = sorted(p.parent for p in FINDINGS.glob("*/*/evaluation.json"))


def test_committed_schemas_match_the_models():
    """Regenerate with ``python -m qkscore.schemas`` after changing a model."""
    texts = schema_texts()
    committed = {p.name for p in SCHEMA_DIR.glob("*.schema.json")}
    assert committed == set(texts)
    for name, text in texts.items():
        assert (SCHEMA_DIR / name).read_text() == text, f"docs/schemas/{name} is stale"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    run = make_run(root / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = calibrate(run, calib_size=400, out=root / "profile.json")
        report = evaluate(run, profile, n_boot=50, out=root / "evaluation.json")
    return root, report


def test_outputs_record_schema_and_library_versions_and_the_template(evaluated):
    root, report = evaluated
    for name in ("profile.json", "evaluation.json"):
        data = json.loads((root / name).read_text())
        assert data["schema_version"] == SCHEMA_VERSION
        assert data["versions"] == versions()
        assert data["versions"]["torch"] and data["versions"]["transformers"]
    profile = json.loads((root / "profile.json").read_text())
    evaluation = json.loads((root / "evaluation.json").read_text())
    assert evaluation["template_settings"] == profile["template"]
    assert profile["template"]["answer_cue"] == "Answer:"  # every setting, not just the name
    assert evaluation["predictions"] == ["predictions.jsonl", "predictions.parquet"]
    assert set(report["methods"]) <= set(METHOD_KEYS)


def test_predictions_agree_with_the_reported_metrics(evaluated):
    root, report = evaluated
    lines = (root / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == report["n_eval"] == 200
    first = json.loads(lines[0])
    assert first["split"] == "evaluation" and first["meta"]["depth"] in (1, 2, 3)
    assert set(first["methods"]) == set(report["methods"])
    results = load_run(root)
    frame = results.predictions
    assert len(frame) == 200 and "meta.depth" in frame and "head.probability" in frame
    calib_ids = set(json.loads((root / "profile.json").read_text())["calibration"]["item_ids"])
    assert calib_ids.isdisjoint(frame["id"])
    table = results.methods
    assert list(table.index) == list(report["methods"])
    for key in report["methods"]:
        expected = report["methods"][key]["accuracy"]["value"]
        assert frame[f"{key}.correct"].mean() == pytest.approx(expected)
        assert table.loc[key, "accuracy"] == pytest.approx(expected)
    chosen = [k for k, m in report["methods"].items() if m.get("chosen")]
    assert table.index[table["chosen"]].tolist() == chosen
    # the JSONL alone gives the same table (pyarrow is optional)
    (root / "predictions.parquet").rename(root / "hidden.parquet")
    try:
        fresh = load_run(root / "evaluation.json").predictions
    finally:
        (root / "hidden.parquet").rename(root / "predictions.parquet")
    assert fresh["head.prediction"].tolist() == frame["head.prediction"].tolist()


def test_load_run_on_a_scan_folder_gives_items_and_heads(evaluated):
    root, _ = evaluated
    results = load_run(root / "run")
    assert results.meta is not None and results.meta.n_layers == 4
    assert len(results.items) == 600 and "meta.depth" in results.items
    heads = results.heads
    assert len(heads) == 4 * 3
    assert heads["separation"].abs().idxmax() == "L2H1"  # the planted anti-aligned head
    assert results.evaluation is not None  # evaluation.json beside the run is found
    with pytest.raises(FileNotFoundError, match="neither run.json nor evaluation.json"):
        load_run(root / "run" / "controls")


def test_a_damaged_output_names_the_file_and_the_field(evaluated, tmp_path):
    root, _ = evaluated
    evaluation = json.loads((root / "evaluation.json").read_text())
    evaluation["methods"]["head"]["kind"] = "oracle"
    bad = tmp_path / "evaluation.json"
    bad.write_text(json.dumps(evaluation))
    with pytest.raises(ResultFileError, match=rf"{bad}: .*field methods\.head\.kind"):
        load_run(bad)
    profile = json.loads((root / "profile.json").read_text())
    profile["head"] = "layer 2 head 1"
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    with pytest.raises(ValueError, match=r"profile\.json: .*field head: String should match"):
        Profile.load(tmp_path / "profile.json")
    newer = {**json.loads((root / "profile.json").read_text()), "schema_version": 99}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="field schema_version"):
        Profile.load(tmp_path / "newer.json")
    run = make_run(tmp_path / "run", n=8, controls=False)
    meta = json.loads((run / "run.json").read_text())
    meta["n_layers"] = "four"
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunFolderError, match=r"run\.json: .*field n_layers"):
        RunFolder(run).meta()


def test_a_later_key_is_kept_for_forward_compatibility(evaluated):
    root, _ = evaluated
    data = {**json.loads((root / "evaluation.json").read_text()), "added_later": {"x": 1}}
    assert Evaluation.from_data(data, "e.json").to_data() == data


@pytest.mark.skipif(not FINDING_FOLDERS, reason=f"no findings runs under {FINDINGS}")
@pytest.mark.parametrize("folder", FINDING_FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_findings_files_load(folder):
    """Files written by the version before the models existed (read-only here)."""
    Profile.load(folder / "profile.json")
    ProfileModel.load(folder / "profile.json")
    results = load_run(folder)
    assert results.evaluation is not None and results.evaluation.schema_version == 1
    table = results.evaluation.to_pandas()
    assert table["chosen"].sum() == 1 and np.isfinite(table["accuracy"]).all()
    if (folder / "run" / "run.json").exists():
        assert isinstance(RunMeta.load(folder / "run" / "run.json"), RunMeta)
        assert results.meta is not None and results.meta.n_items > 0


def test_the_report_escapes_every_value_through_its_templates(evaluated):
    """The HTML report's markup is in Jinja2 templates with autoescape: a hostile label from
    an evaluation file comes out as text, and the page stays one self-contained file."""
    from qkscore.report.html import render_report

    root, report = evaluated
    hostile = json.loads(json.dumps(report))
    hostile["methods"]["majority"]["label"] = "<img src=x onerror=alert(1)>"
    hostile["notes"] = ["<script>alert(1)</script>"]
    text = render_report(root / "run", root / "profile.json", hostile)
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in text
    assert "<script" not in text and "http://" not in text and "https://" not in text
    broken = {**hostile, "n_eval": "many"}
    with pytest.raises(ResultFileError, match="field n_eval"):
        render_report(root / "run", root / "profile.json", broken)


def test_without_pandas_the_error_names_the_extra(evaluated, monkeypatch):
    root, _ = evaluated
    results = load_run(root)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'qkscore\[data\]'"):
        results.evaluation.to_pandas()
    with pytest.raises(ImportError, match="data extra"):
        _ = load_run(root).predictions
    # the JSON files need no pandas
    assert load_run(root).evaluation.n_eval == 200


def test_a_profile_has_one_digest_whatever_its_formatting(evaluated, tmp_path):
    from qkscore.io import ResumableFolder, json_digest

    root, _ = evaluated
    profile = Profile.load(root / "profile.json")
    data = json.loads((root / "profile.json").read_text())
    (tmp_path / "profile.json").write_text(json.dumps(dict(reversed(data.items())), indent=4))
    again = Profile.load(tmp_path / "profile.json")
    assert again.digest == profile.digest == json_digest(data) == ResumableFolder.digest(data)
    assert len(profile.digest) == 16


def test_the_old_module_name_warns_and_reads_through():
    """``qkscore.results`` is ``qkscore.schemas`` now; the old name stays one release."""
    import importlib

    sys.modules.pop("qkscore.results", None)
    with pytest.warns(DeprecationWarning, match="renamed qkscore.schemas"):
        old = importlib.import_module("qkscore.results")
    assert old.RunMeta is RunMeta and old.METHOD_KEYS == METHOD_KEYS
    assert old.TemplateSettings.__module__ == "qkscore.prompts"

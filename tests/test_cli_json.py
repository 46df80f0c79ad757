"""``--json`` on scan, calibrate and models: one JSON document on stdout, logs on stderr; and
``evaluate --out`` writes the per-item predictions beside the report."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qkscore.cli import app
from qkscore.models import ALIASES
from qkscore.schemas import Evaluation, RunMeta
from synthetic_runs import make_run

runner = CliRunner()


def test_models_json_lists_every_alias():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [m["alias"] for m in listed["models"]] == list(ALIASES)
    first = listed["models"][0]
    assert isinstance(first["installed"], bool) and first["size_bytes"] > 0


def test_models_table_shows_every_alias_whole_at_80_columns():
    """The alias is what a user types next: at 80 columns rich cut it to "smollm2-..." (and a
    min_width on its column pushed the table past the terminal's edge instead)."""
    for width in ("80", "130"):
        result = runner.invoke(app, ["models"], env={"COLUMNS": width})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= int(width)
        cells = {part.strip() for line in lines for part in line.split("│")}
        assert set(ALIASES) <= cells
    assert {m.repo_id for m in ALIASES.values()} <= cells  # whole where there is room


def test_calibrate_json_then_evaluate_out_writes_predictions(tmp_path: Path):
    run = make_run(tmp_path / "run")
    profile = tmp_path / "profile.json"
    result = runner.invoke(app, ["calibrate", str(run), "-o", str(profile), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the calibration warnings went to stderr
    saved = json.loads(profile.read_text())
    assert summary["profile"] == str(profile) and summary["head"] == saved["head"] == "L2H1"
    assert summary["reader"] == saved["reader"] and len(summary["ranking"]) == 10
    assert "item_ids" not in summary["calibration"] and "readers" not in summary
    out = tmp_path / "eval" / "evaluation.json"
    args = ["evaluate", str(run), "-p", str(profile), "-o", str(out), "--n-boot", "20", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    written = Evaluation.load(out)
    assert written.n_eval == printed["n_eval"] == 200
    rows = (out.parent / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 200 and (out.parent / "predictions.parquet").exists()


def test_scan_json_prints_the_run_metadata(smollm2, tmp_path: Path):
    out = tmp_path / "run"
    args = ["scan", "-m", "smollm2-135m", "-d", "generated:depth=1&n=8&seed=0", "-o", str(out)]
    result = runner.invoke(app, [*args, "--limit", "4", "--hidden-layers", "none", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["run"] == str(out) and meta["n_items"] == 4
    assert meta["scans"]["main"]["complete"]
    assert meta["versions"]["transformers"] and meta["template"]["answer_cue"] == "Answer:"
    RunMeta.load(out / "run.json")

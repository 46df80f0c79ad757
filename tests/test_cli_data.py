"""``qkscore data inspect|formats|shortcuts`` through typer's CliRunner."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qkscore.cli import app

runner = CliRunner()


def _has(text: str, *needles: str) -> bool:
    """Rich wraps (and folds long paths) at the terminal width, 80 columns under CI."""
    flat = "".join(text.split())
    return all("".join(n.split()) in flat for n in needles)


def _proofwriter(shared_data: Path) -> str:
    return f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}"


def test_formats_table_and_json() -> None:
    result = runner.invoke(app, ["data", "formats"])
    assert result.exit_code == 0, result.output
    for name in ("prontoqa-ood", "pararule-plus", "multi-logieval", "mmlu", "hf"):
        assert name in result.stdout
    result = runner.invoke(app, ["data", "formats", "--json"])
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["jsonl"]["takes_path"] is True
    assert "pip" not in rows["hf"]["description"] and rows["hf"]["description"]


def test_inspect_table(shared_data: Path) -> None:
    result = runner.invoke(app, ["data", "inspect", _proofwriter(shared_data)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert _has(out, "600", "True 200 (33%)", "Unknown 200 (33%)")
    assert _has(out, "by depth", "by theory", "AttNoneg")


def test_inspect_json(shared_data: Path) -> None:
    spec = f"multi-logieval:{shared_data / 'multi_logieval' / 'data'}"
    result = runner.invoke(app, ["data", "inspect", spec, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["spec"] == spec and data["count"] == 1556
    assert data["labels"] == {"True": 1092, "False": 464}
    assert set(data["breakdowns"]["depth"]) == {"1", "2", "3", "4", "5"}
    assert data["breakdowns"]["logic"]["nm"]["count"] == 496
    assert data["load"]["skipped"] == 0 and len(data["load"]["notes"]) == 3


def test_inspect_shows_skipped_records(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"statement": "A.", "label": "yes"}\n{"statement": "B.", "label": "?"}\n', encoding="utf-8"
    )
    result = runner.invoke(app, ["data", "inspect", f"jsonl:{path}?on_error=skip"])
    assert result.exit_code == 0, result.output
    assert _has(result.stdout, "skipped", f"{path}:2 field 'label'")
    data = json.loads(
        runner.invoke(app, ["data", "inspect", f"jsonl:{path}?on_error=skip", "--json"]).stdout
    )
    assert (data["count"], data["load"]["skipped"]) == (1, 1)


def test_bad_data_exits_2_with_location(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"statement": "A.", "label": "yes"}\n{"statement": "B."}\n', encoding="utf-8")
    result = runner.invoke(app, ["data", "inspect", f"jsonl:{path}"])
    assert result.exit_code == 2
    assert _has(result.stderr, f"error: {path}:2 field 'label': missing field")
    result = runner.invoke(app, ["data", "inspect", "nosuchformat:x"])
    assert result.exit_code == 2 and _has(result.stderr, "known FORMAT")


def test_hf_missing_package_message(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    result = runner.invoke(app, ["data", "inspect", "hf:tasksource/folio?split=validation"])
    assert result.exit_code == 2 and _has(result.stderr, "pip install datasets")


@dataclass
class _FakeReport:
    flagged: bool
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.payload


def _fake_shortcuts(monkeypatch, flagged: bool) -> list[int]:
    seen: list[int] = []

    def find_shortcuts(items):
        seen.append(len(list(items)))
        return _FakeReport(
            flagged,
            {
                "count": seen[-1],
                "flagged": flagged,
                "label_counts": {"True": 1, "False": 2},
                "cues": [["not", "False", 1.5], ["[red]", "True", 0.2]],
                "reasons": ["statement-only accuracy 0.90 >= 0.65"],
            },
        )

    module = types.ModuleType("qkscore.data.shortcuts")
    module.find_shortcuts = find_shortcuts
    monkeypatch.setitem(sys.modules, "qkscore.data.shortcuts", module)
    return seen


def test_shortcuts_renders_report(shared_data: Path, monkeypatch) -> None:
    seen = _fake_shortcuts(monkeypatch, flagged=True)
    spec = _proofwriter(shared_data) + "?limit=50"
    result = runner.invoke(app, ["data", "shortcuts", spec])
    assert result.exit_code == 0, result.output
    assert seen == [50]
    out = result.stdout
    assert _has(out, "FLAGGED", "label_counts", "[red]", "1.5")
    result = runner.invoke(app, ["data", "shortcuts", spec, "--json"])
    assert json.loads(result.stdout)["cues"][0] == ["not", "False", 1.5]
    assert runner.invoke(app, ["data", "shortcuts", spec, "--strict"]).exit_code == 1


def test_shortcuts_strict_passes_when_not_flagged(shared_data: Path, monkeypatch) -> None:
    _fake_shortcuts(monkeypatch, flagged=False)
    result = runner.invoke(app, ["data", "shortcuts", _proofwriter(shared_data), "--strict"])
    assert result.exit_code == 0 and _has(result.stdout, "no shortcut found")


def test_shortcuts_with_the_real_module(shared_data: Path) -> None:
    pytest.importorskip("qkscore.data.shortcuts")
    pytest.importorskip("sklearn")
    result = runner.invoke(
        app, ["data", "shortcuts", _proofwriter(shared_data) + "?limit=200", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["count"] == 200 and isinstance(data["flagged"], bool)

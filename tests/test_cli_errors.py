"""One error path: every command answers an ordinary mistake with one ``error:`` line and exit
status 2, and shows the traceback only with ``--debug``.

Run folders are synthetic (tests/synthetic_runs.py) and every mistake is caught before a model
loads; nothing here reaches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qkscore.cli import app
from qkscore.data import DataError
from qkscore.data.textio import read_text_file, sniff_encoding
from synthetic_runs import make_run

GENERATED = "generated:depth=1&n=8&distractors=0&seed=0"
ENV = {"COLUMNS": "200", "QKSCORE_DEBUG": None}


def _run(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def _one_error(result, *words: str, code: int = 2) -> str:
    """The single ``error:`` line of a failed command, checked for the words it must name."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A run of 8 items (too few to calibrate), one of 600 with its profile, and variants."""
    from qkscore.pipeline import calibrate

    root = tmp_path_factory.mktemp("runs")
    small = make_run(root / "run8", n=8, controls=False)
    big = make_run(root / "run600", n=600, controls=False)
    profile = root / "profile.json"
    calibrate(big, calib_size=400, out=profile)
    other = json.loads(profile.read_text())
    other["template"] = {**other["template"], "name": "last-option", "scheme": "last-option"}
    (root / "other-template.json").write_text(json.dumps(other))
    # a run folder of this very scan request but another template: only the template differs
    scanned = make_run(root / "scanned", n=8, controls=False)
    meta = json.loads((scanned / "run.json").read_text())
    meta.update(data=GENERATED)
    meta["model"]["name"] = "smollm2-135m"
    (scanned / "run.json").write_text(json.dumps(meta))
    return {"small": small, "big": big, "profile": profile, "scanned": scanned, "root": root}


@pytest.fixture()
def bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"context": "A.", "statement": "B.", "label": "True"}\n{"context": "A." "statement"}\n',
        encoding="utf-8",
    )
    return path


# ---- scan -----------------------------------------------------------------------------------


def test_scan_bad_data_line_names_file_and_line(bad_jsonl: Path, tmp_path: Path) -> None:
    result = _run("scan", "-m", "smollm2-135m", "-d", f"jsonl:{bad_jsonl}", "-o", str(tmp_path))
    _one_error(result, f"{bad_jsonl}:2", "malformed JSON line")


def test_scan_missing_field_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"statement": "A.", "label": "yes"}\n{"statement": "B."}\n')
    result = _run("scan", "-m", "smollm2-135m", "-d", f"jsonl:{path}", "-o", str(tmp_path / "o"))
    _one_error(result, f"{path}:2 field 'label'", "missing field")


def test_scan_unknown_format(tmp_path: Path) -> None:
    result = _run("scan", "-m", "smollm2-135m", "-d", "nosuchformat:x", "-o", str(tmp_path))
    _one_error(result, "'nosuchformat:x'", "known FORMAT", "jsonl")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_scan_utf16_data_is_an_encoding_problem(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"statement": "A.", "label": "yes"}\n', encoding=encoding)
    result = _run("scan", "-m", "smollm2-135m", "-d", f"jsonl:{path}", "-o", str(tmp_path / "o"))
    line = _one_error(result, str(path), "not UTF-8", "re-save the file as UTF-8")
    assert encoding.upper()[:6] in line and "JSON" not in line


def test_scan_run_folder_of_another_template(runs) -> None:
    out = str(runs["scanned"])
    result = _run("scan", "-m", "smollm2-135m", "-d", GENERATED, "-t", "last-option", "-o", out)
    line = _one_error(result, out, "was made by a different scan", "template", "another --out")
    assert "data:" not in line  # only the template differs


def test_scan_unknown_model_suggests_the_alias(tmp_path: Path) -> None:
    result = _run("scan", "-m", "smollm-135m", "-d", GENERATED, "-o", str(tmp_path / "o"))
    _one_error(result, "unknown model 'smollm-135m'", "did you mean smollm2-135m?")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["scan", "-m", "x", "-d", GENERATED, "-o", "o", "--chunk-size", "0"], "--chunk-size"),
        (["scan", "-m", "x", "-d", GENERATED, "-o", "o", "--batch-size", "0"], "--batch-size"),
        (["scan", "-m", "x", "-d", GENERATED, "-o", "o", "--limit", "-4"], "--limit"),
        (["evaluate", "run", "-p", "p.json", "--n-boot", "0"], "--n-boot"),
        (["transfer", "a", "b", "--calib-size", "1"], "--calib-size"),
        (["serve", "-p", "p.json", "--port", "99999"], "--port"),  # issue 22, finding 9
        (["serve", "-p", "p.json", "--port", "0"], "--port"),
    ],
)
def test_options_out_of_range_are_refused_before_any_work(args, option) -> None:
    _one_error(_run(*args), "Invalid value", option, f"{args[0]} --help")


# ---- calibrate, evaluate, report, transfer --------------------------------------------------


def test_calibrate_a_folder_that_is_no_run(tmp_path: Path) -> None:
    result = _run("calibrate", str(tmp_path), "-o", str(tmp_path / "p.json"))
    _one_error(result, str(tmp_path), "not a qkscore run folder", "run.json")


def test_calibrate_too_few_items(runs, tmp_path: Path) -> None:
    result = _run("calibrate", str(runs["small"]), "-o", str(tmp_path / "p.json"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"error: {runs['small']}: cannot calibrate on 8 items (4 of option 0, 4 of option 1): "
        "calibration needs at least 5 items of each option in the split (--calib-size 400 "
        "takes up to 200 per option)"
    ], result.output  # refused before the split, so no warnings first


def test_evaluate_missing_profile(runs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    _one_error(_run("evaluate", str(runs["big"]), "-p", str(missing)), str(missing), "not exist")


def test_evaluate_profile_of_another_template(runs) -> None:
    profile = runs["root"] / "other-template.json"
    result = _run("evaluate", str(runs["big"]), "-p", str(profile))
    _one_error(result, str(runs["big"]), "template", "not comparable")


def test_report_malformed_profile_names_file_and_line(runs, tmp_path: Path) -> None:
    profile = tmp_path / "broken.json"
    profile.write_text('{\n  "head": "L1H2",\n  "model": \n}\n')
    result = _run("report", str(runs["big"]), "-p", str(profile), "-o", str(tmp_path / "r.html"))
    _one_error(result, f"{profile}:4", "not valid profile JSON")


def test_report_of_a_run_folder_without_a_profile_says_so(runs) -> None:
    _one_error(_run("report", str(runs["big"])), str(runs["big"]), "is a run folder", "--profile")


def test_transfer_too_few_items(runs) -> None:
    result = _run("transfer", str(runs["small"]), str(runs["big"]))
    _one_error(result, "cannot calibrate on 8 items", "at least 5 items of each option")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda path: path.write_bytes(b""), ["is empty (0 bytes)"]),
        (lambda path: path.write_bytes(os.urandom(4096)), ["not a NumPy array file"]),
        (lambda path: path.write_bytes(path.read_bytes()[:300]), ["torn or damaged"]),
        (
            lambda path: np.save(path, np.zeros((3, 2), np.float32)),
            ["shape (3, 2)", "(600, 4, 3, 2)"],
        ),
    ],
    ids=["empty", "garbage", "torn", "other shape"],
)
def test_evaluate_a_damaged_scores_file_names_it(runs, tmp_path: Path, damage, words) -> None:
    """An empty scores.npy was 'unexpected EOFError (a bug in qkscore?)', exit 1; a garbage
    one a pickle message naming no file."""
    run = tmp_path / "run"
    shutil.copytree(runs["big"], run)
    damage(run / "scores.npy")
    result = _run("evaluate", str(run), "-p", str(runs["profile"]))
    line = _one_error(result, str(run / "scores.npy"), *words, "run the same `qkscore scan`")
    assert "pickle" not in line and "unexpected" not in line


def test_evaluate_a_generation_folder_says_what_it_is(tmp_path: Path, runs) -> None:
    """A generation folder given to evaluate was 'unexpected RunFolderError', exit 1."""
    folder = tmp_path / "gen"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"kind": "generations", "complete": True}))
    (folder / "problems.jsonl").write_text("")
    result = _run("evaluate", str(folder), "-p", str(runs["profile"]))
    _one_error(result, str(folder), "is a generation folder", "`qkscore scan`")
    # calibrate takes a generation folder (it calibrates on the chains' steps): this one's
    # run.json lacks its size, and the error says which field
    result = _run("calibrate", str(folder), "-o", str(tmp_path / "p.json"))
    _one_error(result, str(folder), "field 'n_problems'")


def test_scan_into_a_folder_another_scan_holds_is_refused(tmp_path: Path) -> None:
    """Two `scan` processes on one folder raced; the second now stops at the lock."""
    from qkscore.scanning import LOCK_NAME, scan_lock

    out = tmp_path / "run"
    with scan_lock(out):
        result = _run("scan", "-m", "smollm2-135m", "-d", GENERATED, "-o", str(out))
    _one_error(result, f"{out} is being scanned by process", str(out / LOCK_NAME))


# ---- serve, check, verify-chain, data, heads ------------------------------------------------


def test_serve_db_naming_a_folder(runs, tmp_path: Path) -> None:
    result = _run("serve", "-p", str(runs["profile"]), "--db", str(tmp_path))
    _one_error(result, f"--db: {tmp_path} is a folder, not an SQLite file")


def test_check_statement_file_in_utf16(runs, tmp_path: Path) -> None:
    statement = tmp_path / "statement.txt"
    statement.write_bytes("Max is bitter.".encode("utf-16-le"))  # no byte-order mark
    result = _run("check", "-p", str(runs["profile"]), "--statement-file", str(statement))
    _one_error(result, str(statement), "not UTF-8", "UTF-16")


def test_check_missing_profile(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    _one_error(_run("check", "-p", str(missing), "-s", "Max is bitter."), str(missing))


def test_verify_chain_bad_json(runs, tmp_path: Path) -> None:
    chain = tmp_path / "chain.json"
    chain.write_text('[\n  "Max is a wumpus.",\n  2,\n')
    result = _run("verify-chain", "-p", str(runs["profile"]), "--chain", str(chain))
    _one_error(result, f"{chain}:4", "not a JSON list")


def test_data_inspect_bad_line(bad_jsonl: Path) -> None:
    _one_error(_run("data", "inspect", f"jsonl:{bad_jsonl}"), f"{bad_jsonl}:2")


def test_heads_unknown_model() -> None:
    _one_error(_run("heads", "-m", "smollm-135m"), "did you mean smollm2-135m?")


def test_an_old_command_name_still_runs_with_one_deprecation_line() -> None:
    """`qkscore probe` (now `heads`) and `qkscore data audit` (now `data shortcuts`) keep
    working one release, hidden from --help, saying so on stderr first."""
    result = _run("probe", "-m", "smollm-135m")
    assert result.exit_code == 2 and "did you mean smollm2-135m?" in result.stderr
    assert result.stderr.splitlines()[0] == (
        "`qkscore probe` is deprecated: use `qkscore heads` (same options); the old name goes "
        "in the next release"
    )
    result = _run("data", "audit", "nosuchformat:x")
    assert result.stderr.startswith("`qkscore data audit` is deprecated: use `qkscore data ")
    assert result.exit_code == 2
    assert "probe" not in _run("--help").stdout and "heads" in _run("--help").stdout
    assert " audit " not in _run("data", "--help").stdout


def test_hub_id_offline_is_one_clear_line(monkeypatch) -> None:
    import huggingface_hub.constants

    from qkscore.models import loading

    def no_network(repo_id):
        raise AssertionError(f"the Hub was asked for {repo_id}")

    monkeypatch.setattr(loading, "_probe_hub", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "qkscore-tests/no-such-model-anywhere"
    result = _run("heads", "-m", name)
    _one_error(result, f"'{name}'", "HF_HUB_OFFLINE is set", "smollm2-135m")


# ---- the mechanism itself -------------------------------------------------------------------


def test_debug_flag_and_env_show_the_traceback(bad_jsonl: Path, tmp_path: Path) -> None:
    args = ["scan", "-m", "smollm2-135m", "-d", f"jsonl:{bad_jsonl}", "-o", str(tmp_path)]
    for result in (_run("--debug", *args), _run(*args, env={"QKSCORE_DEBUG": "1"})):
        assert result.exit_code == 2
        assert "Traceback (most recent call last)" in result.output
        assert "DataError" in result.output
        last = [line for line in result.output.splitlines() if line.strip()][-1]
        assert last.startswith("error: ") and f"{bad_jsonl}:2" in last


def test_a_bug_is_one_line_with_the_debug_hint(runs, monkeypatch) -> None:
    import qkscore.pipeline

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(qkscore.pipeline, "evaluate", broken)
    result = _run("evaluate", str(runs["big"]), "-p", str(runs["profile"]))
    _one_error(result, "unexpected ZeroDivisionError", "--debug", code=1)
    debug = _run("--debug", "evaluate", str(runs["big"]), "-p", str(runs["profile"]))
    assert debug.exit_code == 1 and "Traceback" in debug.output and "1 / 0" in debug.output


def test_usage_errors_are_one_line_and_help_still_works() -> None:
    _one_error(_run("--no-such-flag"), "No such option")
    _one_error(_run("no-such-command"), "No such command")
    help_result = _run()
    assert "Usage" in help_result.output and "--debug" in help_result.output
    assert not any(line.startswith("error:") for line in help_result.output.splitlines())


def test_entry_point_prints_one_line(bad_jsonl: Path, tmp_path: Path) -> None:
    """``python -m qkscore`` (what the console script runs) takes the same path."""
    cmd = [sys.executable, "-m", "qkscore", "scan", "-m", "smollm2-135m"]
    cmd += ["-d", f"jsonl:{bad_jsonl}", "-o", str(tmp_path / "o")]
    env = {k: v for k, v in os.environ.items() if k != "QKSCORE_DEBUG"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad_jsonl}:2: malformed JSON line: Expecting ',' delimiter")


# ---- the pieces -----------------------------------------------------------------------------


def test_unknown_plain_model_name_fails_at_once_offline() -> None:
    from qkscore.models import ModelNotAvailableError, load_model

    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="did you mean smollm2-135m") as err:
        load_model("smollm-135m")
    assert time.perf_counter() - start < 2
    assert "\n" not in str(err.value)
    with pytest.raises(ModelNotAvailableError, match=r"unknown model 'llama'\. "):
        load_model("llama")


def test_close_aliases() -> None:
    from qkscore.models.aliases import close_aliases

    assert close_aliases("smollm-135m")[0] == "smollm2-135m"
    assert close_aliases("SmolLM2-135M-Instruct")[0] == "smollm2-135m"
    assert close_aliases("qwen2.5-coder-1.5b-instruct")[0] == "qwen2.5-coder-1.5b"
    assert close_aliases("resnet50") == []


def test_read_text_file_diagnoses_encodings(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    for encoding, name in [
        ("utf-16", "UTF-16"),
        ("utf-16-be", "UTF-16, big-endian without"),
        ("utf-32", "UTF-32"),
    ]:
        path.write_text("Every wumpus is a jompus.", encoding=encoding)
        with pytest.raises(DataError, match=f"it looks like {name}") as err:
            read_text_file(path)
        assert err.value.file == str(path)
    path.write_bytes("\ufeffcafé".encode())  # UTF-8 with a byte-order mark: fine
    assert read_text_file(path) == ("café", "utf-8")
    path.write_bytes("line one\ncaf\xe9".encode("cp1252"))
    assert read_text_file(path, ("cp1252",)) == ("line one\ncafé", "cp1252")
    with pytest.raises(DataError, match="byte 0xe9") as err:
        read_text_file(path)
    assert err.value.line == 2
    assert sniff_encoding(b"plain ascii") is None
    assert sniff_encoding(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR") is not None


def test_every_command_help_paragraph_reads_as_one_line() -> None:
    """Typer's rich help keeps a docstring's line breaks, so a paragraph wrapped in the source
    broke mid-sentence at 80 columns, in the command listing and in the command's own --help
    (`calibrate --help` showed "On a generation" / "folder ..."). reflow_help joins them."""
    import inspect

    import typer

    def helps(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield f"{path} {name}", inspect.cleandoc(sub.help or "")
            yield from helps(sub, f"{path} {name}")

    found = dict(helps(typer.main.get_command(app), "qkscore"))
    assert "qkscore audit verify" in found and "qkscore data inspect" in found
    broken = [name for name, text in found.items() if any("\n" in p for p in text.split("\n\n"))]
    assert broken == []
    listing = _run("--help", env={"COLUMNS": "80"}).stdout
    assert "readers" in listing and max(len(line) for line in listing.splitlines()) <= 80
    page = _run("calibrate", "--help", env={"COLUMNS": "80"}).stdout
    assert "On a generation folder (or --steps FILE)" in " ".join(page.split())
    lines = [line.strip() for line in page.splitlines()]
    assert "generation" not in lines and "for" not in lines  # no one-word orphan lines

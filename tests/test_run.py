"""Run folders: resumable after kill -9, refusing mixed runs, sharded over processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qkscore.data.controls import control_items, control_names
from qkscore.run import RunFolder, RunMismatchError
from qkscore.scanning import scan

DATA = "generated:depth=1-2&n=24&distractors=0&seed=3"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "qkscore", *args]


def _scan_args(out: Path, chunk: int = 4, model: str = "smollm2-135m") -> list[str]:
    return [
        "scan",
        "-m",
        model,
        "-d",
        DATA,
        "-o",
        str(out),
        "--chunk-size",
        str(chunk),
        "--batch-size",
        "4",
        "--dtype",
        "float32",
    ]


@pytest.fixture(scope="module")
def reference(smollm2, tmp_path_factory) -> RunFolder:
    """An uninterrupted single-process scan, with both controls."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return scan(
        smollm2,
        DATA,
        "answer-statement",
        out,
        batch_size=4,
        chunk_size=4,
        controls=control_names(),
        progress=False,
    )


def test_run_folder_holds_provenance_items_and_arrays(reference: RunFolder):
    meta = reference.meta()
    assert meta["data"] == DATA and meta["template"]["name"] == "answer-statement"
    assert meta["model"]["fingerprint"] and meta["model"]["dtype"] == "float32"
    assert meta["share_prefix"] is True  # the default for pre-rotary scans
    assert all(meta["scans"][s]["complete"] for s in ("main", *control_names()))
    items = reference.items()
    scores = reference.load()
    assert scores.shape == (24, meta["n_layers"], meta["n_heads"], 2)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    assert np.isfinite(reference.load(name="baseline")).all()
    assert [r["answer_index"] for r in items] == list(reference.labels())
    assert all(r["positions"][0]["pairs"] for r in items)
    for control in control_names():
        ctrl = reference.load(control)
        assert ctrl.shape == scores.shape and not np.array_equal(ctrl, scores)


def test_second_run_does_nothing_and_says_so(reference: RunFolder, smollm2):
    said: list[str] = []
    before = reference.meta_path.stat().st_mtime_ns
    scan(
        smollm2,
        DATA,
        "answer-statement",
        reference.path,
        batch_size=4,
        chunk_size=4,
        controls=control_names(),
        progress=False,
        log=said.append,
    )
    assert "nothing to do" in said[0]
    assert reference.meta_path.stat().st_mtime_ns == before


def test_folder_made_with_other_settings_is_refused(reference: RunFolder, smollm2):
    with pytest.raises(RunMismatchError, match="template"):
        scan(smollm2, DATA, "last-option", reference.path, chunk_size=4, progress=False)
    with pytest.raises(RunMismatchError, match="data"):
        scan(
            smollm2,
            DATA.replace("seed=3", "seed=4"),
            "answer-statement",
            reference.path,
            chunk_size=4,
            progress=False,
        )


def test_kill_9_then_resume_gives_exactly_the_uninterrupted_scores(reference, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        _cli(*_scan_args(out)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    chunks = out / "chunks" / "main"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(chunks.glob("chunk-*.npz"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(chunks.glob("chunk-*.npz")))
    assert 2 <= written < 6, "the kill should land mid-scan"
    assert not (out / "scores.npy").exists()
    done = subprocess.run(_cli(*_scan_args(out)), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(RunFolder(out).load(), reference.load())
    assert np.array_equal(RunFolder(out).load(name="baseline"), reference.load(name="baseline"))


def test_two_process_gloo_scan_merges_to_the_single_process_scores(tmp_path):
    # CPU matmuls round differently with another thread count, so the single-process scan to
    # match runs with the same one thread per process as the two shards.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    done = subprocess.run(_cli(*_scan_args(single)), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "qkscore",
        *_scan_args(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["scans"]["main"]["processes"] == 2
    for name in ("scores", "baseline", "hidden"):
        assert np.array_equal(
            RunFolder(out).load(name=name), RunFolder(single).load(name=name), equal_nan=True
        ), name


def _set_with_a_long_item(shared_data: Path, tmp_path: Path) -> str:
    """A jsonl spec over real ProntoQA items: two as they are and one whose context joins 90
    contexts, longer than SmolLM2's 8192 positions."""
    from qkscore.data import load_items

    folder = shared_data / "prontoqa" / "truefalse_0shot"
    items = load_items(f"prontoqa:{folder}/5hop_0shot_random.json?limit=92")
    rows = [
        {"uid": f"short-{k}", "context": it.context, "statement": it.statement, "label": it.label}
        for k, it in enumerate(items[:2])
    ]
    long_context = " ".join(it.context for it in items[2:])
    rows.insert(1, {"uid": "long-1", "context": long_context, "statement": items[0].statement,
                    "label": items[0].label})  # fmt: skip
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}?id=uid"


def test_an_item_longer_than_the_model_positions_is_refused_naming_it(
    smollm2, shared_data, tmp_path
):
    """A 9,259-token item was scored against an 8,192-position model without a word."""
    spec = _set_with_a_long_item(shared_data, tmp_path)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"set/long-1 \((\d+) tokens\)") as err:
        scan(smollm2, spec, "answer-statement", out, hidden_layers="none", progress=False)
    message = str(err.value)
    assert "8192 positions" in message and "max_position_embeddings" in message
    assert "on_error=skip" in message and "short" not in message
    assert not out.exists()  # refused before anything was written


def test_on_error_skip_skips_a_too_long_item_and_records_it(smollm2, shared_data, tmp_path):
    spec = _set_with_a_long_item(shared_data, tmp_path) + "&on_error=skip"
    out, said = tmp_path / "run", []
    kwargs = {"hidden_layers": "none", "progress": False, "log": said.append}
    run = scan(smollm2, spec, "answer-statement", out, **kwargs)
    assert [r["id"] for r in run.items()] == ["set/short-0", "set/short-1"]
    (skipped,) = run.meta()["skipped"]
    assert skipped["id"] == "set/long-1" and skipped["max_position_embeddings"] == 8192
    assert skipped["tokens"] > 8192
    assert any("set/long-1" in line and "skipped" in line for line in said)
    said.clear()
    scan(smollm2, spec, "answer-statement", out, **kwargs)  # the same request: nothing to do
    assert "nothing to do" in said[0]


def test_a_second_scan_of_a_folder_being_scanned_is_refused(tmp_path):
    """Two `scan` processes on one folder used to write the same chunks and run.json."""
    from qkscore.scanning import LOCK_NAME, ScanLockedError, scan_lock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from qkscore.scanning import scan_lock\n"
         "with scan_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(600)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ScanLockedError, match=f"{out} is being scanned by process "):
            scan("smollm2-135m", DATA, "answer-statement", out, progress=False)
        assert (out / LOCK_NAME).exists() and not (out / "run.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed scan leaves no lock behind
        holder.wait()
    with scan_lock(out):
        assert (out / LOCK_NAME).read_text().startswith(f"process {os.getpid()} ")


def test_controls_remove_or_rotate_the_context():
    from qkscore.data import load_items

    items = load_items(DATA)
    ablated = control_items(items, "context-ablated")
    swapped = control_items(items, "context-swapped")
    assert all(a.context == "" and a.statement == i.statement for a, i in zip(ablated, items))
    assert all(s.context != i.context for s, i in zip(swapped, items))
    assert sorted(s.context for s in swapped) == sorted(i.context for i in items)
    with pytest.raises(ValueError, match="unknown control"):
        control_items(items, "context-shuffled")

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
from qkscore.run import RunFolder, RunMismatchError, scan

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

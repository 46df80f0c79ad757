"""Faults a run folder must survive or refuse, never mix into silently wrong results.

A real CLI scan of SmolLM2 killed with SIGKILL at several moments resumes to exactly the
uninterrupted scores; damaged, truncated, emptied or foreign chunks are named, set aside and
scored again; a changed request (data file, any scan flag, model) is refused with a message
naming what changed; a damaged items.jsonl or run.json is refused. Every comparison of scores
runs both sides on the same thread count (CPU matmuls round differently with another one).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from qkscore.data import load_items
from qkscore.models import model_fingerprint
from qkscore.prompts import get_template
from qkscore.run import (
    MAIN,
    ChunkError,
    RunFolder,
    RunFolderError,
    RunMismatchError,
    items_sha256,
)
from qkscore.scanning import scan

DATA = "generated:depth=1-2&n=12&distractors=0&seed=5"
CHUNK, BATCH, N = 2, 2, 12
STARTS = list(range(0, N, CHUNK))
THREADS = 1  # both sides of every comparison; one thread is also the fastest on 2 shared cores
ARRAYS = ("scores", "baseline", "hidden")


@contextmanager
def _threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _env() -> dict[str, str]:
    # a wide console so that rich prints each warning on one line
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "COLUMNS": "1000"}


def _cli(out: Path, data: str = DATA, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qkscore",
        "scan",
        "-m",
        "smollm2-135m",
        "-d",
        data,
        "-o",
        str(out),
        "--chunk-size",
        str(CHUNK),
        "--batch-size",
        str(BATCH),
        "--dtype",
        "float32",
        *extra,
    ]


def _scan(lm, data: str, out: Path, **kw) -> list[str]:
    said: list[str] = []
    kw = {"batch_size": BATCH, "chunk_size": CHUNK, "progress": False, **kw}
    with _threads():
        scan(lm, data, "answer-statement", out, log=said.append, **kw)
    return said


def _same_arrays(run: RunFolder, reference: RunFolder, scan_name: str = MAIN) -> None:
    for name in ARRAYS:
        got, want = run.load(scan_name, name), reference.load(scan_name, name)
        assert np.array_equal(got, want, equal_nan=True), name


def _unmerged_copy(reference: RunFolder, dest: Path, keep: list[int] = STARTS) -> RunFolder:
    """The reference folder as a scan killed before (or during) its merge leaves it: the
    chunks at ``keep`` on disk, no merged arrays, the main scan not complete."""
    shutil.copytree(reference.path, dest)
    run = RunFolder(dest)
    for array in dest.glob("*.npy"):
        array.unlink()
    for start in set(STARTS) - set(keep):
        run.chunk_path(MAIN, start).unlink()
        run.chunk_record_path(MAIN, start).unlink()
    meta = run.meta()
    meta["scans"] = {}
    run.write_meta(meta)
    return run


def _warning(run: RunFolder, start: int, reason: str) -> str:
    path = run.chunk_path(MAIN, start)
    dest = run.chunk_dir(MAIN) / "bad" / path.name
    return f"warning: chunk {path} {reason}; moved to {dest}, its items will be scored again"


def _checksum_reason(run: RunFolder, start: int) -> str:
    size = run.chunk_path(MAIN, start).stat().st_size
    recorded = json.loads(run.chunk_record_path(MAIN, start).read_text())["size"]
    return (
        f"does not match its checksum ({size} bytes, {recorded} recorded): the file is damaged "
        "or torn"
    )


def _assert_rescored(run: RunFolder, reference: RunFolder, bad: list[int]) -> None:
    """The named chunks lie in bad/, fresh verified ones replaced them, the arrays match."""
    assert sorted(p.name for p in run.chunk_dir(MAIN).glob("bad/*.npz")) == [
        run.chunk_path(MAIN, s).name for s in bad
    ]
    assert run.check_chunks(MAIN, STARTS) == []
    assert run.meta()["scans"][MAIN]["complete"]
    _same_arrays(run, reference)


@pytest.fixture(scope="module")
def reference(smollm2, tmp_path_factory) -> RunFolder:
    """One uninterrupted scan of the small set, main scan only."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    _scan(smollm2, DATA, out)
    return RunFolder(out)


@pytest.fixture(scope="module")
def file_data(tmp_path_factory) -> Path:
    """Four items in a JSONL data file, to edit between runs."""
    path = tmp_path_factory.mktemp("faults-data") / "items.jsonl"
    items = load_items(DATA)[:4]
    path.write_text(
        "".join(
            json.dumps(
                {"id": it.id, "context": it.context, "statement": it.statement, "label": it.label}
            )
            + "\n"
            for it in items
        )
    )
    return path


# --------------------------------------------------------------------------- kill -9


def _wait_for(predicate, proc: subprocess.Popen, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    try:
        while not predicate():
            assert proc.poll() is None, "the scan ended before the kill"
            assert time.monotonic() < deadline, "the scan made no progress"
            time.sleep(0.02)
    except BaseException:
        proc.kill()  # never leave the scan running
        proc.wait()
        raise


def _records(out: Path) -> int:
    return len(list((out / "chunks" / MAIN).glob("chunk-*.json")))


def test_kill_9_at_several_moments_resumes_to_the_uninterrupted_scores(reference, tmp_path):
    out = tmp_path / "run"
    logs = [tmp_path / "log1", tmp_path / "log2"]

    def start(log: Path) -> subprocess.Popen:
        with open(log, "w") as fh:
            return subprocess.Popen(_cli(out), stdout=fh, stderr=subprocess.STDOUT, env=_env())

    # 1: right after the first chunk's record: the next chunk's forward pass is running
    proc = start(logs[0])
    _wait_for(lambda: _records(out) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _records(out)
    assert 1 <= first < len(STARTS) and not (out / "scores.npy").exists()
    # 2: at a random moment once the resumed scan wrote a chunk: during a forward pass or a
    # chunk's write (say the chunk renamed into place but its record not yet written)
    proc = start(logs[1])
    _wait_for(lambda: _records(out) > first, proc)
    time.sleep(random.Random(11).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "scores.npy").exists(), "the kill should land before the merge"
    # 3: the last run completes; a chunk torn between its file and its record is set aside
    done = subprocess.run(_cli(out), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunFolder(out)
    said = [*(log.read_text() for log in logs), done.stdout]
    warnings = [line for text in said for line in text.splitlines() if line.startswith("warning")]
    bad = sorted(int(p.stem.split("-")[1]) for p in (run.chunk_dir(MAIN) / "bad").glob("*.npz"))
    record = "has no checksum record {} (the scan was killed between writing the two, or the "
    record += "chunk is not this scan's)"
    assert warnings == [
        _warning(run, s, record.format(run.chunk_record_path(MAIN, s).name)) for s in bad
    ]
    assert len(bad) <= 2  # at most the chunk being written at each kill
    _assert_rescored(run, reference, bad)
    assert not list(run.chunk_dir(MAIN).glob(".chunk-*"))  # no temporary file left behind


def test_killed_before_the_merge_with_an_emptied_chunk_completes_through_the_cli(
    reference, tmp_path
):
    """All chunks on disk but not merged (a kill just before or during the merge), one chunk
    emptied and a torn temporary file left: the CLI names the empty chunk instead of the
    bare 'Aborted.' an EOFError gave, scores it again and merges."""
    run = _unmerged_copy(reference, tmp_path / "run")
    run.chunk_path(MAIN, 6).write_bytes(b"")
    torn = run.chunk_dir(MAIN) / ".chunk-00000008.npz.abc123.npz"
    torn.write_bytes(run.chunk_path(MAIN, 8).read_bytes()[:100])
    (tmp_path / "run" / "scores.npy").write_bytes(b"\x93NUMPY half a merge")  # torn merge
    done = subprocess.run(_cli(run.path), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [_warning(run, 6, "is empty (0 bytes)")]
    assert not torn.exists()
    _assert_rescored(run, reference, [6])


# --------------------------------------------------------------------------- damaged chunks


def test_damaged_chunks_are_named_set_aside_and_rescored(reference, smollm2, tmp_path):
    run = _unmerged_copy(reference, tmp_path / "run")
    chunk, record = run.chunk_path, run.chunk_record_path
    expected: dict[int, str] = {}
    # 0: bytes flipped in the middle, same size
    data = bytearray(chunk(MAIN, 0).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(8)
    chunk(MAIN, 0).write_bytes(bytes(data))
    expected[0] = _checksum_reason(run, 0)
    # 2: truncated
    chunk(MAIN, 2).write_bytes(chunk(MAIN, 2).read_bytes()[:1000])
    expected[2] = _checksum_reason(run, 2)
    # 4: random bytes its record vouches for: np.load would try to unpickle them
    junk = random.Random(4).randbytes(5000)
    chunk(MAIN, 4).write_bytes(junk)
    rec = json.loads(record(MAIN, 4).read_text())
    rec.update(sha256=hashlib.sha256(junk).hexdigest(), size=len(junk))
    record(MAIN, 4).write_text(json.dumps(rec))
    with pytest.raises(ValueError) as refused:  # numpy's refusal, worded per version
        np.load(io.BytesIO(junk), allow_pickle=False)
    expected[4] = f"cannot be read (ValueError: {refused.value})"
    # 6: its record lost (a kill between the chunk's rename and its record's write)
    record(MAIN, 6).unlink()
    expected[6] = (
        "has no checksum record chunk-00000006.json (the scan was killed between writing the "
        "two, or the chunk is not this scan's)"
    )
    # 8: well-formed, recorded, but one layer short
    with np.load(chunk(MAIN, 8)) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["scores"] = arrays["scores"][:, :29]
    run.write_chunk(MAIN, 8, arrays)
    expected[8] = "holds scores of shape (2, 29, 9, 2) float32, expected (2, 30, 9, 2) float32"
    # 10: written by another request (its record's identity differs from run.json's)
    rec = json.loads(record(MAIN, 10).read_text())
    rec["identity"] = "0123456789abcdef"
    record(MAIN, 10).write_text(json.dumps(rec))
    expected[10] = "was written by a different scan request than run.json describes"

    said = _scan(smollm2, DATA, run.path)
    assert [s for s in said if s.startswith("warning:")] == [
        _warning(run, s, reason) for s, reason in expected.items()
    ]
    _assert_rescored(run, reference, list(expected))


def test_a_chunk_damaged_after_the_check_is_caught_by_the_merge(
    reference, smollm2, tmp_path, monkeypatch
):
    run = _unmerged_copy(reference, tmp_path / "run")
    chunk = run.chunk_path(MAIN, 4)
    chunk.write_bytes(chunk.read_bytes()[:-10])
    reason = _checksum_reason(run, 4)
    said: list[str] = []
    with pytest.raises(ChunkError) as err:
        run.merge_chunks(MAIN, N, CHUNK, log=said.append)
    assert err.value.starts == [4]
    assert said == [_warning(run, 4, reason)]
    assert not list(run.path.glob("*.npy"))  # nothing merged from a partial set
    # in a scan: a chunk that passes the resume check and goes bad before the merge
    run.chunk_path(MAIN, 2).write_bytes(b"")
    monkeypatch.setattr(
        RunFolder, "check_chunks", lambda self, scan, starts, log=print: [4]
    )  # no resume check: the merge must catch chunk 2
    said = _scan(smollm2, DATA, run.path)
    assert [s for s in said if s.startswith("warning:")] == [_warning(run, 2, "is empty (0 bytes)")]
    monkeypatch.undo()
    _assert_rescored(run, reference, [2, 4])


# --------------------------------------------------------------------------- changed requests


def _refusal(run: RunFolder, *lines: str) -> str:
    return (
        f"{run.path} was made by a different scan and is not mixed with this one:\n"
        + "\n".join(f"  {line}" for line in lines)
        + "\nUse another --out folder, or delete this one."
    )


def _template(name: str) -> dict:
    return json.loads(json.dumps(get_template(name).describe()))


HIDDEN = [3, 7, 10, 14, 18, 21, 25, 29]
CHANGES = {
    "attention": (
        {"attention_weights": True},
        "attention_weights: folder has False, this scan asks for True",
        "share_prefix: folder has True, this scan asks for False",
    ),
    "rope": (
        {"rope": True},
        "rope: folder has False, this scan asks for True",
        "share_prefix: folder has True, this scan asks for False",
    ),
    "no-share-prefix": (
        {"share_prefix": False},
        "share_prefix: folder has True, this scan asks for False",
    ),
    "dtype": ({"dtype": "bfloat16"}, "dtype: folder has 'float32', this scan asks for 'bfloat16'"),
    "chunk-size": ({"chunk_size": 3}, "chunk_size: folder has 2, this scan asks for 3"),
    "hidden-layers": (
        {"hidden_layers": "none"},
        f"hidden_layers: folder has {HIDDEN}, this scan asks for []",
    ),
    "limit": (
        {"limit": 10},
        "items: content hash differs (data changed since the folder was made)",
        "n_items: folder has 12, this scan asks for 10",
    ),
    "data-spec": (
        {"data": DATA.replace("seed=5", "seed=6")},
        f"data: folder has {DATA!r}, this scan asks for {DATA.replace('seed=5', 'seed=6')!r}",
        "items: content hash differs (data changed since the folder was made)",
    ),
    "template": (
        {"template": "last-option"},
        f"template: folder has {_template('answer-statement')!r}, this scan asks for "
        f"{_template('last-option')!r}",
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_scan_flag_is_refused_before_the_model_loads(
    reference, tmp_path, monkeypatch, change
):
    """A scan killed after one chunk, resumed with one flag changed: refused, naming it, with
    the folder untouched. The model is given by name and never loaded."""
    import qkscore.models as models

    run = _unmerged_copy(reference, tmp_path / "run", keep=[0])
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    kwargs, *lines = CHANGES[change]
    kwargs = {"data": DATA, "template": "answer-statement", "dtype": "float32", **kwargs}
    with pytest.raises(RunMismatchError) as err:
        scan(
            "smollm2-135m",
            kwargs.pop("data"),
            kwargs.pop("template"),
            run.path,
            batch_size=BATCH,
            chunk_size=kwargs.pop("chunk_size", CHUNK),
            progress=False,
            **kwargs,
        )
    assert str(err.value) == _refusal(run, *lines)
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before


def test_another_model_with_the_same_architecture_is_refused(reference, tmp_path):
    from tiny_models import build_tiny

    folder = tmp_path / "other-model"
    build_tiny("llama").model.save_pretrained(folder)
    run = _unmerged_copy(reference, tmp_path / "run", keep=[0])
    with pytest.raises(RunMismatchError) as err:
        scan(str(folder), DATA, "answer-statement", run.path, chunk_size=CHUNK, dtype="float32")
    fingerprint = reference.meta()["model"]["fingerprint"]
    assert str(err.value) == _refusal(
        run,
        f"model: folder has {fingerprint!r}, this scan asks for {model_fingerprint(str(folder))!r}",
    )


def test_a_model_known_only_once_loaded_is_refused_after_loading(
    reference, smollm2, tmp_path, monkeypatch
):
    """A model whose fingerprint needs the load (a GGUF file, a hub id not cached yet) is
    checked against the folder once loaded, before anything is written."""
    import dataclasses

    import qkscore.models as models
    from tiny_models import build_tiny

    other = dataclasses.replace(
        build_tiny("llama"), tokenizer=smollm2.tokenizer, fingerprint="feedfacefeedface"
    )
    monkeypatch.setattr(models, "model_fingerprint", lambda name: None)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: other)
    run = _unmerged_copy(reference, tmp_path / "run", keep=[0])
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(RunMismatchError) as err:
        scan("other.gguf", DATA, "answer-statement", run.path, chunk_size=CHUNK, dtype="float32")
    fingerprint = reference.meta()["model"]["fingerprint"]
    assert str(err.value) == _refusal(
        run,
        f"model: folder has {fingerprint!r}, this scan asks for 'feedfacefeedface'",
        f"hidden_layers: folder has {HIDDEN}, this scan asks for [0, 1]",
    )
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before


def test_a_changed_batch_size_is_accepted_with_a_note(reference, smollm2, tmp_path):
    """The batch size changes scores only by rounding and is how a scan that ran out of memory
    resumes, so it may differ; the note says what that means."""
    run = _unmerged_copy(reference, tmp_path / "run")
    said = _scan(smollm2, DATA, run.path, batch_size=1)
    assert said == [
        f"{run.path}: batch size 1, the folder was started with {BATCH}: the chunks scored now "
        "may differ from an uninterrupted scan in the last bits (rounding)"
    ]
    _same_arrays(run, reference)  # every chunk was on disk: merged, none scored again


@pytest.fixture(scope="module")
def small_run(smollm2, file_data, tmp_path_factory) -> RunFolder:
    out = tmp_path_factory.mktemp("faults-small") / "run"
    _scan(smollm2, f"jsonl:{file_data}", out)
    return RunFolder(out)


def test_a_data_file_edited_between_kill_and_rerun_is_refused_by_the_cli(
    small_run, file_data, tmp_path
):
    data = tmp_path / "items.jsonl"
    shutil.copy(file_data, data)
    out = tmp_path / "run"
    shutil.copytree(small_run.path, out)
    meta = json.loads((out / "run.json").read_text())
    meta["data"], meta["scans"] = f"jsonl:{data}", {}  # as if made from the copy, then killed
    (out / "run.json").write_text(json.dumps(meta))
    (out / "chunks" / MAIN / "chunk-00000002.npz").unlink()
    lines = data.read_text().splitlines()
    record = json.loads(lines[1])
    record["label"] = {"True": "False", "False": "True"}[record["label"]]  # same spec string
    data.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    done = subprocess.run(_cli(out, f"jsonl:{data}"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 2  # an ordinary mistake: one error line, no traceback
    message = _refusal(
        RunFolder(out), "items: content hash differs (data changed since the folder was made)"
    )
    first, *rest = message.splitlines()  # the CLI prints the refusal as one line
    assert done.stderr.startswith(f"error: {first}") and done.stderr.count("\n") == 1
    assert all(line.strip() in done.stderr for line in rest)
    assert not (out / "chunks" / MAIN / "chunk-00000002.npz").exists()


def test_a_control_added_to_a_finished_run_is_a_new_scan_not_a_change(
    small_run, smollm2, file_data, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(small_run.path, out)
    run = RunFolder(out)
    main_before = run.load(MAIN).copy()
    said = _scan(smollm2, f"jsonl:{file_data}", out, controls=["context-ablated"])
    assert not [s for s in said if s.startswith("warning:")]
    meta = run.meta()
    assert meta["scans"][MAIN]["complete"] and meta["scans"]["context-ablated"]["complete"]
    assert np.array_equal(run.load(MAIN), main_before)
    assert run.load("context-ablated").shape == main_before.shape
    said = _scan(smollm2, f"jsonl:{file_data}", out, controls=["context-ablated"])
    assert said == [f"{out}: nothing to do, scans main, context-ablated are complete"]


# --------------------------------------------------------------------------- items.jsonl, run.json


def test_a_damaged_items_file_is_refused_and_a_rerun_writes_it_again(reference, smollm2, tmp_path):
    from qkscore.pipeline import calibrate

    shutil.copytree(reference.path, tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    path = run.path / "items.jsonl"
    good = path.read_bytes()
    lines = good.decode().splitlines(keepends=True)
    path.write_text("".join(lines[:7]))  # cut at a record's end
    message = (
        f"{path} has 7 records but run.json says 12: the file is damaged (a re-run of the same "
        "`qkscore scan` writes it again)"
    )
    with pytest.raises(RunFolderError) as err:
        run.items()
    assert str(err.value) == message
    with pytest.raises(RunFolderError) as err:
        calibrate(run.path, calib_size=4)  # no longer calibrates on the 7 left
    assert str(err.value) == message
    path.write_text("".join(lines[:6]) + lines[6][:40])  # cut inside record 7
    with pytest.raises(RunFolderError) as err:
        run.items()
    assert str(err.value).startswith(f"{path} line 7 is not a JSON record (")
    assert str(err.value).endswith("): the file is damaged")
    record = json.loads(lines[3])
    record["label"] = {"True": "False", "False": "True"}[record["label"]]
    path.write_text("".join([*lines[:3], json.dumps(record) + "\n", *lines[4:]]))
    with pytest.raises(RunFolderError) as err:
        run.items()
    assert str(err.value) == (
        f"{path}: content hash differs from run.json's items_sha256, so the records are not the "
        "items this folder was scanned with (a re-run of the same `qkscore scan` writes them "
        "again)"
    )
    said = _scan(smollm2, DATA, run.path)
    assert said == [f"warning: {path} is damaged; writing it again"]
    assert path.read_bytes() == good
    assert items_sha256(run.items()) == run.meta()["items_sha256"]


def test_an_unreadable_run_json_is_a_clear_error(reference, tmp_path):
    shutil.copytree(reference.path, tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    text = run.meta_path.read_text()
    run.meta_path.write_text(text[: len(text) // 2])
    with pytest.raises(RunFolderError, match=r"run\.json is unreadable \(.*\): the folder's "):
        run.meta()
    run.meta_path.write_text("")
    with pytest.raises(RunFolderError) as err:
        run.items()
    assert str(err.value) == (
        f"{run.meta_path} is empty: the folder's provenance is lost, so it can be neither "
        "trusted nor resumed. Delete the folder and scan again."
    )

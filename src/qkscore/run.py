"""Run folders: scan items once, write results in chunks as they come, resume after a crash.

A run folder holds everything later steps need, so calibration, evaluation and reports never
touch the model again::

    run.json            provenance: model (name, fingerprint, source, dtype), template, data spec,
                        rope, package version, time, the items' content hash, the state of
                        each scan and the items skipped as too long (``on_error=skip``)
    .scan.lock          held (flock) by the scan writing the folder, so two never mix
    items.jsonl         id, label, answer index, options, meta, the prompt's token positions
    scores.npy          float32 [items, layers, heads, options] (the main scan)
    baseline.npy        float32 [items, options] the model's log-probability of each option
    attention.npy       float32 [items, layers, heads, options] (only with attention weights)
    hidden.npy          float16 [items, hidden layers, options, d_model]: the residual stream at
                        each option's query position after the layers in run.json
                        ``hidden_layers`` (the hidden-state probe's input)
    controls/NAME/...   the same arrays for a control scan (``qkscore.data.controls``)
    chunks/SCAN/chunk-START.npz   results as they come; merged into the arrays when a scan
                        completes
    chunks/SCAN/chunk-START.json  the chunk's record: SHA-256, item range, array shapes and the
                        digest of the request that wrote it
    chunks/SCAN/bad/    chunks that failed verification, kept for inspection and scored again

Chunk boundaries depend only on the item order and ``chunk_size``, so a scan killed at any
moment and started again forms the same batches and ends with exactly the same scores (with
the same batch size and thread count: those change the last bits by rounding).

A chunk is written atomically and then its record; a kill between the two leaves a chunk
without a record, which like any chunk whose bytes, request or shapes disagree with its record
is named in a warning, moved to ``bad/`` and scored again. Chunks are verified when a scan
resumes and again, as they are read, when they are merged.

A folder belongs to one request: :func:`scan_identity` lists every setting that changes the
arrays (model fingerprint, dtype, template, data spec and the items' content hash, item and
option counts, chunk size, rope, attention weights, shared prefix, hidden layers). A scan whose
request differs in any of them is refused with :class:`RunMismatchError` naming each
difference, before the model loads where the difference can be seen without it. Adding a
control scan to a finished folder is a new scan of the same request, not a change. The batch
size may differ (resuming with a smaller one after running out of memory): like the thread
count it changes scores only by rounding, and a resumed scan says so when it differs. The
shared prefix also changes scores only by rounding, but it is a choice of method that run.json
reports as a fact about every array and nothing needs it changed mid-scan, so it is part of the
request.

This module reads and writes the folder (:class:`RunFolder`, a
:class:`~qkscore.io.ResumableFolder`); the scan that fills it is :func:`qkscore.scanning.scan`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.data import Item
from qkscore.data.controls import control_names
from qkscore.io import (
    FolderError,
    FolderMismatchError,
    ResumableFolder,
    atomic_write,
    save_array,
    write_bytes,
    write_json,
)
from qkscore.schemas import ResultFileError, RunMeta

MAIN = "main"
DEFAULT_CHUNK = 64
#: Layers whose residual stream a scan keeps by default: enough for the probe to choose a depth,
#: few enough that the array stays a few tens of KB per item.
DEFAULT_HIDDEN_LAYERS = 8


def hidden_layer_choice(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """Layers to keep the residual stream of: ``"auto"`` (evenly spaced, the last included),
    ``"none"``/``None``/empty (none), ``"all"``, or explicit zero-based numbers."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return []
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "auto":
            count = min(DEFAULT_HIDDEN_LAYERS, n_layers)
            return sorted({round((i + 1) * n_layers / count) - 1 for i in range(count)})
        if text == "all":
            return list(range(n_layers))
        try:
            spec = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"hidden layers {spec!r}: expected auto, all, none or numbers like 4,8,12"
            ) from None
    layers = sorted({int(x) for x in spec})
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"hidden layer {bad[0]} outside the model's layers 0..{n_layers - 1}")
    return layers


#: A run folder made with another model, template, data or settings.
RunMismatchError = FolderMismatchError
#: A run (or generation) folder's file is damaged or disagrees with its run.json.
RunFolderError = FolderError


class ChunkError(RuntimeError):
    """Chunks of a scan are missing or failed verification (bad ones were set aside).

    ``starts`` are the first item indices of the chunks to score again."""

    def __init__(self, message: str, starts: Sequence[int]) -> None:
        super().__init__(message)
        self.starts = list(starts)


class _BadChunk(Exception):
    """Why one chunk failed verification (internal)."""


#: The item fields a scan's arrays and labels depend on; run.json keeps their hash.
ITEM_FIELDS = ("id", "context", "statement", "label", "options", "answer_index")


def items_sha256(items: Iterable[Item | Mapping[str, Any]]) -> str:
    """SHA-256 over one canonical JSON line per item (the fields in :data:`ITEM_FIELDS`, in
    item order), from :class:`Item` objects or from items.jsonl records alike."""
    digest = hashlib.sha256()
    for item in items:
        get = item.get if isinstance(item, Mapping) else lambda k, it=item: getattr(it, k, None)
        record = {key: get(key) for key in ITEM_FIELDS}
        if record["options"] is not None:
            record["options"] = list(record["options"])
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


class RunFolder(ResumableFolder):
    """Read and write one run folder; see the module docstring for its layout."""

    KIND = "a qkscore run.json (no scans)"
    UNREADABLE = (
        ": the folder's provenance is lost, so it can be neither trusted nor resumed. Delete "
        "the folder and scan again."
    )

    # --- metadata -----------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a qkscore run folder (no run.json)")
        meta = self.read_settings()
        if meta.get("kind") == "generations":
            raise RunFolderError(
                f"{self.path} is a generation folder (made by `qkscore generate`), not a run "
                "folder of `qkscore scan`: give a folder that `qkscore scan` wrote"
            )
        if "scans" not in meta:
            raise RunFolderError(f"{self.meta_path} is not {self.KIND}")
        try:
            RunMeta.from_data(meta, self.meta_path)
        except ResultFileError as err:
            raise RunFolderError(str(err)) from None
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Write run.json, validated (:class:`qkscore.schemas.RunMeta`)."""
        write_json(self.meta_path, RunMeta.checked(meta, self.meta_path))

    def recorded_identity(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """The identity (:func:`scan_identity`) run.json ``meta`` records; for folders made
        before run.json kept the items' hash, the hash of its items.jsonl when the records hold
        every hashed field."""
        identity = scan_identity(meta)
        if identity["items"] is None:
            try:
                records = self.items()
            except (OSError, RunFolderError):
                records = []
            if records and all(all(k in r for k in ITEM_FIELDS) for r in records):
                identity["items"] = items_sha256(records)
        return identity

    def complete(self, meta: Mapping[str, Any], scans: Sequence[str]) -> bool:
        """Whether run.json ``meta`` marks these scans complete and their arrays are all on
        disk."""
        names = list(_chunk_layout(meta)) if "n_layers" in meta else ["scores", "baseline"]
        return all(
            meta.get("scans", {}).get(s, {}).get("complete") and all(self.has(s, n) for n in names)
            for s in scans
        )

    def items_ok(self) -> bool:
        """Whether items.jsonl reads back whole (:meth:`items`)."""
        try:
            self.items()
        except (OSError, RunFolderError):
            return False
        return True

    def write_items(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write items.jsonl (one JSON line per record) atomically."""
        atomic_write(
            self.path / "items.jsonl",
            lambda fh: fh.writelines((json.dumps(r) + "\n").encode() for r in records),
        )

    def items(self) -> list[dict[str, Any]]:
        """The items.jsonl records, refused when they disagree with run.json (count or content
        hash) or a line is not JSON: a truncated file would otherwise calibrate on fewer items."""
        meta = self.meta()
        path = self.path / "items.jsonl"
        records = []
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    records.append(json.loads(raw))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise RunFolderError(
                        f"{path} line {number} is not a JSON record ({err}): the file is damaged"
                    ) from None
        n_items = meta.get("n_items")
        if n_items is not None and len(records) != n_items:
            raise RunFolderError(
                f"{path} has {len(records)} records but run.json says {n_items}: the file is "
                "damaged (a re-run of the same `qkscore scan` writes it again)"
            )
        recorded = meta.get("items_sha256")
        if recorded and items_sha256(records) != recorded:
            raise RunFolderError(
                f"{path}: content hash differs from run.json's items_sha256, so the records are "
                "not the items this folder was scanned with (a re-run of the same `qkscore "
                "scan` writes them again)"
            )
        return records

    def labels(self, records: Sequence[dict[str, Any]] | None = None) -> np.ndarray:
        """Gold option index per item; pass ``items()`` already read to skip a second read."""
        rows = self.items() if records is None else records
        return np.array([r["answer_index"] for r in rows], dtype=np.int64)

    # --- arrays --------------------------------------------------------------------------
    def scan_dir(self, scan: str) -> Path:
        return self.path if scan == MAIN else self.path / "controls" / scan

    def array_path(self, scan: str, name: str) -> Path:
        return self.scan_dir(scan) / f"{name}.npy"

    def has(self, scan: str, name: str = "scores") -> bool:
        return self.array_path(scan, name).exists()

    def load(self, scan: str = MAIN, name: str = "scores", mmap: bool = True) -> np.ndarray:
        """One of a scan's arrays; a file that is not a NumPy array (empty, torn, garbage) or
        whose shape disagrees with run.json is a :class:`RunFolderError` naming it."""
        path = self.array_path(scan, name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: scan {scan!r} has no {name!r} yet")
        meta = self.meta()
        redo = "delete it and run the same `qkscore scan` again to rebuild it"
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            with open(path, "rb") as fh:
                start = fh.read(6)
            if not start:
                what = "is empty (0 bytes)"
            elif start != b"\x93NUMPY":
                what = "is not a NumPy array file (no .npy header)"
            else:
                what = f"is torn or damaged ({type(err).__name__}: {_one_line(err)})"
            raise RunFolderError(f"{path} {what}: {redo}") from None
        layout = _chunk_layout(meta).get(name)
        if layout is not None:
            want = (meta["n_items"], *layout[0])
            fits = array.ndim == len(want) and all(
                w is None or g == w for g, w in zip(array.shape, want)
            )
            if not fits:
                shape = tuple("?" if w is None else w for w in want)
                raise RunFolderError(
                    f"{path} holds an array of shape {tuple(array.shape)} but run.json "
                    f"describes {shape}: the array is damaged or from another scan; {redo}"
                )
        return array

    def scans(self) -> list[str]:
        return [s for s in (MAIN, *control_names()) if self.has(s)]

    def chunk_dir(self, scan: str) -> Path:
        return self.path / "chunks" / scan

    def chunk_path(self, scan: str, start: int) -> Path:
        return self.chunk_dir(scan) / f"chunk-{start:08d}.npz"

    def chunk_record_path(self, scan: str, start: int) -> Path:
        return self.chunk_dir(scan) / f"chunk-{start:08d}.json"

    def write_chunk(
        self,
        scan: str,
        start: int,
        arrays: dict[str, np.ndarray],
        identity: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """Write a chunk atomically, then its record (checksum, item range, shapes, and the
        ``seconds`` it took to score, with when it was written): a kill in between leaves a
        chunk without a record, which verification sets aside."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        rows = {len(a) for a in arrays.values()}
        if len(rows) != 1:
            raise ValueError(f"chunk {start} of scan {scan!r}: arrays disagree on rows {rows}")
        write_bytes(self.chunk_path(scan, start), data, ".npz")
        write_json(
            self.chunk_record_path(scan, start),
            {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "start": start,
                "stop": start + rows.pop(),
                "identity": identity if identity is not None else self.chunk_identity(),
                "arrays": {k: [list(a.shape), str(a.dtype)] for k, a in arrays.items()},
                "seconds": seconds,
                "written": time.time(),
            },
        )

    def chunk_seconds(self, scan: str, before: float) -> float:
        """The scoring seconds recorded by the chunks of ``scan`` written before ``before`` (a
        ``time.time()``): the work earlier, interrupted calls did, so a resumed scan's time
        counts it. Chunks from before records kept seconds count 0."""
        total = 0.0
        for path in self.chunk_dir(scan).glob("chunk-*.json"):
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and (record.get("written") or before) < before:
                total += float(record.get("seconds") or 0.0)
        return total

    def chunk_identity(self, meta: Mapping[str, Any] | None = None) -> str:
        """The digest of the request (:func:`scan_identity`) stamped on every chunk it writes."""
        return self.digest(scan_identity(meta if meta is not None else self.meta()))

    def read_chunk(
        self, scan: str, start: int, meta: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """A chunk's arrays after checking it against its record and run.json; raises
        :class:`_BadChunk` with the reason otherwise, FileNotFoundError when it is absent."""
        meta = meta if meta is not None else self.meta()
        path, record_path = self.chunk_path(scan, start), self.chunk_record_path(scan, start)
        stop = min(start + meta["chunk_size"], meta["n_items"])
        data = path.read_bytes()
        if not data:
            raise _BadChunk("is empty (0 bytes)")
        if not record_path.exists():
            raise _BadChunk(
                f"has no checksum record {record_path.name} (the scan was killed between "
                "writing the two, or the chunk is not this scan's)"
            )
        try:
            record = json.loads(record_path.read_bytes())
            recorded_sha = record["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _BadChunk(
                f"has an unreadable checksum record {record_path.name} ({err})"
            ) from None
        if record.get("identity") != self.chunk_identity(meta):
            raise _BadChunk("was written by a different scan request than run.json describes")
        if (record.get("start"), record.get("stop")) != (start, stop):
            raise _BadChunk(
                f"is recorded for items {record.get('start')}..{record.get('stop')} but should "
                f"hold items {start}..{stop}"
            )
        if hashlib.sha256(data).hexdigest() != recorded_sha:
            raise _BadChunk(
                f"does not match its checksum ({len(data)} bytes, {record.get('size')} "
                "recorded): the file is damaged or torn"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
        except Exception as err:  # anything np.load raises on a bad file
            raise _BadChunk(f"cannot be read ({type(err).__name__}: {err})") from None
        layout = _chunk_layout(meta)
        if sorted(arrays) != sorted(layout):
            raise _BadChunk(f"holds arrays {sorted(arrays)}, expected {sorted(layout)}")
        for key, (shape, dtype) in layout.items():
            got = arrays[key]
            want = (stop - start, *shape)
            fits = len(got.shape) == len(want) and all(
                w is None or g == w for g, w in zip(got.shape, want)
            )
            if not fits or str(got.dtype) != dtype:
                raise _BadChunk(
                    f"holds {key} of shape {tuple(got.shape)} {got.dtype}, expected "
                    f"{tuple('?' if w is None else w for w in want)} {dtype}"
                )
        return arrays

    def set_aside(
        self, scan: str, start: int, reason: str, log: Callable[[str], None] = print
    ) -> Path:
        """Move a bad chunk (and its record) to ``chunks/SCAN/bad/`` and say so."""
        path = self.chunk_path(scan, start)
        dest = self.move_aside(
            path,
            lambda k: f"{path.stem}.{k}{path.suffix}" if k else path.name,
            self.chunk_dir(scan) / "bad",
        )
        record = self.chunk_record_path(scan, start)
        if record.exists():
            record.replace(dest.with_suffix(".json"))
        log(f"warning: chunk {path} {reason}; moved to {dest}, its items will be scored again")
        return dest

    def check_chunks(
        self, scan: str, starts: Iterable[int], log: Callable[[str], None] = print
    ) -> list[int]:
        """Verify the chunks at ``starts``; set aside bad ones. Returns the starts still to
        score (absent or set aside)."""
        meta = self.meta()
        todo = []
        for start in starts:
            try:
                self.read_chunk(scan, start, meta)
            except FileNotFoundError:
                todo.append(start)
            except (_BadChunk, OSError) as err:
                self.set_aside(scan, start, str(err), log)
                todo.append(start)
        return todo

    def merge_chunks(
        self, scan: str, n_items: int, chunk_size: int, log: Callable[[str], None] = print
    ) -> None:
        """Verify a finished scan's chunks and concatenate them in item order into its arrays.

        Raises :class:`ChunkError` (writing no array) when chunks are absent or fail
        verification; the bad ones are set aside first, so scoring ``err.starts`` again and
        merging once more completes the scan."""
        meta = self.meta()
        if (meta["n_items"], meta["chunk_size"]) != (n_items, chunk_size):
            raise ValueError(f"{self.meta_path} describes another item count or chunk size")
        parts: dict[str, list[np.ndarray]] = {}
        missing = []
        for start in range(0, n_items, chunk_size):
            try:
                arrays = self.read_chunk(scan, start, meta)
            except FileNotFoundError:
                missing.append(start)
                continue
            except (_BadChunk, OSError) as err:
                self.set_aside(scan, start, str(err), log)
                missing.append(start)
                continue
            for key, block in arrays.items():
                parts.setdefault(key, []).append(block)
        if missing:
            raise ChunkError(
                f"scan {scan!r} of {self.path}: chunks at items {missing} are missing or bad",
                missing,
            )
        for key, blocks in parts.items():
            save_array(self.array_path(scan, key), np.concatenate(blocks))
        for tmp in self.chunk_dir(scan).glob(".chunk-*"):
            tmp.unlink(missing_ok=True)  # temporary files of writes a kill interrupted


def _one_line(err: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunk_layout(meta: Mapping[str, Any]) -> dict[str, tuple[tuple, str]]:
    """Each array a chunk holds: its shape after the item axis (``None``: not in run.json) and
    its dtype, as :func:`qkscore.scoring.score_prompts` makes them."""
    per_head = (meta["n_layers"], meta["n_heads"], meta["n_options"])
    layout: dict[str, tuple[tuple, str]] = {
        "scores": (per_head, "float32"),
        "baseline": ((meta["n_options"],), "float32"),
    }
    if meta.get("attention_weights"):
        layout["attention"] = (per_head, "float32")
    if meta.get("hidden_layers"):
        hidden = (len(meta["hidden_layers"]), meta["n_options"], meta.get("d_model"))
        layout["hidden"] = (hidden, "float16")
    return layout


def scan_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Every recorded setting that changes a scan's arrays, by name: two scans share a folder
    only when these agree key by key. A new setting that changes the arrays gets a line here
    (with the value folders made before it existed had); nothing else needs to change."""
    model = meta.get("model") or {}
    return {
        "model": model.get("fingerprint") or model.get("name"),
        "dtype": model.get("dtype"),
        "template": meta.get("template"),
        "data": meta.get("data"),
        "items": meta.get("items_sha256"),
        "n_items": meta.get("n_items"),
        "n_options": meta.get("n_options"),
        "chunk_size": meta.get("chunk_size"),
        "rope": meta.get("rope"),
        "attention_weights": meta.get("attention_weights", False),
        "share_prefix": meta.get("share_prefix", False),
        "hidden_layers": meta.get("hidden_layers", []),
    }

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

A folder belongs to one request: :func:`_identity` lists every setting that changes the
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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import io
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.data import Item, load_items, parse_spec
from qkscore.data.controls import control_items, control_names, get_control
from qkscore.prompts import Prompt, Template, get_template, with_fewshot
from qkscore.results import ResultFileError, RunMeta, stamp

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


class RunMismatchError(RuntimeError):
    """A run folder made with another model, template, data or settings."""


class RunFolderError(RuntimeError):
    """A run folder's file is damaged or disagrees with its run.json."""


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


def _atomic_write_bytes(path: Path, write: Callable[[Any], None], suffix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda fh: fh.write(json.dumps(obj, indent=2, default=str).encode()))


def save_array(path: Path, array: np.ndarray) -> None:
    _atomic_write_bytes(path, lambda fh: np.save(fh, array), suffix=".npy")


class RunFolder:
    """Read and write one run folder; see the module docstring for its layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- metadata -----------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a qkscore run folder (no run.json)")
        try:
            text = self.meta_path.read_bytes().decode()
            meta = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            what = "is empty" if self.meta_path.stat().st_size == 0 else f"is unreadable ({err})"
            raise RunFolderError(
                f"{self.meta_path} {what}: the folder's provenance is lost, so it can be neither "
                "trusted nor resumed. Delete the folder and scan again."
            ) from err
        if isinstance(meta, dict) and meta.get("kind") == "generations":
            raise RunFolderError(
                f"{self.path} is a generation folder (made by `qkscore generate`), not a run "
                "folder of `qkscore scan`: give a folder that `qkscore scan` wrote"
            )
        if not isinstance(meta, dict) or "scans" not in meta:
            raise RunFolderError(f"{self.meta_path} is not a qkscore run.json (no scans)")
        try:
            RunMeta.from_data(meta, self.meta_path)
        except ResultFileError as err:
            raise RunFolderError(str(err)) from None
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Write run.json, validated (:class:`qkscore.results.RunMeta`)."""
        write_json(self.meta_path, RunMeta.checked(meta, self.meta_path))

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
        self, scan: str, start: int, arrays: dict[str, np.ndarray], identity: str | None = None
    ) -> None:
        """Write a chunk atomically, then its record (checksum, item range, shapes): a kill in
        between leaves a chunk without a record, which verification sets aside."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        rows = {len(a) for a in arrays.values()}
        if len(rows) != 1:
            raise ValueError(f"chunk {start} of scan {scan!r}: arrays disagree on rows {rows}")
        _atomic_write_bytes(self.chunk_path(scan, start), lambda fh: fh.write(data), ".npz")
        write_json(
            self.chunk_record_path(scan, start),
            {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "start": start,
                "stop": start + rows.pop(),
                "identity": identity if identity is not None else self._chunk_identity(),
                "arrays": {k: [list(a.shape), str(a.dtype)] for k, a in arrays.items()},
            },
        )

    def _chunk_identity(self, meta: dict[str, Any] | None = None) -> str:
        return identity_digest(_identity(meta if meta is not None else self.meta()))

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
        if record.get("identity") != self._chunk_identity(meta):
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
        bad = self.chunk_dir(scan) / "bad"
        bad.mkdir(parents=True, exist_ok=True)
        path = self.chunk_path(scan, start)
        dest, k = bad / path.name, 0
        while dest.exists():
            k += 1
            dest = bad / f"{path.stem}.{k}{path.suffix}"
        os.replace(path, dest)
        record = self.chunk_record_path(scan, start)
        if record.exists():
            os.replace(record, dest.with_suffix(".json"))
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


def identity_digest(identity: Mapping[str, Any]) -> str:
    """A short digest of a request's identity, stamped on every chunk it writes."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _describe_items(items: Sequence[Item], prompts: Sequence[Prompt]) -> Iterator[dict]:
    for index, (item, prompt) in enumerate(zip(items, prompts)):
        yield {
            "index": index,
            "id": item.id,
            "context": item.context,
            "statement": item.statement,
            "label": item.label,
            "answer_index": item.answer_index,
            "options": list(item.options),
            "meta": _jsonable(item.meta),
            "positions": [
                {"pairs": part.pairs, "pair_options": part.pair_options, **part.positions}
                for part in prompt.parts
            ],
        }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _identity(meta: Mapping[str, Any]) -> dict[str, Any]:
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


def _folder_identity(run: RunFolder, old: Mapping[str, Any]) -> dict[str, Any]:
    """The identity a folder records; for folders made before run.json kept the items' hash,
    the hash of its items.jsonl when the records hold every hashed field."""
    identity = _identity(old)
    if identity["items"] is None:
        try:
            records = run.items()
        except (OSError, RunFolderError):
            records = []
        if records and all(all(k in r for k in ITEM_FIELDS) for r in records):
            identity["items"] = items_sha256(records)
    return identity


def scan(
    model: Any,
    data: str | Sequence[Item],
    template: str | Template,
    out: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    rope: bool = False,
    controls: Sequence[str] = (),
    attention_weights: bool = False,
    dtype: str = "auto",
    device_map: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    share_prefix: bool = True,
    hidden_layers: str | Sequence[int] | None = "auto",
    chat_template: bool | None = None,
    num_fewshot: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunFolder:
    """Score every item (and each requested control) into the run folder ``out``.

    ``model`` is a loaded model or anything ``load_model`` accepts; ``device_map="auto"``
    spreads a model too big for one device over GPUs and CPU (docs/scaling.md). Re-running
    the same command resumes an interrupted scan and does nothing on a finished one; a folder
    made with another model, template, data or settings is refused rather than mixed.

    ``share_prefix`` runs a context that several items of a chunk share once (4x faster on
    PARARULE-Plus in file order); it applies to pre-rotary scans without attention weights,
    and like the batch size it changes scores only by rounding (benchmarks/bench_prefix.py).

    ``hidden_layers`` (see :func:`hidden_layer_choice`) keeps the residual stream at the query
    positions for the hidden-state probe baseline, from the same forward pass.
    ``chat_template`` (None: the template's own setting) wraps prompts in the tokenizer's chat
    template; ``num_fewshot`` takes that many solved examples from the data (label-balanced,
    removed from the scanned items) and shows them before every item.

    An item whose prompt is longer than the model's ``max_position_embeddings`` is refused
    with its id and length, before anything is written; with ``on_error=skip`` in the data
    spec it is skipped instead and listed in run.json's ``skipped``. While a scan runs it
    holds the folder's lock (:func:`scan_lock`): a second scan of the same folder stops at
    once with :class:`ScanLockedError`.
    """
    run = RunFolder(out)
    spec = data if isinstance(data, str) else "<items given in Python>"
    items = load_items(data) if isinstance(data, str) else list(data)
    overrides = {} if chat_template is None else {"use_chat_template": bool(chat_template)}
    tmpl = get_template(template, **overrides)
    tmpl, items = with_fewshot(tmpl, items, num_fewshot)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"data {spec!r} holds no items")
    for control in controls:
        get_control(control)  # validate names before any work
    skip_long = isinstance(data, str) and parse_spec(data).get("on_error") == "skip"
    state = process_state()
    with scan_lock(run.path, take=state.is_main_process):
        return _scan_locked(
            run, state, model, spec, items, tmpl, skip_long,
            batch_size=batch_size, rope=rope, controls=controls,
            attention_weights=attention_weights, dtype=dtype, device_map=device_map,
            chunk_size=chunk_size, share_prefix=share_prefix, hidden_layers=hidden_layers,
            progress=progress, log=log,
        )  # fmt: skip


def _scan_locked(
    run: RunFolder,
    state: Any,
    model: Any,
    spec: str,
    items: list[Item],
    tmpl: Template,
    skip_long: bool,
    *,
    batch_size: int,
    rope: bool,
    controls: Sequence[str],
    attention_weights: bool,
    dtype: str,
    device_map: str | None,
    chunk_size: int,
    share_prefix: bool,
    hidden_layers: str | Sequence[int] | None,
    progress: bool,
    log: Callable[[str], None],
) -> RunFolder:
    """:func:`scan` once the items are read and the folder is this process's to write."""
    from qkscore.extraction import prefix_supported
    from qkscore.models import LoadedModel, load_model

    wanted = [MAIN, *controls]
    shared = share_prefix and prefix_supported(rope, attention_weights)
    old = run.meta() if run.exists() else None
    # items an earlier scan of this folder skipped as too long are not part of it
    skipped: list[dict[str, Any]] = list((old or {}).get("skipped") or [])
    if skipped:
        gone = {r["id"] for r in skipped}
        items = [it for it in items if it.id not in gone]
    items_hash = items_sha256(items)
    if old is not None:
        request = _request_before_loading(
            old,
            model,
            dtype,
            spec,
            tmpl,
            items,
            items_hash,
            rope,
            attention_weights,
            chunk_size,
            shared,
            hidden_layers,
        )
        _refuse_differences(run, _folder_identity(run, old), request)
        same_model = "model" in request or old["model"].get("name") == str(model)
        if same_model and _complete(run, old, wanted) and _items_file_ok(run):
            log(f"{run.path}: nothing to do, scans {', '.join(wanted)} are complete")
            return run
    lm = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, dtype=dtype, device=_scan_device(state), device_map=device_map)
    )
    prompts = [tmpl.render(item, lm.tokenizer) for item in items]
    too_long = _too_long(items, prompts, lm, spec, skip_long)
    if too_long:
        gone = {r["id"] for r in too_long}
        kept = [(it, p) for it, p in zip(items, prompts) if it.id not in gone]
        if not kept:
            raise ValueError(f"data {spec!r}: every item is longer than the model's positions")
        items, prompts = [it for it, _ in kept], [p for _, p in kept]
        items_hash = items_sha256(items)
        skipped += too_long
        if state.is_main_process:
            log(
                f"warning: {len(too_long)} items longer than the model's "
                f"{too_long[0]['max_position_embeddings']} positions are skipped "
                f"(on_error=skip; listed in run.json 'skipped'): "
                + ", ".join(f"{r['id']} ({r['tokens']} tokens)" for r in too_long[:5])
                + (", ..." if len(too_long) > 5 else "")
            )
    meta = stamp(
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": lm.describe(),
            "template": tmpl.describe(),
            "data": spec,
            "items_sha256": items_hash,
            "rope": rope,
            "attention_weights": attention_weights,
            "n_items": len(items),
            "n_layers": lm.n_layers,
            "n_heads": lm.n_heads,
            "d_model": lm.d_model,
            "n_options": max(p.n_options for p in prompts),
            "hidden_layers": hidden_layer_choice(hidden_layers, lm.n_layers),
            "chunk_size": chunk_size,
            "batch_size": batch_size,
            "share_prefix": shared,
            "scans": {},
        }
    )
    if skipped:
        meta["skipped"] = skipped
    write_items = old is None
    if old is not None:
        _refuse_differences(run, _folder_identity(run, old), _identity(meta))
        meta["created"], meta["scans"] = old["created"], old.get("scans", {})
        for name in wanted:
            if not _complete(run, meta, [name]):
                meta["scans"].pop(name, None)  # arrays missing: merge (and score) again
        if old.get("batch_size") != batch_size and state.is_main_process:
            log(
                f"{run.path}: batch size {batch_size}, the folder was started with "
                f"{old.get('batch_size')}: the chunks scored now may differ from an "
                "uninterrupted scan in the last bits (rounding)"
            )
        write_items = not _items_file_ok(run)
        if write_items and state.is_main_process:
            log(f"warning: {run.path / 'items.jsonl'} is damaged; writing it again")
    if state.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        if write_items:
            _atomic_write_bytes(
                run.path / "items.jsonl",
                lambda fh: fh.writelines(
                    (json.dumps(r) + "\n").encode() for r in _describe_items(items, prompts)
                ),
            )
        run.write_meta(meta)
    state.wait_for_everyone()
    for scan_name in wanted:
        if meta["scans"].get(scan_name, {}).get("complete"):
            continue
        scan_prompts = prompts
        if scan_name != MAIN:
            scan_prompts = [tmpl.render(it, lm.tokenizer) for it in control_items(items, scan_name)]

        score = functools.partial(
            _scan_one,
            run,
            lm,
            scan_name,
            scan_prompts,
            meta,
            batch_size,
            rope,
            attention_weights,
            chunk_size,
            log=log,
        )
        owned = _owned_chunks(state, len(items), chunk_size)
        score(progress and state.is_main_process, owned, state.num_processes)
        state.wait_for_everyone()  # every process's chunks are on disk before one merges them
        if state.is_main_process:
            try:
                run.merge_chunks(scan_name, len(items), chunk_size, log=log)
            except ChunkError as err:  # a chunk went bad or missing after it was checked
                score(progress, err.starts, starts=err.starts)
                run.merge_chunks(scan_name, len(items), chunk_size, log=log)
            meta["scans"][scan_name] = {
                "complete": True,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "processes": state.num_processes,
            }
            run.write_meta(meta)
        state.wait_for_everyone()
    return run


def _too_long(
    items: Sequence[Item], prompts: Sequence[Prompt], lm: Any, spec: str, skip: bool
) -> list[dict[str, Any]]:
    """Items whose prompt is longer than the model's ``max_position_embeddings``: scores past
    the positions a model was trained on mean nothing (or the pass fails). Refused with
    the item ids and lengths, or, with ``on_error=skip`` in the data spec, returned as records
    for run.json's ``skipped`` (like a loader's skipped records, nothing goes silently)."""
    limit = getattr(lm, "max_positions", None)
    if not limit:
        return []
    records = [
        {
            "id": item.id,
            "tokens": longest,
            "max_position_embeddings": limit,
            "reason": "longer than the model's positions",
        }
        for item, prompt in zip(items, prompts)
        if (longest := max(len(part.input_ids) for part in prompt.parts)) > limit
    ]
    if records and not skip:
        listed = ", ".join(f"{r['id']} ({r['tokens']} tokens)" for r in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        raise ValueError(
            f"data {spec!r}: {len(records)} items are longer than the "
            f"{limit} positions of model {getattr(lm, 'name', '')!r} "
            f"(max_position_embeddings): {listed}{more}. Shorten or drop them, or add "
            "on_error=skip to the data spec to skip them (run.json lists what was skipped)"
        )
    return records


#: The lock file a scan holds in its run folder (see :func:`scan_lock`).
LOCK_NAME = ".scan.lock"


class ScanLockedError(RunFolderError):
    """Another process is scanning into the same run folder."""


@contextlib.contextmanager
def scan_lock(path: Path, take: bool = True) -> Iterator[None]:
    """Hold ``PATH/.scan.lock`` while a scan writes the folder; a second scan of the same
    folder is refused at once with :class:`ScanLockedError` instead of mixing its chunks
    and run.json with the first one's.

    The lock is an advisory ``flock``, which the system drops when the process ends (kill -9
    included), so a crashed scan never leaves the folder locked. Only one process of a
    multi-process scan takes it (``take``). Where ``flock`` is missing (Windows) scans are not
    guarded. A folder this call created is removed again when the scan fails before writing
    anything into it.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if not take or fcntl is None:
        yield
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_NAME
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ScanLockedError(
                f"{path} is being scanned by {holder} (lock file {lock_path}): wait for that "
                "scan to finish, or scan into another --out folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        done = False
        try:
            yield
            done = True
        finally:
            if not done and created and [p.name for p in path.iterdir()] == [LOCK_NAME]:
                with contextlib.suppress(OSError):
                    lock_path.unlink()
                    path.rmdir()


def _request_before_loading(
    old,
    model,
    dtype,
    spec,
    tmpl,
    items,
    items_hash,
    rope,
    attention_weights,
    chunk_size,
    shared,
    hidden_layers,
) -> dict[str, Any]:
    """The part of this scan's identity known before the model loads (see :func:`_identity`):
    everything but what only the loaded model tells, such as its fingerprint when that needs a
    download or a whole-file hash."""
    from qkscore.models import LoadedModel, model_fingerprint
    from qkscore.models.loading import resolve_device, resolve_dtype

    request: dict[str, Any] = {
        "template": tmpl.describe(),
        "data": spec,
        "items": items_hash,
        "n_items": len(items),
        "n_options": max(len(item.options) for item in items),
        "chunk_size": chunk_size,
        "rope": rope,
        "attention_weights": attention_weights,
        "share_prefix": shared,
    }
    if isinstance(model, LoadedModel):
        request["model"] = model.fingerprint
        request["dtype"] = str(model.dtype).removeprefix("torch.")
    else:
        fingerprint = model_fingerprint(str(model))
        if fingerprint:
            request["model"] = fingerprint
        request["dtype"] = str(resolve_dtype(dtype, resolve_device("auto"))).removeprefix("torch.")
    # "auto" depends on the layer count: the folder's, if the model is the same (else the model
    # differs and is refused once loaded)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        request["hidden_layers"] = hidden_layer_choice(hidden_layers, int(old["n_layers"]))
    return request


def _refuse_differences(run: RunFolder, folder: Mapping[str, Any], request: Mapping) -> None:
    """Raise :class:`RunMismatchError` naming each key of ``request`` the folder disagrees on
    (compared as run.json stores them, so a tuple equals the list it was written as)."""
    folder, request = _jsonable(dict(folder)), _jsonable(dict(request))
    if any(folder.get(key) != value for key, value in request.items()):
        raise RunMismatchError(_mismatch_message(run, folder, request))


def _complete(run: RunFolder, meta: Mapping[str, Any], scans: Sequence[str]) -> bool:
    """Whether run.json marks these scans complete and their arrays are all on disk."""
    names = list(_chunk_layout(meta)) if "n_layers" in meta else ["scores", "baseline"]
    return all(
        meta.get("scans", {}).get(s, {}).get("complete") and all(run.has(s, n) for n in names)
        for s in scans
    )


def _items_file_ok(run: RunFolder) -> bool:
    try:
        run.items()
    except (OSError, RunFolderError):
        return False
    return True


def process_state() -> Any:
    """This process's place in a scan launched over several processes (accelerate's PartialState).

    ``accelerate launch`` and ``torchrun`` set RANK / WORLD_SIZE / LOCAL_RANK; PartialState reads
    them, joins the process group (NCCL on GPUs, gloo on CPU) and gives the rank, the world
    size, the device, ``wait_for_everyone`` and ``split_between_processes``. One thing it cannot
    infer: on a machine without CUDA it treats a launched process as a lone one unless told
    ``cpu=True``, so that flag is set here when CUDA is absent.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _scan_device(state: Any) -> str:
    """Each process of a multi-GPU launch takes its own GPU; otherwise load_model chooses."""
    if state.num_processes > 1 and state.device.type == "cuda":
        return str(state.device)
    return "auto"


def _owned_chunks(state: Any, n: int, chunk_size: int) -> list[int]:
    """Start indices of the chunks this process scores: a contiguous share of all chunks.

    Chunk boundaries depend only on ``chunk_size``, so which process scores a chunk never
    changes the merged arrays, and a resumed scan may use another number of processes.
    """
    with state.split_between_processes(list(range(0, n, chunk_size))) as mine:
        return list(mine)


#: How a difference is told when the values themselves say little.
_DIFFERENCE = {
    "items": "content hash differs (data changed since the folder was made)",
}


def _mismatch_message(run: RunFolder, old: Mapping, new: Mapping) -> str:
    diffs = []
    for key in new:
        if old.get(key) == new.get(key):
            continue
        if key in _DIFFERENCE and old.get(key) is not None:
            diffs.append(f"  {key}: {_DIFFERENCE[key]}")
        elif old.get(key) is None:
            diffs.append(f"  {key}: folder has no record of it, this scan asks for {new[key]!r}")
        else:
            diffs.append(f"  {key}: folder has {old.get(key)!r}, this scan asks for {new[key]!r}")
    return (
        f"{run.path} was made by a different scan and is not mixed with this one:\n"
        + "\n".join(diffs)
        + "\nUse another --out folder, or delete this one."
    )


def _scan_one(
    run,
    lm,
    scan_name,
    prompts,
    meta,
    batch_size,
    rope,
    attention_weights,
    chunk_size,
    progress,
    owned: Sequence[int],
    processes: int = 1,
    log: Callable[[str], None] = print,
    starts: Sequence[int] | None = None,
) -> None:
    """Score the chunks starting at ``owned`` (this process's share) that are not on disk yet
    (or exactly ``starts``), writing each as it finishes; chunks already on disk are verified
    first and bad ones set aside."""
    from qkscore.scoring import score_prompts

    n = len(prompts)
    if starts is None:
        starts = run.check_chunks(scan_name, owned, log)
    else:
        owned = list(starts)
    identity = run._chunk_identity(meta)
    total = sum(min(chunk_size, n - s) for s in owned)
    done = total - sum(min(chunk_size, n - s) for s in starts)
    label = f"scan {scan_name}" + (f" [{processes} processes]" if processes > 1 else "")
    with _progress(progress, label, total, done) as advance:
        for start in starts:
            block = prompts[start : start + chunk_size]
            result = score_prompts(
                lm,
                block,
                batch_size=batch_size,
                rope=rope,
                attention_weights=attention_weights,
                n_options=meta["n_options"],
                share_prefix=meta.get("share_prefix", False),
                hidden_layers=meta.get("hidden_layers"),
                on_batch=advance,
            )
            arrays = {"scores": result.scores, "baseline": result.baseline}
            if result.attention is not None:
                arrays["attention"] = result.attention
            if result.hidden is not None:
                arrays["hidden"] = result.hidden
            run.write_chunk(scan_name, start, arrays, identity)


class _progress:
    """A rich progress bar with items/s and ETA; in a log (no terminal) one line per update."""

    def __init__(
        self,
        enabled: bool,
        label: str,
        total: int,
        done: int,
        *,
        unit: str = "items",
        extra: Callable[[], str] | None = None,
    ) -> None:
        """``extra`` adds a figure of the caller's after the rate (generation: tokens/s)."""
        self.enabled, self.label, self.total, self.done = enabled, label, total, done
        self.unit, self.extra = unit, extra

    def _extra(self) -> str:
        return f", {self.extra()}" if self.extra is not None else ""

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        if not console.is_terminal:
            return self._log_lines(console)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total, completed=self.done, rate="")

        def advance(n: int) -> None:
            self._bar.advance(task, n)
            speed = self._bar.tasks[0].speed
            rate = f"{speed:.1f} {self.unit}/s" if speed else ""
            self._bar.update(task, rate=rate + self._extra())

        return advance

    def _log_lines(self, console) -> Callable[[int], None]:
        import time

        start, state = time.monotonic(), {"done": self.done, "new": 0, "last": 0.0}

        def advance(n: int) -> None:
            state["done"] += n
            state["new"] += n
            now = time.monotonic() - start
            if now - state["last"] < 10 and state["done"] < self.total:
                return
            state["last"] = now
            rate = state["new"] / now if now > 0 else 0.0
            eta = (self.total - state["done"]) / rate if rate else float("nan")
            console.print(
                f"{self.label}: {state['done']}/{self.total} {self.unit}, "
                f"{rate:.2f} {self.unit}/s{self._extra()}, ETA {eta:.0f} s",
                highlight=False,
            )

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled and hasattr(self, "_bar"):
            self._bar.stop()

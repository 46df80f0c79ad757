"""The scan: score every item of a data spec once into a run folder, resumably.

The folder's layout and how its chunks are verified are :mod:`qkscore.run`'s; this module
reads the items, loads the model, refuses a folder made by another request before the model
loads where the difference can be seen without it, holds the folder's lock, deals chunks
between the processes of a multi-process launch and writes each chunk as it finishes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkscore.data import Item, load_items, parse_spec
from qkscore.data.controls import control_items, get_control
from qkscore.dtypes import dtype_name
from qkscore.io import json_digest, jsonable
from qkscore.progress import Progress
from qkscore.prompts import Prompt, Template, get_template, with_fewshot
from qkscore.run import (
    DEFAULT_CHUNK,
    MAIN,
    ChunkError,
    RunFolder,
    RunFolderError,
    hidden_layer_choice,
    items_sha256,
    scan_identity,
)
from qkscore.schemas import stamp

__all__ = [
    "LOCK_NAME",
    "ScanLockedError",
    "ScanOptions",
    "ScanRequest",
    "process_state",
    "scan",
    "scan_lock",
    "scan_shared",
]


@dataclass(frozen=True)
class ScanRequest:
    """One setting of :func:`scan_shared`: the template, the run folder it is scanned into and
    the scan flags that change its prompt (``chat_template``, ``num_fewshot``) or its pass
    (``rope``), as :func:`scan` takes them."""

    template: str | Template
    out: str | Path
    rope: bool = False
    chat_template: bool | None = None
    num_fewshot: int = 0


@dataclass(frozen=True)
class ScanOptions:
    """What every folder of one :func:`scan_shared` call shares: :func:`scan`'s keyword
    arguments of the same names, with the same defaults."""

    limit: int | None = None
    batch_size: int = 8
    controls: tuple[str, ...] = ()
    attention_weights: bool = False
    dtype: str = "auto"
    device_map: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    share_prefix: bool = True
    hidden_layers: str | Sequence[int] | None = "auto"
    progress: bool = True
    log: Callable[[str], None] = print


@dataclass
class _Target:
    """One run folder of a scan call: its request, and what the scan learns on the way."""

    run: RunFolder
    tmpl: Template
    items: list[Item]
    rope: bool
    shared: bool = False
    old: dict[str, Any] | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


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
    request = ScanRequest(template, out, rope, chat_template, num_fewshot)
    options = ScanOptions(
        limit, batch_size, tuple(controls), attention_weights, dtype, device_map, chunk_size,
        share_prefix, hidden_layers, progress, log,
    )  # fmt: skip
    return scan_shared(model, data, [request], options)[0]


def scan_shared(
    model: Any,
    data: str | Sequence[Item],
    requests: Sequence[ScanRequest],
    options: ScanOptions | None = None,
) -> list[RunFolder]:
    """Scan several settings of one data spec, each into its own run folder, sharing passes.

    Settings whose prompts are token for token the same for every item, scored the same way
    (``rope``, the same shared prefixes), are scored in ONE forward pass that reads the union
    of their (query, key) pairs and baseline candidates
    (:func:`qkscore.scoring.score_prompt_sets`): settings that differ only in the positions
    read (``statement_anchor``, the scheme over the same text) or in the baseline's candidates
    (``baseline_tokens`` when no k-shot answer shows them). Which settings share is decided
    from the rendered token ids, never from the settings' names. Each folder holds what
    :func:`scan` alone writes there, to the bit, and run.json ``shared_pass`` (the pass's id,
    its folders and its wall time) when its main scan shared a pass. Folders resume as
    :func:`scan`'s do: a pass killed midway scores, on the next call, the chunks any of its
    folders lacks. Other arguments are :func:`scan`'s. Returns the folders in request order.
    """
    opt = options or ScanOptions()
    spec = data if isinstance(data, str) else "<items given in Python>"
    items = load_items(data) if isinstance(data, str) else list(data)
    targets = [_target(request, items, opt.limit, spec) for request in requests]
    paths = [t.run.path.resolve() for t in targets]
    if len(set(paths)) != len(paths):
        raise ValueError("two settings of one scan name the same run folder")
    for control in opt.controls:
        get_control(control)  # validate names before any work
    skip_long = isinstance(data, str) and parse_spec(data).get("on_error") == "skip"
    state = process_state()
    with contextlib.ExitStack() as locks:
        for t in targets:
            locks.enter_context(scan_lock(t.run.path, take=state.is_main_process))
        _scan_locked(targets, state, model, spec, skip_long, opt)
    return [t.run for t in targets]


def _target(request: ScanRequest, items: list[Item], limit: int | None, spec: str) -> _Target:
    """A request's template (chat template and shots applied) and the items it scores."""
    chat = request.chat_template
    overrides = {} if chat is None else {"use_chat_template": bool(chat)}
    tmpl = get_template(request.template, **overrides)
    tmpl, items = with_fewshot(tmpl, items, request.num_fewshot)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"data {spec!r} holds no items")
    return _Target(RunFolder(request.out), tmpl, items, request.rope)


def _scan_locked(
    targets: list[_Target], state: Any, model: Any, spec: str, skip_long: bool, opt: ScanOptions
) -> None:
    """:func:`scan_shared` once the items are read and the folders are this process's."""
    from qkscore.models import LoadedModel, load_model

    dtype = _resolved_dtype(model, opt.dtype, _scan_device(state))
    pending = [t for t in targets if not _finished(t, model, dtype, spec, opt)]
    if not pending:
        return
    lm = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, dtype=dtype, device=_scan_device(state), device_map=opt.device_map)
    )
    for t in pending:
        _start(t, lm, spec, skip_long, state, opt)
    state.wait_for_everyone()
    for scan_name in [MAIN, *opt.controls]:
        todo = [t for t in pending if not t.meta["scans"].get(scan_name, {}).get("complete")]
        for group in _passes(todo, scan_name, lm, opt.chunk_size):
            _scan_pass(group, scan_name, lm, state, opt)


def _finished(t: _Target, model: Any, dtype: str, spec: str, opt: ScanOptions) -> bool:
    """Whether ``t``'s folder already holds this request, complete; refuses a folder made by
    another request where the difference shows without the model."""
    from qkscore.extraction import prefix_supported

    t.shared = opt.share_prefix and prefix_supported(t.rope, opt.attention_weights)
    t.old = t.run.meta() if t.run.exists() else None
    # items an earlier scan of this folder skipped as too long are not part of it
    t.skipped = list((t.old or {}).get("skipped") or [])
    if t.skipped:
        gone = {r["id"] for r in t.skipped}
        t.items = [it for it in t.items if it.id not in gone]
    if t.old is None:
        return False
    request = _request_before_loading(
        t.old, model, dtype, spec, t.tmpl, t.items, items_sha256(t.items), t.rope,
        opt.attention_weights, opt.chunk_size, t.shared, opt.hidden_layers,
    )  # fmt: skip
    t.run.refuse_differences(t.run.recorded_identity(t.old), request)
    same_model = "model" in request or t.old["model"].get("name") == str(model)
    wanted = [MAIN, *opt.controls]
    if same_model and t.run.complete(t.old, wanted) and t.run.items_ok():
        opt.log(f"{t.run.path}: nothing to do, scans {', '.join(wanted)} are complete")
        return True
    return False


def _start(t: _Target, lm: Any, spec: str, skip_long: bool, state: Any, opt: ScanOptions) -> None:
    """Render ``t``'s prompts, drop the items too long for the model, and write the folder's
    run.json and items.jsonl (kept from an earlier scan of the same request)."""
    run = t.run
    prompts = [t.tmpl.render(item, lm.tokenizer) for item in t.items]
    too_long = _too_long(t.items, prompts, lm, spec, skip_long)
    if too_long:
        gone = {r["id"] for r in too_long}
        kept = [(it, p) for it, p in zip(t.items, prompts) if it.id not in gone]
        if not kept:
            raise ValueError(f"data {spec!r}: every item is longer than the model's positions")
        t.items, prompts = [it for it, _ in kept], [p for _, p in kept]
        t.skipped += too_long
        if state.is_main_process:
            opt.log(
                f"warning: {len(too_long)} items longer than the model's "
                f"{too_long[0]['max_position_embeddings']} positions are skipped "
                f"(on_error=skip; listed in run.json 'skipped'): "
                + ", ".join(f"{r['id']} ({r['tokens']} tokens)" for r in too_long[:5])
                + (", ..." if len(too_long) > 5 else "")
            )
    t.prompts = prompts
    meta = stamp(
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": lm.describe(),
            "template": t.tmpl.describe(),
            "data": spec,
            "items_sha256": items_sha256(t.items),
            "rope": t.rope,
            "attention_weights": opt.attention_weights,
            "n_items": len(t.items),
            "n_layers": lm.n_layers,
            "n_heads": lm.n_heads,
            "d_model": lm.d_model,
            "n_options": max(p.n_options for p in prompts),
            "hidden_layers": hidden_layer_choice(opt.hidden_layers, lm.n_layers),
            "chunk_size": opt.chunk_size,
            "batch_size": opt.batch_size,
            "share_prefix": t.shared,
            "scans": {},
        }
    )
    if t.skipped:
        meta["skipped"] = t.skipped
    old = t.old
    write_items = old is None
    if old is not None:
        run.refuse_differences(run.recorded_identity(old), scan_identity(meta))
        meta["created"], meta["scans"] = old["created"], old.get("scans", {})
        if old.get("shared_pass"):
            meta["shared_pass"] = old["shared_pass"]
        for name in [MAIN, *opt.controls]:
            if not run.complete(meta, [name]):
                meta["scans"].pop(name, None)  # arrays missing: merge (and score) again
        if old.get("batch_size") != opt.batch_size and state.is_main_process:
            opt.log(
                f"{run.path}: batch size {opt.batch_size}, the folder was started with "
                f"{old.get('batch_size')}: the chunks scored now may differ from an "
                "uninterrupted scan in the last bits (rounding)"
            )
        write_items = not run.items_ok()
        if write_items and state.is_main_process:
            opt.log(f"warning: {run.path / 'items.jsonl'} is damaged; writing it again")
    if state.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        if write_items:
            run.write_items(_describe_items(t.items, prompts))
        run.write_meta(meta)
    t.meta = meta


def _passes(
    targets: Sequence[_Target], scan_name: str, lm: Any, chunk_size: int
) -> list[list[tuple[_Target, list[Prompt]]]]:
    """The folders that share each forward pass of scan ``scan_name``, with their prompts:
    folders share one when their passes agree chunk by chunk (same items, same tokens, same
    prefixes: :func:`qkscore.scoring.pass_signature`) and their rope setting is the same."""
    from qkscore.scoring import pass_signature

    passes: dict[tuple, list[tuple[_Target, list[Prompt]]]] = {}
    for t in targets:
        prompts = t.prompts
        if scan_name != MAIN:
            items = control_items(t.items, scan_name)
            prompts = [t.tmpl.render(it, lm.tokenizer) for it in items]
        chunks = range(0, len(prompts), chunk_size)
        signature = [pass_signature(prompts[s : s + chunk_size], t.shared) for s in chunks]
        key = (t.rope, t.meta["items_sha256"], t.meta["n_options"], tuple(signature))
        passes.setdefault(key, []).append((t, prompts))
    return list(passes.values())


def _scan_pass(
    group: list[tuple[_Target, list[Prompt]]], scan_name: str, lm: Any, state: Any, opt: ScanOptions
) -> None:
    """Score scan ``scan_name`` of every folder in ``group`` in one pass, then merge each
    folder's chunks and mark the scan complete in its run.json."""
    n = len(group[0][1])
    score = functools.partial(_score_chunks, group, lm, scan_name, opt)
    began, began_at = time.perf_counter(), time.time()
    owned = _owned_chunks(state, n, opt.chunk_size)
    score(opt.progress and state.is_main_process, owned, state.num_processes)
    state.wait_for_everyone()  # every process's chunks are on disk before one merges them
    if state.is_main_process:
        for i, (t, _) in enumerate(group):
            try:
                t.run.merge_chunks(scan_name, n, opt.chunk_size, log=opt.log)
            except ChunkError as err:  # a chunk went bad or missing after it was checked
                redo = [err.starts if j == i else [] for j in range(len(group))]
                score(opt.progress, err.starts, redo=redo)
                t.run.merge_chunks(scan_name, n, opt.chunk_size, log=opt.log)
        # this call's wall time, plus the scoring time of chunks earlier (interrupted) calls
        # wrote, so a resumed scan reports what the whole pass cost
        earlier = group[0][0].run.chunk_seconds(scan_name, before=began_at)
        seconds = round(time.perf_counter() - began + earlier, 3)
        folders = [str(t.run.path) for t, _ in group]
        for t, _ in group:
            t.meta["scans"][scan_name] = {
                "complete": True,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "processes": state.num_processes,
                "seconds": seconds,
            }
            if scan_name == MAIN and len(group) > 1:
                t.meta["shared_pass"] = {
                    "id": json_digest({"folders": sorted(folders)}),
                    "folders": folders,
                    "seconds": seconds,
                }
            t.run.write_meta(t.meta)
    state.wait_for_everyone()


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
    """The part of this scan's identity known before the model loads: the run.json fields
    such a scan would write, read by :func:`qkscore.run.scan_identity` (the one list of what
    identifies a scan), less what only the loaded model tells, such as its fingerprint when
    that needs a download or a whole-file hash. ``dtype`` is already resolved."""
    from qkscore.models import LoadedModel, model_fingerprint

    fingerprint = model.fingerprint if isinstance(model, LoadedModel) else None
    fingerprint = fingerprint or model_fingerprint(str(model))
    meta: dict[str, Any] = {
        "model": {"fingerprint": fingerprint, "dtype": dtype},
        "template": tmpl.describe(),
        "data": spec,
        "items_sha256": items_hash,
        "n_items": len(items),
        "n_options": max(len(item.options) for item in items),
        "chunk_size": chunk_size,
        "rope": rope,
        "attention_weights": attention_weights,
        "share_prefix": shared,
    }
    unknown = set() if fingerprint else {"model"}
    # "auto" depends on the layer count: the folder's, if the model is the same (else the model
    # differs and is refused once loaded)
    try:
        meta["hidden_layers"] = hidden_layer_choice(hidden_layers, int(old["n_layers"]))
    except (KeyError, TypeError, ValueError):
        unknown.add("hidden_layers")
    return {k: v for k, v in scan_identity(meta).items() if k not in unknown}


def _resolved_dtype(model: Any, dtype: str, device: str) -> str:
    """The one dtype of this scan, resolved once ("auto" becomes a name): what run.json
    records, what a resumed scan is compared on and what the model is loaded in."""
    from qkscore.models import LoadedModel
    from qkscore.models.loading import resolve_device, resolve_dtype

    if isinstance(model, LoadedModel):
        return dtype_name(model.dtype)
    return dtype_name(resolve_dtype(dtype, resolve_device(device)))


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


def _score_chunks(
    group: list[tuple[_Target, list[Prompt]]],
    lm: Any,
    scan_name: str,
    opt: ScanOptions,
    progress: bool,
    owned: Sequence[int],
    processes: int = 1,
    redo: Sequence[Sequence[int]] | None = None,
) -> None:
    """Score the chunks starting at ``owned`` (this process's share) that some folder of
    ``group`` lacks (or, per folder, exactly ``redo``), in one pass for the whole group,
    writing each folder's chunk as it finishes; chunks already on disk are verified first and
    bad ones set aside."""
    from qkscore.scoring import score_prompt_sets

    n = len(group[0][1])
    if redo is None:
        redo = [t.run.check_chunks(scan_name, owned, opt.log) for t, _ in group]
    starts = sorted(set().union(*redo))
    first = group[0][0]
    identities = [t.run.chunk_identity(t.meta) for t, _ in group]
    total = sum(min(opt.chunk_size, n - s) for s in owned)
    done = total - sum(min(opt.chunk_size, n - s) for s in starts)
    label = f"scan {scan_name}" + (f" [{processes} processes]" if processes > 1 else "")
    with Progress(progress, label, total, done) as advance:
        for start in starts:
            chunk_began = time.perf_counter()
            results = score_prompt_sets(
                lm,
                [prompts[start : start + opt.chunk_size] for _, prompts in group],
                batch_size=opt.batch_size,
                rope=first.rope,
                attention_weights=opt.attention_weights,
                n_options=first.meta["n_options"],
                share_prefix=first.meta.get("share_prefix", False),
                hidden_layers=first.meta.get("hidden_layers"),
                on_batch=advance,
            )
            seconds = round(time.perf_counter() - chunk_began, 3)
            for (t, _), result, wanted, identity in zip(group, results, redo, identities):
                if start in wanted:
                    t.run.write_chunk(scan_name, start, _chunk_arrays(result), identity, seconds)


def _chunk_arrays(result: Any) -> dict[str, Any]:
    """A scored chunk's arrays by the names a run folder keeps them under."""
    arrays = {"scores": result.scores, "baseline": result.baseline}
    if result.attention is not None:
        arrays["attention"] = result.attention
    if result.hidden is not None:
        arrays["hidden"] = result.hidden
    return arrays


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
            "meta": jsonable(item.meta),
            "positions": [
                {"pairs": part.pairs, "pair_options": part.pair_options, **part.positions}
                for part in prompt.parts
            ],
        }

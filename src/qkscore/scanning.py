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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from qkscore.data import Item, load_items, parse_spec
from qkscore.data.controls import control_items, get_control
from qkscore.dtypes import dtype_name
from qkscore.io import jsonable
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

__all__ = ["LOCK_NAME", "ScanLockedError", "process_state", "scan", "scan_lock"]


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
    dtype = _resolved_dtype(model, dtype, _scan_device(state))
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
        run.refuse_differences(run.recorded_identity(old), request)
        same_model = "model" in request or old["model"].get("name") == str(model)
        if same_model and run.complete(old, wanted) and run.items_ok():
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
        run.refuse_differences(run.recorded_identity(old), scan_identity(meta))
        meta["created"], meta["scans"] = old["created"], old.get("scans", {})
        for name in wanted:
            if not run.complete(meta, [name]):
                meta["scans"].pop(name, None)  # arrays missing: merge (and score) again
        if old.get("batch_size") != batch_size and state.is_main_process:
            log(
                f"{run.path}: batch size {batch_size}, the folder was started with "
                f"{old.get('batch_size')}: the chunks scored now may differ from an "
                "uninterrupted scan in the last bits (rounding)"
            )
        write_items = not run.items_ok()
        if write_items and state.is_main_process:
            log(f"warning: {run.path / 'items.jsonl'} is damaged; writing it again")
    if state.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        if write_items:
            run.write_items(_describe_items(items, prompts))
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
    identity = run.chunk_identity(meta)
    total = sum(min(chunk_size, n - s) for s in owned)
    done = total - sum(min(chunk_size, n - s) for s in starts)
    label = f"scan {scan_name}" + (f" [{processes} processes]" if processes > 1 else "")
    with Progress(progress, label, total, done) as advance:
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

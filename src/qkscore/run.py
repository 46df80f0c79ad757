"""Run folders: scan items once, write results in chunks as they come, resume after a crash.

A run folder holds everything later steps need, so calibration, evaluation and reports never
touch the model again::

    run.json            provenance: model (name, fingerprint, source, dtype), template, data spec,
                        rope, package version, time, and the state of each scan
    items.jsonl         id, label, answer index, options, meta, the prompt's token positions
    scores.npy          float32 [items, layers, heads, options] (the main scan)
    baseline.npy        float32 [items, options] the model's log-probability of each option
    attention.npy       float32 [items, layers, heads, options] (only with attention weights)
    hidden.npy          float16 [items, hidden layers, options, d_model]: the residual stream at
                        each option's query position after the layers in run.json
                        ``hidden_layers`` (the hidden-state probe's input)
    controls/NAME/...   the same arrays for a control scan (context-ablated, context-swapped)
    chunks/SCAN/*.npz   results as they come; merged into the arrays when a scan completes

Chunk boundaries depend only on the item order and ``chunk_size``, so a scan killed at any
moment and started again forms the same batches and ends with exactly the same scores.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore._version import __version__
from qkscore.data import Item, load_items
from qkscore.prompts import Prompt, Template, get_template, with_fewshot

MAIN = "main"
CONTROLS = ("context-ablated", "context-swapped")
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


def control_items(items: Sequence[Item], control: str) -> list[Item]:
    """The shortcut controls: the same statements with the context removed or swapped.

    A head that reasons from the context falls to chance on these; one that reads the statement
    alone does not. Swapping rotates contexts by half the set, so no item keeps its own.
    """
    if control == "context-ablated":
        return [dataclasses.replace(it, context="") for it in items]
    if control == "context-swapped":
        n = len(items)
        if n < 2:
            raise ValueError("context-swapped needs at least two items")
        shift = max(1, n // 2)
        return [
            dataclasses.replace(it, context=items[(i + shift) % n].context)
            for i, it in enumerate(items)
        ]
    raise ValueError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")


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
        return json.loads(self.meta_path.read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json(self.meta_path, meta)

    def items(self) -> list[dict[str, Any]]:
        with open(self.path / "items.jsonl") as fh:
            return [json.loads(line) for line in fh if line.strip()]

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
        path = self.array_path(scan, name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: scan {scan!r} has no {name!r} yet")
        return np.load(path, mmap_mode="r" if mmap else None)

    def scans(self) -> list[str]:
        return [s for s in (MAIN, *CONTROLS) if self.has(s)]

    def chunk_dir(self, scan: str) -> Path:
        return self.path / "chunks" / scan

    def chunk_path(self, scan: str, start: int) -> Path:
        return self.chunk_dir(scan) / f"chunk-{start:08d}.npz"

    def write_chunk(self, scan: str, start: int, arrays: dict[str, np.ndarray]) -> None:
        _atomic_write_bytes(
            self.chunk_path(scan, start), lambda fh: np.savez(fh, **arrays), suffix=".npz"
        )

    def merge_chunks(self, scan: str, n_items: int, chunk_size: int) -> None:
        """Concatenate a finished scan's chunks in item order into its arrays."""
        starts = range(0, n_items, chunk_size)
        parts: dict[str, list[np.ndarray]] = {}
        for start in starts:
            with np.load(self.chunk_path(scan, start)) as z:
                for key in z.files:
                    parts.setdefault(key, []).append(z[key])
        for key, blocks in parts.items():
            save_array(self.array_path(scan, key), np.concatenate(blocks))


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


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What must agree for two scans to share one folder."""
    return {
        "model": meta["model"].get("fingerprint") or meta["model"].get("name"),
        "template": meta["template"],
        "data": meta["data"],
        "rope": meta["rope"],
        "hidden_layers": meta.get("hidden_layers", []),
        "dtype": meta["model"].get("dtype"),
        "n_items": meta["n_items"],
        "chunk_size": meta["chunk_size"],
    }


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
    """
    from qkscore.extract import prefix_supported
    from qkscore.models import LoadedModel, load_model

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
        control_items(items[:2], control)  # validate names before any work
    wanted = [MAIN, *controls]
    if run.exists():
        old = run.meta()
        _check_same_request(run, old, spec, tmpl, rope, len(items), chunk_size, model)
        if all(old["scans"].get(s, {}).get("complete") for s in wanted):
            log(f"{run.path}: nothing to do, scans {', '.join(wanted)} are complete")
            return run
    shard = Shard.from_env()
    lm = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, dtype=dtype, device=shard.device(), device_map=device_map)
    )
    prompts = [tmpl.render(item, lm.tokenizer) for item in items]
    meta = {
        "qkscore_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": lm.describe(),
        "template": tmpl.describe(),
        "data": spec,
        "rope": rope,
        "attention_weights": attention_weights,
        "n_items": len(items),
        "n_layers": lm.n_layers,
        "n_heads": lm.n_heads,
        "n_options": max(p.n_options for p in prompts),
        "hidden_layers": hidden_layer_choice(hidden_layers, lm.n_layers),
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "share_prefix": share_prefix and prefix_supported(rope, attention_weights),
        "scans": {},
    }
    if run.exists():
        old = run.meta()
        if _identity(old) != _identity(meta):
            raise RunMismatchError(_mismatch_message(run, _identity(old), _identity(meta)))
        meta["created"], meta["scans"] = old["created"], old.get("scans", {})
    elif shard.rank == 0:
        run.path.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(
            run.path / "items.jsonl",
            lambda fh: fh.writelines(
                (json.dumps(r) + "\n").encode() for r in _describe_items(items, prompts)
            ),
        )
    if shard.rank == 0:
        run.write_meta(meta)
    shard.barrier()
    for scan_name in wanted:
        if meta["scans"].get(scan_name, {}).get("complete"):
            continue
        scan_prompts = prompts
        if scan_name != MAIN:
            scan_prompts = [tmpl.render(it, lm.tokenizer) for it in control_items(items, scan_name)]
        _scan_one(
            run,
            lm,
            scan_name,
            scan_prompts,
            meta,
            batch_size,
            rope,
            attention_weights,
            chunk_size,
            progress and shard.rank == 0,
            shard,
        )
        shard.barrier()  # every shard's chunks are on disk before one process merges them
        if shard.rank == 0:
            run.merge_chunks(scan_name, len(items), chunk_size)
            meta["scans"][scan_name] = {
                "complete": True,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "processes": shard.world,
            }
            run.write_meta(meta)
        shard.barrier()
    return run


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of a scan launched over several processes.

    ``accelerate launch`` and ``torchrun`` set RANK / WORLD_SIZE / LOCAL_RANK; process r then
    scores chunks r, r + w, r + 2w, ... into the shared run folder, so each shard resumes on
    its own, and rank 0 merges all chunks in item order once every process reached the barrier.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        shard = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if shard.device().startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
        return shard

    def device(self) -> str:
        import torch

        if self.world > 1 and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return "auto"

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _check_same_request(run, old, spec, tmpl, rope, n_items, chunk_size, model) -> None:
    """Cheap refusal before loading a model: data, template and settings must match."""
    from qkscore.models import LoadedModel

    name = model.name if isinstance(model, LoadedModel) else str(model)
    mine = {
        "data": spec,
        "template": tmpl.describe(),
        "rope": rope,
        "n_items": n_items,
        "chunk_size": chunk_size,
        "model": name,
    }
    theirs = {k: old.get(k) for k in mine}
    theirs["template"] = old.get("template")
    theirs["model"] = old["model"].get("name")
    if isinstance(model, LoadedModel):
        mine["model"], theirs["model"] = model.fingerprint, old["model"].get("fingerprint")
    if mine != theirs:
        raise RunMismatchError(_mismatch_message(run, theirs, mine))


def _mismatch_message(run: RunFolder, old: dict, new: dict) -> str:
    diffs = [
        f"  {k}: folder has {old.get(k)!r}, this scan asks for {new.get(k)!r}"
        for k in new
        if old.get(k) != new.get(k)
    ]
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
    shard: Shard | None = None,
) -> None:
    """Score this process's chunks that are not on disk yet, writing each as it finishes."""
    from qkscore.scoring import score_prompts

    n = len(prompts)
    shard = shard or Shard()
    owned = [s for s in range(0, n, chunk_size) if shard.owns(s // chunk_size)]
    starts = [s for s in owned if not run.chunk_path(scan_name, s).exists()]
    total = sum(min(chunk_size, n - s) for s in owned)
    done = total - sum(min(chunk_size, n - s) for s in starts)
    label = f"scan {scan_name}" + (
        f" [shard {shard.rank}/{shard.world}]" if shard.world > 1 else ""
    )
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
            run.write_chunk(scan_name, start, arrays)


class _progress:
    """A rich progress bar with items/s and ETA; in a log (no terminal) one line per update."""

    def __init__(self, enabled: bool, label: str, total: int, done: int) -> None:
        self.enabled, self.label, self.total, self.done = enabled, label, total, done

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
            self._bar.update(task, rate=f"{speed:.1f} items/s" if speed else "")

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
                f"{self.label}: {state['done']}/{self.total} items, "
                f"{rate:.2f} items/s, ETA {eta:.0f} s",
                highlight=False,
            )

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled and hasattr(self, "_bar"):
            self._bar.stop()

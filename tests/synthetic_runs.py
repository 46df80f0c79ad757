"""Run folders built without a model: planted heads, for exact control in fast tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.io import save_array, write_json
from qkscore.prompts import get_template
from qkscore.run import MAIN, RunFolder

N_LAYERS, N_HEADS = 4, 3
SIGNAL = (2, 1)  # planted anti-aligned head
SHORTCUT = (1, 0)  # planted head that keeps its signal without the context


def make_run(
    path: Path,
    *,
    n: int = 600,
    n_options: int = 2,
    shortcut: bool = False,
    controls: bool = True,
    baseline: bool = True,
    metadata: bool = True,
    seed: int = 0,
    texts: Sequence[tuple[str, str]] | None = None,
    ids: Sequence[str] | None = None,
    data: str | None = None,
    items_from: Sequence[Any] | None = None,
) -> Path:
    """A run folder as ``scan`` writes it, with a planted signal head and no model.

    ``texts`` gives each item a ``(context, statement)`` as scan records them (by default the
    records keep no text, as folders made before scans recorded it); ``ids`` and ``data``
    replace the default item ids and data spec; ``items_from``: real items
    (``qkscore.data.Item``) whose context, statement, options and gold the run takes instead."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_options
    rng.shuffle(labels)
    options = ["True", "False"] if n_options == 2 else [f"opt{o}" for o in range(n_options)]
    if items_from is not None:
        n, options = len(items_from), list(items_from[0].options)
        n_options = len(options)
        labels = np.array([it.answer_index for it in items_from])
        texts = [(it.context, it.statement) for it in items_from]
    onehot = np.eye(n_options)[labels]

    def scores(signal: bool, short: bool) -> np.ndarray:
        x = rng.normal(size=(n, N_LAYERS, N_HEADS, n_options)).astype(np.float32)
        if signal:  # anti-aligned: the gold option scores lower
            x[:, SIGNAL[0], SIGNAL[1], :] -= 1.5 * onehot
        if short:  # the shortcut head: 2.5 above the rest for the gold option
            x[:, SHORTCUT[0], SHORTCUT[1], :] += 2.5 * onehot
        return x

    items = []
    for i in range(n):
        meta = {"source": "synthetic"}
        if metadata:
            meta.update(
                {
                    "depth": 1 + i % 3,
                    "distractors": bool(i % 2),
                    "rule": "modus_ponens" if i % 4 else "modus_tollens",
                }
            )
        if items_from is not None:  # real items bring their own depth, rule, logic ...
            meta.update(items_from[i].meta)
        record = {
            "index": i,
            "id": ids[i] if ids is not None else f"syn-{i:05d}",
            "label": options[labels[i]],
            "answer_index": int(labels[i]),
            "options": options,
            "meta": meta,
            "positions": [],
        }
        if texts is not None:
            record["context"], record["statement"] = texts[i]
        items.append(record)
    run = RunFolder(path)
    path.mkdir(parents=True)
    (path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    save_array(run.array_path(MAIN, "scores"), scores(True, shortcut))
    base = (0.8 * onehot + rng.normal(size=(n, n_options))).astype(np.float32)
    if not baseline:
        base[:] = np.nan
    save_array(run.array_path(MAIN, "baseline"), base)
    scans = {MAIN: {"complete": True, "finished": "2025-01-01T00:00:00+00:00"}}
    if controls:
        for name in ("context-ablated", "context-swapped"):
            # the context-reading head loses its signal in both controls; the shortcut head
            # (reading the statement alone) keeps it without context, but here not when swapped
            keep = shortcut and name == "context-ablated"
            save_array(run.array_path(name, "scores"), scores(False, keep))
            save_array(run.array_path(name, "baseline"), base)
            scans[name] = {"complete": True, "finished": "2025-01-01T00:00:00+00:00"}
    write_json(
        run.meta_path,
        {
            "qkscore_version": "0.1.0",
            "created": "2025-01-01T00:00:00+00:00",
            "model": {
                "name": "synthetic-model",
                "fingerprint": "feedc0ffee123456",
                "dtype": "float32",
                "source": {"kind": "test", "note": "planted <b>signal</b> & noise"},
            },
            "template": get_template("answer-statement").describe(),
            "data": data or f"synthetic:n={n}&options={n_options}",
            "rope": False,
            "attention_weights": False,
            "n_items": n,
            "n_layers": N_LAYERS,
            "n_heads": N_HEADS,
            "n_options": n_options,
            "chunk_size": 64,
            "batch_size": 8,
            "scans": scans,
        },
    )
    return path

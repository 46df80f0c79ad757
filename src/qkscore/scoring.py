"""Score rendered prompts in length-bucketed batches and return results in item order.

Templates may split an item into several forward passes (one per candidate answer); this
layer flattens those parts, sorts them by length so each batch pads little, runs extraction,
and scatters every pair's score back to its item and option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qkscore.extract import extract
from qkscore.models.loading import LoadedModel
from qkscore.prompts import Prompt


@dataclass
class ScoredPrompts:
    """float32 arrays in item order: ``scores``/``attention`` [items, layers, heads, options],
    ``baseline`` [items, options] (log-probability of each option's candidate token)."""

    scores: np.ndarray
    baseline: np.ndarray
    attention: np.ndarray | None = None


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """Pad token lists into ``input_ids`` and ``attention_mask`` tensors."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def score_prompts(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 8,
    rope: bool = False,
    attention_weights: bool = False,
    max_layer: int | None = None,
    baseline: bool = True,
    n_options: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ScoredPrompts:
    """Run every prompt part once; ``on_batch(n_items_finished)`` drives a progress bar.

    ``max_layer`` stops each pass after that layer (layers above it come back NaN) and implies
    ``baseline=False``, since the model's own answer needs the whole pass.
    """
    n_items = len(prompts)
    n_opt = n_options or max(p.n_options for p in prompts)
    n_layers = lm.n_layers
    scores = np.full((n_items, n_layers, lm.n_heads, n_opt), np.nan, dtype=np.float32)
    attention = np.full_like(scores, np.nan) if attention_weights else None
    base = np.full((n_items, n_opt), np.nan, dtype=np.float32)
    want_baseline = baseline and max_layer is None
    parts = [(i, part) for i, p in enumerate(prompts) for part in p.parts]
    order = sorted(range(len(parts)), key=lambda j: len(parts[j][1].input_ids))
    remaining = [len(p.parts) for p in prompts]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer is not None else 0
    for start in range(0, len(order), batch_size):
        batch = [parts[j] for j in order[start : start + batch_size]]
        ids, mask = pad_batch([part.input_ids for _, part in batch], pad_id or 0)
        with_cands = want_baseline and any(part.candidate_ids for _, part in batch)
        cand = None
        if with_cands:
            cand = [list(part.candidate_ids) or [0] * n_opt for _, part in batch]
            cand = [c + [0] * (n_opt - len(c)) for c in cand]
        out = extract(
            lm,
            ids,
            mask,
            [part.pairs for _, part in batch],
            rope=rope,
            logit_positions=[part.logit_pos for _, part in batch] if with_cands else None,
            candidate_ids=cand,
            attention_weights=attention_weights,
            max_layer=max_layer,
        )
        depth = out.scores.shape[1]
        for row, (item, part) in enumerate(batch):
            for p, option in enumerate(part.pair_options):
                scores[item, :depth, :, option] = out.scores[row, :, :, p]
                if attention is not None:
                    attention[item, :depth, :, option] = out.attention[row, :, :, p]
            if with_cands and part.candidate_ids:
                k = len(part.candidate_ids)
                base[item, :k] = out.candidate_logprobs[row, :k]
        if on_batch is not None:
            finished = 0
            for item, _ in batch:
                remaining[item] -= 1
                finished += remaining[item] == 0
            if finished:
                on_batch(finished)
    return ScoredPrompts(scores=scores, baseline=base, attention=attention)

"""The solution-level pass: every head's q.k between a solution's end and its problem's end,
and the model's confidence in the solution's tokens, from one forward pass per chain.

The prompt is ``{problem}\\n\\nSolution:\\n{chain}`` with no chat template (the native
verifier's prompt, Tulchinskii et al. 2026): the query sits at the solution's last token and
the key at the problem's last token. Logit confidence is read over the solution's tokens from
the same pass: mean and minimum token log-probability, mean entropy, and self-certainty (mean
KL divergence of the uniform distribution from the token distribution, Kang et al. 2025), and
per step the mean log-probability of the step's own tokens (the step-level logit confidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CONFIDENCE", "SolutionScores", "score_solutions", "solution_prompt", "step_spans"]

#: Logit-confidence scorers, each oriented so that higher means more confident.
CONFIDENCE = ("logprob_mean", "logprob_min", "neg_entropy", "self_certainty")


def solution_prompt(problem_text: str, chain: str) -> tuple[str, int, int]:
    """The prompt, the character where the problem ends and where the solution starts."""
    head = f"{problem_text}\n\nSolution:\n"
    return head + chain.strip(), len(problem_text), len(head)


@dataclass
class SolutionScores:
    """``qk`` float32 ``[chains, layers, heads]`` (NaN for an empty chain), the logit
    confidence of each chain (``CONFIDENCE`` names -> float arrays) and, when steps were given,
    the mean token log-probability of each step (NaN for a step not found in the text)."""

    qk: np.ndarray
    confidence: dict[str, np.ndarray]
    step_logprob: list[list[float]] = field(default_factory=list)


def step_spans(chain: str, steps: Sequence[str], offset: int) -> list[tuple[int, int] | None]:
    """Character span of each step in the prompt: found in order in the stripped chain text,
    which starts at ``offset``; None for a step whose text the chain does not hold as such
    (e.g. markdown removed from it)."""
    text, pos, out = chain.strip(), 0, []
    for step in steps:
        j = text.find(step, pos)
        if j < 0:
            out.append(None)
            continue
        out.append((offset + j, offset + j + len(step)))
        pos = j + len(step)
    return out


def _step_means(
    logprob: np.ndarray, offsets: Sequence[tuple[int, int]], start: int, spans
) -> list[float]:
    """Mean log-probability of the tokens (rows from token ``start`` on) overlapping each span."""
    out = []
    for span in spans:
        rows = [] if span is None else [
            p - start
            for p in range(start, start + len(logprob))
            if offsets[p][0] < span[1] and offsets[p][1] > span[0]
        ]  # fmt: skip
        out.append(float(logprob[rows].mean()) if rows else float("nan"))
    return out


def _positions(tokenizer: Any, prompt: str, problem_end: int, solution_start: int):
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    real = [i for i, (s, e) in enumerate(offsets) if e > s]
    key = max(i for i in real if offsets[i][0] < problem_end)
    start = min((i for i in real if offsets[i][0] >= solution_start), default=None)
    return ids, key, start, real[-1], offsets


def score_solutions(
    lm: Any,
    problem_texts: Sequence[str],
    chains: Sequence[str],
    *,
    rope: bool = False,
    batch_size: int = 4,
    steps: Sequence[Sequence[str]] | None = None,
) -> SolutionScores:
    """One pass per chain (batched, right-padded) for every head's q.k and logit confidence;
    with ``steps`` (each chain's steps) also each step's mean token log-probability."""
    import torch

    from qkscore.extraction import extract, iter_batches

    n = len(chains)
    qk = np.full((n, lm.n_layers, lm.n_heads), np.nan, dtype=np.float32)
    conf = {name: np.full(n, np.nan) for name in CONFIDENCE}
    per_step = [[float("nan")] * len(s) for s in steps] if steps is not None else []
    rows = []
    spans: dict[int, tuple] = {}
    for i, (problem, chain) in enumerate(zip(problem_texts, chains)):
        if not chain.strip():
            continue  # nothing to score: stays NaN
        prompt, problem_end, solution_start = solution_prompt(problem, chain)
        ids, key, start, last, offsets = _positions(
            lm.tokenizer, prompt, problem_end, solution_start
        )
        if start is not None:
            rows.append((i, ids, key, start, last))
            if steps is not None:
                spans[i] = (offsets, step_spans(chain, steps[i], solution_start))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for batch in iter_batches(rows, batch_size):
        width = max(len(r[1]) for r in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (_, ids, *_rest) in enumerate(batch):
            input_ids[j, : len(ids)] = torch.tensor(ids)
            mask[j, : len(ids)] = 1
        out = extract(
            lm,
            input_ids,
            mask,
            [[(last, key)] for _, _, key, _, last in batch],
            rope=rope,
            token_spans=[(start, last + 1) for _, _, _, start, last in batch],
        )
        for j, (i, *_rest) in enumerate(batch):
            qk[i] = out.scores[j, :, :, 0]
            stats = out.token_stats[j].astype(np.float64)
            conf["logprob_mean"][i] = stats[:, 0].mean()
            conf["logprob_min"][i] = stats[:, 0].min()
            conf["neg_entropy"][i] = -stats[:, 1].mean()
            conf["self_certainty"][i] = stats[:, 2].mean()
            if i in spans:
                per_step[i] = _step_means(stats[:, 0], spans[i][0], batch[j][3], spans[i][1])
    return SolutionScores(qk, conf, per_step)

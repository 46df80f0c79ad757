"""Score rendered prompts in length-bucketed batches and return results in item order.

Templates may split an item into several forward passes (one per candidate answer); this
layer flattens those parts, sorts them by length so each batch pads little, runs extraction,
and scatters every pair's score back to its item and option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qkscore.data.items import Item
from qkscore.extraction import (
    encode_prefix,
    encode_prefixes,
    extract,
    pad_batch,
    prefix_supported,
)
from qkscore.models.loading import LoadedModel
from qkscore.prompts import Prompt, PromptPart, Template


@dataclass
class ScoredPrompts:
    """float32 arrays in item order: ``scores``/``attention`` [items, layers, heads, options],
    ``baseline`` [items, options] (log-probability of each option's candidate token);
    ``hidden`` float16 [items, hidden layers, options, d_model] at each option's query."""

    scores: np.ndarray
    baseline: np.ndarray
    attention: np.ndarray | None = None
    hidden: np.ndarray | None = None


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
    share_prefix: bool = False,
    hidden_layers: Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    owners: Sequence[int] | None = None,
    one_pass: bool = False,
    max_padding: float | None = None,
) -> ScoredPrompts:
    """Run every prompt part once; ``on_batch(n_items_finished)`` drives a progress bar.

    ``max_layer`` stops each pass after that layer (layers above it come back NaN) and implies
    ``baseline=False``, since the model's own answer needs the whole pass. ``share_prefix``
    runs the leading tokens that several parts share (one context, many statements) once and
    the rest of each part on their cache (pre-rotary scores only; see ``prefix_groups``).

    ``owners`` (one per prompt: the request it belongs to) keeps prefix groups within an
    owner, so each owner's prompts are computed as they would be alone. ``one_pass`` runs the
    parts without a shared prefix as one padded batch (``batch_size`` ignored) and the parts of
    every prefix group together, their prefixes in one padded pass (``encode_prefixes``).
    With ``max_padding`` the parts without a prefix are cut, shortest first, into passes whose
    padded tokens stay within that many times their real tokens (where compute grows with
    padding, as on a CPU, a padded pass of mixed lengths can cost more than its parts alone).
    """
    if share_prefix and not prefix_supported(rope, attention_weights):
        raise ValueError("share_prefix supports pre-rotary scores only (rope=False)")
    n_items = len(prompts)
    n_opt = n_options or max(p.n_options for p in prompts)
    scores = np.full((n_items, lm.n_layers, lm.n_heads, n_opt), np.nan, dtype=np.float32)
    attention = np.full_like(scores, np.nan) if attention_weights else None
    base = np.full((n_items, n_opt), np.nan, dtype=np.float32)
    hidden = None
    if hidden_layers:
        shape = (n_items, len(hidden_layers), n_opt, lm.d_model)
        hidden = np.full(shape, np.nan, dtype=np.float16)
    want_baseline = baseline and max_layer is None
    parts = [(i, part) for i, p in enumerate(prompts) for part in p.parts]
    remaining = [len(p.parts) for p in prompts]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer is not None else 0
    groups: list[tuple[list[int], int]] = []  # (part indices, shared prefix length)
    alone = list(range(len(parts)))
    if share_prefix:
        part_owners = None if owners is None else [owners[i] for i, _ in parts]
        groups = [g for g in _owned_prefix_groups([p for _, p in parts], part_owners) if g[1]]
        grouped = {j for members, _ in groups for j in members}
        alone = [j for j in alone if j not in grouped]
    alone.sort(key=lambda j: len(parts[j][1].input_ids))
    if one_pass:
        batch_size = max(1, len(parts))
    # runs: (part indices, the prefix each continues, prefixes as (first part, length))
    runs: list[tuple[list[int], list[int], list[tuple[int, int]]]] = []
    if one_pass and len(groups) > 1:
        runs.append(
            (
                [j for members, _ in groups for j in members],
                [g for g, (members, _) in enumerate(groups) for _ in members],
                [(members[0], length) for members, length in groups],
            )
        )
    else:
        runs += [(m, [0] * len(m), [(m[0], length)]) for m, length in groups]
    if one_pass:
        lengths = [len(parts[j][1].input_ids) for j in alone]
        runs += [(alone[a:b], [], []) for a, b in _padding_cuts(lengths, max_padding)]
    else:
        runs += [(alone[s : s + batch_size], [], []) for s in range(0, len(alone), batch_size)]
    for members, rows, prefixes in runs:
        seqs = [parts[first][1].input_ids[:length] for first, length in prefixes]
        shared = [prefixes[r][1] for r in rows] if prefixes else [0] * len(members)
        prefix = None
        if len(seqs) == 1:
            prefix = encode_prefix(lm, seqs[0], max_layer)
        elif seqs:
            prefix = encode_prefixes(lm, seqs, max_layer, pad_id or 0)
        for start in range(0, len(members), batch_size):
            span = slice(start, start + batch_size)
            batch = [parts[j] for j in members[span]]
            out, with_cands = _run_batch(
                lm, batch, shared[span], prefix, rows[span] if len(seqs) > 1 else None, pad_id,
                n_opt, want_baseline, rope=rope, attention_weights=attention_weights,
                max_layer=max_layer, hidden_layers=hidden_layers,
            )  # fmt: skip
            _scatter(out, batch, with_cands, scores, attention, base, hidden)
            if on_batch is not None:
                finished = 0
                for item, _ in batch:
                    remaining[item] -= 1
                    finished += remaining[item] == 0
                if finished:
                    on_batch(finished)
    return ScoredPrompts(scores=scores, baseline=base, attention=attention, hidden=hidden)


def score_prompt_sets(
    lm: LoadedModel,
    prompt_sets: Sequence[Sequence[Prompt]],
    *,
    n_options: int | None = None,
    **options,
) -> list[ScoredPrompts]:
    """Score several settings' prompts of the same items in one pass, one result per set.

    ``prompt_sets[s][i]`` is item ``i`` under setting ``s``. The sets must hold the same tokens
    and logit positions part by part (:func:`pass_signature`); they may differ in the pairs
    they read (another statement anchor, another scheme over the same text) and in their
    baseline candidates (letters or words). Each part runs once with the union of the sets'
    pairs and candidates, and each set gets what :func:`score_prompts` gives it alone, to the
    bit, when the sets also agree on their prefix groups (``pass_signature`` with
    ``share_prefix``): same batches, same prefixes, and every value read from the same
    activations. ``options`` go to :func:`score_prompts`.
    """
    n_opt = n_options or max(p.n_options for prompts in prompt_sets for p in prompts)
    if len(prompt_sets) == 1:
        return [score_prompts(lm, prompt_sets[0], n_options=n_opt, **options)]
    if len({len(prompts) for prompts in prompt_sets}) != 1:
        raise ValueError("prompt sets that share a pass must hold the same items")
    merged = [_merged_prompt(same, n_opt) for same in zip(*prompt_sets)]
    out = score_prompts(lm, merged, n_options=n_opt * len(prompt_sets), **options)
    return [_option_slots(out, slice(s * n_opt, (s + 1) * n_opt)) for s in range(len(prompt_sets))]


def pass_signature(prompts: Sequence[Prompt], share_prefix: bool = False) -> tuple:
    """What prompt sets must agree on to share one pass (:func:`score_prompt_sets`): every
    part's tokens and logit position, and with ``share_prefix`` how the parts group into
    shared prefixes (which depends on the positions each set reads). Hashable."""
    parts = [part for p in prompts for part in p.parts]
    tokens = tuple((tuple(part.input_ids), part.logit_pos) for part in parts)
    plan = tuple((tuple(m), n) for m, n in prefix_groups(parts)) if share_prefix else ()
    return tuple(len(p.parts) for p in prompts), tokens, plan


def _merged_prompt(same: Sequence[Prompt], n_opt: int) -> Prompt:
    """One item's prompts under several settings as one prompt: setting ``s``'s option ``o``
    in slot ``s * n_opt + o``."""
    first = same[0]
    if len({pass_signature([p]) for p in same}) != 1:
        raise ValueError(f"item {first.item_id!r}: the settings' prompts differ in their tokens")
    parts = [
        dataclasses.replace(
            part,
            pairs=[pair for p in alike for pair in p.pairs],
            pair_options=[s * n_opt + o for s, p in enumerate(alike) for o in p.pair_options],
            candidate_ids=[c for p in alike for c in p.candidate_ids],
            candidate_options=[
                s * n_opt + o
                for s, p in enumerate(alike)
                for o in p.candidate_options or range(len(p.candidate_ids))
            ],
        )
        for part, alike in zip(first.parts, zip(*(p.parts for p in same)))
    ]
    return dataclasses.replace(first, n_options=n_opt * len(same), parts=parts)


def _option_slots(out: ScoredPrompts, slots: slice) -> ScoredPrompts:
    """The option slots ``slots`` of a shared pass's arrays, as one setting's result."""

    def take(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else np.ascontiguousarray(array[..., slots])

    hidden = None
    if out.hidden is not None:
        hidden = np.ascontiguousarray(out.hidden[:, :, slots])
    return ScoredPrompts(
        scores=take(out.scores),
        baseline=take(out.baseline),
        attention=take(out.attention),
        hidden=hidden,
    )


def _padding_cuts(lengths: Sequence[int], max_padding: float | None) -> list[tuple[int, int]]:
    """Spans of ``lengths`` (ascending) whose padded size, rows x longest, stays within
    ``max_padding`` x their sum (one span for all when None)."""
    if not lengths:
        return []
    if max_padding is None:
        return [(0, len(lengths))]
    cuts, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * n > max_padding * (total + n):
            cuts.append((start, i))
            start, total = i, 0
        total += n
    return [*cuts, (start, len(lengths))]


def _owned_prefix_groups(
    parts: Sequence[PromptPart], owners: Sequence[int] | None
) -> list[tuple[list[int], int]]:
    """``prefix_groups`` within each owner's parts (all parts when ``owners`` is None)."""
    if owners is None:
        return prefix_groups(parts)
    by_owner: dict[int, list[int]] = {}
    for j, owner in enumerate(owners):
        by_owner.setdefault(owner, []).append(j)
    out: list[tuple[list[int], int]] = []
    for index in by_owner.values():
        found = prefix_groups([parts[j] for j in index])
        out += [([index[i] for i in members], length) for members, length in found]
    return out


def score_pairs(
    lm: LoadedModel,
    template: Template,
    pairs: Sequence[tuple[str | None, str]],
    *,
    max_tokens: int | None = None,
    **options,
) -> ScoredPrompts:
    """Score (context, statement) pairs as True/False items rendered with ``template``: the
    prompt a judge reads. ``Judge`` judges with it and step calibration measures with it, so a
    profile calibrated on chain steps reads the very prompts and positions it is served with.
    ``max_tokens`` refuses a prompt longer than the model takes; ``options`` go to
    :func:`score_prompts`."""
    items = [
        Item(id=f"q{i}", context=context or "", statement=statement, label="True")
        for i, (context, statement) in enumerate(pairs)
    ]
    prompts = [template.render(item, lm.tokenizer) for item in items]
    longest = max(len(part.input_ids) for p in prompts for part in p.parts)
    if max_tokens and longest > max_tokens:
        raise ValueError(
            f"the prompt is {longest} tokens long; model {lm.name!r} takes at most "
            f"{max_tokens}: shorten the context"
        )
    return score_prompts(lm, prompts, n_options=2, **options)


def _scatter(out, batch, with_cands: bool, scores, attention, base, hidden=None) -> None:
    """Copy each row's pair scores to its item and option (and its candidates' log-probs)."""
    depth = out.scores.shape[1]
    for row, (item, part) in enumerate(batch):
        for p, option in enumerate(part.pair_options):
            scores[item, :depth, :, option] = out.scores[row, :, :, p]
            if attention is not None:
                attention[item, :depth, :, option] = out.attention[row, :, :, p]
            if hidden is not None:
                hidden[item, :, option] = out.hidden[row, :, p]
        if with_cands and part.candidate_ids:
            k = len(part.candidate_ids)
            slots = part.candidate_options or list(range(k))
            base[item, slots] = out.candidate_logprobs[row, :k]


def _run_batch(lm, batch, shared, prefix, prefix_rows, pad_id, n_opt, want_baseline, **kwargs):
    """One extraction over parts that start with ``shared[row]`` tokens of their prefix (0:
    none; ``prefix_rows``: which of several prefixes); positions shift by a row's ``shared``
    since only what follows its prefix is passed."""
    side = "right" if prefix is not None else "left"  # after a prefix, padding leaves no holes
    rest = [part.input_ids[n:] for (_, part), n in zip(batch, shared)]
    ids, mask = pad_batch(rest, pad_id or 0, side)
    with_cands = want_baseline and any(part.candidate_ids for _, part in batch)
    cand = None
    if with_cands:
        cand = [list(part.candidate_ids) or [0] * n_opt for _, part in batch]
        cand = [c + [0] * (n_opt - len(c)) for c in cand]
    out = extract(
        lm,
        ids,
        mask,
        [[(q - n, k - n) for q, k in part.pairs] for (_, part), n in zip(batch, shared)],
        logit_positions=[p.logit_pos - n for (_, p), n in zip(batch, shared)]
        if with_cands
        else None,
        candidate_ids=cand,
        prefix=prefix,
        prefix_rows=prefix_rows,
        **kwargs,
    )
    return out, with_cands


def prefix_groups(
    parts: Sequence[PromptPart], min_tokens: int = 32, min_share: float = 0.5
) -> list[tuple[list[int], int]]:
    """Group parts that start with the same tokens: ``[(part indices, shared length)]``.

    Parts are sorted by their ids, so parts with a common start sit next to each other; a
    part joins the group before it while the group's common start stays at least
    ``min_tokens`` long and ``min_share`` of the part (so a shared instruction alone does not
    glue different contexts into one group). The shared length stops before every position a
    part reads (pairs and logit position), which must lie after the prefix; a part left with
    no worthwhile group comes back alone with shared length 0.
    """
    order = sorted(range(len(parts)), key=lambda j: parts[j].input_ids)
    groups: list[tuple[list[int], int]] = []
    members: list[int] = []
    shared = 0
    for j in order:
        ids = parts[j].input_ids
        if members:
            common = min(shared, _common_start(parts[members[0]].input_ids, ids))
            if common >= min_tokens and common >= min_share * len(ids):
                members.append(j)
                shared = common
                continue
            groups.append((members, shared))
        members, shared = [j], len(ids)
    if members:
        groups.append((members, shared))
    out: list[tuple[list[int], int]] = []
    for m, shared in groups:
        shared = min(shared, *(_first_read(parts[j]) for j in m))
        if len(m) > 1 and shared >= min_tokens:
            out.append((m, shared))
        else:
            out += [([j], 0) for j in m]
    return out


def _common_start(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _first_read(part: PromptPart) -> int:
    """The first position a part reads: the prefix must end before it."""
    return min(min(min(q, k) for q, k in part.pairs), part.logit_pos)

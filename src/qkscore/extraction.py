"""QK-scores of every attention head in one forward pass.

For each prompt a list of (query position, key position) token pairs is given; for every layer
and head the raw, unscaled dot product ``q_h[query_pos] . k_kv(h)[key_pos]`` comes back, where
``kv(h) = h // (n_heads / n_kv_heads)`` under grouped-query attention.

``rope=False`` (the paper authors' computation) reads the vectors that enter the rotary
embedding, after any q/k norm, through forward hooks. ``rope=True`` reads the rotated vectors
attention really compares, through a wrapped attention function registered with transformers'
``AttentionInterface`` (with the matching mask function, so padded batches keep the right mask
format), so the model keeps its fast sdpa kernel. Hooks keep only the needed positions: no
attention matrix is materialised and ``output_attentions`` is never needed.
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qkscore.models.adapters import layer_modules, split_qk
from qkscore.models.loading import LoadedModel

Pair = tuple[int, int]
CAPTURE_SDPA = "qkscore_sdpa"
CAPTURE_EAGER = "qkscore_eager"


@dataclass
class Extraction:
    """What one pass yields. Arrays are float32 numpy.

    ``scores`` [batch, layers, heads, pairs]; ``candidate_logprobs`` [batch, candidates]
    (log-softmax over the vocabulary at each row's logit position); ``attention``
    [batch, layers, heads, pairs] post-softmax weight of the key at the query row; ``hidden``
    [batch, len(hidden_layers), pairs, d_model] float16, the residual stream leaving each
    chosen layer at each pair's query position. Pair slots a row does not use hold NaN.
    ``token_stats`` (with ``token_spans``) is one float32 array per row, ``[tokens, 3]``: for
    each token of the row's span, the log-probability the model gave it, the entropy of the
    distribution it was drawn from, and that distribution's KL divergence from uniform
    (``KL(U || p)``, the self-certainty of Kang et al. 2025).
    """

    scores: np.ndarray
    candidate_logprobs: np.ndarray | None = None
    attention: np.ndarray | None = None
    hidden: np.ndarray | None = None
    token_stats: list[np.ndarray] | None = None


@dataclass
class Prefix:
    """The key/value cache of tokens that every row of a batch starts with (made by
    ``encode_prefix``). Many items share one context (PARARULE-Plus asks 8-10 questions of
    each); its tokens then run once instead of once per item."""

    cache: Any
    length: int
    #: several prefixes (``encode_prefixes``): ``[prefixes, length]`` left-padding mask; None
    #: for one prefix, which every row of a batch continues
    mask: torch.Tensor | None = None


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


def prefix_supported(rope: bool, attention_weights: bool = False) -> bool:
    """Whether a shared prefix's cache gives the scores of whole prompts: only for pre-rotary
    q/k read by hooks; rotated keys and attention weights would need positions shifted by the
    prefix inside the attention capture."""
    return not rope and not attention_weights


def encode_prefix(lm: LoadedModel, ids: Sequence[int], max_layer: int | None = None) -> Prefix:
    """Run shared leading tokens once and keep their cache (batch 1); with ``max_layer`` only
    the layers up to it, all that passes stopping there will read."""
    cache = _run_prefix(lm, torch.as_tensor([list(ids)]), None, max_layer)
    return Prefix(cache, len(ids))


def encode_prefixes(
    lm: LoadedModel, seqs: Sequence[Sequence[int]], max_layer: int | None = None, pad_id: int = 0
) -> Prefix:
    """Several prefixes in one left-padded pass: rows of a later ``extract`` continue the one
    its ``prefix_rows`` names (several contexts, each with its own statements, in one pass)."""
    ids, mask = pad_batch(seqs, pad_id, "left")
    return Prefix(_run_prefix(lm, ids, mask, max_layer), ids.shape[1], mask)


def _run_prefix(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor | None, max_layer):
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    padded = {}
    if mask is not None:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = {"attention_mask": mask.to(lm.device), "position_ids": positions.to(lm.device)}
    with torch.inference_mode(), ExitStack() as stack:
        if max_layer is not None and max_layer < lm.n_layers - 1:
            stack.enter_context(_stop_after(layer_modules(lm.model, lm.adapter)[max_layer]))
        with suppress(_StopForward):
            lm.model.base_model(
                input_ids=ids.to(lm.device),
                use_cache=True,
                **padded,
                **{_cache_argument(lm.model): cache},
            )
    return cache


@functools.cache
def _cache_argument_of(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _cache_argument(model) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (argument and output)."""
    return _cache_argument_of(type(model.base_model).forward)


class _StopForward(Exception):
    """Raised by a hook once the deepest needed layer ran, to skip the rest of the model."""


def qk_scores(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pairs: Sequence[Sequence[Pair]],
    rope: bool = False,
) -> np.ndarray:
    """Raw QK dot products, float32 ``[batch, layers, heads, pairs]``.

    Positions in ``pairs`` index each prompt's own tokens (0 = its first real token), whatever
    the padding side, so the same pairs work for a prompt alone or inside any batch.
    """
    return extract(lm, input_ids, attention_mask, pairs, rope=rope).scores


def extract(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pairs: Sequence[Sequence[Pair]],
    *,
    rope: bool = False,
    logit_positions: Sequence[int] | None = None,
    candidate_ids: Sequence[Sequence[int]] | Sequence[int] | None = None,
    attention_weights: bool = False,
    max_layer: int | None = None,
    prefix: Prefix | None = None,
    prefix_rows: Sequence[int] | None = None,
    hidden_layers: Sequence[int] | None = None,
    token_spans: Sequence[tuple[int, int]] | None = None,
) -> Extraction:
    """One forward pass: QK-scores, and optionally candidate log-probs and attention weights.

    ``logit_positions`` (prompt coordinates, default each prompt's last token) and
    ``candidate_ids`` (one list for all rows, or one per row) give the model-probability
    baseline. Only the final hidden state of those rows meets the LM head, never the whole
    sequence. ``max_layer`` stops the pass after that layer (no logits then).

    With ``prefix`` every row continues the prefix's tokens: ``input_ids`` hold only what
    follows it, padded on the right, and pairs and logit positions count from the first token
    after it (both positions of a pair must lie there). Pre-rotary scores only. A prefix of
    several (``encode_prefixes``) needs ``prefix_rows``: the prefix each row continues.

    ``hidden_layers`` also keeps the residual stream at each pair's query position after those
    layers (the hidden-state probe's input), from the same pass: one more hook per layer.

    ``token_spans`` (per row, ``(start, end)`` in prompt coordinates, ``start >= 1``) asks for
    the logit confidence of those tokens from the same pass (see :class:`Extraction`): how
    sure the model was of a text it is shown, such as a generated solution.
    """
    model = lm.model
    device = lm.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # Lengths and offsets come from the mask on the host (where callers build it), so reading
    # them does not wait on the accelerator before the forward is even queued.
    host_mask = attention_mask.cpu()
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    batch, seq = input_ids.shape
    if len(pairs) != batch:
        raise ValueError(f"pairs has {len(pairs)} rows but input_ids has {batch}")
    host_lengths, host_offsets = host_mask.sum(-1), _pad_offsets(host_mask)
    lengths, offsets = host_lengths.to(device), host_offsets.to(device)
    q_idx, k_idx, valid = _pair_index(pairs, host_lengths.tolist(), host_offsets.tolist(), device)
    if logit_positions is not None:
        _check_logit_positions(logit_positions, host_lengths.tolist())
    want_logits = candidate_ids is not None
    last = lm.n_layers - 1
    stop_at = last if max_layer is None else max_layer
    if not 0 <= stop_at <= last:
        raise ValueError(f"max_layer={max_layer} outside 0..{last}")
    if want_logits and stop_at < last:
        raise ValueError("candidate logits need the full pass; drop max_layer or candidate_ids")
    if token_spans is not None and stop_at < last:
        raise ValueError("token statistics need the full pass; drop max_layer or token_spans")
    if token_spans is not None:
        _check_token_spans(token_spans, host_lengths.tolist())
    hidden_layers = [int(x) for x in hidden_layers or ()]
    for layer_no in hidden_layers:
        if not 0 <= layer_no <= stop_at:
            raise ValueError(f"hidden layer {layer_no} outside the layers run, 0..{stop_at}")

    capture = _Capture(lm, q_idx, k_idx, stop_at + 1, attention_weights)
    past, full_mask = None, attention_mask
    if prefix is not None:
        if not prefix_supported(rope, attention_weights):
            raise ValueError("a shared prefix supports pre-rotary scores only (rope=False)")
        if host_offsets.any():
            # left padding would leave holes between prefix and text, which sliding-window
            # attention counts as positions
            raise ValueError("with a shared prefix, pad the batch on the right")
        past = copy.deepcopy(prefix.cache)
        if prefix.mask is None:
            past.batch_repeat_interleave(batch)
            before = attention_mask.new_ones(batch, prefix.length)
        else:
            if prefix_rows is None or len(prefix_rows) != batch:
                raise ValueError("several prefixes need prefix_rows: one prefix per row")
            rows = torch.as_tensor(list(prefix_rows), dtype=torch.long)
            past.reorder_cache(rows)
            before = prefix.mask[rows].to(attention_mask)
        full_mask = torch.cat([before, attention_mask], 1)
    position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, full_mask.shape[1] - seq :]
    with torch.inference_mode(), ExitStack() as stack:
        if rope or attention_weights:
            _use_capture_attention(model)
            stack.enter_context(capture.attention_capture(rope))
        if not rope:
            stack.enter_context(capture.projection_hooks())
        if hidden_layers:
            stack.enter_context(capture.hidden_hooks(hidden_layers))
        if stop_at < last:
            stack.enter_context(_stop_after(layer_modules(model, lm.adapter)[stop_at]))
        try:
            out = model.base_model(
                input_ids=input_ids,
                attention_mask=full_mask,
                position_ids=position_ids,
                use_cache=past is not None,
                **({_cache_argument(model): past} if past is not None else {}),
            )
        except _StopForward:
            out = None
        logprobs = None
        if want_logits:
            logprobs = _candidate_logprobs(
                lm, out.last_hidden_state, offsets, lengths, logit_positions, candidate_ids
            )
        token_stats = None
        if token_spans is not None:
            token_stats = _token_stats(
                lm, out.last_hidden_state, input_ids, host_offsets.tolist(), token_spans
            )
    unused = ~valid.numpy()[:, None, None, :]
    scores = np.where(unused, np.nan, capture.scores()).astype(np.float32)
    attn = hidden = None
    if attention_weights:
        attn = np.where(unused, np.nan, capture.attention_scores()).astype(np.float32)
    if hidden_layers:
        unused_rows = ~valid.numpy()[:, None, :, None]
        hidden = np.where(unused_rows, np.nan, capture.hidden_states(hidden_layers))
        hidden = hidden.astype(np.float16)
    return Extraction(
        scores=scores,
        candidate_logprobs=logprobs,
        attention=attn,
        hidden=hidden,
        token_stats=token_stats,
    )


def _pad_offsets(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token: the left-padding width (0 for right padding)."""
    return (mask.long().cumsum(-1) == 0).sum(-1)


def _pair_index(
    pairs: Sequence[Sequence[Pair]], lengths: list[int], offsets: list[int], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded-tensor indices ``[batch, max_pairs]`` for queries and keys (on ``device``), and
    a validity mask (on the host)."""
    width = max((len(p) for p in pairs), default=0)
    if width == 0:
        raise ValueError("no (query, key) pairs given")
    q = torch.zeros(len(pairs), width, dtype=torch.long)
    k = torch.zeros(len(pairs), width, dtype=torch.long)
    valid = torch.zeros(len(pairs), width, dtype=torch.bool)
    for row, row_pairs in enumerate(pairs):
        for j, pair in enumerate(row_pairs):
            qp, kp = int(pair[0]), int(pair[1])
            for name, pos in (("query", qp), ("key", kp)):
                if not 0 <= pos < lengths[row]:
                    raise IndexError(
                        f"row {row}, pair {j}: {name} position {pos} is outside the prompt "
                        f"(its {lengths[row]} tokens are positions 0..{lengths[row] - 1})"
                    )
            q[row, j], k[row, j], valid[row, j] = qp + offsets[row], kp + offsets[row], True
    return q.to(device), k.to(device), valid  # validity stays on the host, where it is used


def _check_logit_positions(logit_positions: Sequence[int], lengths: list[int]) -> None:
    """Logit positions are prompt coordinates too: refuse one outside its prompt, which would
    otherwise read a padding slot or another token without complaint."""
    if len(logit_positions) != len(lengths):
        raise ValueError(
            f"logit_positions has {len(logit_positions)} rows but input_ids has {len(lengths)}"
        )
    for row, pos in enumerate(logit_positions):
        if not 0 <= int(pos) < lengths[row]:
            raise IndexError(
                f"row {row}: logit position {int(pos)} is outside the prompt "
                f"(its {lengths[row]} tokens are positions 0..{lengths[row] - 1})"
            )


class _Capture:
    """Collects, per layer, the query and key vectors at the needed positions only."""

    def __init__(self, lm: LoadedModel, q_idx, k_idx, n_layers: int, want_attention: bool):
        self.lm = lm
        self.layout = lm.layout
        self.q_idx, self.k_idx = q_idx, k_idx
        self.rows = torch.arange(q_idx.shape[0], device=q_idx.device)[:, None]
        self.n_layers = n_layers
        self.want_attention = want_attention
        self.q: list[torch.Tensor | None] = [None] * n_layers
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.attn: list[torch.Tensor | None] = [None] * n_layers
        self.hidden: dict[int, torch.Tensor] = {}

    def _take(self, per_token: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``[B, T, heads, D]`` -> ``[B, P, heads, D]`` at the given positions, in the model's
        dtype (``scores`` casts once for all layers: per-layer casts cost a kernel launch each,
        which on a GPU at batch 1 is most of what extraction adds to the pass).

        Under a ``device_map`` a layer may sit on another device: index there, then bring the
        few kept vectors to the device of the inputs.
        """
        if per_token.device == idx.device:
            return per_token[self.rows, idx]
        dev = per_token.device
        return per_token[self.rows.to(dev), idx.to(dev)].to(idx.device)

    @contextmanager
    def projection_hooks(self):
        """Forward hooks on the modules whose output is the pre-rotary q and k."""
        handles, parts = [], _attention_parts(self.lm)[: self.n_layers]
        for layer_no, (_attn, q_mod, k_mod) in enumerate(parts):
            if q_mod is k_mod:
                handles.append(q_mod.register_forward_hook(self._hook(layer_no, "qk")))
            else:
                handles.append(q_mod.register_forward_hook(self._hook(layer_no, "q")))
                handles.append(k_mod.register_forward_hook(self._hook(layer_no, "k")))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, layer_no: int, which: str) -> Callable:
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if "q" in which:
                q = split_qk(self.lm.adapter, self.layout, "q", out)
                self.q[layer_no] = self._take(q, self.q_idx)
            if "k" in which:
                k = split_qk(self.lm.adapter, self.layout, "k", out)
                self.k[layer_no] = self._take(k, self.k_idx)

        return hook

    @contextmanager
    def hidden_hooks(self, layer_numbers: Sequence[int]):
        """Forward hooks on whole decoder layers: their output is the residual stream."""
        layers = layer_modules(self.lm.model, self.lm.adapter)
        handles = []
        for layer_no in layer_numbers:

            def hook(_module, _inputs, output, layer_no=layer_no):
                out = output[0] if isinstance(output, tuple) else output
                self.hidden[layer_no] = self._take(out, self.q_idx)

            handles.append(layers[layer_no].register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def hidden_states(self, layer_numbers: Sequence[int]) -> np.ndarray:
        """``[B, len(layer_numbers), P, d_model]`` float16 (what ``hidden.npy`` stores)."""
        missing = [n for n in layer_numbers if n not in self.hidden]
        if missing:
            raise RuntimeError(f"layer {missing[0]}: hidden-state capture did not run")
        stacked = torch.stack([self.hidden[n] for n in layer_numbers], 1)
        return stacked.to(torch.float16).cpu().numpy()

    @contextmanager
    def attention_capture(self, rope: bool):
        """Attach this capture to every attention module the wrapped attention function sees."""
        modules = [attn for attn, _q, _k in _attention_parts(self.lm)[: self.n_layers]]
        for layer_no, module in enumerate(modules):
            module._qkscore_capture = (self, layer_no, rope)
        try:
            yield
        finally:
            for module in modules:
                module.__dict__.pop("_qkscore_capture", None)

    def on_attention(self, layer_no: int, rope: bool, query, key, mask, kwargs) -> None:
        """Called from inside attention with rotated ``query [B,H,T,D]``, ``key [B,KV,T,D]``."""
        if rope:
            self.q[layer_no] = self._take(query.transpose(1, 2), self.q_idx)
            self.k[layer_no] = self._take(key.transpose(1, 2), self.k_idx)
        if self.want_attention:
            self.attn[layer_no] = self._attention_at_pairs(query, key, mask, kwargs)

    def _attention_at_pairs(self, query, key, mask, kwargs) -> torch.Tensor:
        """Post-softmax weight of each pair's key in its query's row, for those rows only."""
        kv = self.layout.kv_index().to(key.device)
        rows_q = self._take(query.transpose(1, 2), self.q_idx).float()  # [B,P,H,D]
        keys = key.float()[:, kv].to(self.q_idx.device)  # [B,H,T,D]
        logits = torch.einsum("bphd,bhtd->bpht", rows_q, keys) * float(kwargs.get("scaling") or 1)
        softcap = kwargs.get("softcap")
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if mask is not None:
            mask = mask.to(self.q_idx.device)
        allowed = self._allowed(mask, logits.shape[-1], kwargs)  # [B,P,T]
        logits = logits.masked_fill(~allowed[:, :, None, :], float("-inf"))
        weights = logits.softmax(-1)
        return weights.gather(-1, self.k_idx[:, :, None, None].expand(-1, -1, weights.shape[2], 1))[
            ..., 0
        ]  # [B,P,H]

    def _allowed(self, mask, t: int, kwargs) -> torch.Tensor:
        if mask is not None and mask.dim() == 4:
            rows = mask[self.rows, 0, self.q_idx]  # [B,P,T]
            return rows if rows.dtype == torch.bool else rows == 0
        # sdpa's causal fast path passes no mask: causal (no padding in this batch)
        keys = torch.arange(t, device=self.q_idx.device)
        allowed = keys[None, None, :] <= self.q_idx[:, :, None]
        window = kwargs.get("sliding_window")
        if window:
            allowed &= keys[None, None, :] > self.q_idx[:, :, None] - window
        return allowed

    def scores(self) -> np.ndarray:
        """All layers in one product (few kernel launches: on a GPU these small ops cost
        their launch, not their arithmetic)."""
        missing = [n for n in range(self.n_layers) if self.q[n] is None or self.k[n] is None]
        if missing:
            raise RuntimeError(f"layer {missing[0]}: query/key capture did not run")
        kv = self.layout.kv_index().to(self.q_idx.device)
        q, k = torch.stack(self.q, 1).float(), torch.stack(self.k, 1).float()  # [B,L,P,H|KV,D]
        return (q * k[:, :, :, kv]).sum(-1).transpose(2, 3).cpu().numpy().astype(np.float32)

    def attention_scores(self) -> np.ndarray:
        return torch.stack(self.attn, 1).transpose(2, 3).cpu().numpy().astype(np.float32)


_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _attention_parts(lm: LoadedModel) -> list[tuple[torch.nn.Module, ...]]:
    """Each layer's (attention, query module, key module), looked up once per model: the
    dotted-path lookups cost a third of a millisecond per pass, which a GPU at batch 1 feels."""
    parts = _PARTS.get(lm.model)
    if parts is None:
        adapter, parts = lm.adapter, []
        for layer in layer_modules(lm.model, adapter):
            attn = layer.get_submodule(adapter.attention)
            parts.append(
                (attn, attn.get_submodule(adapter.q_module), attn.get_submodule(adapter.k_module))
            )
        _PARTS[lm.model] = parts
    return parts


def _lm_logprobs(lm, rows: torch.Tensor) -> torch.Tensor:
    """Log-softmax of the LM head over final hidden states (with Gemma's logit soft-cap)."""
    logits = lm.model.get_output_embeddings()(rows).float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1)


def _check_token_spans(spans: Sequence[tuple[int, int]], lengths: list[int]) -> None:
    if len(spans) != len(lengths):
        raise ValueError(f"token_spans has {len(spans)} rows but input_ids has {len(lengths)}")
    for row, (start, end) in enumerate(spans):
        if not 1 <= start < end <= lengths[row]:
            raise IndexError(
                f"row {row}: token span ({start}, {end}) must satisfy 1 <= start < end <= "
                f"{lengths[row]} (a token's probability is read at the position before it)"
            )


def _token_stats(lm, hidden, input_ids, offsets: list[int], spans) -> list[np.ndarray]:
    """Per row: log-probability of each span token, entropy and KL(uniform || p) of the
    distribution it was predicted from (read at the position before it)."""
    out = []
    for row, (start, end) in enumerate(spans):
        lo, hi = offsets[row] + start, offsets[row] + end
        logp = _lm_logprobs(lm, hidden[row, lo - 1 : hi - 1])
        token = logp.gather(-1, input_ids[row, lo:hi, None])[:, 0]
        entropy = -(logp.exp() * logp).sum(-1)
        vocab = logp.shape[-1]
        certainty = -logp.mean(-1) - float(np.log(vocab))
        out.append(torch.stack([token, entropy, certainty], -1).cpu().numpy().astype(np.float32))
    return out


def _candidate_logprobs(lm, hidden, offsets, lengths, logit_positions, candidate_ids) -> np.ndarray:
    """Log-softmax at each row's logit position for its candidate tokens."""
    batch = hidden.shape[0]
    if logit_positions is None:
        pos = offsets + lengths - 1
    else:
        pos = torch.as_tensor(list(logit_positions), device=hidden.device) + offsets
    rows = hidden[torch.arange(batch, device=hidden.device), pos]
    logprobs = _lm_logprobs(lm, rows)
    # one list for every row, or one per row; numpy arrays and numpy ints welcome
    index = torch.as_tensor(np.asarray(candidate_ids, dtype=np.int64), device=hidden.device)
    if index.dim() == 1:
        index = index.expand(batch, -1)
    return logprobs.gather(-1, index).cpu().numpy().astype(np.float32)


@contextmanager
def _stop_after(layer: torch.nn.Module):
    def hook(*_):
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _wrap_attention(base: Callable | None) -> Callable:
    """An attention function that lets an attached capture read q and k, then runs ``base``
    (sdpa) or, when ``base`` is None, the module family's own eager attention."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        attached = getattr(module, "_qkscore_capture", None)
        if attached is not None:
            capture, layer_no, rope = attached
            capture.on_attention(layer_no, rope, query, key, attention_mask, kwargs)
        fn = base or sys.modules[type(module).__module__].eager_attention_forward
        return fn(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


_REGISTERED = False


def _register_capture_attention() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    AttentionInterface.register(CAPTURE_SDPA, _wrap_attention(sdpa_attention_forward))
    AttentionInterface.register(CAPTURE_EAGER, _wrap_attention(None))
    # Without the matching mask function transformers builds another mask format, and
    # left-padded batches come out wrong by tens of units.
    ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_SDPA, sdpa_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_EAGER, eager_mask)
    _REGISTERED = True


def _use_capture_attention(model) -> None:
    """Switch the model to the capturing wrapper of its current attention, once."""
    _register_capture_attention()
    current = model.config._attn_implementation
    if current in (CAPTURE_SDPA, CAPTURE_EAGER):
        return
    if current == "sdpa":
        model.set_attn_implementation(CAPTURE_SDPA)
    elif current == "eager":
        model.set_attn_implementation(CAPTURE_EAGER)
    else:
        raise ValueError(
            f"rope=True and attention weights need sdpa or eager attention; this model uses "
            f"{current!r}. Load it with attn_implementation='sdpa'."
        )


def iter_batches(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]

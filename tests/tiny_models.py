"""Tiny randomly initialised models of every supported family, and a naive QK computation
that shares no code with ``qkscore.extraction``.

Each family gets 2 layers, hidden 64, 4 query heads and, where the family has grouped-query
attention, 2 KV heads. Where the config honours ``head_dim`` it is set to 24 (not 64 / 4 = 16)
so a reshape that assumes ``hidden / heads`` fails. Families with sliding-window attention get a
window of 5 tokens, shorter than the test prompts, so the window mask really cuts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import transformers

from qkscore.models.loading import LoadedModel

VOCAB = 100
WINDOW = 5
# where tiny models run: cpu here; QKSCORE_TEST_DEVICE=cuda checks extraction on a GPU
DEVICE = os.environ.get("QKSCORE_TEST_DEVICE", "cpu")
_COMMON = {
    "vocab_size": VOCAB,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
_ROPE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}

# family -> (config class name, modeling module, kwargs)
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "llama": (
        "LlamaConfig",
        "llama",
        {**_ROPE, "num_key_value_heads": 2, "head_dim": 24},
    ),
    "mistral": (
        "MistralConfig",
        "mistral",
        {**_ROPE, "num_key_value_heads": 2, "head_dim": 24, "sliding_window": WINDOW},
    ),
    "qwen2": (
        "Qwen2Config",
        "qwen2",
        {
            **_ROPE,
            "num_key_value_heads": 2,
            "use_sliding_window": True,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
            "layer_types": ["full_attention", "sliding_attention"],
        },
    ),
    "qwen3": (
        "Qwen3Config",
        "qwen3",
        {
            **_ROPE,
            "num_key_value_heads": 2,
            "head_dim": 24,
            "use_sliding_window": True,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
            "layer_types": ["full_attention", "sliding_attention"],
        },
    ),
    "gemma2": (
        "Gemma2Config",
        "gemma2",
        {
            **_ROPE,
            "num_key_value_heads": 2,
            "head_dim": 24,
            "query_pre_attn_scalar": 20,
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
            # small enough that tanh softcapping bends random-weight logits
            "attn_logit_softcapping": 3.0,
            "final_logit_softcapping": 5.0,
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "gemma3",
        {
            **_ROPE,
            "num_key_value_heads": 2,
            "head_dim": 24,
            "query_pre_attn_scalar": 20,
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "phi3": (
        "Phi3Config",
        "phi3",
        {
            **_ROPE,
            "num_key_value_heads": 2,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
            },
        },
    ),
    "gpt2": (
        "GPT2Config",
        "gpt2",
        {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128},
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "gpt_neox",
        {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
        },
    ),
}

SDPA_UNSUPPORTED = {"gemma2"}  # Gemma2PreTrainedModel._supports_sdpa = False (softcapping)


def default_attention(family: str) -> str:
    return "eager" if family in SDPA_UNSUPPORTED else "sdpa"


def tiny_config(family: str, attn_implementation: str | None = None):
    attn_implementation = attn_implementation or default_attention(family)
    cls_name, _, kwargs = FAMILIES[family]
    config = getattr(transformers, cls_name)(**_COMMON, **kwargs)
    config._attn_implementation = attn_implementation
    return config


def build_tiny(family: str, attn_implementation: str | None = None, seed: int = 0) -> LoadedModel:
    """A float32 tiny model, the same weights for the same ``seed`` whatever the attention
    (default: sdpa where the family supports it)."""
    from transformers import AutoModelForCausalLM

    attn_implementation = attn_implementation or default_attention(family)
    config = tiny_config(family, attn_implementation)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation=attn_implementation
    )
    # random init leaves norms at 1 and biases at 0: perturb every parameter so q/k norms,
    # biases and all of the fused layouts carry distinguishable values
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return wrap(model.to(DEVICE).eval(), f"tiny-{family}")


def wrap(model, name: str) -> LoadedModel:
    return LoadedModel.from_model(model, name=name)


def modeling_module(family: str):
    _, module, _ = FAMILIES[family]
    return sys.modules[f"transformers.models.{module}.modeling_{module}"]


def attention_blocks(model) -> list[torch.nn.Module]:
    """Each text layer's attention module, found by class name, not through the adapter table
    (a multimodal model's vision tower is left out)."""
    return [
        m
        for name, m in model.named_modules()
        if type(m).__name__.endswith("Attention") and "vision" not in name
    ]


# --------------------------------------------------------------------------- naive computation


def naive_prerope_qk(family: str, model, input_ids, attention_mask, **forward_kwargs):
    """Full pre-rotary ``q [B, H, T, D]`` and ``k [B, KV, T, D]`` per layer.

    Hooks capture each attention block's raw projection output, and the split follows the
    family's modeling code written out here by hand.
    """
    blocks = attention_blocks(model)
    raw: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(blocks))}
    handles = []
    for i, block in enumerate(blocks):
        for name in ("q_proj", "k_proj", "qkv_proj", "c_attn", "query_key_value"):
            if hasattr(block, name):
                handles.append(getattr(block, name).register_forward_hook(_store(raw[i], name)))
    try:
        with torch.no_grad():
            model(**_on_device(model, input_ids, attention_mask), **forward_kwargs)
    finally:
        for h in handles:
            h.remove()

    cfg = model.config.get_text_config()
    out = []
    for i, block in enumerate(blocks):
        r = raw[i]
        bsz, t = input_ids.shape
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        if family in ("llama", "mistral", "qwen2", "gemma2"):
            d = block.head_dim
            q = r["q_proj"].view(bsz, t, n_heads, d)
            k = r["k_proj"].view(bsz, t, n_kv, d)
        elif family in ("qwen3", "gemma3"):
            d = block.head_dim
            with torch.no_grad():
                q = block.q_norm(r["q_proj"].view(bsz, t, n_heads, d))
                k = block.k_norm(r["k_proj"].view(bsz, t, n_kv, d))
        elif family == "phi3":
            d = block.head_dim
            qkv = r["qkv_proj"]
            q = qkv[..., : n_heads * d].view(bsz, t, n_heads, d)
            k = qkv[..., n_heads * d : n_heads * d + n_kv * d].view(bsz, t, n_kv, d)
        elif family == "gpt2":
            d = cfg.n_embd // n_heads
            q, k, _ = r["c_attn"].split(cfg.n_embd, dim=2)
            q, k = q.view(bsz, t, n_heads, d), k.view(bsz, t, n_heads, d)
        elif family == "gpt_neox":
            d = cfg.hidden_size // n_heads
            q, k, _ = r["query_key_value"].view(bsz, t, n_heads, 3 * d).chunk(3, dim=-1)
        else:
            raise AssertionError(family)
        out.append((q.transpose(1, 2).float(), k.transpose(1, 2).float()))
    return out


def _store(slot: dict, name: str):
    def hook(_module, _inputs, output):
        slot[name] = output.detach().clone()

    return hook


@contextmanager
def recording_eager_attention(family: str):
    """Patch the family's ``eager_attention_forward`` to record the rotated q and k it gets."""
    module = modeling_module(family)
    original = module.eager_attention_forward
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(mod, query, key, *args, **kwargs):
        records.append((query.detach().clone().float(), key.detach().clone().float()))
        return original(mod, query, key, *args, **kwargs)

    module.eager_attention_forward = recording
    try:
        yield records
    finally:
        module.eager_attention_forward = original


def naive_rotated_qk(family: str, model, input_ids, attention_mask, **forward_kwargs):
    """Full rotated ``q [B, H, T, D]`` and ``k [B, KV, T, D]`` per layer, from an eager model."""
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    with recording_eager_attention(family) as records, torch.no_grad():
        model(**_on_device(model, input_ids, attention_mask), **forward_kwargs)
    return list(records)


def _on_device(model, input_ids, attention_mask) -> dict:
    device = next(model.parameters()).device
    mask = None if attention_mask is None else attention_mask.to(device)
    return {"input_ids": input_ids.to(device), "attention_mask": mask}


def expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, KV, T, D]`` -> ``[B, H, T, D]`` the way attention shares KV heads (repeat_kv)."""
    return k.repeat_interleave(n_heads // k.shape[1], dim=1)


def naive_scores(
    per_layer: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pairs: Sequence[Sequence[tuple[int, int]]],
    offsets: Sequence[int] | None = None,
):
    """``[B, L, H, P]`` of full-matrix dot products ``q @ k.T`` read at the pairs."""
    n_rows = per_layer[0][0].shape[0]
    offsets = offsets or [0] * n_rows
    width = max(len(p) for p in pairs)
    out = torch.full((n_rows, len(per_layer), per_layer[0][0].shape[1], width), float("nan"))
    for layer, (q, k) in enumerate(per_layer):
        full = q @ expand_kv(k, q.shape[1]).transpose(-1, -2)  # [B, H, T, T]
        for b, row_pairs in enumerate(pairs):
            for j, (qp, kp) in enumerate(row_pairs):
                out[b, layer, :, j] = full[b, :, qp + offsets[b], kp + offsets[b]].cpu()
    return out.numpy()


def attentions_at_pairs(attentions, pairs, offsets=None):
    """``[B, L, H, P]`` from ``output_attentions`` tensors ``[B, H, T, T]`` per layer."""
    n_rows = attentions[0].shape[0]
    offsets = offsets or [0] * n_rows
    width = max(len(p) for p in pairs)
    out = torch.full((n_rows, len(attentions), attentions[0].shape[1], width), float("nan"))
    for layer, a in enumerate(attentions):
        for b, row_pairs in enumerate(pairs):
            for j, (qp, kp) in enumerate(row_pairs):
                out[b, layer, :, j] = a[b, :, qp + offsets[b], kp + offsets[b]].float().cpu()
    return out.numpy()


def pad_batch(prompts: Sequence[Sequence[int]], side: str, pad_id: int = 0):
    """``input_ids``, ``attention_mask`` and each row's left offset for a padded batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    offsets = []
    for row, p in enumerate(prompts):
        start = width - len(p) if side == "left" else 0
        ids[row, start : start + len(p)] = torch.as_tensor(list(p))
        mask[row, start : start + len(p)] = 1
        offsets.append(start)
    return ids, mask, offsets


def assert_rel_close(actual, expected, rtol: float = 1e-4, what: str = "") -> None:
    """Equal within ``rtol`` relative, with an absolute floor of ``rtol`` x the largest
    expected magnitude (so entries near zero are judged on the array's scale); NaN slots must
    coincide."""
    import numpy as np

    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{what}: NaN slots differ"
    scale = float(np.nanmax(np.abs(expected)))
    assert scale > 0, f"{what}: expected values are all zero"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@contextmanager
def attn_implementation(model, implementation: str):
    """Temporarily switch a model's attention implementation."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


@contextmanager
def few_threads() -> Iterator[None]:
    """Run torch on ``$QKSCORE_TEST_THREADS`` threads (default 1) meanwhile.

    On a small machine shared with other jobs, two spinning OpenMP threads fight for the cores
    and a SmolLM2 forward takes 8x longer than on one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(os.environ.get("QKSCORE_TEST_THREADS", "1"))))
    try:
        yield
    finally:
        torch.set_num_threads(before)

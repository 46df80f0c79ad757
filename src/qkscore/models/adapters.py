"""Where each model family keeps its queries and keys.

Families differ only in a small table (module paths, fused projections, q/k norms), never in
branches scattered through the extraction code. A new family is one more ``Adapter`` row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Fused = Literal["none", "gpt2", "neox", "phi3"]
Layout = Literal["flat", "bthd", "bhtd"]


class UnsupportedModelError(ValueError):
    """A model whose attention layout qkscore does not know."""


@dataclass(frozen=True)
class Adapter:
    """How to find one layer's pre-rotary query and key vectors.

    ``q_module``/``k_module`` name the submodule of the attention block whose output is the
    vector that enters the rotary embedding: the q/k norm where the family has one (Qwen3,
    Gemma3), else the projection. Fused families name one projection and a split rule.
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    q_module: str = "q_proj"
    k_module: str = "k_proj"
    fused: Fused = "none"
    has_rope: bool = True
    layout: Layout = "flat"


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama",), "model.layers", "self_attn"),
    Adapter("mistral", ("mistral",), "model.layers", "self_attn"),
    Adapter("qwen2", ("qwen2",), "model.layers", "self_attn"),
    Adapter("qwen3", ("qwen3",), "model.layers", "self_attn", "q_norm", "k_norm", layout="bthd"),
    Adapter("gemma2", ("gemma2",), "model.layers", "self_attn"),
    Adapter(
        "gemma3",
        ("gemma3_text",),
        "model.layers",
        "self_attn",
        "q_norm",
        "k_norm",
        layout="bhtd",
    ),
    # model_type "gemma3" loads as Gemma3ForConditionalGeneration: the text layers sit one level
    # deeper, under the multimodal model's language_model
    Adapter(
        "gemma3",
        ("gemma3",),
        "model.language_model.layers",
        "self_attn",
        "q_norm",
        "k_norm",
        layout="bhtd",
    ),
    Adapter("phi3", ("phi3",), "model.layers", "self_attn", "qkv_proj", "qkv_proj", "phi3"),
    Adapter("gpt2", ("gpt2",), "transformer.h", "attn", "c_attn", "c_attn", "gpt2", False),
    Adapter(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        "attention",
        "query_key_value",
        "query_key_value",
        "neox",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model: nn.Module) -> Adapter:
    model_type = getattr(model.config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(
        f"{type(model).__name__} (model_type={model_type!r}) is not supported: qkscore knows "
        f"where queries and keys live for {', '.join(supported_model_types())}. "
        "Add a row to qkscore.models.adapters.ADAPTERS for a new family."
    )


@dataclass(frozen=True)
class HeadLayout:
    """Head geometry, read from the config the way the paper's code does."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """Grouped-query attention: query head h reads KV head h // (n_heads / n_kv_heads)."""
        return head // self.group_size

    def kv_index(self) -> torch.Tensor:
        return torch.arange(self.n_heads) // self.group_size


def head_layout(config) -> HeadLayout:
    """Geometry from a (text) config; ``head_dim`` wins over hidden_size / n_heads when set."""
    n_heads = _first(config, "num_attention_heads", "n_head")
    n_layers = _first(config, "num_hidden_layers", "n_layer")
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    hidden = _first(config, "hidden_size", "n_embd")
    head_dim = getattr(config, "head_dim", None) or hidden // n_heads
    return HeadLayout(int(n_layers), int(n_heads), int(n_kv), int(head_dim))


def _first(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise UnsupportedModelError(f"config {type(config).__name__} has none of {names}")


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    return root.get_submodule(dotted)


def layer_modules(model: nn.Module, adapter: Adapter) -> list[nn.Module]:
    return list(get_submodule(model, adapter.layers))


def split_qk(adapter: Adapter, layout: HeadLayout, which: str, out: torch.Tensor) -> torch.Tensor:
    """Turn a hooked module output into ``[batch, tokens, heads, head_dim]``.

    For fused projections this selects the query or key part of q|k|v the same way the
    family's attention code does.
    """
    d = layout.head_dim
    if adapter.fused == "none":
        if adapter.layout == "bthd":
            return out
        if adapter.layout == "bhtd":
            return out.transpose(1, 2)
        return out.unflatten(-1, (-1, d))
    if adapter.fused == "gpt2":
        width = layout.n_heads * d
        part = out[..., :width] if which == "q" else out[..., width : 2 * width]
        return part.unflatten(-1, (layout.n_heads, d))
    if adapter.fused == "neox":
        per_head = out.unflatten(-1, (layout.n_heads, 3 * d))
        return per_head[..., :d] if which == "q" else per_head[..., d : 2 * d]
    if adapter.fused == "phi3":
        q_width = layout.n_heads * d
        if which == "q":
            return out[..., :q_width].unflatten(-1, (layout.n_heads, d))
        k_width = layout.n_kv_heads * d
        return out[..., q_width : q_width + k_width].unflatten(-1, (layout.n_kv_heads, d))
    raise AssertionError(adapter.fused)

"""Model loading, packaged offline aliases and the per-family attention adapters."""

from qkscore.models.adapters import (
    ADAPTERS,
    Adapter,
    HeadLayout,
    UnsupportedModelError,
    adapter_for,
    head_layout,
    supported_model_types,
)
from qkscore.models.aliases import ALIASES, ModelNotAvailableError, PackagedModel, cache_dir
from qkscore.models.loading import LoadedModel, load_model, load_tokenizer, model_fingerprint

__all__ = [
    "ADAPTERS",
    "ALIASES",
    "Adapter",
    "HeadLayout",
    "LoadedModel",
    "ModelNotAvailableError",
    "PackagedModel",
    "UnsupportedModelError",
    "adapter_for",
    "cache_dir",
    "head_layout",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "supported_model_types",
]

"""qkscore: judge a model's inferences by the query-key alignment of its own attention heads.

Heads are named ``L{layer}H{head}``, zero-based, everywhere (profiles, reports, the API).
Heavy submodules (torch, transformers) load on first use, so ``import qkscore`` stays cheap for
data-only work.
"""

from __future__ import annotations

import importlib
from typing import Any

from qkscore._version import __version__

_LAZY = {
    "Item": "qkscore.data",
    "DataError": "qkscore.data",
    "load_items": "qkscore.data",
    "parse_spec": "qkscore.data",
    "load_model": "qkscore.models",
    "load_tokenizer": "qkscore.models",
    "LoadedModel": "qkscore.models",
    "qk_scores": "qkscore.extraction",
    "extract": "qkscore.extraction",
    "get_template": "qkscore.prompts",
    "HeadSelector": "qkscore.estimators.heads",
    "TopKEnsemble": "qkscore.estimators.ensemble",
    "Reader": "qkscore.estimators.protocol",
    "register_reader": "qkscore.estimators.protocol",
    # the pipeline and its results
    "Judge": "qkscore.audit",
    "scan": "qkscore.scanning",
    "calibrate": "qkscore.pipeline",
    "evaluate": "qkscore.pipeline",
    "Profile": "qkscore.profile",
    "load_run": "qkscore.outputs",
    "Evaluation": "qkscore.schemas",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qkscore' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

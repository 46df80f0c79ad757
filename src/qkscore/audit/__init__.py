"""Judging text with a calibrated profile: single statements, chains of thought, the audit log
and the HTTP service (``qkscore check``, ``qkscore verify-chain``, ``qkscore serve``).

Importing this package does not load torch models or FastAPI, nor numpy: its names load on
first use (so the CLI can read ``qkscore.audit.settings`` cheaply); ``Judge`` loads its model
when built, and ``create_app`` needs the ``serve`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AuditStore": "qkscore.audit.store",
    "ChainResult": "qkscore.audit.chain",
    "ChainStep": "qkscore.audit.chain",
    "Judge": "qkscore.audit.check",
    "ProfileMismatchError": "qkscore.audit.check",
    "ServeSettings": "qkscore.audit.settings",
    "Verdict": "qkscore.audit.check",
    "split_steps": "qkscore.audit.chain",
}

__all__ = [*_LAZY, "create_app"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def create_app(*args, **kwargs):
    """See :func:`qkscore.audit.service.create_app` (imported lazily: FastAPI is optional)."""
    from qkscore.audit.service import create_app as _create_app

    return _create_app(*args, **kwargs)

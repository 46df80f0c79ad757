"""Judging text with a calibrated profile: single statements, chains of thought, the audit log
and the HTTP service (``qkscore check``, ``qkscore verify-chain``, ``qkscore serve``).

Importing this package does not load torch models or FastAPI; ``Judge`` loads its model when
built, and ``create_app`` needs the ``serve`` extra.
"""

from qkscore.audit.chain import ChainResult, ChainStep, split_steps
from qkscore.audit.check import Judge, ProfileMismatchError, Verdict
from qkscore.audit.store import AuditStore

__all__ = [
    "AuditStore",
    "ChainResult",
    "ChainStep",
    "Judge",
    "ProfileMismatchError",
    "Verdict",
    "create_app",
    "split_steps",
]


def create_app(*args, **kwargs):
    """See :func:`qkscore.audit.service.create_app` (imported lazily: FastAPI is optional)."""
    from qkscore.audit.service import create_app as _create_app

    return _create_app(*args, **kwargs)

"""The settings of ``qkscore serve``, declared once.

:class:`ServeSettings` is a pydantic-settings class: each field is a ``serve`` option (its
flag is the field name with dashes, see :data:`FLAGS`) and a ``QKSCORE_SERVE_<NAME>``
environment variable (:func:`env_name`). A flag given on the command line wins over the
variable, which wins over the default. ``serve --workers N`` hands its settings to the worker
processes as those variables (:meth:`ServeSettings.to_env`), and each worker reads them back
with ``ServeSettings()``. The API key and the hash key stay in ``QKSCORE_API_KEY`` and
``QKSCORE_AUDIT_HASH_KEY``, never in the settings (``/v1/profile`` reports the limits).

Importing this module needs pydantic-settings only (no FastAPI, no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "FAST_HELP",
    "FLAGS",
    "GPU_MAX_BATCH",
    "LIMITS",
    "Limits",
    "ServeSettings",
    "env_name",
]

ENV_PREFIX = "QKSCORE_SERVE_"
#: ``max_batch`` left unset on a GPU (a CPU judges one request at a time: :meth:`for_device`)
GPU_MAX_BATCH = 32
FAST_HELP = (
    "Skip the model's own answer and stop the pass after the deepest layer the profile's "
    "reader reads (a hybrid reader always runs the whole pass)."
)


@dataclass(frozen=True)
class Limits:
    """Request limits: long texts cost model time and memory for everyone behind them.

    ``body_bytes`` bounds the request body read before any parsing: the largest valid request
    (a 20,000-character context and 64 steps of 2,000) is 148,000 characters, at most 12 bytes
    each as JSON (an astral character as two ``\\u`` escapes), under 1.8 MB."""

    context_chars: int = 20_000
    statement_chars: int = 2_000
    chain_steps: int = 64
    chain_chars: int = 40_000
    body_bytes: int = 2 * 1024 * 1024


LIMITS = Limits()


class ServeSettings(BaseSettings):
    """What ``qkscore serve`` runs with: the model, the audit log, what one request may cost,
    how long it may wait, and how waiting requests are batched.

    The default budget takes a check at the longest context (20,000 characters are 5,000 to
    7,500 SmolLM2 tokens) or a chain of 8 short steps on a 4,000-token context: on one CPU
    thread SmolLM2-135M judges 600-1,400 budget tokens a second, so a full budget holds the
    model for under a minute there; raise it on a GPU.

    Batching: the model takes the first waiting request, waits up to ``batch_window_ms`` for
    more, and judges up to ``max_batch`` waiting requests together in one padded pass while
    their costs (the same token count as the budget's) add up to at most ``max_batch_tokens``;
    a request costing more than that runs alone. ``max_batch 1`` judges one at a time, the
    default on a CPU; ``max_batch`` and ``max_padding`` left unset follow the model's device
    (:meth:`for_device`). The default batch budget is sized for a small CPU; on a GPU raise it.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # an empty variable means "not set"
        frozen=True,
        extra="forbid",
        populate_by_name=True,
    )

    profile: Path | None = Field(None, description="Profile JSON from `qkscore calibrate`.")
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on (1-65535).")
    workers: int = Field(
        1,
        ge=1,
        description="Worker processes (uvicorn), each with its own copy of the model (memory: "
        "model size x workers), all logging to the one --db; max_queue is per worker.",
    )
    db: str = Field(
        "qkscore-audit.db",
        description="Audit log: an SQLite file (WAL) or a postgresql://user@host/db URL.",
    )
    store_text: bool = Field(
        True, description="Log the texts (--no-store-text: hashes, scores and verdicts only)."
    )
    fast: bool = Field(False, description=FAST_HELP + " Per-request default.")
    model: str | None = Field(
        None,
        description="Model to load instead of the one the profile names (must have its "
        "fingerprint).",
    )
    dtype: str = Field(
        "float32",
        description="float32 (the default: verdicts reproduce), bfloat16, float16, or auto "
        "(bfloat16; faster, but batching can flip borderline verdicts).",
    )
    threads: int = Field(
        0, ge=0, description="torch CPU threads (0: torch's default; 1 is faster on a busy CPU)."
    )
    max_tokens_per_request: int = Field(
        32_768,
        ge=1,
        # the variable's name from before the settings were declared here
        validation_alias=AliasChoices(
            f"{ENV_PREFIX}MAX_TOKENS", f"{ENV_PREFIX}MAX_TOKENS_PER_REQUEST"
        ),
        description="Compute budget of one request in tokens: context + statement for a check; "
        "for a chain, steps x context plus each step once per step it precedes or is. Over "
        "it: 413.",
    )
    request_timeout: float = Field(
        60.0, gt=0, description="Seconds a request may wait for the model before a 503."
    )
    max_queue: int = Field(
        64, ge=0, description="Requests that may wait for the model; the next gets 503."
    )
    max_batch_tokens: int = Field(
        4096,
        ge=1,
        description="Token budget of one batch: waiting requests are judged together while "
        "their costs add up to at most this (a costlier request runs alone).",
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        description="Requests judged together in one pass at most (1: one at a time; default: "
        "1 on a CPU, where batching measured no faster; 32 on a GPU).",
    )
    max_padding: float | None = Field(
        None,
        ge=1,
        description="A batch's checks of very different lengths run in passes of similar "
        "lengths, each padded to at most this many times its real tokens (default: 1.25 on a "
        "CPU, where compute grows with padding; none on a GPU: one pass).",
    )
    batch_window_ms: float = Field(
        5.0,
        ge=0,
        le=10_000,
        description="Milliseconds the model waits after the first request for others to join "
        "its batch (0: take only those already waiting).",
    )

    #: what ``/v1/profile`` and ``/healthz`` report (with the text limits)
    REPORTED: ClassVar[tuple[str, ...]] = (
        "max_tokens_per_request",
        "request_timeout",
        "max_queue",
        "max_batch_tokens",
        "max_batch",
        "max_padding",
        "batch_window_ms",
    )

    @property
    def batching(self) -> bool:
        return (self.max_batch or 1) > 1

    def for_device(self, device_type: str) -> ServeSettings:
        """These settings with the defaults left to the device filled in (what the service runs
        with and ``/v1/profile`` reports). On a CPU the model judges one request at a time and
        splits mixed lengths at 1.25x padding: on the 2-core machine batching gave 0.73-1.12x
        the requests a second of one at a time and cost 7-22% with one request in flight
        (README, "Batching"), since a 250-token prompt already fills the cores. On a GPU it
        batches up to 32 requests in one pass (batch 32 scanned 10.5x the items/s of batch 1
        on an H200)."""
        cpu = device_type == "cpu"
        update: dict[str, Any] = {}
        if self.max_batch is None:
            update["max_batch"] = 1 if cpu else GPU_MAX_BATCH
        if self.max_padding is None and cpu:
            update["max_padding"] = 1.25
        return self.model_copy(update=update)

    def describe(self) -> dict[str, Any]:
        """The limits and batching settings a client may see, with the text limits."""
        return {**{k: getattr(self, k) for k in self.REPORTED}, **asdict(LIMITS)}

    def to_env(self) -> dict[str, str]:
        """These settings as ``QKSCORE_SERVE_*`` variables (``ServeSettings()`` reads them)."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, Path):
                text = str(value.resolve())
            else:
                text = "" if value is None else str(value)
            out[env_name(name)] = text
        return out


def env_name(field: str) -> str:
    """The environment variable of a setting (the first name its alias lists, if any)."""
    alias = ServeSettings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{ENV_PREFIX}{field.upper()}"


#: the ``serve`` flags of the settings (``--max-queue``); ``store_text`` is ``--no-store-text``
FLAGS = {
    name: "--no-store-text" if name == "store_text" else "--" + name.replace("_", "-")
    for name in ServeSettings.model_fields
}

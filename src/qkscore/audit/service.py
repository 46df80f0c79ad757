"""The HTTP service: judge statements and chains over JSON, log every decision, serve the
dashboard.

Routes (``/v1`` routes and ``/metrics`` need the API key when one is set; ``/healthz`` and the
dashboard shell ``/``, which holds no data, never do)::

    POST /v1/check         {"context", "statement", "model_answer"?}     -> Verdict + audit id
    POST /v1/verify-chain  {"context", "steps": [...] | "chain": "..."}  -> ChainResult + audit id
    GET  /v1/profile       the profile's head, calibration figures and head heatmap arrays
    GET  /v1/audit         logged decisions, newest first (limit/offset or cursor; verdict,
                           kind and time filters)
    GET  /metrics          Prometheus metrics (requests, latency, queue, verdicts, model load
                           time; see ``qkscore.audit.metrics``)
    GET  /healthz          liveness; with the key (or when none is set) also model, profile
                           digest, head, dtype, queue and limits
    GET  /                 the dashboard (self-contained HTML; fetches the two GET routes)

``HEAD`` on ``/`` and ``/healthz`` answers as ``GET`` does.

One model serves every request. Judging runs in a worker thread so the event loop keeps
answering (health checks, the dashboard, the audit log) while the model works; requests wait
in the event loop (:class:`Batcher`), not in threads, and the judge's own lock keeps the model
safe from any other caller. Bad input gets a 4xx with a message naming the field; a failure
inside the model gets a 503 with its reason, never a bare 500.

Waiting requests are batched (dynamic batching, as serving engines do): when the model is
free it takes the first waiting request, waits up to ``batch_window_ms`` for others, and
judges those that fit (``max_batch`` requests, ``max_batch_tokens`` of cost; checks and
chains alike, those asking for the model's answer apart from the fast ones) in one padded
pass (:meth:`Judge.judge_together`). Each request gets its own answer and its own audit row,
and its verdict is the one it gets alone. A batch that fails is judged again one request at a
time, so a request the model cannot take fails alone.

Before any route reads the body, a guard answers 401 to a ``/v1`` or ``/metrics`` request
without the key and 413 to a body over ``Limits.body_bytes`` (by its Content-Length, or as it
streams in), so neither a keyless nor a huge request costs more than that much memory.

Three limits keep one request from holding the model for everyone (``serve`` options):

* a compute budget in tokens, counted with (a private copy of) the judge's tokenizer before
  the request queues: a check costs its context plus statement tokens; a chain judges step
  ``i`` against the context and steps ``0..i-1``, so it costs ``steps x context`` plus each
  step's tokens once for itself and once for every later step. Over budget: 413, naming both;
* ``max_queue``: at most that many requests wait for the model; the next gets 503 at once,
  with ``Retry-After`` (the recent mean model time per request times the queue ahead);
* ``request_timeout``: a request that waited that long for the model gets 503 (with
  ``Retry-After``). A running pass is not interrupted: the budget bounds it instead.

The settings (limits, batching, the model, the log) are :class:`ServeSettings`
(``qkscore.audit.settings``): ``serve`` options and ``QKSCORE_SERVE_*`` variables alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.datastructures import Headers

from qkscore.audit.chain import split_steps
from qkscore.audit.check import Judge
from qkscore.audit.settings import LIMITS, Limits, ServeSettings, env_name
from qkscore.audit.store import MAX_INT64, MIN_INT64, AuditStore
from qkscore.audit.text import require_text
from qkscore.dtypes import dtype_name

__all__ = [
    "ENV",
    "Limits",
    "RequestGuard",
    "ServeLimits",
    "ServeSettings",
    "TokenCounter",
    "app_from_env",
    "create_app",
    "request_cost",
    "serve_workers",
]

log = logging.getLogger("qkscore.serve")


#: the older name of :class:`ServeSettings` (the limits were a class of their own)
ServeLimits = ServeSettings


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: str = Field("", max_length=LIMITS.context_chars, description="Premises.")
    statement: str = Field(
        ..., min_length=1, max_length=LIMITS.statement_chars, description="Claim to judge."
    )
    model_answer: bool | None = Field(
        None, description="Also read the model's own answer (full pass); default: the server's."
    )

    @field_validator("statement")
    @classmethod
    def _statement(cls, v: str) -> str:
        return require_text(v, "statement")

    @field_validator("context")
    @classmethod
    def _context(cls, v: str) -> str:
        return require_text(v, "context", allow_empty=True)


Step = Annotated[str, Field(min_length=1, max_length=LIMITS.statement_chars)]


class ChainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: str = Field("", max_length=LIMITS.context_chars)
    steps: list[Step] | None = Field(None, min_length=1, max_length=LIMITS.chain_steps)
    chain: str | None = Field(
        None, min_length=1, max_length=LIMITS.chain_chars, description="Text split into sentences."
    )
    model_answer: bool | None = None

    @field_validator("context")
    @classmethod
    def _context(cls, v: str) -> str:
        return require_text(v, "context", allow_empty=True)

    @model_validator(mode="after")
    def _one_chain(self) -> ChainRequest:
        if (self.steps is None) == (self.chain is None):
            raise ValueError("give exactly one of 'steps' (a list) or 'chain' (text)")
        if self.steps is not None:
            for i, s in enumerate(self.steps):
                require_text(s, f"step {i}")
        else:
            require_text(self.chain or "", "chain")
            steps = split_steps(self.chain or "")
            if not steps:
                raise ValueError("'chain' holds no sentence")
            if len(steps) > LIMITS.chain_steps:
                raise ValueError(
                    f"'chain' splits into {len(steps)} steps; at most {LIMITS.chain_steps}"
                )
            for i, step in enumerate(steps):
                require_text(step, f"step {i}")
        return self

    def step_list(self) -> list[str]:
        return list(self.steps) if self.steps is not None else split_steps(self.chain or "")


class ServiceError(Exception):
    """An error with an HTTP status and a message for the client (503s carry Retry-After)."""

    def __init__(self, status: int, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class TokenCounter:
    """Counts tokens as the judge's tokenizer splits them, safely from any thread.

    The judge tokenizes under its own lock, and a fast tokenizer fails ("Already borrowed")
    when two threads use it while one changes its padding settings; so the counter works on a
    private copy of the Rust tokenizer with padding and truncation off, which only reads.
    """

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(backend.to_str())
            copy.no_truncation()
            copy.no_padding()
            self._copy = copy
        else:  # a slow (pure Python) tokenizer: no Rust state to borrow
            self._copy = None
            self._tokenizer = tokenizer
            self._lock = threading.Lock()

    def count(self, texts: Sequence[str]) -> list[int]:
        if self._copy is not None:
            encoded = self._copy.encode_batch(list(texts), add_special_tokens=False)
            return [len(e.ids) for e in encoded]
        with self._lock:
            return [len(self._tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


_counters: weakref.WeakKeyDictionary[Any, TokenCounter] = weakref.WeakKeyDictionary()
_counters_lock = threading.Lock()


def _counter_for(tokenizer: Any) -> TokenCounter:
    """One counter per tokenizer (copying it takes about half a second)."""
    with _counters_lock:
        try:
            return _counters[tokenizer]
        except (KeyError, TypeError):
            pass
        counter = TokenCounter(tokenizer)
        with contextlib.suppress(TypeError):  # not weak-referenceable: no cache
            _counters[tokenizer] = counter
        return counter


def request_cost(context_tokens: int, step_tokens: Sequence[int]) -> int:
    """Tokens the judge reads for a statement (one step) or a chain: step ``i`` is judged on the
    context plus steps ``0..i-1``, so each step counts once for itself and once per later step."""
    n = len(step_tokens)
    return n * context_tokens + sum(t * (n - i) for i, t in enumerate(step_tokens))


@dataclass(eq=False)
class Job:
    """One request waiting for the model: a check (``what`` is the statement) or a chain
    (``what`` is the list of steps); ``model_answer`` is resolved (requests that want the
    model's answer run the whole pass, so they batch apart from fast ones)."""

    context: str
    what: str | list[str]
    model_answer: bool
    cost: int
    future: asyncio.Future = field(repr=False)
    taken: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def kind(self) -> str:
        return "check" if isinstance(self.what, str) else "chain"


class Batcher:
    """The queue in front of the model: requests wait here, and one dispatcher task per event
    loop hands them to ``run`` (in a worker thread) in batches.

    ``run(jobs)`` returns one outcome per job: its result, or the exception it failed with.
    The queue limits stay per request: with a pass running or a batch gathering, a request
    finding ``max_queue`` others waiting is refused at once (503 + Retry-After), and one not
    taken into a batch within ``request_timeout`` gets 503.
    """

    def __init__(self, settings: ServeSettings, run: Callable[[list[Job]], list[Any]],
                 metrics: Any) -> None:  # fmt: skip
        self.settings = settings
        self.run = run
        self.metrics = metrics
        self.pending: list[Job] = []
        self.running = False  # a pass is on the model
        self.mean_model_s = 1.0  # moving mean of model time per request, for Retry-After
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    @property
    def waiting(self) -> int:
        return len(self.pending)

    def retry_after(self) -> int:
        """Seconds until a retry may find room: mean model time per request x queue ahead."""
        return max(1, min(3600, math.ceil(self.mean_model_s * (self.waiting + 1))))

    async def submit(self, job: Job) -> Any:
        """Wait for the job's batch and return its result (or raise what it failed with)."""
        limits = self.settings
        # busy: a pass is on the model, or a batch is gathering (its requests wait too)
        if (self.running or self.pending) and self.waiting >= limits.max_queue:
            log.warning("queue full: %d waiting; answered 503", self.waiting)
            raise ServiceError(
                503,
                f"busy: {self.waiting} requests are waiting for the model, the most "
                f"this server queues (max_queue {limits.max_queue}); retry later",
                self.retry_after(),
            )
        self._ensure_dispatcher()
        self.pending.append(job)
        self.metrics.queue.inc()
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.taken.wait(), limits.request_timeout)
        finally:
            if not job.taken.is_set():  # timed out, or the client left
                self.pending.remove(job)
                self.metrics.queue.dec()
        if not job.taken.is_set():
            log.warning("waited %gs for the model; answered 503", limits.request_timeout)
            raise ServiceError(
                503,
                f"timed out: waited {limits.request_timeout:g} s for the model "
                "(request_timeout); retry later",
                self.retry_after(),
            )
        return await job.future

    def _ensure_dispatcher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        if self._task is not None and self._task.get_loop() is not loop:
            # a new event loop (tests run one per call): what waited in the old one is gone
            for _ in self.pending:
                self.metrics.queue.dec()
            self.pending.clear()
            self.running = False
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._dispatch(), name="qkscore-batcher")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def plan(self) -> tuple[list[Job], bool]:
        """The next batch from the waiting jobs (the first, then those after it with the same
        ``model_answer`` while the batch has room), and whether it is full."""
        limits = self.settings
        first = self.pending[0]
        batch, tokens = [first], first.cost
        for job in self.pending[1:]:
            if len(batch) >= limits.max_batch:
                break
            if job.model_answer != first.model_answer:
                continue
            if tokens + job.cost > limits.max_batch_tokens:
                return batch, True
            batch.append(job)
            tokens += job.cost
        full = len(batch) >= limits.max_batch or tokens >= limits.max_batch_tokens
        return batch, full

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        window = self.settings.batch_window_ms / 1000
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            if window > 0 and self.settings.batching:
                deadline = loop.time() + window
                while self.pending and not self.plan()[1] and loop.time() < deadline:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                if not self.pending:  # all timed out or left meanwhile
                    continue
            batch = self.plan()[0]
            for job in batch:
                self.pending.remove(job)
                self.metrics.queue.dec()
                job.taken.set()
            self.running = True
            start = time.perf_counter()
            try:
                outcomes = await anyio.to_thread.run_sync(self.run, batch)
            except Exception as err:  # run returns every request's error: a bug
                outcomes = [err] * len(batch)
            except BaseException:  # shut down while the batch ran: answer its requests
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(ServiceError(503, "the server is stopping"))
                raise
            finally:
                self.running = False
                spent = (time.perf_counter() - start) / len(batch)
                self.mean_model_s = 0.8 * self.mean_model_s + 0.2 * spent
                self.metrics.batch_size.observe(len(batch))
            for job, outcome in zip(batch, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _given_key(headers: Headers) -> str | None:
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given or None


def _key_problem(headers: Headers, api_key: str | None) -> str | None:
    """Why a request may not use a keyed route (None: it may)."""
    if not api_key:
        return None
    given = _given_key(headers)
    if not given:
        return "this server needs an API key: X-API-Key or Bearer header"
    if not secrets.compare_digest(given.encode(), api_key.encode()):
        return "wrong API key"
    return None


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def _keyed(path: str) -> bool:
    """The routes that need the key: every ``/v1`` path (known or not) and ``/metrics``."""
    return path in ("/v1", "/metrics") or path.startswith("/v1/")


class RequestGuard:
    """ASGI middleware that runs before any route parses a request: 401 for a keyed route
    without the key (the body unread), 413 for a body over ``max_body_bytes`` (by its
    Content-Length, or once that many bytes have streamed in). The body, at most that long, is
    handed on whole."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = _key_problem(headers, self.api_key) if _keyed(scope["path"]) else None
        if problem:
            resp = _error(401, problem)
            resp.headers["WWW-Authenticate"] = "Bearer"
            await resp(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await _error(400, f"bad Content-Length {length!r}")(scope, receive, send)
            return
        if length is not None and int(length) > self.max_body_bytes:
            await self._too_big(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:  # streamed (chunked): stop reading here
                await self._too_big(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        whole: dict | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict:
            nonlocal whole
            if whole is None:
                return await receive()
            message, whole = whole, None
            return message

        await self.app(scope, replay, send)

    async def _too_big(self, scope: dict, receive: Any, send: Any) -> None:
        message = (
            f"the request body is over {self.max_body_bytes:,} bytes, the most this server "
            "reads (see the text limits in /v1/profile)"
        )
        await _error(413, message)(scope, receive, send)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _clean(obj: Any) -> Any:
    """JSON cannot carry NaN or infinity: send null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _profile_view(judge: Judge) -> dict[str, Any]:
    """The profile as the dashboard needs it: figures and heatmap arrays, no item ids; the
    reader's own figures and map in ``reader_view``, the single head's beside them."""
    from qkscore.audit.dashboard import reader_view

    data = judge.profile.data
    sel = data["selector"]
    ens = data.get("ensemble") or None
    calibration = {
        k: v for k, v in data.get("calibration", {}).items() if k not in ("item_ids", "item_hashes")
    }
    return _clean(
        {
            **judge.describe(),
            "created": data.get("created"),
            "qkscore_version": data.get("qkscore_version"),
            "calibration": calibration,
            "heatmap": {
                "metric": "accuracy",
                "accuracy": sel.get("accuracy"),
                "balanced_accuracy": sel.get("balanced_accuracy"),
                "auroc": sel.get("auroc"),
                "sign": sel.get("sign"),
            },
            "ranking": (data.get("ranking") or [])[:20],
            "reader_view": reader_view(judge),
            "ensemble": None
            if ens is None
            else {"k": ens.get("k"), "heads": ens.get("heads"), "method": ens["params"]["method"]},
        }
    )


def create_app(
    judge: Judge,
    db_path: str | Path | AuditStore,
    store_text: bool = True,
    api_key: str | None = None,
    *,
    hash_key: bytes | None = None,
    raise_unexpected: bool = False,
    limits: ServeSettings | None = None,
    model_load_seconds: float | None = None,
) -> FastAPI:
    """The service around one loaded :class:`Judge`, logging to the audit store ``db_path``
    (an SQLite path or a ``postgresql://`` URL, see :class:`~qkscore.audit.store.AuditStore`).

    ``db_path`` may be an open :class:`AuditStore` (the CLI opens it before loading the model,
    so a bad ``--db`` fails first); the app closes it on shutdown. A path that cannot hold the
    log raises :class:`~qkscore.audit.store.AuditStoreError`. ``limits``: the compute budget,
    queue length and timeout and the batching (:class:`ServeSettings`, its defaults when None;
    its other fields are the caller's to apply).

    ``api_key`` (the CLI reads ``QKSCORE_API_KEY``) protects every ``/v1`` route; clients send
    ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. ``raise_unexpected`` re-raises errors
    the service did not foresee instead of answering 503, so tests see real bugs. ``hash_key``
    (the CLI reads ``QKSCORE_AUDIT_HASH_KEY``) keys the logged input hashes (see ``input_hash``).
    ``model_load_seconds``: reported by ``/metrics`` (the caller timed the judge's loading).
    """
    from qkscore._version import __version__
    from qkscore.audit.dashboard import DASHBOARD_HTML, check_figures
    from qkscore.audit.metrics import ServiceMetrics

    limits = (limits or ServeSettings()).for_device(getattr(judge.lm.device, "type", "cpu"))
    figures = check_figures(judge)  # whose verdict /v1/check gives, and whose qk_scores
    counter = _counter_for(judge.lm.tokenizer)
    if isinstance(db_path, AuditStore):
        store = db_path
        store.store_text, store.hash_key = store_text, hash_key
    else:
        store = AuditStore(db_path, store_text=store_text, hash_key=hash_key)
    metrics = ServiceMetrics()
    if model_load_seconds is not None:
        metrics.model_load.set(model_load_seconds)

    def lm_dtype() -> str:
        return dtype_name(judge.lm.dtype)

    def log_row(job: Job, result: Any) -> dict[str, Any]:
        """Append the request's own audit row; its answer with the row's id."""
        out = result.to_dict()
        common = dict(profile=judge.profile.digest, fingerprint=judge.fingerprint,
                      context=job.context, dtype=lm_dtype())  # fmt: skip
        if job.kind == "check":
            audit_id = store.append_check(statement=job.what, verdict=out, **common)
            return {**out, **figures, "audit_id": audit_id}
        audit_id = store.append_chain(steps=job.what, chain=out, **common)
        return {**out, "audit_id": audit_id}

    def alone(job: Job) -> dict[str, Any]:
        if job.kind == "check":
            return log_row(job, judge.check(job.context, job.what, job.model_answer))
        return log_row(job, judge.verify_chain(job.context, job.what, job.model_answer))

    def outcome(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:
            return err

    max_padding = limits.max_padding

    def run_batch(jobs: list[Job]) -> list[Any]:
        """In a worker thread: each job's answer (its audit row written) or its error. A batch
        whose pass fails is judged again one request at a time, so an error stays its own."""
        if len(jobs) > 1:
            try:
                results = judge.judge_together([(j.context, j.what) for j in jobs],
                                               jobs[0].model_answer, max_padding)  # fmt: skip
            except Exception as err:
                log.warning("a batch of %d failed (%r); judging one at a time", len(jobs), err)
            else:
                return [outcome(lambda j=j, r=r: log_row(j, r)) for j, r in zip(jobs, results)]
        return [outcome(lambda j=j: alone(j)) for j in jobs]

    batcher = Batcher(limits, run_batch, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        batcher.close()
        store.close()

    # No /docs or /redoc: they load their scripts from a CDN, useless offline. The OpenAPI
    # schema stays public only when no key is set ("every route but /healthz needs the key").
    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None if api_key else "/openapi.json",
        title="qkscore",
        version=__version__,
        description="Judge statements and chains of thought with one calibrated attention head.",
    )
    app.state.judge = judge
    app.state.store = store
    app.state.batcher = batcher  # the queue: requests waiting for the model
    app.state.unexpected_errors = []
    app.state.metrics = metrics
    # added first, so it runs inside _count, which then counts its 401s and 413s too
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=LIMITS.body_bytes)
    paths: set[str] = set()  # the routes' paths, read on first use

    def labels(request: Request) -> tuple[str, str]:
        """The route and method labels: the route's path (also for a request refused before
        routing) or "unmatched", and a standard method or "other", so made-up paths and
        methods cannot grow the label set."""
        if not paths:
            paths.update(getattr(r, "path", "") for r in (*app.routes, *v1.routes))
        route = getattr(request.scope.get("route"), "path", None)
        path = request.scope["path"]
        route = route or (path if path in paths else "unmatched")
        return route, request.method if request.method in _METHODS else "other"

    @app.middleware("http")
    async def _count(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            path, method = labels(request)
            metrics.requests.labels(path, method, str(status)).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - start)

    # ---- errors ---------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        return _error(422, _validation_message(errors), detail=errors)

    @app.exception_handler(ServiceError)
    async def _on_service_error(_: Request, exc: ServiceError) -> JSONResponse:
        resp = _error(exc.status, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        if exc.status == 503:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp

    @app.exception_handler(Exception)
    async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        # Reached only for errors outside the guarded routes (Starlette re-raises afterwards,
        # so the server log keeps the traceback).
        return _error(503, f"the service failed: {type(exc).__name__}: {exc}")

    # ---- auth -----------------------------------------------------------------------------

    def require_key(request: Request) -> None:
        """The routes' own check (the guard has already answered 401 before the body)."""
        problem = _key_problem(request.headers, api_key)
        if problem:
            raise ServiceError(401, problem)

    def has_key(request: Request) -> bool:
        """True when no key is set or the request carries the right one."""
        return _key_problem(request.headers, api_key) is None

    # ---- limits and judging ---------------------------------------------------------------

    async def within_budget(context: str, statements: list[str], what: str) -> int:
        """The request's cost in tokens (see ``request_cost``), refused over the budget."""
        counts = await anyio.to_thread.run_sync(counter.count, [context, *statements])
        ctx, steps = counts[0], counts[1:]
        cost = request_cost(ctx, steps)
        budget = limits.max_tokens_per_request
        if cost > budget:
            if what == "check":
                detail = f"context {ctx:,} + statement {steps[0]:,}"
            else:
                detail = (
                    f"{len(steps)} steps x context {ctx:,} + {cost - len(steps) * ctx:,} for the "
                    "steps, each judged after the steps before it"
                )
            raise ServiceError(
                413,
                f"this request costs {cost:,} tokens ({detail}); the budget is {budget:,} tokens "
                "per request (max_tokens_per_request): shorten the context or send fewer steps",
            )
        return cost

    async def judged(job: Job) -> dict[str, Any]:
        """Queue the request for the model and map its failure to 400 or 503."""
        try:
            return await batcher.submit(job)
        except ServiceError:
            raise
        except ValueError as err:  # input the template or the model cannot take
            raise ServiceError(400, str(err)) from err
        except Exception as err:
            log.error("judging failed", exc_info=err)
            app.state.unexpected_errors.append(repr(err))
            if raise_unexpected:
                raise
            raise ServiceError(
                503, f"the model could not judge this request: {type(err).__name__}: {err}"
            ) from err

    def job(context: str, what: str | list[str], model_answer: bool | None, cost: int) -> Job:
        want = judge.model_answer if model_answer is None else model_answer
        future = asyncio.get_running_loop().create_future()
        return Job(context, what, bool(want), cost, future)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.post("/check")
    async def check(req: CheckRequest) -> dict[str, Any]:
        """Judge whether the statement follows from the context."""
        cost = await within_budget(req.context, [req.statement], "check")
        out = await judged(job(req.context, req.statement, req.model_answer, cost))
        metrics.verdicts.labels("check", out["verdict"]).inc()
        return _clean(out)

    @v1.post("/verify-chain")
    async def verify_chain(req: ChainRequest) -> dict[str, Any]:
        """Judge each step against the context plus the steps before it."""
        steps = req.step_list()
        cost = await within_budget(req.context, steps, "chain")
        out = await judged(job(req.context, steps, req.model_answer, cost))
        verdict = "valid" if out.get("first_failure") is None else "invalid"
        metrics.verdicts.labels("chain", verdict).inc()
        return _clean(out)

    @v1.get("/profile")
    async def profile() -> dict[str, Any]:
        """The profile: head, threshold, calibration figures and the head heatmap arrays, with
        the dtype the model runs in and the request limits."""
        return {**_profile_view(judge), "dtype": lm_dtype(), "limits": limits.describe()}

    @v1.get("/audit")
    def audit(
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_INT64),
        cursor: int | None = Query(
            None, ge=MIN_INT64, le=MAX_INT64, description="next_cursor of the previous page"
        ),
        verdict: str | None = Query(None, pattern="^(valid|invalid)$"),
        kind: str | None = Query(None, pattern="^(check|chain)$"),
        since: str | None = Query(None, description="unix seconds or ISO 8601"),
        until: str | None = Query(None, description="unix seconds or ISO 8601"),
    ) -> dict[str, Any]:
        """Logged decisions, newest first."""
        try:
            page = store.query(
                limit=limit,
                offset=offset,
                cursor=cursor,
                verdict=verdict,
                kind=kind,
                since=since,
                until=until,
            )
        except ValueError as err:
            raise ServiceError(400, str(err)) from err
        return _clean(page.to_dict())

    app.include_router(v1)

    @app.get("/metrics", dependencies=[Depends(require_key)], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/healthz")
    @app.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness for anyone; what runs (model, profile, head, queue, limits) only for a
        caller with the key when one is set."""
        if not has_key(request):
            return {"status": "ok"}
        return {
            "status": "ok",
            "model": judge.lm.name,
            "fingerprint": judge.fingerprint,
            "profile": judge.profile.digest,
            "head": judge.head,
            "dtype": lm_dtype(),
            "busy": batcher.running,
            "queue": batcher.waiting,
            "limits": limits.describe(),
            "auth": bool(api_key),
            "store_text": store_text,
            "worker": os.getpid(),
            "store": store.url,
        }

    @app.api_route(
        "/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False
    )
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    return app


def serve(
    judge: Judge,
    db_path: str | Path | AuditStore,
    host: str = "127.0.0.1",
    port: int = 8000,
    store_text: bool = True,
    api_key: str | None = None,
    hash_key: bytes | None = None,
    limits: ServeSettings | None = None,
    model_load_seconds: float | None = None,
) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    app = create_app(
        judge,
        db_path,
        store_text=store_text,
        api_key=api_key,
        hash_key=hash_key,
        limits=limits,
        model_load_seconds=model_load_seconds,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


# ---- several workers: the app built from environment variables --------------------------------

# What ``app_from_env`` reads: every :class:`ServeSettings` field as a ``QKSCORE_SERVE_*``
# variable (``qkscore serve --workers N`` sets them; uvicorn's workers re-import the app, so
# its settings cannot travel as arguments). QKSCORE_API_KEY and QKSCORE_AUDIT_HASH_KEY are
# read as in one process.
ENV = {name: env_name(name) for name in ServeSettings.model_fields}


def app_from_env() -> FastAPI:
    """The service as ``qkscore serve`` builds it, from the ``QKSCORE_SERVE_*`` variables
    (:class:`ServeSettings`): the factory each uvicorn worker calls (``--factory``). Loads its
    own copy of the model and opens its own connection(s) to the shared audit store."""
    settings = ServeSettings()
    if settings.profile is None:
        raise RuntimeError(f"{ENV['profile']} is not set: the profile to serve")
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    hash_key = os.environ.get("QKSCORE_AUDIT_HASH_KEY", "").encode() or None
    store = AuditStore(settings.db, settings.store_text, hash_key)
    try:
        start = time.perf_counter()
        judge = Judge(
            settings.profile,
            model=settings.model,
            dtype=settings.dtype,
            model_answer=not settings.fast,
        )
        load_s = time.perf_counter() - start
    except BaseException:
        store.close()
        raise
    log.info("worker %d: model loaded in %.1f s", os.getpid(), load_s)
    return create_app(
        judge,
        store,
        store_text=settings.store_text,
        api_key=os.environ.get("QKSCORE_API_KEY") or None,
        hash_key=hash_key,
        limits=settings,
        model_load_seconds=load_s,
    )


def serve_workers(host: str = "127.0.0.1", port: int = 8000, workers: int = 2) -> None:
    """Run ``workers`` uvicorn worker processes of :func:`app_from_env` until interrupted
    (the caller has set the ``QKSCORE_SERVE_*`` variables). Their Prometheus metrics are
    pooled in a temporary folder (``PROMETHEUS_MULTIPROC_DIR``) that is removed at exit."""
    import shutil
    import tempfile

    import uvicorn

    made = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = tempfile.mkdtemp(prefix="qkscore-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    try:
        uvicorn.run(
            "qkscore.audit.service:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
        )
    finally:
        if made:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(made, ignore_errors=True)

"""The HTTP service: judge statements and chains over JSON, log every decision, serve the
dashboard.

Routes (``/v1`` routes need the API key when one is set; ``/healthz`` and the dashboard shell
``/``, which holds no data, never do)::

    POST /v1/check         {"context", "statement", "model_answer"?}     -> Verdict + audit id
    POST /v1/verify-chain  {"context", "steps": [...] | "chain": "..."}  -> ChainResult + audit id
    GET  /v1/profile       the profile's head, calibration figures and head heatmap arrays
    GET  /v1/audit         logged decisions, newest first (limit/offset or cursor; verdict,
                           kind and time filters)
    GET  /healthz          liveness, model and profile digest
    GET  /                 the dashboard (self-contained HTML; fetches the two GET routes)

One model serves every request. Judging runs in a worker thread so the event loop keeps
answering (health checks, the dashboard, the audit log) while the model works; a capacity
limiter of one lets queued requests wait in the event loop instead of occupying threads, and
the judge's own lock keeps the model safe from any other caller. Bad input gets a 4xx with a
message naming the field; a failure inside the model gets a 503 with its reason, never a bare
500.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qkscore.audit.chain import split_steps
from qkscore.audit.check import Judge
from qkscore.audit.store import AuditStore

__all__ = ["Limits", "create_app"]

log = logging.getLogger("qkscore.serve")


@dataclass(frozen=True)
class Limits:
    """Request limits: long texts cost model time and memory for everyone behind them."""

    context_chars: int = 20_000
    statement_chars: int = 2_000
    chain_steps: int = 64
    chain_chars: int = 40_000
    max_pending: int = 256


LIMITS = Limits()


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be blank")
    return value


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
        return _not_blank(v, "statement")


Step = Annotated[str, Field(min_length=1, max_length=LIMITS.statement_chars)]


class ChainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: str = Field("", max_length=LIMITS.context_chars)
    steps: list[Step] | None = Field(None, min_length=1, max_length=LIMITS.chain_steps)
    chain: str | None = Field(
        None, min_length=1, max_length=LIMITS.chain_chars, description="Text split into sentences."
    )
    model_answer: bool | None = None

    @model_validator(mode="after")
    def _one_chain(self) -> ChainRequest:
        if (self.steps is None) == (self.chain is None):
            raise ValueError("give exactly one of 'steps' (a list) or 'chain' (text)")
        if self.steps is not None:
            for i, s in enumerate(self.steps):
                _not_blank(s, f"step {i}")
        else:
            n = len(split_steps(self.chain or ""))
            if n == 0:
                raise ValueError("'chain' holds no sentence")
            if n > LIMITS.chain_steps:
                raise ValueError(f"'chain' splits into {n} steps; at most {LIMITS.chain_steps}")
        return self

    def step_list(self) -> list[str]:
        return list(self.steps) if self.steps is not None else split_steps(self.chain or "")


class ServiceError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


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
    """The profile as the dashboard needs it: figures and heatmap arrays, no item ids."""
    data = judge.profile.data
    sel = data["selector"]
    ens = data.get("ensemble") or None
    calibration = {k: v for k, v in data.get("calibration", {}).items() if k != "item_ids"}
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
            "ensemble": None
            if ens is None
            else {"k": ens.get("k"), "heads": ens.get("heads"), "method": ens["params"]["method"]},
        }
    )


def create_app(
    judge: Judge,
    db_path: str | Path,
    store_text: bool = True,
    api_key: str | None = None,
    *,
    hash_key: bytes | None = None,
    raise_unexpected: bool = False,
) -> FastAPI:
    """The service around one loaded :class:`Judge`, logging to the SQLite file ``db_path``.

    ``api_key`` (the CLI reads ``QKSCORE_API_KEY``) protects every ``/v1`` route; clients send
    ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. ``raise_unexpected`` re-raises errors
    the service did not foresee instead of answering 503, so tests see real bugs. ``hash_key``
    (the CLI reads ``QKSCORE_AUDIT_HASH_KEY``) keys the logged input hashes (see ``input_hash``).
    """
    from qkscore._version import __version__
    from qkscore.audit.dashboard import DASHBOARD_HTML

    store = AuditStore(db_path, store_text=store_text, hash_key=hash_key)
    model_limiter = anyio.CapacityLimiter(1)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
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
    app.state.pending = 0
    app.state.unexpected_errors = []

    # ---- errors ---------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        return _error(422, _validation_message(errors), detail=errors)

    @app.exception_handler(ServiceError)
    async def _on_service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        resp = _error(exc.status, exc.message)
        if headers:
            resp.headers.update(headers)
        if exc.status == 503:
            resp.headers["Retry-After"] = "1"
        return resp

    @app.exception_handler(Exception)
    async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        # Reached only for errors outside the guarded routes (Starlette re-raises afterwards,
        # so the server log keeps the traceback).
        return _error(503, f"the service failed: {type(exc).__name__}: {exc}")

    # ---- auth -----------------------------------------------------------------------------

    def require_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ServiceError(401, "this server needs an API key: X-API-Key or Bearer header")
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise ServiceError(401, "wrong API key")

    # ---- judging --------------------------------------------------------------------------

    async def judged(work) -> Any:
        """Run ``work`` on the model in a worker thread, one at a time, mapping failures."""
        if app.state.pending >= LIMITS.max_pending:
            raise ServiceError(503, f"busy: {app.state.pending} requests are waiting; retry")
        app.state.pending += 1
        try:
            return await anyio.to_thread.run_sync(work, limiter=model_limiter)
        except ValueError as err:  # input the template or the model cannot take
            raise ServiceError(400, str(err)) from err
        except Exception as err:
            log.exception("judging failed")
            app.state.unexpected_errors.append(repr(err))
            if raise_unexpected:
                raise
            raise ServiceError(
                503, f"the model could not judge this request: {type(err).__name__}: {err}"
            ) from err
        finally:
            app.state.pending -= 1

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.post("/check")
    async def check(req: CheckRequest) -> dict[str, Any]:
        """Judge whether the statement follows from the context."""

        def work() -> dict[str, Any]:
            verdict = judge.check(req.context, req.statement, req.model_answer).to_dict()
            audit_id = store.append_check(
                profile=judge.profile.digest,
                fingerprint=judge.fingerprint,
                context=req.context,
                statement=req.statement,
                verdict=verdict,
            )
            return {**verdict, "audit_id": audit_id}

        return _clean(await judged(work))

    @v1.post("/verify-chain")
    async def verify_chain(req: ChainRequest) -> dict[str, Any]:
        """Judge each step against the context plus the steps before it."""
        steps = req.step_list()

        def work() -> dict[str, Any]:
            result = judge.verify_chain(req.context, steps, req.model_answer).to_dict()
            audit_id = store.append_chain(
                profile=judge.profile.digest,
                fingerprint=judge.fingerprint,
                context=req.context,
                steps=steps,
                chain=result,
            )
            return {**result, "audit_id": audit_id}

        return _clean(await judged(work))

    @v1.get("/profile")
    async def profile() -> dict[str, Any]:
        """The profile: head, threshold, calibration figures and the head heatmap arrays."""
        return _profile_view(judge)

    @v1.get("/audit")
    def audit(
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
        cursor: int | None = Query(None, ge=0, description="next_cursor of the previous page"),
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

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": judge.lm.name,
            "fingerprint": judge.fingerprint,
            "profile": judge.profile.digest,
            "head": judge.head,
            "pending": app.state.pending,
            "auth": bool(api_key),
            "store_text": store_text,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    return app


def serve(
    judge: Judge,
    db_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    store_text: bool = True,
    api_key: str | None = None,
    hash_key: bytes | None = None,
) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    app = create_app(judge, db_path, store_text=store_text, api_key=api_key, hash_key=hash_key)
    uvicorn.run(app, host=host, port=port, log_level="info")

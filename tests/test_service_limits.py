"""The service under bad requests, on the real SmolLM2 judge: the compute budget, the bounded
queue and its timeout, the key checked and the body bounded before any parsing, audit paging
bounds, /healthz without the key, HEAD, a bad --db, text
that is blank after Unicode normalisation, and the dtype each audit row records (old logs
migrated)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import time

import pytest

from audit_fixtures import CONTEXT, STATEMENTS, live_server, run
from audit_fixtures import asgi_client as _client
from qkscore.audit.service import LIMITS, ServeSettings, create_app, request_cost
from qkscore.audit.store import MAX_INT64, MIN_INT64, AuditStore, AuditStoreError
from tiny_models import few_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with few_threads():
        yield


def _tokens(judge, text: str) -> int:
    return len(judge.lm.tokenizer(text, add_special_tokens=False)["input_ids"])


# ---- the compute budget ---------------------------------------------------------------------


def test_over_budget_requests_get_413_naming_budget_and_cost(judge, tmp_path):
    limits = ServeSettings(max_tokens_per_request=600)
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True, limits=limits)
    context = " ".join([CONTEXT] * 12)
    steps = ["Max is a wumpus.", "Max is a jompus.", "Max is red."]
    ctx, per_step = _tokens(judge, context), [_tokens(judge, s) for s in steps]
    chain_cost = request_cost(ctx, per_step)
    assert chain_cost == 3 * ctx + 3 * per_step[0] + 2 * per_step[1] + per_step[2] > 600
    check_cost = ctx + per_step[0]
    assert ctx < 600 < 3 * ctx

    async def go():
        async with _client(app) as c:
            r = await c.post("/v1/verify-chain", json={"context": context, "steps": steps})
            assert r.status_code == 413, r.text
            assert r.json()["error"] == (
                f"this request costs {chain_cost:,} tokens (3 steps x context {ctx:,} + "
                f"{chain_cost - 3 * ctx:,} for the steps, each judged after the steps before "
                "it); the budget is 600 tokens per request (max_tokens_per_request): shorten "
                "the context or send fewer steps"
            )
            big = {"context": context * 3, "statement": steps[0]}
            r = await c.post("/v1/check", json=big)
            assert r.status_code == 413
            assert "(context " in r.json()["error"] and "budget is 600 tokens" in r.json()["error"]
            assert (await c.get("/v1/audit")).json()["total"] == 0
            ok = {"context": context, "statement": steps[0], "model_answer": False}
            assert check_cost <= 600
            r = await c.post("/v1/check", json=ok)
            assert r.status_code == 200, r.text

    run(go())


def test_default_budget_refuses_the_310_second_chain_at_once(judge, tmp_path):
    """The incident: a 20,000-character context with 64 steps. Refused before any pass."""
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)
    context = (CONTEXT + " ") * (20_000 // (len(CONTEXT) + 1))
    steps = [f"Max is number {i}." for i in range(64)]

    async def go():
        async with _client(app) as c:
            t0 = time.perf_counter()
            r = await c.post("/v1/verify-chain", json={"context": context, "steps": steps})
            return r, time.perf_counter() - t0

    r, seconds = run(go())
    assert r.status_code == 413 and "the budget is 32,768 tokens" in r.json()["error"]
    assert "64 steps x context" in r.json()["error"] and seconds < 5


# ---- the key and the body, before any parsing -----------------------------------------------

KEY = {"X-API-Key": "s3cret"}
JSON = {"Content-Type": "application/json"}
MIB = 1024 * 1024


class Body:
    """A streamed request body (chunked, no Content-Length) that counts what the server read."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self):
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"x" * self.chunk


def test_a_request_without_the_key_gets_401_before_its_body_is_read(judge, tmp_path):
    """Issue 22, finding 8: a bad body without the key got 422 (parsed first)."""
    app = create_app(judge, tmp_path / "audit.db", api_key="s3cret", raise_unexpected=True)
    streamed = Body(16 * MIB)

    async def go():
        async with _client(app) as c:
            bad = await c.post("/v1/check", content=b"{not json",
                               headers={"Content-Type": "application/json"})  # fmt: skip
            big = await c.post("/v1/verify-chain", content=streamed)
            unknown = await c.post("/v1/no-such-route", json={"statement": "a."})
            return bad, big, unknown

    for r in run(go()):
        assert r.status_code == 401, r.text
        assert r.json() == {"error": "this server needs an API key: X-API-Key or Bearer header"}
        assert r.headers["www-authenticate"] == "Bearer"
    assert streamed.sent <= streamed.chunk  # not read beyond what the transport pre-fetched


def test_a_body_over_the_limit_gets_413_before_it_is_read_whole(judge, tmp_path):
    """Issue 22, finding 8: a 200 MB body was parsed whole (memory 1.9 to 2.35 GB)."""
    app = create_app(judge, tmp_path / "audit.db", api_key="s3cret", raise_unexpected=True)
    limit = LIMITS.body_bytes
    streamed = Body(16 * MIB)
    message = (
        f"the request body is over {limit:,} bytes, the most this server reads (see the text "
        "limits in /v1/profile)"
    )

    async def go():
        async with _client(app) as c:
            declared = await c.post("/v1/check", content=b" " * (limit + 1), headers=KEY)
            chunked = await c.post("/v1/check", content=streamed, headers=KEY)
            # a body just under the limit reaches the route whole (and its context is too long)
            body = json.dumps({"statement": "a.", "context": "x" * (limit - 40)}).encode()
            fits = await c.post("/v1/check", content=body, headers={**KEY, **JSON})
            return declared, chunked, fits, len(body)

    declared, chunked, fits, size = run(go())
    assert (declared.status_code, declared.json()) == (413, {"error": message})
    assert (chunked.status_code, chunked.json()) == (413, {"error": message})
    assert streamed.sent <= limit + 2 * streamed.chunk  # stopped at the limit, not 16 MiB
    assert size <= limit and fits.status_code == 422
    assert fits.json()["error"] == (
        "invalid request: context: String should have at most 20000 characters"
    )
    # the largest valid request, at 12 bytes a character (astral ones as two \u escapes)
    most = LIMITS.context_chars + LIMITS.chain_steps * LIMITS.statement_chars
    assert 12 * most + 1000 < limit


def _raw_post(base: str, headers: str) -> tuple[str, float]:
    """Send only the headers of a POST over a real socket; the status line and the seconds."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        t0 = time.perf_counter()
        sock.sendall(f"POST /v1/check HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        status = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        return status, time.perf_counter() - t0


def test_a_200_mb_content_length_is_refused_at_once_by_a_real_server(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", api_key="s3cret", raise_unexpected=True)
    huge = "Content-Type: application/json\r\nContent-Length: 209715200\r\n"
    with live_server(app) as base:
        no_key, t_no_key = _raw_post(base, huge)
        with_key, t_key = _raw_post(base, huge + "X-API-Key: s3cret\r\n")
    assert no_key == "HTTP/1.1 401 Unauthorized" and t_no_key < 5
    assert with_key == "HTTP/1.1 413 Request Entity Too Large" and t_key < 5


# ---- the queue --------------------------------------------------------------------------------


@contextlib.contextmanager
def holding(judge):
    """Hold the judge's lock, as a long request would: the request on the model blocks."""
    judge._lock.acquire()
    try:
        yield
    finally:
        judge._lock.release()


async def _until_busy(c) -> None:
    deadline = time.monotonic() + 20
    while not (await c.get("/healthz")).json()["busy"]:
        assert time.monotonic() < deadline, "the first request never reached the model"
        await asyncio.sleep(0.02)


FAST = {"context": CONTEXT, "statement": STATEMENTS[0], "model_answer": False}


def test_full_queue_answers_503_with_retry_after_at_once(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", limits=ServeSettings(max_queue=0))

    async def go():
        async with _client(app) as c:
            with holding(judge):
                first = asyncio.create_task(c.post("/v1/check", json=FAST))
                await _until_busy(c)
                t0 = time.perf_counter()
                r = await c.post("/v1/check", json=FAST)
                waited = time.perf_counter() - t0
            return r, waited, await first

    r, waited, first = run(go())
    assert r.status_code == 503 and waited < 2, waited
    assert r.json()["error"] == (
        "busy: 0 requests are waiting for the model, the most this server queues "
        "(max_queue 0); retry later"
    )
    assert r.headers["retry-after"] == "1"  # no request measured yet: 1 s per request ahead
    assert first.status_code == 200, first.text
    assert app.state.unexpected_errors == []


def test_request_that_waits_too_long_gets_503(judge, tmp_path):
    limits = ServeSettings(max_queue=1, request_timeout=0.5)
    app = create_app(judge, tmp_path / "audit.db", limits=limits)

    async def go():
        async with _client(app) as c:
            with holding(judge):
                first = asyncio.create_task(c.post("/v1/check", json=FAST))
                await _until_busy(c)
                t0 = time.perf_counter()
                queued = asyncio.create_task(c.post("/v1/check", json=FAST))
                while (await c.get("/healthz")).json()["queue"] < 1:
                    await asyncio.sleep(0.01)
                full = await c.post("/v1/check", json=FAST)  # the one place is taken
                late = await queued
                waited = time.perf_counter() - t0
            first_r = await first
            return first_r, full, late, waited, (await c.get("/v1/audit")).json()["total"]

    first, full, late, waited, logged = run(go())
    assert full.status_code == 503 and full.headers["retry-after"] == "2"
    assert "max_queue 1" in full.json()["error"]
    assert late.status_code == 503, late.text
    assert late.json()["error"] == (
        "timed out: waited 0.5 s for the model (request_timeout); retry later"
    )
    assert late.headers["retry-after"] == "1"
    assert 0.5 <= waited < 5
    assert first.status_code == 200 and logged == 1


# ---- /v1/audit, /healthz, HEAD ------------------------------------------------------------------


def test_audit_offset_and_cursor_out_of_range_get_422(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            out = {}
            for name, low in (("offset", -1), ("cursor", MIN_INT64 - 1)):
                for value in (2**63, 2**64 + 5, low):
                    r = await c.get("/v1/audit", params={name: value})
                    out[name, value] = (r.status_code, r.json()["error"])
                for value in (MAX_INT64, low + 1):
                    r = await c.get("/v1/audit", params={name: value})
                    out[name, value] = (r.status_code, r.json()["items"])
            return out

    out = run(go())
    # a cursor may be negative: the next_cursor of a page ending at a row below id 1 (such a row
    # breaks the chain, and is listed so that it can be seen)
    for name, low, floor in (("offset", -1, 0), ("cursor", MIN_INT64 - 1, MIN_INT64)):
        big = f"invalid request: query.{name}: Input should be less than or equal to {MAX_INT64}"
        assert out[name, 2**63] == (422, big)
        assert out[name, 2**64 + 5] == (422, big)
        neg = f"invalid request: query.{name}: Input should be greater than or equal to {floor}"
        assert out[name, low] == (422, neg)
        assert out[name, MAX_INT64] == (200, [])
        assert out[name, low + 1] == (200, [])
    assert app.state.unexpected_errors == []
    store = AuditStore(tmp_path / "other.db")
    with pytest.raises(ValueError, match="offset must be between 0 and"):
        store.query(offset=2**63)
    with pytest.raises(ValueError, match=f"cursor must be between {MIN_INT64} and"):
        store.query(cursor=MIN_INT64 - 1)
    store.close()


def test_healthz_shows_details_only_with_the_key_and_head_answers(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", api_key="s3cret", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            bare = await c.get("/healthz")
            wrong = await c.get("/healthz", headers={"X-API-Key": "nope"})
            full = await c.get("/healthz", headers={"Authorization": "Bearer s3cret"})
            heads = [(await c.head(p)).status_code for p in ("/", "/healthz")]
            return bare, wrong, full, heads

    bare, wrong, full, heads = run(go())
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}
    assert wrong.json() == {"status": "ok"}
    details = full.json()
    assert details["model"] == judge.lm.name and details["fingerprint"] == judge.fingerprint
    assert details["profile"] == judge.profile.digest and details["head"] == judge.head
    assert details["dtype"] == "float32" and details["busy"] is False and details["queue"] == 0
    assert details["limits"] == ServeSettings().for_device("cpu").describe()
    assert details["limits"]["max_tokens_per_request"] == 32_768
    assert heads == [200, 200]


def test_profile_documents_limits_and_dtype(judge, tmp_path):
    limits = ServeSettings(max_tokens_per_request=5000, request_timeout=2.5, max_queue=3)
    app = create_app(judge, tmp_path / "audit.db", limits=limits)

    async def go():
        async with _client(app) as c:
            return (await c.get("/v1/profile")).json()

    p = run(go())
    assert p["dtype"] == "float32"
    assert p["limits"] == {
        "max_tokens_per_request": 5000,
        "request_timeout": 2.5,
        "max_queue": 3,
        "max_batch_tokens": 4096,
        "max_batch": 1,  # the defaults left to the device, resolved for this CPU
        "max_padding": 1.25,
        "batch_window_ms": 5.0,
        "context_chars": 20_000,
        "statement_chars": 2_000,
        "chain_steps": 64,
        "chain_chars": 40_000,
        "body_bytes": 2 * 1024 * 1024,
    }


# ---- text blank after normalisation ---------------------------------------------------------


BLANK = "must not be blank: nothing is left after Unicode normalisation"


@pytest.mark.parametrize(
    "path, payload, fragment",
    [
        ("/v1/check", {"statement": "\x00\x00\x00"}, f"statement: Value error, statement {BLANK}"),
        ("/v1/check", {"statement": "\u200b\u200c\u200d\ufeff"}, f"statement {BLANK}"),
        ("/v1/check", {"statement": "\u0301\u0308\u20dd"}, f"statement {BLANK}"),
        ("/v1/check", {"statement": "\u00a0\u3000\u2028"}, f"statement {BLANK}"),
        ("/v1/check", {"statement": "a.", "context": "\u200b\x00"}, f"context {BLANK}"),
        (
            "/v1/check",
            b'{"statement": "Max is\\ud800 red."}',
            "statement: Input should be a valid string",
        ),
        ("/v1/verify-chain", {"steps": ["Max is red.", "\u200d\u0301"]}, f"step 1 {BLANK}"),
        ("/v1/verify-chain", {"chain": "Max is red.\n\u200b\x00"}, f"step 1 {BLANK}"),
        ("/v1/verify-chain", {"chain": "\ufeff"}, f"chain {BLANK}"),
        ("/v1/verify-chain", {"context": "\x00", "steps": ["a."]}, f"context {BLANK}"),
    ],
)
def test_text_blank_after_normalisation_gets_422(judge, tmp_path, path, payload, fragment):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            if isinstance(payload, bytes):  # JSON escapes a client library will not send
                headers = {"Content-Type": "application/json"}
                r = await c.post(path, content=payload, headers=headers)
            else:
                r = await c.post(path, json=payload)
            return r, (await c.get("/v1/audit")).json()["total"]

    r, logged = run(go())
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]
    assert logged == 0


def test_require_text_keeps_real_text_unchanged():
    from qkscore.audit.text import require_text

    for text in ("Max is red.", "e\u0301t\u00e9.", "\u00bd", "Max\x00 is red."):
        assert require_text(text, "statement") is text
    assert require_text("", "context", allow_empty=True) == ""
    with pytest.raises(ValueError, match="context must not be blank"):
        require_text(" \u200b", "context", allow_empty=True)
    # a command-line argument that is not UTF-8 arrives with surrogate escapes
    with pytest.raises(ValueError, match="statement is not valid Unicode: .* U\\+DCFF"):
        require_text("Max is \udcff red.", "statement")


# ---- dtype in the audit log ---------------------------------------------------------------


def test_audit_rows_record_the_dtype(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            await c.post("/v1/check", json=FAST)
            chain = {"context": CONTEXT, "steps": STATEMENTS[:2], "model_answer": False}
            await c.post("/v1/verify-chain", json=chain)
            return (await c.get("/v1/audit")).json()["items"]

    rows = run(go())
    assert [r["kind"] for r in rows] == ["chain", "check"]
    assert [r["dtype"] for r in rows] == ["float32", "float32"]
    assert str(judge.lm.dtype) == "torch.float32"


_OLD_SCHEMA = """
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, time TEXT NOT NULL,
    kind TEXT NOT NULL, profile TEXT NOT NULL, fingerprint TEXT NOT NULL,
    input_hash TEXT NOT NULL, context TEXT, statement TEXT, steps TEXT, verdict TEXT NOT NULL,
    margin REAL, probability REAL, model_answer INTEGER, disagree INTEGER,
    first_failure INTEGER, n_steps INTEGER, latency_ms REAL, result TEXT NOT NULL
);
CREATE INDEX audit_ts ON audit (ts);
CREATE INDEX audit_verdict ON audit (verdict, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO audit (ts, time, kind, profile, fingerprint, input_hash, statement, verdict, result)
VALUES (1700000000, '2023-11-14T22:13:20.000+00:00', 'check', 'p', 'f', 'h', 'old.', 'valid',
        '{"verdict": "valid"}');
"""


def test_an_old_log_without_dtype_opens_and_gains_the_column(judge, tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(_OLD_SCHEMA)
    conn.close()
    app = create_app(judge, db, raise_unexpected=True)

    async def go():
        async with app.router.lifespan_context(app), _client(app) as c:
            await c.post("/v1/check", json=FAST)
            return (await c.get("/v1/audit")).json()

    page = run(go())
    assert page["total"] == 2
    new, old = page["items"]
    assert old["statement"] == "old." and old["dtype"] is None
    assert new["dtype"] == "float32" and new["statement"] == STATEMENTS[0]
    conn = sqlite3.connect(db)
    assert "dtype" in [r[1] for r in conn.execute("PRAGMA table_info(audit)")]
    version = "SELECT value FROM meta WHERE key = 'schema_version'"
    assert conn.execute(version).fetchall() == [("3",)]  # 3: the hash-linked ledger
    conn.close()
    AuditStore(db).close()  # opening a migrated log again changes nothing


# ---- a bad --db ---------------------------------------------------------------------------


def _invoke_serve(judge, monkeypatch, db, *extra):
    from typer.testing import CliRunner

    from qkscore.audit import service
    from qkscore.cli import app
    from qkscore.cli import audit as cli_audit

    calls = []

    def no_model(*a, **k):
        calls.append(a)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_audit, "_judge", no_model)
    monkeypatch.setattr(service, "serve", lambda *a, **k: None)
    args = ["serve", "--profile", str(judge.profile.path), "--db", str(db), *extra]
    return CliRunner().invoke(app, args), calls


def test_bad_db_fails_in_one_line_before_the_model_loads(judge, tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    folder.mkdir()
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database, just some notes\n" * 20)
    a_file = tmp_path / "plain"
    a_file.write_text("")
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE audit (who TEXT, what TEXT)")
    conn.commit()
    conn.close()
    cases = {
        folder: f"error: --db: {folder} is a folder, not an SQLite file",
        junk: f"error: --db: {junk} is not an SQLite database",
        a_file / "audit.db": f"error: --db: cannot create {a_file / 'audit.db'}: {a_file} is "
        "not a folder",
        foreign: f"error: --db: {foreign} holds an 'audit' table of another schema (no column "
        "id, ts, time, ...): give another file",
    }
    for db, message in cases.items():
        res, calls = _invoke_serve(judge, monkeypatch, db)
        assert res.exit_code == 2, res.output
        assert res.output.splitlines() == [message]
        assert calls == []
    assert junk.read_text().startswith("not a database")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_db_fails_before_the_model_loads(judge, tmp_path, monkeypatch):
    db = tmp_path / "ro.db"
    AuditStore(db).close()
    db.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        res, calls = _invoke_serve(judge, monkeypatch, db)
    finally:
        tmp_path.chmod(0o755)
    assert res.exit_code == 2 and calls == []
    (line,) = res.output.splitlines()
    assert line.startswith(f"error: --db: {db} cannot be written: ")


def test_store_error_is_a_value_error_with_one_line(tmp_path):
    with pytest.raises(AuditStoreError, match="is a folder"):
        AuditStore(tmp_path)
    assert issubclass(AuditStoreError, ValueError)


# ---- CLI defaults -------------------------------------------------------------------------


def test_commands_default_to_float32_and_serve_passes_limits(judge, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qkscore.audit import service
    from qkscore.cli import app
    from qkscore.cli import audit as cli_audit

    dtypes, seen = [], {}

    def fake_judge(profile, model, dtype, model_answer):
        dtypes.append(dtype)
        return judge

    monkeypatch.setattr(cli_audit, "_judge", fake_judge)
    monkeypatch.setattr(service, "serve", lambda j, db, **kw: seen.update(db=db, **kw))
    profile = str(judge.profile.path)
    runner = CliRunner()
    res = runner.invoke(app, ["check", "-p", profile, "-c", CONTEXT, "-s", STATEMENTS[0], "--fast"])
    assert res.exit_code == 0, res.output
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(STATEMENTS[:2]))
    res = runner.invoke(app, ["verify-chain", "-p", profile, "--chain", str(chain), "--fast"])
    assert res.exit_code == 0, res.output
    args = ["serve", "-p", profile, "--db", str(tmp_path / "a.db"), "--max-tokens-per-request",
            "5000", "--request-timeout", "2.5", "--max-queue", "3"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert dtypes == ["float32"] * 3
    limits = seen["limits"]
    assert (limits.max_tokens_per_request, limits.request_timeout, limits.max_queue) == (
        5000,
        2.5,
        3,
    )
    assert "5,000 tokens a request, 3 queued, 2.5 s wait" in " ".join(res.output.split())
    seen["db"].close()
    res = runner.invoke(app, ["check", "-p", profile, "-s", "\u200b\x00"])
    assert res.exit_code == 2 and "the statement must not be blank" in res.output
    assert len(dtypes) == 3  # refused before the model

"""The HTTP service on a real SmolLM2 judge: routes, limits, API key, the audit log, and 50
concurrent requests against a live uvicorn server."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx
import pytest

from audit_fixtures import CONTEXT, STATEMENTS, live_server, run
from audit_fixtures import asgi_client as _client
from qkscore.audit.service import ServeSettings, create_app
from qkscore.audit.store import AuditStore, input_hash, parse_time
from tiny_models import few_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with few_threads():
        yield


# ---- the store alone ------------------------------------------------------------------------


def test_store_pages_filters_and_wal(tmp_path):
    store = AuditStore(tmp_path / "a.db")
    assert store.journal_mode == "wal"
    verdict = {"verdict": "valid", "margin": 1.0, "probability": 0.7, "latency_ms": 3.0}
    ids = []
    for i in range(7):
        v = dict(verdict, verdict="valid" if i % 2 else "invalid")
        ids.append(store.append_check(profile="p", fingerprint="f", context="c", statement=f"s{i}",
                                      verdict=v))  # fmt: skip
    page = store.query(limit=3)
    assert [r["id"] for r in page.items] == ids[::-1][:3] and page.total == 7
    page2 = store.query(limit=3, cursor=page.next_cursor)
    assert [r["id"] for r in page2.items] == ids[::-1][3:6]
    assert store.query(limit=3, offset=6).items[0]["id"] == ids[0]
    assert store.query(limit=3, offset=6).next_cursor is None
    valid = store.query(verdict="valid", limit=100)
    assert valid.total == 3 and all(r["verdict"] == "valid" for r in valid.items)
    assert store.query(since=time.time() + 60).total == 0
    assert store.query(until="2000-01-01T00:00:00Z").total == 0
    assert store.query(since="2000-01-01").total == 7
    with pytest.raises(ValueError, match="ISO 8601"):
        store.query(since="yesterday")
    with pytest.raises(ValueError, match="verdict"):
        store.query(verdict="maybe")
    store.close()
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_parse_time():
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20") == 1700000000.0
    assert parse_time(None) is None


# ---- routes over ASGI -----------------------------------------------------------------------


def test_check_route_logs_every_request(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            health = (await c.get("/healthz")).json()
            assert health["status"] == "ok" and health["profile"] == judge.profile.digest
            r = await c.post("/v1/check", json={"context": CONTEXT, "statement": STATEMENTS[0]})
            assert r.status_code == 200, r.text
            body = r.json()
            direct = judge.check(CONTEXT, STATEMENTS[0])
            assert body["verdict"] == direct.verdict
            assert body["margin"] == pytest.approx(direct.margin, abs=1e-4)
            assert body["model_answer"] == direct.model_answer
            fast = await c.post(
                "/v1/check",
                json={"context": CONTEXT, "statement": STATEMENTS[1], "model_answer": False},
            )
            assert fast.json()["fast"] is True and fast.json()["model_answer"] is None
            page = (await c.get("/v1/audit")).json()
            assert page["total"] == 2
            newest, oldest = page["items"]
            assert newest["id"] == fast.json()["audit_id"] and oldest["id"] == body["audit_id"]
            assert oldest["statement"] == STATEMENTS[0] and oldest["context"] == CONTEXT
            assert oldest["profile"] == judge.profile.digest
            assert oldest["fingerprint"] == judge.fingerprint
            assert oldest["input_hash"] == input_hash("check", CONTEXT, STATEMENTS[0])
            assert oldest["verdict"] == body["verdict"]
            assert oldest["margin"] == pytest.approx(body["margin"])
            assert oldest["result"]["probability"] == pytest.approx(body["probability"])
            one = (await c.get("/v1/audit", params={"verdict": body["verdict"]})).json()
            assert all(r["verdict"] == body["verdict"] for r in one["items"])
            later = (await c.get("/v1/audit", params={"since": time.time() + 60})).json()
            assert later["total"] == 0
            paged = (await c.get("/v1/audit", params={"limit": 1})).json()
            rest = (await c.get("/v1/audit", params={"cursor": paged["next_cursor"]})).json()
            assert [r["id"] for r in paged["items"] + rest["items"]] == [
                r["id"] for r in page["items"]
            ]

    run(go())
    assert app.state.unexpected_errors == []


def test_verify_chain_route(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)
    steps = ["Max is a wumpus.", "Max is a jompus.", "Max is red."]

    async def go():
        async with _client(app) as c:
            r = await c.post(
                "/v1/verify-chain", json={"context": CONTEXT, "steps": steps, "model_answer": False}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            direct = judge.verify_chain(CONTEXT, steps, model_answer=False)
            assert [s["verdict"] for s in body["steps"]] == [s.verdict for s in direct.steps]
            assert body["first_failure"] == direct.first_failure
            text = {"context": CONTEXT, "chain": " ".join(steps)}
            t = await c.post("/v1/verify-chain", json=text)
            assert [s["statement"] for s in t.json()["steps"]] == steps
            rows = (await c.get("/v1/audit", params={"kind": "chain"})).json()["items"]
            assert len(rows) == 2 and rows[1]["steps"] == steps
            assert rows[1]["first_failure"] == direct.first_failure
            assert rows[1]["n_steps"] == 3
            assert rows[1]["verdict"] == ("valid" if direct.first_failure is None else "invalid")

    run(go())


def test_profile_route(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db")

    async def go():
        async with _client(app) as c:
            p = (await c.get("/v1/profile")).json()
            assert p["head"] == judge.head and p["digest"] == judge.profile.digest
            acc = p["heatmap"]["accuracy"]
            assert len(acc) == judge.lm.n_layers and len(acc[0]) == judge.lm.n_heads
            assert "item_ids" not in p["calibration"] and p["calibration"]["size"] == 80
            assert p["ranking"][0]["name"] == judge.head
            page = await c.get("/")
            assert page.status_code == 200 and "<svg" in page.text
            assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")
            assert "https://" not in page.text

    run(go())


@pytest.mark.parametrize(
    "path, payload, fragment",
    [
        ("/v1/check", {"context": CONTEXT}, "statement: Field required"),
        ("/v1/check", {"statement": "   "}, "statement must not be blank"),
        ("/v1/check", {"statement": "x" * 2001}, "at most 2000 characters"),
        ("/v1/check", {"statement": "a.", "context": "x" * 20001}, "context"),
        ("/v1/check", {"statement": "a.", "colour": "red"}, "colour: Extra inputs"),
        ("/v1/check", {"statement": 3}, "statement: Input should be a valid string"),
        ("/v1/verify-chain", {"context": CONTEXT}, "exactly one of 'steps'"),
        ("/v1/verify-chain", {"steps": []}, "steps: List should have at least 1 item"),
        ("/v1/verify-chain", {"steps": ["a."] * 65}, "at most 64 items"),
        ("/v1/verify-chain", {"steps": ["a.", " "]}, "step 1 must not be blank"),
        ("/v1/verify-chain", {"chain": "a. " * 70}, "at most 64"),
    ],
)
def test_bad_input_gets_a_clear_422(judge, tmp_path, path, payload, fragment):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            r = await c.post(path, json=payload)
            assert r.status_code == 422, r.text
            assert fragment in r.json()["error"]
            assert (await c.get("/v1/audit")).json()["total"] == 0

    run(go())


def test_bad_json_and_bad_queries(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            r = await c.post(
                "/v1/check", content=b"{not json", headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 422 and "JSON" in r.json()["error"]
            r = await c.get("/v1/audit", params={"since": "yesterday"})
            assert r.status_code == 400 and "ISO 8601" in r.json()["error"]
            r = await c.get("/v1/audit", params={"limit": 0})
            assert r.status_code == 422 and "limit" in r.json()["error"]
            r = await c.get("/v1/audit", params={"verdict": "maybe"})
            assert r.status_code == 422 and "verdict" in r.json()["error"]

    run(go())


def test_model_failures_become_4xx_or_503(judge, tmp_path, monkeypatch):
    app = create_app(judge, tmp_path / "audit.db")

    def too_long(*_a, **_k):
        raise ValueError("the prompt is 9000 tokens long")

    def broken(*_a, **_k):
        raise RuntimeError("CUDA out of memory")

    async def go():
        async with _client(app) as c:
            monkeypatch.setattr(judge, "check", too_long)
            r = await c.post("/v1/check", json={"statement": "a."})
            assert r.status_code == 400 and "9000 tokens" in r.json()["error"]
            monkeypatch.setattr(judge, "check", broken)
            r = await c.post("/v1/check", json={"statement": "a."})
            assert r.status_code == 503 and "out of memory" in r.json()["error"]
            assert r.headers["retry-after"] == "1"
            assert (await c.get("/v1/audit")).json()["total"] == 0

    run(go())
    assert app.state.unexpected_errors == ["RuntimeError('CUDA out of memory')"]


def test_unexpected_errors_surface_in_tests(judge, tmp_path, monkeypatch):
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True)
    monkeypatch.setattr(judge, "check", lambda *a, **k: 1 / 0)

    async def go():
        async with _client(app) as c:
            await c.post("/v1/check", json={"statement": "a."})

    with pytest.raises(ZeroDivisionError):
        run(go())


def test_api_key(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", api_key="s3cret", raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/")).status_code == 200  # the page shell holds no data
            for method, path in (("GET", "/v1/audit"), ("GET", "/v1/profile")):
                r = await c.request(method, path)
                assert r.status_code == 401 and "API key" in r.json()["error"]
                r = await c.request(method, path, headers={"X-API-Key": "wrong"})
                assert r.status_code == 401 and r.json()["error"] == "wrong API key"
            r = await c.post("/v1/check", json={"statement": "a."})
            assert r.status_code == 401
            r = await c.post("/v1/verify-chain", json={"steps": ["a."]})
            assert r.status_code == 401
            ok = await c.get("/v1/audit", headers={"X-API-Key": "s3cret"})
            assert ok.status_code == 200
            ok = await c.get("/v1/profile", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            r = await c.post(
                "/v1/check",
                json={"context": CONTEXT, "statement": STATEMENTS[0], "model_answer": False},
                headers={"X-API-Key": "s3cret"},
            )
            assert r.status_code == 200

    run(go())


def test_no_store_text(judge, tmp_path):
    app = create_app(judge, tmp_path / "audit.db", store_text=False, raise_unexpected=True)

    async def go():
        async with _client(app) as c:
            await c.post("/v1/check", json={"context": CONTEXT, "statement": STATEMENTS[0]})
            await c.post(
                "/v1/verify-chain",
                json={"context": CONTEXT, "steps": STATEMENTS[:2], "model_answer": False},
            )
            return (await c.get("/v1/audit")).json()["items"]

    chain, check = run(go())
    for row in (chain, check):
        assert row["context"] is None and row["statement"] is None and row["steps"] is None
        assert len(row["input_hash"]) == 64 and row["verdict"] in ("valid", "invalid")
    assert check["input_hash"] == input_hash("check", CONTEXT, STATEMENTS[0])
    assert all("statement" not in s for s in chain["result"]["steps"])
    raw = (tmp_path / "audit.db").read_bytes() + (tmp_path / "audit.db-wal").read_bytes()
    assert b"wumpus" not in raw


# ---- a live server ------------------------------------------------------------------------


def test_fifty_concurrent_requests(judge, tmp_path):
    """50 requests at once on one model: 50 right answers and 50 log rows; the event loop stays
    free to answer health checks meanwhile."""
    distinct = [f"{s[:-1]} and Max is number {i}." for i in range(2) for s in STATEMENTS]
    statements = [distinct[i % len(distinct)] for i in range(50)]  # each sent 5 times
    expected = {s: judge.check(CONTEXT, s, model_answer=False) for s in distinct}
    # 49 wait at once: room for them all, and time on a busy machine
    limits = ServeSettings(max_queue=64, request_timeout=300)
    app = create_app(judge, tmp_path / "audit.db", raise_unexpected=True, limits=limits)

    async def go(base):
        async with httpx.AsyncClient(base_url=base, timeout=300) as c:

            async def one(s):
                r = await c.post(
                    "/v1/check", json={"context": CONTEXT, "statement": s, "model_answer": False}
                )
                return s, r

            tasks = [asyncio.create_task(one(s)) for s in statements]
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            health = await c.get("/healthz")
            health_s = time.perf_counter() - t0
            results = await asyncio.gather(*tasks)
            page = (await c.get("/v1/audit", params={"limit": 100})).json()
            return results, health, health_s, page

    with live_server(app) as base:
        results, health, health_s, page = asyncio.run(go(base))
    assert health.status_code == 200 and health_s < 2.0, health_s
    for s, r in results:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["verdict"] == expected[s].verdict
        assert body["margin"] == pytest.approx(expected[s].margin, abs=1e-4)
    assert page["total"] == 50
    logged = {row["id"]: row for row in page["items"]}
    assert len(logged) == 50
    for s, r in results:
        row = logged[r.json()["audit_id"]]
        assert row["statement"] == s and row["verdict"] == expected[s].verdict
    assert app.state.unexpected_errors == []


def test_serve_command_wiring(judge, tmp_path, monkeypatch):
    """`qkscore serve` hands the judge, the log path, the text policy and the env key over."""
    from typer.testing import CliRunner

    from qkscore.audit import service
    from qkscore.cli import app
    from qkscore.cli import audit as cli_audit

    seen = {}
    monkeypatch.setattr(cli_audit, "_judge", lambda *a, **k: judge)
    monkeypatch.setattr(service, "serve", lambda j, db, **kw: seen.update(judge=j, db=db, **kw))
    monkeypatch.setenv("QKSCORE_API_KEY", "k1")
    monkeypatch.delenv("QKSCORE_AUDIT_HASH_KEY", raising=False)
    profile = str(judge.profile.path)
    db = tmp_path / "log.db"
    args = ["serve", "--profile", profile, "--port", "8123", "--no-store-text", "--db", str(db)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    store = seen.pop("db")  # opened (and checked) before the model loads
    assert seen.pop("model_load_seconds") >= 0  # timed for /metrics
    assert isinstance(store, AuditStore) and store.path == db and store.store_text is False
    store.close()
    limits = seen.pop("limits")
    assert seen == {"judge": judge, "host": "127.0.0.1", "port": 8123, "store_text": False,
                    "api_key": "k1", "hash_key": None}  # fmt: skip
    assert limits == service.ServeSettings(profile=profile, db=str(db), port=8123,
                                           store_text=False)  # fmt: skip
    flat = " ".join(res.output.split())
    assert "API key required" in flat and "http://127.0.0.1:8123/" in flat
    assert "input hashes are unkeyed" in flat
    monkeypatch.setenv("QKSCORE_AUDIT_HASH_KEY", "s3cret")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and seen["hash_key"] == b"s3cret"
    assert seen["db"].hash_key == b"s3cret"
    seen["db"].close()
    assert "unkeyed" not in res.output


def test_docs_hidden_and_schema_behind_the_key(judge, tmp_path):
    async def go(app):
        async with _client(app) as c:
            return [(await c.get(p)).status_code for p in ("/docs", "/openapi.json")]

    assert run(go(create_app(judge, tmp_path / "a.db"))) == [404, 200]
    assert run(go(create_app(judge, tmp_path / "b.db", api_key="k"))) == [404, 404]


def test_keyed_input_hashes_cannot_be_recomputed_without_the_key(tmp_path):
    """With a hash key the logged hash is an HMAC: equal inputs still match each other, but
    hashing a guessed text without the key does not reproduce it."""
    key = b"server secret"
    store = AuditStore(tmp_path / "audit.db", store_text=False, hash_key=key)
    for _ in range(2):
        store.append_check(
            profile="p",
            fingerprint="f",
            context=CONTEXT,
            statement=STATEMENTS[0],
            verdict={"verdict": "valid", "margin": 1.0},
        )
    rows = store.query().items
    assert rows[0]["input_hash"] == rows[1]["input_hash"]
    assert rows[0]["input_hash"] == input_hash("check", CONTEXT, STATEMENTS[0], key)
    assert rows[0]["input_hash"] != input_hash("check", CONTEXT, STATEMENTS[0])
    assert rows[0]["statement"] is None
    store.close()

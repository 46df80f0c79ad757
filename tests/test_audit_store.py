"""The audit store's interface on both backends: SQLite (a file) and PostgreSQL (a throwaway
server, see ``pg_fixtures``; those cases skip, saying why, when it cannot start).

Schema creation and version, appends, the hash-linked ledger (intact, tampering named at the right
row, removed rows, its head row), append-only triggers, concurrent writers, the ``qkscore
audit verify`` and ``export`` commands, and the migration of an old SQLite log.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from pg_fixtures import postgres_server  # noqa: F401  (a fixture)
from qkscore.audit.store import (
    GENESIS,
    AuditStore,
    AuditStoreError,
    PostgresAuditStore,
    SQLiteAuditStore,
    row_hash,
)
from qkscore.cli import app

VERDICT = {"verdict": "valid", "margin": 1.25, "probability": 0.7, "latency_ms": 3}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "audit.db")
    return request.getfixturevalue("postgres_server").new_database()


class Raw:
    """Direct access to the database, around the store: what a tamperer would use."""

    def __init__(self, url: str) -> None:
        self.pg = url.startswith("postgresql://")
        if self.pg:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)
        else:
            self.conn = sqlite3.connect(url, isolation_level=None)

    def run(self, sql: str, *args) -> list[tuple]:
        if self.pg:
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, args)
        return cur.fetchall() if cur.description else []

    def without_triggers(self, sql: str, *args) -> None:
        if self.pg:
            self.run("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
            self.run(sql, *args)
            self.run("ALTER TABLE audit ENABLE TRIGGER audit_append_only")
        else:
            self.run("DROP TRIGGER IF EXISTS audit_no_update")
            self.run("DROP TRIGGER IF EXISTS audit_no_delete")
            self.run(sql, *args)

    def close(self) -> None:
        self.conn.close()


def _fill(store: AuditStore, n: int) -> list[int]:
    ids = []
    for i in range(n):
        if i % 3 == 2:
            steps = [{"statement": "a.", "margin": -0.5, "verdict": "invalid"}]
            chain = {"steps": steps, "first_failure": 0, "latency_ms": 5.0}
            ids.append(store.append_chain(profile="p", fingerprint="f", context="c",
                                          steps=["a."], chain=chain, dtype="float32"))  # fmt: skip
        else:
            v = dict(VERDICT, verdict="valid" if i % 2 else "invalid", margin=float("nan"))
            ids.append(store.append_check(profile="p", fingerprint="f", context="c",
                                          statement=f"s{i}.", verdict=v))  # fmt: skip
    return ids


def test_schema_is_created_with_its_version(url):
    store = AuditStore(url)
    assert isinstance(
        store, PostgresAuditStore if url.startswith("postgresql") else SQLiteAuditStore
    )
    assert store.count() == 0 and store.verify().ok and store.verify().count == 0
    store.close()
    raw = Raw(url)
    assert raw.run("SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
    assert raw.run("SELECT last_id, last_hash FROM chain_head") == [(0, GENESIS)]
    raw.close()
    AuditStore(url).close()  # opening again changes nothing


def test_appends_chain_and_verify(url):
    store = AuditStore(url)
    ids = _fill(store, 6)
    assert ids == [1, 2, 3, 4, 5, 6] and store.count() == 6
    rows = list(store.iter_rows(raw=True))
    assert rows[0]["prev_hash"] == GENESIS
    for before, row in zip(rows, rows[1:]):
        assert row["prev_hash"] == before["row_hash"] == row_hash(before)
    assert rows[0]["margin"] is None  # NaN is stored as NULL on both backends
    page = store.query(limit=2, kind="chain")
    assert page.total == 2 and page.items[0]["first_failure"] == 0
    assert page.items[0]["steps"] == ["a."]
    report = store.verify()
    assert report.ok and report.count == 6 and report.line() == "ledger intact: 6 rows"
    store.close()
    store = AuditStore(url)  # a reopened store continues the chain
    assert store.append_check(profile="p", fingerprint="f", context="", statement="x.",
                              verdict=VERDICT) == 7  # fmt: skip
    assert store.verify().ok
    store.close()


def test_rows_cannot_be_updated_or_deleted(url):
    store = AuditStore(url)
    _fill(store, 2)
    raw = Raw(url)
    for sql in ("UPDATE audit SET verdict = 'valid' WHERE id = 1", "DELETE FROM audit"):
        with pytest.raises(Exception, match="append-only"):
            raw.run(sql)
    raw.close()
    assert store.count() == 2
    store.close()


@pytest.mark.parametrize(
    "tamper, bad_id, reason",
    [
        ("UPDATE audit SET verdict = 'valid' WHERE id = 3", 3, "contents do not match"),
        ("UPDATE audit SET result = '{}', row_hash = 'x' WHERE id = 4", 4, "contents"),
        ("DELETE FROM audit WHERE id = 2", 3, "row 2 missing before it"),
        ("DELETE FROM audit WHERE id IN (2, 3)", 4, "rows 2-3 missing before it"),
        ("DELETE FROM audit WHERE id = 5", None, "names row 5 as the last"),
    ],
)
def test_tampering_is_named_at_the_right_row(url, tamper, bad_id, reason):
    store = AuditStore(url)
    _fill(store, 5)
    raw = Raw(url)
    raw.without_triggers(tamper)
    raw.close()
    report = store.verify()
    assert not report.ok and report.bad_id == bad_id and reason in report.reason, report
    store.close()


def test_a_recomputed_row_still_breaks_the_next_link(url):
    """Whoever changes a row and recomputes its hash breaks the next row's prev_hash."""
    store = AuditStore(url)
    _fill(store, 4)
    row = next(r for r in store.iter_rows(raw=True) if r["id"] == 2)
    row["verdict"] = "valid" if row["verdict"] == "invalid" else "invalid"
    new_hash = row_hash(row)
    raw = Raw(url)
    raw.without_triggers("UPDATE audit SET verdict = ?, row_hash = ? WHERE id = 2",
                         row["verdict"], new_hash)  # fmt: skip
    raw.close()
    report = store.verify()
    assert (report.ok, report.bad_id) == (False, 3) and "prev_hash" in report.reason
    store.close()


def test_concurrent_writers_do_not_fork_the_chain(url):
    """Two stores (two connections, as two workers hold) append from four threads."""
    stores = [AuditStore(url), AuditStore(url)]
    errors = []

    def write(store):
        try:
            _fill(store, 15)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(stores[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = stores[0].verify()
    assert report.ok and report.count == 60
    assert [r["id"] for r in stores[1].iter_rows()] == list(range(1, 61))
    for s in stores:
        s.close()


def _cli(*args):
    return CliRunner().invoke(app, list(args))


def test_verify_and_export_commands(url, tmp_path):
    store = AuditStore(url)
    _fill(store, 4)
    rows = list(store.iter_rows(raw=True))
    store.close()
    res = _cli("audit", "verify", "--db", url)
    assert res.exit_code == 0 and res.output == "ledger intact: 4 rows\n"
    res = _cli("audit", "export", "--db", url)
    assert res.exit_code == 0
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert lines == rows
    since = rows[2]["ts"]
    out = tmp_path / "export.jsonl"
    res = _cli("audit", "export", "--db", url, "--since", str(since), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [3, 4]
    pq = pytest.importorskip("pyarrow.parquet")
    res = _cli("audit", "export", "--db", url, "--format", "parquet", "--out",
               str(tmp_path / "e.parquet"))  # fmt: skip
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert table == rows
    raw = Raw(url)
    raw.without_triggers("UPDATE audit SET statement = 'changed.' WHERE id = 2")
    raw.close()
    res = _cli("audit", "verify", "--db", url)
    assert res.exit_code == 2
    assert res.output.splitlines() == [
        "error: ledger broken at row 2: its contents do not match its row_hash (changed)"
    ]


def _evidence(raw: Raw) -> tuple[list[tuple], ...]:
    """What verifying must leave as it found it: the rows' hashes, the chain head, meta."""
    tables = [r[0] for r in raw.run(
        "SELECT name FROM sqlite_master WHERE type = 'table'" if not raw.pg else
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )]  # fmt: skip
    return (
        sorted(tables),
        raw.run("SELECT * FROM audit ORDER BY id"),
        raw.run("SELECT * FROM chain_head") if "chain_head" in tables else [],
        raw.run("SELECT key, value FROM meta ORDER BY key"),
    )


@pytest.mark.parametrize(
    "n, tamper, left, line",
    [
        (3, [], 3, "ledger broken at its head row: it is missing while 3 rows carry hashes "
         "(removed)"),
        # issue 22, finding 2: row 5 edited, row 7 deleted, the chain head deleted
        (8, ["UPDATE audit SET verdict = 'valid' WHERE id = 5", "DELETE FROM audit WHERE id = 7"],
         7, "ledger broken at row 5: its contents do not match its row_hash (changed)"),
    ],
    ids=["head-removed", "issue-22"],
)  # fmt: skip
def test_a_removed_chain_head_is_reported_and_nothing_rewrites_the_rows(url, n, tamper, left,
                                                                      line):  # fmt: skip
    """Verify and export leave a log whose chain head was deleted (triggers dropped first) as
    they found it: verify reports it instead of re-chaining the rows as a migration (issue 22,
    finding 2), and the service refuses to open it rather than treat it as an old log."""
    store = AuditStore(url)
    _fill(store, n)
    store.close()
    raw = Raw(url)
    for sql in tamper:
        raw.without_triggers(sql)
    raw.run("DELETE FROM chain_head")
    before = _evidence(raw)
    res = _cli("audit", "verify", "--db", url)
    assert res.exit_code == 2 and res.output.splitlines() == [f"error: {line}"]
    assert _evidence(raw) == before
    assert _cli("audit", "export", "--db", url).exit_code == 0
    assert _evidence(raw) == before
    with pytest.raises(
        AuditStoreError, match=f"ledger head row is missing while {left} rows carry"
    ):
        AuditStore(url)
    assert _evidence(raw) == before
    raw.close()


def test_a_read_only_store_cannot_append(url):
    AuditStore(url).close()
    store = AuditStore(url, read_only=True)
    with pytest.raises(Exception, match="read-?only"):
        _fill(store, 1)
    assert store.count() == 0 and store.verify().ok
    store.close()


@pytest.mark.parametrize("rid", [-5, 0])
def test_rows_with_ids_below_one_break_the_chain_and_are_exported(url, rid):
    """Issue 22, finding 3: a row inserted with id -5 or 0 was skipped by verify and export but
    listed by /v1/audit. Verify names it; export and paging list the same rows."""
    store = AuditStore(url)
    _fill(store, 3)
    first = next(store.iter_rows(raw=True))
    raw = Raw(url)
    for i in (rid - 1, rid):  # two rows, so paging by cursor goes below zero
        row = dict(first, id=i, statement=f"inserted {i}.")
        row["row_hash"] = row_hash(row)
        marks = ", ".join("?" * len(row))
        raw.run(f"INSERT INTO audit ({', '.join(row)}) VALUES ({marks})", *row.values())
    raw.close()
    report = store.verify()
    assert (report.ok, report.count, report.bad_id) == (False, 1, rid - 1), report
    assert report.reason == "its id is below 1, where the ledger starts (inserted outside it)"
    res = _cli("audit", "verify", "--db", url)
    assert res.exit_code == 2 and f"ledger broken at row {rid - 1}: its id is below 1" in res.output
    res = _cli("audit", "export", "--db", url)
    exported = [json.loads(x)["id"] for x in res.output.splitlines()]
    assert exported == [rid - 1, rid, 1, 2, 3]
    listed, cursor = [], None
    while True:
        page = store.query(limit=1, cursor=cursor)
        listed += [r["id"] for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert listed == exported[::-1] and page.total == 5
    store.close()


def test_export_refuses_a_bad_format_and_a_missing_log(tmp_path):
    res = _cli("audit", "export", "--db", str(tmp_path / "a.db"), "--format", "csv")
    assert res.exit_code == 2 and res.output.splitlines() == [
        "error: --format must be jsonl or parquet, got 'csv'"
    ]
    res = _cli("audit", "verify", "--db", str(tmp_path / "none.db"))
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e999", "NaN"])
def test_export_refuses_a_time_that_is_not_finite(tmp_path, since):
    """Issue 22, finding 11: --since nan exported nothing (ts >= NaN is never true), exit 0."""
    db = str(tmp_path / "audit.db")
    store = AuditStore(db)
    _fill(store, 2)
    store.close()
    res = _cli("audit", "export", "--db", db, "--since", since)
    assert res.exit_code == 2 and res.output.splitlines() == [
        f"error: --since: time {since!r} is not a finite number of unix seconds"
    ]
    store = AuditStore(db)
    with pytest.raises(ValueError, match="not a finite number"):
        store.query(since=since)
    store.close()


def test_export_into_a_closed_pipe_stops_quietly(tmp_path):
    """Issue 22, finding 11: `qkscore audit export | head` printed a broken-pipe error. Now it
    stops as Unix tools do: no message, the status of a process that SIGPIPE ended."""
    db = str(tmp_path / "audit.db")
    store = AuditStore(db)
    _fill(store, 3)
    store.close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone, as `head` does after its lines
    env = {k: v for k, v in os.environ.items() if k != "QKSCORE_DEBUG"}
    try:
        done = subprocess.run([sys.executable, "-m", "qkscore", "audit", "export", "--db", db],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


_V2_SCHEMA = """
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, time TEXT NOT NULL,
    kind TEXT NOT NULL, profile TEXT NOT NULL, fingerprint TEXT NOT NULL,
    input_hash TEXT NOT NULL, context TEXT, statement TEXT, steps TEXT, verdict TEXT NOT NULL,
    margin REAL, probability REAL, model_answer INTEGER, disagree INTEGER,
    first_failure INTEGER, n_steps INTEGER, latency_ms REAL, result TEXT NOT NULL, dtype TEXT);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
INSERT INTO audit (id, ts, time, kind, profile, fingerprint, input_hash, statement, verdict,
    margin, latency_ms, result, dtype)
VALUES (1, 1700000000, '2023-11-14T22:13:20.000+00:00', 'check', 'p', 'f', 'h', 'one.',
        'valid', 0.5, 12, '{"verdict": "valid"}', 'float32'),
       (3, 1700000001, '2023-11-14T22:13:21.000+00:00', 'check', 'p', 'f', 'h', 'three.',
        'invalid', -0.5, 11, '{"verdict": "invalid"}', NULL);
"""


def test_an_old_sqlite_log_is_migrated_into_the_chain(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(_V2_SCHEMA)
    conn.close()
    store = AuditStore(db)
    assert store.append_check(profile="p", fingerprint="f", context="", statement="new.",
                              verdict=VERDICT) == 4  # fmt: skip
    report = store.verify()
    assert report.ok and report.count == 3
    assert "2 rows (ids up to 3) existed before the hash-linked ledger" in report.note
    assert [r["statement"] for r in store.query().items] == ["new.", "three.", "one."]
    store.close()
    res = _cli("audit", "verify", "--db", str(db))
    assert res.exit_code == 0 and res.output.startswith("ledger intact: 3 rows (2 rows (ids up")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
        ("3",)
    ]
    conn.close()


def test_verify_reports_an_old_log_as_needing_migration_and_leaves_it(tmp_path):
    """Verifying never migrates: an old log is reported (exit 2), exported as it is, and
    migrated only when the service (a writer) opens it."""
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(_V2_SCHEMA)
    conn.close()
    raw = Raw(str(db))
    before = _evidence(raw)
    res = _cli("audit", "verify", "--db", str(db))
    assert res.exit_code == 2 and res.output.splitlines() == [
        "error: needs migration: the log is from before the hash-linked ledger (schema 2); "
        "opening it with `qkscore serve` links its rows as they are now"
    ]
    res = _cli("audit", "export", "--db", str(db))
    assert res.exit_code == 0 and [json.loads(x)["statement"] for x in res.output.splitlines()
                                   ] == ["one.", "three."]  # fmt: skip
    assert _evidence(raw) == before
    raw.close()
    AuditStore(db).close()
    assert _cli("audit", "verify", "--db", str(db)).exit_code == 0


def test_a_dropped_chain_head_table_is_not_an_old_log(tmp_path):
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    _fill(store, 2)
    store.close()
    raw = Raw(str(db))
    raw.run("DROP TABLE chain_head")
    before = _evidence(raw)
    res = _cli("audit", "verify", "--db", str(db))
    assert res.exit_code == 2 and res.output.splitlines() == [
        "error: ledger broken at its head row: it is missing while 2 rows carry hashes (removed)"
    ]
    with pytest.raises(AuditStoreError, match="ledger head row is missing"):
        AuditStore(db)
    assert _evidence(raw) == before
    raw.close()


def test_a_postgresql_server_that_cannot_be_reached_is_one_line(tmp_path):
    pytest.importorskip("psycopg_pool")
    with pytest.raises(AuditStoreError) as err:
        AuditStore(f"postgresql://nobody:secret@/x?host={tmp_path}&connect_timeout=2")
    text = str(err.value)
    assert "\n" not in text and "secret" not in text and text.startswith("cannot connect to")

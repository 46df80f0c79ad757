"""The append-only audit log of every judged request, in SQLite or PostgreSQL.

Each row records when, with which profile (its digest) and model (fingerprint, and the dtype it
ran in), a hash of the inputs, optionally the texts themselves, the scores and the verdict, so a
decision can be traced and re-checked later.

:class:`AuditStore` is the interface; the URL picks the implementation::

    AuditStore("audit.db")                       # SQLite (also sqlite:///abs/path.db)
    AuditStore("postgresql://user@/db?host=/run/postgresql")   # PostgreSQL, psycopg 3 + a pool

Both hold the same schema (created, or an older one migrated, at start-up; ``meta`` records
the schema version). SQLite runs in WAL mode: the dashboard reads while requests append, and a
crash loses at most the row being written; one connection guarded by a lock serves all threads
of a process, and several processes share the file.

**Append-only, a hash-linked ledger.** Nothing in the service updates or deletes a row
(database triggers refuse both). Every row stores the previous row's hash (``prev_hash``) and
its own (``row_hash``: SHA-256 of ``prev_hash`` and the row's canonical JSON, id included); the
ledger's head row (the one-row ``chain_head`` table, named so since schema 3) holds the last id
and hash, so removing the newest rows shows too. ("Chain" elsewhere in qkscore means a chain of
thought; the tables and meta keys keep their names so existing logs open unchanged.) An append
is serialised across processes (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR
UPDATE`` on the head row), so concurrent writers never fork the ledger. Ids follow the head row
(``last_id + 1``): contiguous from 1, so a missing row is named, and so is a row inserted below
1. :meth:`verify` walks the hash links in one read-only snapshot and never writes:
``AuditStore(url, read_only=True)`` (what ``qkscore audit verify`` and ``export`` open) is an
SQLite ``mode=ro`` connection or PostgreSQL connections whose transactions are read-only.

A log from before the ledger (schema 2 or older: no ``chain_head`` table, rows without hashes)
is migrated when a writer opens it: the hash links are computed over its rows in id order, and
``meta`` records which rows were linked at migration (their hashes prove nothing about what
happened to them before). :meth:`verify` reports such a log as needing migration. A log whose
head row is gone while it is no such log (its rows carry hashes, its ``chain_head`` table or
schema version says it was linked) has been tampered with: verify reports it, and a writer
refuses to open it rather than link the rows again and overwrite the evidence.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AuditStore",
    "AuditStoreError",
    "AuditPage",
    "ChainReport",
    "LedgerReport",
    "PostgresAuditStore",
    "SQLiteAuditStore",
    "input_hash",
    "parse_time",
]

# 2: the dtype column; 3: the hash-linked ledger (prev_hash, row_hash, chain_head)
SCHEMA_VERSION = 3
# SQLite integers are signed 64-bit: larger offsets and cursors cannot be bound
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)
GENESIS = "0" * 64

_COLUMNS = (
    "id",
    "ts",
    "time",
    "kind",
    "profile",
    "fingerprint",
    "input_hash",
    "context",
    "statement",
    "steps",
    "verdict",
    "margin",
    "probability",
    "model_answer",
    "disagree",
    "first_failure",
    "n_steps",
    "latency_ms",
    "result",
    "dtype",
    "prev_hash",
    "row_hash",
)
# columns added after the first schema, with their SQL types: an older log gets them on open
_ADDED = {"dtype": "TEXT", "prev_hash": "TEXT", "row_hash": "TEXT"}
_REAL = ("ts", "margin", "probability", "latency_ms")
_INT = ("model_answer", "disagree", "first_failure", "n_steps")
# what the row hash covers: every column but the hash itself
_HASHED = tuple(c for c in _COLUMNS if c != "row_hash")


def _sql_columns(real: str, integer: str, id_type: str) -> str:
    types = {c: "TEXT" for c in _COLUMNS}
    types.update({c: real for c in _REAL})
    types.update({c: integer for c in _INT})
    not_null = {"ts", "time", "kind", "profile", "fingerprint", "input_hash", "verdict", "result"}
    cols = [f"id {id_type}"]
    for c in _COLUMNS[1:]:
        cols.append(f"{c} {types[c]}{' NOT NULL' if c in not_null else ''}")
    return ",\n    ".join(cols)


def input_hash(kind: str, context: str, payload: Any, key: bytes | None = None) -> str:
    """SHA-256 of the request's texts, to match repeated inputs without storing them.

    Without ``key``, short texts can be guessed back by hashing candidates; with it the hash is
    an HMAC that nobody without the key can test guesses against (the service reads it from
    ``QKSCORE_AUDIT_HASH_KEY``), so ``--no-store-text`` then hides the texts for real.
    """
    blob = json.dumps({"kind": kind, "context": context, "input": payload}, sort_keys=True)
    if key:
        return hmac.new(key, blob.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(blob.encode()).hexdigest()


def row_hash(row: Mapping[str, Any]) -> str:
    """The ledger hash of a stored row: SHA-256 of its ``prev_hash`` and canonical JSON."""
    body = json.dumps({c: row.get(c) for c in _HASHED}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{row.get('prev_hash')}\n{body}".encode()).hexdigest()


def parse_time(value: str | float | int | None) -> float | None:
    """Unix seconds from unix seconds or an ISO 8601 time (naive times are taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return _finite_time(value, value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _finite_time(number, value)
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"time {value!r} is neither unix seconds nor ISO 8601 (2025-01-31T12:00:00Z)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def _finite_time(number: float, value: Any) -> float:
    """NaN matches no row (``ts >= NaN`` is never true) and infinity none or all: refused."""
    number = float(number)
    if not math.isfinite(number):
        raise ValueError(f"time {value!r} is not a finite number of unix seconds")
    return number


@dataclass
class AuditPage:
    """One page of rows, newest first; ``next_cursor`` continues after the last row."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    next_cursor: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
            "next_cursor": self.next_cursor,
        }


@dataclass
class LedgerReport:
    """What :meth:`AuditStore.verify` found: ``ok``, the rows checked, the first broken row
    (``bad_id``, None when the break is the head row) with the reason, and a ``note``
    (e.g. rows linked at migration). ``needs_migration``: the log is from before the ledger
    (not ok: nothing in it is linked yet)."""

    ok: bool
    count: int
    bad_id: int | None = None
    reason: str = ""
    note: str = ""
    needs_migration: bool = False

    def line(self) -> str:
        if self.ok:
            text = f"ledger intact: {self.count} rows"
        elif self.needs_migration:
            text = f"needs migration: {self.reason}"
        else:
            where = f"row {self.bad_id}" if self.bad_id is not None else "its head row"
            text = f"ledger broken at {where}: {self.reason}"
        return f"{text} ({self.note})" if self.note else text


class AuditStoreError(ValueError):
    """The URL or path cannot hold the audit log: a folder, not SQLite, another schema, not
    writable, a PostgreSQL server that cannot be reached."""


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _redact(url: str) -> str:
    """A PostgreSQL URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _is_postgres(url: str) -> bool:
    return str(url).startswith(("postgresql://", "postgres://"))


Fetch = Callable[[str, list[Any]], list[dict[str, Any]]]
_HASH_COLUMNS = {"prev_hash", "row_hash"}


@dataclass
class _Headless:
    """What a log without a head row holds, to tell an old log from a tampered one."""

    table: bool  # the chain_head table exists (an old log never had one)
    version: int  # meta's schema_version (0 when none)
    hashed: int  # rows with a hash
    rows: int

    @classmethod
    def read(cls, fetch: Fetch, tables: set[str], columns: set[str]) -> _Headless:
        version = 0
        if "meta" in tables:
            found = fetch("SELECT value FROM meta WHERE key = 'schema_version'", [])
            version = int(found[0]["value"]) if found else 0
        hashed = 0
        if columns >= _HASH_COLUMNS:
            hashed = int(fetch("SELECT COUNT(*) AS n FROM audit WHERE row_hash IS NOT NULL OR "
                               "prev_hash IS NOT NULL", [])[0]["n"])  # fmt: skip
        rows = int(fetch("SELECT COUNT(*) AS n FROM audit", [])[0]["n"])
        return cls("chain_head" in tables, version, hashed, rows)

    def tampering(self) -> str | None:
        """Why the missing head was removed; None for a log from before the ledger or a new
        one (nothing to tell it from one: those are linked, or migrated, by a writer)."""
        if self.hashed:
            return f"is missing while {self.hashed} rows carry hashes (removed)"
        if self.table:
            return "is missing from its table (removed)"
        if self.version >= 3:
            return f"is missing from a schema {self.version} log (its table dropped)"
        return None


_BEFORE_LEDGER = (
    "the log is from before the hash-linked ledger (schema {version}); opening it with "
    "`qkscore serve` links its rows as they are now"
)


def _schema_error(
    have: set[str], where: Any, what: str, optional: tuple[str, ...] = ()
) -> AuditStoreError | None:
    """An 'audit' table of another schema: the columns it lacks (``optional``: added later)."""
    missing = [c for c in _COLUMNS if c not in have and c not in optional]
    if not missing:
        return None
    names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return AuditStoreError(
        f"{where} holds an 'audit' table of another schema (no column {names}): give another {what}"
    )


def _refuse_tampered(problem: str | None, where: Any) -> None:
    """A writer never starts the ledger over rows whose head was removed: that would
    overwrite the evidence (``qkscore audit verify`` reports it)."""
    if problem:
        raise AuditStoreError(
            f"{where}: its ledger head row {problem}: the log has been tampered with and is not "
            "linked again; `qkscore audit verify` reports it"
        )


class AuditStore:
    """The audit log: append judged requests, page through them, verify the ledger, export.

    ``AuditStore(url)`` builds the implementation the URL names (a PostgreSQL URL, else an
    SQLite path); raises :class:`AuditStoreError`, with a one-line reason, when it cannot serve.
    """

    journal_mode: str = ""
    url: str = ""
    _ph = "?"  # the driver's placeholder
    # how the backend lists its tables and the audit table's columns (as a ``name`` column)
    _TABLES_SQL = ""
    _COLUMNS_SQL = ""

    def __new__(cls, path: str | Path = "", *args: Any, **kwargs: Any) -> AuditStore:
        if cls is AuditStore:
            cls = PostgresAuditStore if _is_postgres(str(path)) else SQLiteAuditStore
        return super().__new__(cls)

    # ---- what each backend provides --------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def _append_row(self, row: dict[str, Any]) -> int:
        """Insert ``row`` (no id, no hashes) as the ledger's next row, serialised; its id."""
        raise NotImplementedError

    def _fetch(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _snapshot(self) -> contextlib.AbstractContextManager[Fetch]:
        """A read-only transaction that sees one state of the log (rows appended meanwhile
        stay out of it): its fetch function."""
        raise NotImplementedError

    @staticmethod
    def _ledger_meta(fetch: Fetch) -> tuple[dict[str, Any] | None, str, int]:
        """The ledger's head row ({last_id, last_hash}), the migration note and the last id
        linked at migration (0 when none)."""
        head = fetch("SELECT last_id, last_hash FROM chain_head WHERE one = 1", [])
        meta = {
            r["key"]: r["value"]
            for r in fetch(
                "SELECT key, value FROM meta WHERE key IN ('chain_migrated', "
                "'chain_migrated_through')",
                [],
            )
        }
        through = int(meta.get("chain_migrated_through", 0))
        return (head[0] if head else None), meta.get("chain_migrated", ""), through

    # ---- writing ----------------------------------------------------------------------------

    def append_check(
        self,
        *,
        profile: str,
        fingerprint: str,
        context: str,
        statement: str,
        verdict: Mapping[str, Any],
        dtype: str | None = None,
    ) -> int:
        """Log one ``check``; returns the row id. ``dtype``: what the model ran in."""
        return self._insert(
            kind="check",
            profile=profile,
            fingerprint=fingerprint,
            input_hash=input_hash("check", context, statement, self.hash_key),
            context=context if self.store_text else None,
            statement=statement if self.store_text else None,
            steps=None,
            verdict=verdict["verdict"],
            margin=verdict.get("margin"),
            probability=verdict.get("probability"),
            model_answer=verdict.get("model_answer"),
            disagree=verdict.get("disagree"),
            first_failure=None,
            n_steps=None,
            latency_ms=verdict.get("latency_ms"),
            result=dict(verdict),
            dtype=dtype,
        )

    def append_chain(
        self,
        *,
        profile: str,
        fingerprint: str,
        context: str,
        steps: list[str],
        chain: Mapping[str, Any],
        dtype: str | None = None,
    ) -> int:
        """Log one chain-of-thought verification; its margin and probability are the first
        failing step's (or the weakest step's when all pass), the step a reviewer reads first."""
        result = dict(chain)
        per_step = result.get("steps", [])
        if not self.store_text:
            result["steps"] = [{k: v for k, v in s.items() if k != "statement"} for s in per_step]
        first = result.get("first_failure")
        key = first if first is not None else _weakest(per_step)
        step = per_step[key] if per_step and key is not None else {}
        return self._insert(
            kind="chain",
            profile=profile,
            fingerprint=fingerprint,
            input_hash=input_hash("chain", context, steps, self.hash_key),
            context=context if self.store_text else None,
            statement=None,
            steps=json.dumps(steps) if self.store_text else None,
            verdict="valid" if first is None else "invalid",
            margin=step.get("margin"),
            probability=step.get("probability"),
            model_answer=step.get("model_answer"),
            disagree=any(bool(s.get("disagree")) for s in per_step),
            first_failure=first,
            n_steps=len(per_step),
            latency_ms=result.get("latency_ms"),
            result=result,
            dtype=dtype,
        )

    def _insert(self, **row: Any) -> int:
        """Normalise the row to what both databases store and read back exactly (the hash
        covers the stored values): REAL columns as finite floats or None, INTEGER columns as
        ints (booleans 0/1), the result as JSON text."""
        now = time.time()
        row["result"] = json.dumps(row["result"], default=float)
        for key in ("model_answer", "disagree"):
            if row[key] is not None:
                row[key] = int(bool(row[key]))
        for key in ("first_failure", "n_steps"):
            if row[key] is not None:
                row[key] = int(row[key])
        row["ts"] = now
        for key in _REAL:
            row[key] = _finite(row[key])
        row["time"] = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
            timespec="milliseconds"
        )
        return self._append_row(row)

    @staticmethod
    def _link(row: dict[str, Any], head: tuple[int, str]) -> list[Any]:
        """Give ``row`` the next id and its hashes; the values in column order."""
        row["id"] = head[0] + 1
        row["prev_hash"] = head[1]
        row["row_hash"] = row_hash(row)
        return [row[c] for c in _COLUMNS]

    # ---- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._fetch("SELECT COUNT(*) AS n FROM audit", [])[0]["n"])

    def query(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        cursor: int | None = None,
        verdict: str | None = None,
        kind: str | None = None,
        since: str | float | None = None,
        until: str | float | None = None,
    ) -> AuditPage:
        """Rows newest first. Page with ``offset`` or, stable while rows keep arriving, with
        ``cursor`` (the ``next_cursor`` of the previous page: rows with a smaller id)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        if not 0 <= offset <= MAX_INT64:
            raise ValueError(f"offset must be between 0 and {MAX_INT64}, got {offset}")
        if cursor is not None and not MIN_INT64 <= cursor <= MAX_INT64:
            raise ValueError(f"cursor must be between {MIN_INT64} and {MAX_INT64}, got {cursor}")
        if verdict not in (None, "", "valid", "invalid"):
            raise ValueError(f"verdict must be 'valid' or 'invalid', got {verdict!r}")
        if kind not in (None, "", "check", "chain"):
            raise ValueError(f"kind must be 'check' or 'chain', got {kind!r}")
        filters = (
            ("verdict = ?", verdict or None),
            ("kind = ?", kind or None),
            ("ts >= ?", parse_time(since)),
            ("ts <= ?", parse_time(until)),
        )
        clause, args = _where(*filters)
        page_cursor = None if cursor is None else int(cursor)
        page_clause, page_args = _where(*filters, ("id < ?", page_cursor))
        total = int(self._fetch(f"SELECT COUNT(*) AS n FROM audit {clause}", args)[0]["n"])
        rows = self._fetch(
            f"SELECT * FROM audit {page_clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*page_args, limit + 1, offset],
        )
        more = len(rows) > limit
        items = [_row(r) for r in rows[:limit]]
        next_cursor = items[-1]["id"] if more and items else None
        return AuditPage(items, total, limit, offset, next_cursor)

    def iter_rows(
        self, since: str | float | None = None, batch: int = 1000, raw: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every row (from ``since``, unix seconds or ISO 8601), oldest first, in batches; every
        id, also one below 1 that :meth:`verify` reports. ``raw``: as stored (JSON columns as
        text, flags as 0/1), as the hash covers them."""
        return _iter_rows(self._fetch, parse_time(since), batch, raw)

    def verify(self) -> LedgerReport:
        """Walk the hash links in id order, in one read-only snapshot: each row's ``prev_hash`` is
        the previous row's hash, its ``row_hash`` matches its contents, ids run from 1 without
        a gap, and the last row is the head row's. Names the first broken row. A log from
        before the ledger is reported as needing migration; nothing is written."""
        with self._snapshot() as fetch:
            tables = {r["name"] for r in fetch(self._TABLES_SQL, [])}
            columns = {r["name"] for r in fetch(self._COLUMNS_SQL, [])}
            head, note, migrated_through = None, "", 0
            if "chain_head" in tables and columns >= _HASH_COLUMNS:
                head, note, migrated_through = self._ledger_meta(fetch)
            removed = ""
            if head is None:
                headless = _Headless.read(fetch, tables, columns)
                removed = headless.tampering() or ""
                if not removed:
                    reason = _BEFORE_LEDGER.format(version=headless.version or "1")
                    return LedgerReport(False, headless.rows, None, reason, needs_migration=True)
            return _walk(fetch, head, removed, note, migrated_through)


def _walk(
    fetch: Fetch, head: dict[str, Any] | None, removed: str, note: str, migrated_through: int
) -> LedgerReport:
    """:meth:`AuditStore.verify`'s walk; ``head`` None: the head row is gone (``removed``
    says how), reported after the rows when none of them breaks first."""
    prev_id, prev_hash, n = 0, GENESIS, 0
    for r in _iter_rows(fetch, None, 1000, raw=True):
        rid = int(r["id"])
        n += 1
        if rid < 1:
            reason = "its id is below 1, where the ledger starts (inserted outside it)"
            return LedgerReport(False, n, rid, reason, note)
        if r.get("row_hash") is None or r.get("prev_hash") is None:
            return LedgerReport(False, n, rid, "the row has no hash", note)
        if rid != prev_id + 1 and rid > migrated_through:
            missing = f"row {prev_id + 1}" if rid == prev_id + 2 else f"rows {prev_id + 1}-"
            missing += "" if rid == prev_id + 2 else f"{rid - 1}"
            return LedgerReport(False, n, rid, f"{missing} missing before it", note)
        if r["prev_hash"] != prev_hash:
            return LedgerReport(False, n, rid, f"its prev_hash is not row {prev_id}'s hash", note)
        if row_hash(r) != r["row_hash"]:
            return LedgerReport(
                False, n, rid, "its contents do not match its row_hash (changed)", note
            )
        prev_id, prev_hash = rid, r["row_hash"]
    if head is None:
        return LedgerReport(False, n, None, f"it {removed}", note)
    head_id, head_hash = int(head["last_id"]), head["last_hash"]
    if (head_id, head_hash) != (prev_id, prev_hash):
        return LedgerReport(
            False,
            n,
            None,
            f"it names row {head_id} as the last, but the log ends at row {prev_id} "
            "(rows removed or the head changed)",
            note,
        )
    return LedgerReport(True, n, note=note)


def _where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions whose value is not None, and their arguments."""
    used = [(sql, value) for sql, value in conditions if value is not None]
    clause = f"WHERE {' AND '.join(sql for sql, _ in used)}" if used else ""
    return clause, [value for _, value in used]


def _iter_rows(fetch: Fetch, t0: float | None, batch: int, raw: bool) -> Iterator[dict[str, Any]]:
    """Rows in id order from the smallest id (below 1 too), from unix time ``t0``."""
    after: int | None = None
    while True:
        clause, args = _where(("id > ?", after), ("ts >= ?", t0))
        rows = fetch(f"SELECT * FROM audit {clause} ORDER BY id LIMIT ?", [*args, batch])
        if not rows:
            return
        for r in rows:
            yield dict(r) if raw else _row(r)
        after = int(rows[-1]["id"])


# ---- SQLite ---------------------------------------------------------------------------------

_SQLITE_TABLES = (
    f"CREATE TABLE IF NOT EXISTS audit (\n    "
    f"{_sql_columns('REAL', 'INTEGER', 'INTEGER PRIMARY KEY AUTOINCREMENT')}\n)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chain_head (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "last_id INTEGER NOT NULL, last_hash TEXT NOT NULL)",
)
_SQLITE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)",
    "CREATE INDEX IF NOT EXISTS audit_verdict ON audit (verdict, id)",
)
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)


class SQLiteAuditStore(AuditStore):
    """The log in one SQLite file (WAL). ``read_only``: a ``mode=ro`` connection to a log that
    exists, nothing created or migrated."""

    _TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table'"
    _COLUMNS_SQL = "SELECT name FROM pragma_table_info('audit')"

    def __init__(
        self,
        path: str | Path,
        store_text: bool = True,
        hash_key: bytes | None = None,
        read_only: bool = False,
    ) -> None:
        text = str(path)
        if text.startswith("sqlite://"):
            text = text.removeprefix("sqlite://")
            text = text[1:] if text.startswith("//") else text  # sqlite:////abs -> /abs
            path = text
        self.url = text
        self.path = Path(path)
        self.store_text = store_text
        self.hash_key = hash_key
        self.read_only = read_only
        if read_only:
            self._open_read_only()
            return
        if str(path) != ":memory:":
            if self.path.is_dir():
                raise AuditStoreError(f"{path} is a folder, not an SQLite file")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise AuditStoreError(
                    f"cannot create {path}: {self.path.parent} is not a folder"
                ) from None
            except OSError as err:
                raise AuditStoreError(
                    f"cannot create the folder {self.path.parent}: {err.strerror}"
                ) from None
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as err:
            raise AuditStoreError(f"cannot open {path}: {err}") from None
        self._conn.row_factory = sqlite3.Row
        try:
            with self._lock:
                self._open()
        except sqlite3.Error as err:
            self._conn.close()
            raise AuditStoreError(_explain(path, err)) from None
        except AuditStoreError:
            self._conn.close()
            raise

    def _open_read_only(self) -> None:
        if self.path.is_dir():
            raise AuditStoreError(f"{self.path} is a folder, not an SQLite file")
        if not self.path.is_file():
            raise AuditStoreError(f"{self.path} does not exist")
        self._lock = threading.Lock()
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            self._conn = sqlite3.connect(
                uri, uri=True, check_same_thread=False, isolation_level=None
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout=30000")
            self.journal_mode = str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])
            found = self._conn.execute(self._COLUMNS_SQL).fetchall()
        except sqlite3.Error as err:
            self._conn.close()
            raise AuditStoreError(_explain(self.path, err)) from None
        have = {r[0] for r in found}
        err = _schema_error(have, self.path, "file", tuple(_ADDED))
        if not have:
            err = AuditStoreError(f"{self.path} holds no audit log (no 'audit' table)")
        if err:
            self._conn.close()
            raise err

    def _open(self) -> None:
        """WAL mode, the schema (an older log migrated), and a real write: a read-only file or
        folder fails here, at startup, not on the first judged request. A log whose head row
        was removed is refused (see the module's docstring), not migrated."""
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=30000")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        self.journal_mode = str(mode).lower()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # one opener at a time migrates
        try:
            tables = {r[0] for r in conn.execute(self._TABLES_SQL)}
            for sql in _SQLITE_TABLES:
                conn.execute(sql)
            have = {r[0] for r in conn.execute(self._COLUMNS_SQL)}
            err = _schema_error(have, self.path, "file", tuple(_ADDED))
            if err:
                raise err
            for column, sql_type in _ADDED.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE audit ADD COLUMN {column} {sql_type}")
            if conn.execute("SELECT COUNT(*) FROM chain_head").fetchone()[0] == 0:
                columns = {r[0] for r in conn.execute(self._COLUMNS_SQL)}
                headless = _Headless.read(self._fetch_unlocked, tables, columns)
                _refuse_tampered(headless.tampering(), self.path)
                self._migrate_to_ledger()
            for sql in (*_SQLITE_INDEXES, *_SQLITE_TRIGGERS):
                conn.execute(sql)
            # always writes (never lowers a newer log's version): the writability probe
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT(key) "
                "DO UPDATE SET value = CASE WHEN CAST(value AS INTEGER) < CAST(excluded.value "
                "AS INTEGER) THEN excluded.value ELSE value END",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _migrate_to_ledger(self) -> None:
        """Start the ledger: link the rows already there (a log from before it), in id order.
        Runs inside the opening transaction, before the append-only triggers exist."""
        conn = self._conn
        prev, last_id, n = GENESIS, 0, 0
        rows = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
        for r in rows:  # ids keep their values (clients hold them): gaps stay gaps
            d = dict(r)
            d["prev_hash"] = prev
            d["row_hash"] = row_hash(d)
            conn.execute(
                "UPDATE audit SET prev_hash = ?, row_hash = ? WHERE id = ?",
                (d["prev_hash"], d["row_hash"], d["id"]),
            )
            prev, last_id, n = d["row_hash"], int(d["id"]), n + 1
        conn.execute(
            "INSERT INTO chain_head (one, last_id, last_hash) VALUES (1, ?, ?)", (last_id, prev)
        )
        if n:
            stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('chain_migrated', ?)",
                (f"{n} rows (ids up to {last_id}) existed before the hash-linked ledger "
                 f"and were linked at migration on {stamp}",),
            )  # fmt: skip
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('chain_migrated_through', ?)",
                (str(last_id),),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _append_row(self, row: dict[str, Any]) -> int:
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" * len(_COLUMNS))
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")  # serialises appends across processes
            try:
                last_id, last_hash = conn.execute(
                    "SELECT last_id, last_hash FROM chain_head WHERE one = 1"
                ).fetchone()
                values = self._link(row, (int(last_id), last_hash))
                conn.execute(f"INSERT INTO audit ({cols}) VALUES ({marks})", values)
                conn.execute(
                    "UPDATE chain_head SET last_id = ?, last_hash = ? WHERE one = 1",
                    (row["id"], row["row_hash"]),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return int(row["id"])

    def _fetch_unlocked(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(sql, args).fetchall()]

    def _fetch(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        with self._lock:
            return self._fetch_unlocked(sql, args)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Fetch]:
        with self._lock:
            self._conn.execute("BEGIN")  # deferred: reads only, one snapshot (WAL)
            try:
                yield self._fetch_unlocked
            finally:
                self._conn.execute("ROLLBACK")


# ---- PostgreSQL -----------------------------------------------------------------------------

_PG_LOCK = 7_204_171_614  # advisory lock key: one opener at a time creates or migrates
_PG_SETUP = (
    f"CREATE TABLE IF NOT EXISTS audit (\n    "
    f"{_sql_columns('DOUBLE PRECISION', 'BIGINT', 'BIGINT PRIMARY KEY')}\n)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chain_head (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "last_id BIGINT NOT NULL, last_hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)",
    "CREATE INDEX IF NOT EXISTS audit_verdict ON audit (verdict, id)",
    "CREATE OR REPLACE FUNCTION qkscore_audit_append_only() RETURNS trigger AS $$ BEGIN "
    "RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION qkscore_audit_append_only()",
    "INSERT INTO meta (key, value) VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE "
    "SET value = GREATEST(meta.value::int, excluded.value::int)::text",
)


class PostgresAuditStore(AuditStore):
    """The log in a PostgreSQL database (psycopg 3, a connection pool per process).
    ``read_only``: every transaction read-only (``default_transaction_read_only``), nothing
    created."""

    _ph = "%s"
    _TABLES_SQL = (
        "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = "
        "current_schema()"
    )
    _COLUMNS_SQL = (
        "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'audit' "
        "AND table_schema = current_schema()"
    )

    def __init__(
        self,
        url: str,
        store_text: bool = True,
        hash_key: bytes | None = None,
        pool_size: int = 4,
        read_only: bool = False,
    ) -> None:
        self.url = _redact(str(url))
        self.path = None
        self.store_text = store_text
        self.hash_key = hash_key
        self.read_only = read_only
        self.journal_mode = "postgresql"
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as err:
            raise AuditStoreError(
                f"a PostgreSQL log needs psycopg 3 and psycopg-pool: pip install "
                f"'qkscore[serve]' ({err})"
            ) from None
        self._errors = psycopg.Error
        url = str(url).replace("postgres://", "postgresql://", 1)
        try:  # one plain connection first: a bad URL fails at once, not after the pool's wait
            psycopg.connect(url, connect_timeout=10).close()
        except Exception as err:
            raise AuditStoreError(f"cannot connect to {self.url}: {_first_line(err)}") from None
        kwargs: dict[str, Any] = {"row_factory": dict_row, "autocommit": True}
        if read_only:
            kwargs["options"] = "-c default_transaction_read_only=on"
        try:
            self._pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, kwargs=kwargs, open=False
            )
            self._pool.open(wait=True, timeout=10)
        except Exception as err:
            raise AuditStoreError(f"cannot connect to {self.url}: {_first_line(err)}") from None
        try:
            if read_only:
                have = {r["name"] for r in self._fetch(self._COLUMNS_SQL, [])}
                if not have:
                    raise AuditStoreError(f"{self.url} holds no audit log (no 'audit' table)")
                err = _schema_error(have, self.url, "database")
                if err:
                    raise err
            else:
                self._set_up()
        except AuditStoreError:
            self._pool.close()
            raise
        except Exception as err:
            self._pool.close()
            raise AuditStoreError(f"{self.url}: {_first_line(err)}") from None

    def _set_up(self) -> None:
        """Create the schema, one opener at a time; a new log gets its head row, a log whose
        head was removed is refused."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            fetch = _pg_fetch(conn)
            tables = {r["name"] for r in fetch(self._TABLES_SQL, [])}
            have = {r["name"] for r in fetch(self._COLUMNS_SQL, [])}
            err = _schema_error(have, self.url, "database") if have else None
            if err:
                raise err
            headless = None
            if "audit" in tables and not (
                "chain_head" in tables and fetch("SELECT one FROM chain_head", [])
            ):
                headless = _Headless.read(fetch, tables, have)
                problem = headless.tampering()
                if problem is None and headless.rows:  # no PostgreSQL log predates the ledger
                    problem = f"is missing while the log holds {headless.rows} rows"
                _refuse_tampered(problem, self.url)
            for sql in _PG_SETUP:
                args = (str(SCHEMA_VERSION),) if "'schema_version'" in sql else None
                conn.execute(sql, args)
            if headless is not None or "audit" not in tables:
                conn.execute(
                    "INSERT INTO chain_head (one, last_id, last_hash) VALUES (1, 0, %s)",
                    (GENESIS,),
                )

    def close(self) -> None:
        self._pool.close()

    def _append_row(self, row: dict[str, Any]) -> int:
        cols = ", ".join(_COLUMNS)
        marks = ", ".join(["%s"] * len(_COLUMNS))
        with self._pool.connection() as conn, conn.transaction():
            # the row lock serialises appends of every process on this database
            head = conn.execute(
                "SELECT last_id, last_hash FROM chain_head WHERE one = 1 FOR UPDATE"
            ).fetchone()
            values = self._link(row, (int(head["last_id"]), head["last_hash"]))
            conn.execute(f"INSERT INTO audit ({cols}) VALUES ({marks})", values)
            conn.execute(
                "UPDATE chain_head SET last_id = %s, last_hash = %s WHERE one = 1",
                (row["id"], row["row_hash"]),
            )
        return int(row["id"])

    def _fetch(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            return _pg_fetch(conn)(sql, args)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Fetch]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _pg_fetch(conn)


def _pg_fetch(conn: Any) -> Fetch:
    """A fetch function on one PostgreSQL connection (``?`` placeholders become ``%s``)."""

    def fetch(sql: str, args: list[Any]) -> list[dict[str, Any]]:
        return list(conn.execute(sql.replace("?", "%s"), args).fetchall())

    return fetch


def arrow_schema(pa: Any) -> Any:
    """The pyarrow schema of exported rows (as stored: JSON columns as text, flags 0/1)."""
    types = {c: pa.string() for c in _COLUMNS}
    types.update({c: pa.float64() for c in _REAL})
    types.update({c: pa.int64() for c in (*_INT, "id")})
    return pa.schema([(c, types[c]) for c in _COLUMNS])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _explain(path: str | Path, err: sqlite3.Error) -> str:
    text = str(err)
    if "not a database" in text:
        return f"{path} is not an SQLite database"
    if "readonly" in text or "unable to open" in text:
        return f"{path} cannot be written: {text}"
    return f"{path}: {text}"


def _weakest(steps: list[Mapping[str, Any]]) -> int | None:
    margins = [(s.get("margin"), i) for i, s in enumerate(steps) if s.get("margin") is not None]
    return min(margins)[1] if margins else None


def _row(r: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(r)
    d["result"] = json.loads(d["result"])
    d["steps"] = json.loads(d["steps"]) if d["steps"] else None
    for key in ("model_answer", "disagree"):
        if d[key] is not None:
            d[key] = bool(d[key])
    return d


#: The name from before the audit log's hash links were told apart from chains of thought.
ChainReport = LedgerReport

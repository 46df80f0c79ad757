"""An append-only SQLite audit log of every judged request.

Each row records when, with which profile (its digest) and model (fingerprint, and the dtype it
ran in), a hash of the inputs, optionally the texts themselves, the scores and the verdict, so a
decision can be traced and re-checked later. The database runs in WAL mode: the dashboard reads
while requests append, and a crash loses at most the row being written.

One connection, guarded by a lock, serves all threads: writes are a few hundred bytes each and
the model call they follow is serialised anyway, so a pool would buy nothing.

Opening a log checks it can serve (a writable SQLite file whose ``audit`` table, when present,
has this schema) and migrates an older one in place: a log from before ``dtype`` was recorded
gets the column (``ALTER TABLE ... ADD COLUMN``; its old rows read ``dtype`` None).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AuditStore", "AuditStoreError", "AuditPage", "input_hash", "parse_time"]

# 2: the dtype column
SCHEMA_VERSION = 2
# SQLite integers are signed 64-bit: larger offsets and cursors cannot be bound
MAX_INT64 = 2**63 - 1

_TABLES = (
    """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    profile TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    context TEXT,
    statement TEXT,
    steps TEXT,
    verdict TEXT NOT NULL,
    margin REAL,
    probability REAL,
    model_answer INTEGER,
    disagree INTEGER,
    first_failure INTEGER,
    n_steps INTEGER,
    latency_ms REAL,
    result TEXT NOT NULL,
    dtype TEXT
)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)",
    "CREATE INDEX IF NOT EXISTS audit_verdict ON audit (verdict, id)",
)

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
)
# columns added after the first schema, with their SQL types: an older log gets them on open
_ADDED = {"dtype": "TEXT"}


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


def parse_time(value: str | float | int | None) -> float | None:
    """Unix seconds from unix seconds or an ISO 8601 time (naive times are taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"time {value!r} is neither unix seconds nor ISO 8601 (2025-01-31T12:00:00Z)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


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


class AuditStoreError(ValueError):
    """The path cannot hold the audit log: a folder, not SQLite, another schema, not writable."""


class AuditStore:
    """Append judged requests to an SQLite file and page through them.

    Raises :class:`AuditStoreError`, with a one-line reason, when ``path`` cannot serve.
    """

    def __init__(
        self, path: str | Path, store_text: bool = True, hash_key: bytes | None = None
    ) -> None:
        self.path = Path(path)
        self.store_text = store_text
        self.hash_key = hash_key
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

    def _open(self) -> None:
        """WAL mode, the schema (an older log migrated), and a real write: a read-only file or
        folder fails here, at startup, not on the first judged request."""
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=5000")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        self.journal_mode = str(mode).lower()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # one opener at a time migrates
        try:
            for sql in _TABLES:
                conn.execute(sql)
            have = {r[1] for r in conn.execute("PRAGMA table_info(audit)")}
            missing = [c for c in _COLUMNS if c not in have and c not in _ADDED]
            if missing:
                names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise AuditStoreError(
                    f"{self.path} holds an 'audit' table of another schema (no column {names}): "
                    "give another file"
                )
            for column, sql_type in _ADDED.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE audit ADD COLUMN {column} {sql_type}")
            for sql in _INDEXES:
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

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- writing ------------------------------------------------------------------------

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
        """Log one chain verification; its margin and probability are the first failing step's
        (or the weakest step's when all pass), the step a reviewer reads first."""
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
        now = time.time()
        row["result"] = json.dumps(row["result"], default=float)
        for key in ("model_answer", "disagree"):
            if row[key] is not None:
                row[key] = int(bool(row[key]))
        row["ts"] = now
        row["time"] = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
            timespec="milliseconds"
        )
        cols = [c for c in _COLUMNS if c != "id"]
        sql = f"INSERT INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        with self._lock:
            cur = self._conn.execute(sql, [row[c] for c in cols])
            return int(cur.lastrowid)

    # ---- reading ------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

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
        if cursor is not None and not 0 <= cursor <= MAX_INT64:
            raise ValueError(f"cursor must be between 0 and {MAX_INT64}, got {cursor}")
        if verdict not in (None, "", "valid", "invalid"):
            raise ValueError(f"verdict must be 'valid' or 'invalid', got {verdict!r}")
        if kind not in (None, "", "check", "chain"):
            raise ValueError(f"kind must be 'check' or 'chain', got {kind!r}")
        where, args = [], []
        if verdict:
            where.append("verdict = ?")
            args.append(verdict)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        t0, t1 = parse_time(since), parse_time(until)
        if t0 is not None:
            where.append("ts >= ?")
            args.append(t0)
        if t1 is not None:
            where.append("ts <= ?")
            args.append(t1)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        page_where = list(where)
        page_args = list(args)
        if cursor is not None:
            page_where.append("id < ?")
            page_args.append(int(cursor))
        page_clause = f"WHERE {' AND '.join(page_where)}" if page_where else ""
        with self._lock:
            total = int(
                self._conn.execute(f"SELECT COUNT(*) FROM audit {clause}", args).fetchone()[0]
            )
            rows = self._conn.execute(
                f"SELECT * FROM audit {page_clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*page_args, limit + 1, offset],
            ).fetchall()
        more = len(rows) > limit
        items = [_row(r) for r in rows[:limit]]
        next_cursor = items[-1]["id"] if more and items else None
        return AuditPage(items, total, limit, offset, next_cursor)


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


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["result"] = json.loads(d["result"])
    d["steps"] = json.loads(d["steps"]) if d["steps"] else None
    for key in ("model_answer", "disagree"):
        if d[key] is not None:
            d[key] = bool(d[key])
    return d

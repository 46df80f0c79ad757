"""Append-only JSON-lines files that survive a kill -9.

Why: generation and ranking run for an hour on a CPU, and a crash must cost only the write in
flight. Each write is one ``write`` call followed by an fsync, so a kill leaves at most a torn
fragment as the file's last line. The reader leaves out that torn last line; a line that does
not parse anywhere before the last one is damage, not a torn write, and stops the read with an
error naming the file and the line (never a silent stop that drops the whole lines after it).
Before appending again, :func:`drop_torn_tail` cuts the fragment off, so the next write starts
on a line of its own instead of being glued onto it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkscore.data.items import DataError

__all__ = ["JsonlScan", "append_jsonl", "drop_torn_tail", "jsonl_bytes", "read_jsonl", "scan_jsonl"]


def jsonl_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, ensure_ascii=False, default=str).encode() + b"\n" for r in records
    )


def append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append ``records`` in one write, flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(jsonl_bytes(records))
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class JsonlScan:
    """What a JSON-lines file holds, line by line (numbers are 1-based)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the line number of each record
    bad: list[int] = field(default_factory=list)  # lines before the last that do not parse
    torn: int | None = None  # the last line, when it does not parse (a write cut short)
    end: int = 0  # byte offset where the last line that is not torn ends


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def scan_jsonl(path: Path) -> JsonlScan:
    """Every line of ``path`` (nothing if it is missing), sorted into records, damaged lines
    and a torn last line; never raises for the content."""
    scan = JsonlScan()
    if not path.exists():
        return scan
    data = path.read_bytes()
    pieces = data.split(b"\n")
    last = max((i for i, line in enumerate(pieces) if line.strip()), default=-1)
    offset = 0
    for i, line in enumerate(pieces):
        start, offset = offset, min(offset + len(line) + 1, len(data))
        if not line.strip():
            continue
        record = _parse(line)
        if record is not None:
            scan.records.append(record)
            scan.lines.append(i + 1)
        elif i == last:
            scan.torn = i + 1
            offset = start
            break
        else:
            scan.bad.append(i + 1)
    scan.end = offset if scan.torn is not None else len(data)
    return scan


def _refuse_damage(path: Path, scan: JsonlScan) -> None:
    if scan.bad:
        raise DataError(
            "not a JSON object, and not the torn last line a kill leaves: the file is damaged "
            f"in the middle ({len(scan.bad)} such line(s))",
            file=str(path),
            line=scan.bad[0],
        )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path`` (none if it is missing), leaving out a torn last line; a line
    that does not parse before the last one raises :class:`DataError` naming file and line."""
    scan = scan_jsonl(path)
    _refuse_damage(path, scan)
    return scan.records


def drop_torn_tail(path: Path) -> None:
    """Cut ``path`` back to its whole lines, so that the next append starts on a line of its
    own instead of running on from a torn one. A damaged line before the last one raises
    :class:`DataError` (cutting there would drop the whole lines after it)."""
    if not path.exists():
        return
    scan = scan_jsonl(path)
    _refuse_damage(path, scan)
    if path.stat().st_size != scan.end:
        os.truncate(path, scan.end)
    if scan.end:
        with open(path, "rb+") as fh:
            fh.seek(scan.end - 1)
            if fh.read(1) != b"\n":  # cut just before its newline: the line is whole
                fh.write(b"\n")

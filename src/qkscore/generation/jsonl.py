"""Append-only JSON-lines files that survive a kill -9.

Why: generation and ranking run for an hour on a CPU, and a crash must cost only the batch in
flight. Each batch is one write followed by an fsync, and the reader stops at the first line
that does not parse (the torn tail of a write cut short), dropping everything after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_jsonl", "drop_torn_tail", "jsonl_bytes", "read_jsonl"]


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


def _whole_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records before the first torn line, and the byte offset where they end."""
    if not path.exists():
        return [], 0
    out, end = [], 0
    data = path.read_bytes()
    for line in data.split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError):
                break
        end = min(end + len(line) + 1, len(data))
    return out, end


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every whole line of ``path`` (none if it is missing); a torn line ends the list."""
    return _whole_lines(path)[0]


def drop_torn_tail(path: Path) -> None:
    """Cut ``path`` back to its whole lines, so that the next append starts on a line of its
    own instead of running on from a torn one."""
    if not path.exists():
        return
    _, end = _whole_lines(path)
    if path.stat().st_size != end:
        os.truncate(path, end)
    if end:
        with open(path, "rb+") as fh:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":  # cut just before its newline: the line is whole
                fh.write(b"\n")

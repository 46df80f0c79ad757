"""Files that survive a kill -9, and the resumable folder every long job writes into.

Why one module: scans, generation and ranking each run for an hour, each writes as it goes and
each resumes after a crash. They share three things, here once:

* **Atomic writes** (:func:`atomic_write`, :func:`write_bytes`, :func:`write_json`,
  :func:`save_array`): the bytes go to a temporary file in the same folder, are fsynced and
  renamed over the target, so a reader sees the old file or the new one, never half of one.
* **JSON lines** (:func:`append_jsonl`, :func:`read_jsonl`, :func:`drop_torn_tail`): each
  append is one ``write`` call followed by an fsync, so a kill leaves at most a torn fragment
  as the file's last line. The reader leaves that torn last line out; a line that does not
  parse anywhere before the last one is damage, not a torn write, and stops the read with an
  error naming the file and the line (never a silent stop that drops the whole lines after it).
  Before appending again, :func:`drop_torn_tail` cuts the fragment off, so the next write starts
  on a line of its own instead of being glued onto it.
* **The resumable folder** (:class:`ResumableFolder`): a settings file records what the
  folder's contents depend on; a rerun compares its request with it key by key and is refused
  naming each difference (:meth:`~ResumableFolder.refuse_differences`), or sets the stale part
  aside (:meth:`~ResumableFolder.move_aside`) and starts it again; :meth:`~ResumableFolder.digest`
  stamps pieces with the request that wrote them. The run folder of a scan
  (:class:`qkscore.run.RunFolder`), the generation folder
  (:class:`qkscore.generation.folder.GenFolder`) and the rank cache
  (:class:`qkscore.generation.rank_cache.RankCache`) are such folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.data.items import DataError

__all__ = [
    "FolderError",
    "FolderMismatchError",
    "JsonlScan",
    "ResumableFolder",
    "append_jsonl",
    "atomic_write",
    "drop_torn_tail",
    "json_digest",
    "jsonable",
    "jsonl_bytes",
    "read_jsonl",
    "save_array",
    "scan_jsonl",
    "write_bytes",
    "write_json",
]


# ---- atomic writes ---------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Any], None], suffix: str = "") -> None:
    """Write ``path`` through ``write(fh)`` (a binary file) all at once: a temporary file in
    the same folder, fsynced, then renamed over ``path``; the folder is made when missing.

    The file gets the mode ``open()`` would have given it (a file it replaces keeps its own),
    not the temporary file's 0600: results written 0600 could not be read by a teammate on a
    shared machine or by a web server serving a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it: ``os.umask`` can only
    be read by setting it, which races with any thread creating a file meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes, suffix: str = "") -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data), suffix)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; what JSON lacks is written as its str."""
    write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def save_array(path: Path, array: np.ndarray) -> None:
    """Write a NumPy array (``.npy``) atomically."""
    atomic_write(path, lambda fh: np.save(fh, array), suffix=".npy")


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, other objects their str)."""
    return json.loads(json.dumps(obj, default=str))


def json_digest(obj: Mapping[str, Any]) -> str:
    """A short digest (sha256, 16 hex) of ``obj``'s content as canonical JSON: key order and
    formatting do not matter. A profile's digest (``Profile.digest``, what audit rows, the
    service and lm-eval results name it by) and a resumable folder's request stamp are this."""
    text = json.dumps(dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- JSON lines ------------------------------------------------------------------------------


def jsonl_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    """One JSON line per record (UTF-8, not ASCII-escaped)."""
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


# ---- the resumable folder --------------------------------------------------------------------


class FolderError(RuntimeError):
    """A folder's file is damaged or disagrees with its settings file."""


class FolderMismatchError(RuntimeError):
    """A folder made by another request (model, data or settings) than the one resuming it."""


class ResumableFolder:
    """A folder a long job fills piece by piece and a rerun of the same job resumes.

    ``SETTINGS`` names the JSON file that records what the contents depend on; ``JOB`` says
    in messages what asks (``"this scan asks for ..."``). Subclasses add the folder's own
    layout and checks.
    """

    SETTINGS = "run.json"
    JOB = "scan"
    #: What the settings file should be, in the error for one that is not a JSON object.
    KIND = "a qkscore settings file"
    #: Added to the error for a settings file that cannot be read at all.
    UNREADABLE = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        """The settings file."""
        return self.path / self.SETTINGS

    def exists(self) -> bool:
        return self.meta_path.exists()

    def read_settings(self) -> dict[str, Any]:
        """The settings file's JSON object; FileNotFoundError when there is none, and
        :class:`FolderError` when it is empty, unreadable or not an object."""
        if not self.exists():
            raise FileNotFoundError(f"{self.path} has no {self.SETTINGS}")
        try:
            settings = json.loads(self.meta_path.read_bytes().decode())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            what = "is empty" if self.meta_path.stat().st_size == 0 else f"is unreadable ({err})"
            raise FolderError(f"{self.meta_path} {what}{self.UNREADABLE}") from err
        if not isinstance(settings, dict):
            raise FolderError(f"{self.meta_path} is not {self.KIND}")
        return settings

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        write_json(self.meta_path, dict(settings))

    @staticmethod
    def digest(settings: Mapping[str, Any]) -> str:
        """A short digest of a request's settings (key order does not matter), stamped on the
        pieces it writes so a piece of another request is told apart."""
        return json_digest(settings)

    @staticmethod
    def same(recorded: Mapping[str, Any] | None, request: Mapping[str, Any]) -> bool:
        """Whether ``recorded`` equals ``request`` as JSON stores them (a tuple equals the list
        it was written as)."""
        return recorded is not None and jsonable(dict(recorded)) == jsonable(dict(request))

    def differences(self, recorded: Mapping[str, Any], request: Mapping[str, Any]) -> list[str]:
        """One line per key of ``request`` the folder's ``recorded`` settings disagree on,
        compared as JSON stores them."""
        old, new = jsonable(dict(recorded)), jsonable(dict(request))
        lines = []
        for key, value in new.items():
            if old.get(key) == value:
                continue
            if key in self.DESCRIBED and old.get(key) is not None:
                lines.append(f"  {key}: {self.DESCRIBED[key]}")
            elif old.get(key) is None:
                lines.append(
                    f"  {key}: folder has no record of it, this {self.JOB} asks for {value!r}"
                )
            else:
                lines.append(
                    f"  {key}: folder has {old.get(key)!r}, this {self.JOB} asks for {value!r}"
                )
        return lines

    #: How a difference is told when the values themselves say little.
    DESCRIBED: Mapping[str, str] = {
        "items": "content hash differs (data changed since the folder was made)",
    }

    def refuse_differences(self, recorded: Mapping[str, Any], request: Mapping[str, Any]) -> None:
        """Raise :class:`FolderMismatchError` naming each key of ``request`` the folder's
        ``recorded`` settings disagree on; nothing when they agree."""
        lines = self.differences(recorded, request)
        if lines:
            raise FolderMismatchError(
                f"{self.path} was made by a different {self.JOB} and is not mixed with this "
                "one:\n" + "\n".join(lines) + "\nUse another --out folder, or delete this one."
            )

    @staticmethod
    def move_aside(path: Path, name: Callable[[int], str], into: Path | None = None) -> Path:
        """Move ``path`` (a file or a folder) to ``into`` (default: beside it) under the first
        of ``name(0)``, ``name(1)``, ... that is free; the new path."""
        where = path.parent if into is None else into
        where.mkdir(parents=True, exist_ok=True)
        k = 0
        while (where / name(k)).exists():
            k += 1
        dest = where / name(k)
        os.replace(path, dest)
        return dest

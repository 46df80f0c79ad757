"""The plumbing every data format shares, so every set behaves the same way on bad input.

A format is one module of this package: it registers its loader with :func:`loader` under a
format name (``prontoqa:PATH``, ``multi-logieval:PATH`` ...), so a run is fully described by its
spec string, and builds items with these helpers:

* records carry their file and 1-based line, so a :class:`DataError` always says where to look;
* ``?on_error=skip`` skips a bad record instead of raising, and counts it in a :class:`LoadReport`
  (:func:`get_last_load_report`) so nothing is dropped silently;
* ids are stable (``<file stem>/<record key>``) so results can be joined across runs;
* ``meta`` uses one vocabulary (``source``, ``file``, ``split``, ``depth``, ``distractors``,
  ``rule``, ``logic``, ``ontology``, ``negated`` ...) so breakdowns work on every set.

This module must not import torch or transformers (the data layer is the bottom layer).
"""

from __future__ import annotations

import bisect
import csv
import functools
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qkscore.data.items import TRUE_FALSE, DataError, Item, normalize_label
from qkscore.data.negation import has_negation
from qkscore.data.spec import DataSpec, register_loader
from qkscore.data.textio import read_text_file

__all__ = [
    "LoadContext",
    "LoadReport",
    "MissingDependencyError",
    "Record",
    "get_last_load_report",
    "iter_jsonl",
    "iter_records",
    "last_load_report",
    "letter_label",
    "loader",
    "make_item",
    "read_json",
    "read_text",
    "spec_files",
    "split_from_name",
    "strip_prefix",
    "to_int",
]


# --------------------------------------------------------------------------------------------
# Load report and error policy
# --------------------------------------------------------------------------------------------


class MissingDependencyError(DataError, ImportError):
    """An optional package a format needs is not installed (caught as either error type)."""


@dataclass
class LoadReport:
    """What one loader call read, skipped and noticed; ``inspect`` shows it next to the counts.

    ``errors`` keeps the message of every skipped record so that ``on_error=skip`` never hides
    what was dropped; ``notes`` records silent-looking decisions such as an encoding fallback.
    """

    spec: str
    format: str
    on_error: str = "raise"
    files: list[str] = field(default_factory=list)
    loaded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


last_load_report: LoadReport | None = None
"""The report of the most recent loader call (read it with :func:`get_last_load_report`)."""


def get_last_load_report() -> LoadReport | None:
    """The report of the most recent loader call, or None before the first one."""
    return last_load_report


_ON_ERROR = ("raise", "skip")


class LoadContext:
    """Per-call state shared by readers and item builders: the error policy and the report."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        on_error = (spec.get("on_error") or "raise").strip().lower()
        if on_error not in _ON_ERROR:
            raise DataError(
                f"on_error={on_error!r} must be one of {', '.join(_ON_ERROR)}", field="on_error"
            )
        self.skip = on_error == "skip"
        self.report = LoadReport(spec=str(spec), format=spec.format, on_error=on_error)

    def fail(self, error: DataError) -> None:
        """Raise ``error``, or under ``on_error=skip`` count it and carry on."""
        if not self.skip:
            raise error
        self.report.skipped += 1
        self.report.errors.append(str(error))

    def note(self, message: str) -> None:
        self.report.notes.append(message)

    def add_file(self, path: Path | str) -> None:
        self.report.files.append(str(path))

    def build(self, record: Record, fn: Callable[[Record], Iterable[Item]]) -> list[Item]:
        """Items of one record; a bad record raises or, under ``on_error=skip``, yields none.

        Building is eager so that a record either contributes all its items or none.
        """
        try:
            return list(fn(record))
        except DataError as err:
            if err.file is None:
                err = DataError(
                    err.reason, file=str(record.file), line=record.line, field=err.field
                )
            self.fail(err)
            return []

    def finish(self, items: Iterable[Item]) -> list[Item]:
        global last_load_report
        out = list(items)
        self.report.loaded = len(out)
        last_load_report = self.report
        return out


ImplFn = Callable[[DataSpec, LoadContext], Iterable[Item]]


def loader(
    name: str, description: str, *, takes_path: bool = True, params: Sequence[str] = ()
) -> Callable[[ImplFn], Any]:
    """Register ``impl(spec, ctx)`` as format ``name``, giving it a context and a report.

    ``params`` names every spec parameter the format reads beside the ones all formats take
    (:data:`qkscore.data.spec.COMMON_PARAMS`); a spec with another one is refused.
    """

    def deco(impl: ImplFn) -> Callable[[DataSpec], list[Item]]:
        @functools.wraps(impl)
        def run(spec: DataSpec) -> list[Item]:
            ctx = LoadContext(spec)
            return ctx.finish(impl(spec, ctx))

        register_loader(name, takes_path=takes_path, description=description, params=params)(run)
        return run

    return deco


# --------------------------------------------------------------------------------------------
# Records and readers (JSON, JSONL, CSV) with line numbers and encoding fallback
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One raw record with where it came from, so errors can point at it."""

    file: Path
    line: int
    key: str
    data: Any
    index: int = 0  # 0-based position among the file's records (MMLU ids use it)

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, file=str(self.file), line=self.line, field=field)

    def get(self, path: str, default: Any = None) -> Any:
        """Value at a dotted ``path`` ("meta.QDep"), or ``default`` when absent."""
        value: Any = self.data
        for part in path.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, Sequence) and not isinstance(value, str) and part.isdigit():
                index = int(part)
                if index >= len(value):
                    return default
                value = value[index]
            else:
                return default
        return value

    def require(self, path: str) -> Any:
        """Value at ``path``; a missing field is a :class:`DataError` naming it."""
        value = self.get(path, _MISSING)
        if value is _MISSING or value is None:
            raise self.error("missing field", field=path)
        return value

    def text(self, path: str) -> str:
        """A required, non-empty string field (lists of sentences are joined with spaces)."""
        value = self.require(path)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = " ".join(v.strip() for v in value)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.error(f"expected text, got {type(value).__name__}", field=path)
        value = str(value).strip()
        if not value:
            raise self.error("empty text", field=path)
        return value

    def label(self, path: str) -> str:
        return normalize_label(self.require(path), file=str(self.file), line=self.line, field=path)


_MISSING = object()
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
_FALLBACK_ENCODINGS = ("cp1252",)


def read_text(path: Path, ctx: LoadContext | None = None) -> str:
    """File text as UTF-8, falling back to cp1252 (three Multi-LogiEval files are cp1252).

    The fallback is written to the load report, since a wrong guess would garble quotes. A
    UTF-16 file is refused as such (:func:`qkscore.data.textio.read_text_file`) rather than
    decoded as cp1252 into text that fails as malformed JSON.
    """
    text, encoding = read_text_file(path, _FALLBACK_ENCODINGS)
    if encoding != "utf-8" and ctx is not None:
        ctx.note(f"{path}: not UTF-8, decoded as {encoding}")
    return text


class _LineIndex:
    """Offset -> 1-based line number in O(log n), for records inside one big JSON document."""

    def __init__(self, text: str) -> None:
        self._newlines = [m.start() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1


def _skip_ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return match.end() if match else i


def _json_children(text: str, start: int) -> Iterator[tuple[str, int, Any]]:
    """(key, offset, value) of each member of the object or array starting at ``start``.

    The text must already be valid JSON (checked with ``json.loads``); this walk only recovers
    where each child starts, which ``json`` itself does not report.
    """
    i = _skip_ws(text, start)
    opener = text[i]
    if opener not in "[{":
        return
    closer = "}" if opener == "{" else "]"
    i = _skip_ws(text, i + 1)
    index = 0
    while i < len(text) and text[i] != closer:
        if opener == "{":
            key, i = _DECODER.raw_decode(text, i)
            i = _skip_ws(text, _skip_ws(text, i) + 1)  # past ':'
        else:
            key = str(index)
        value, end = _DECODER.raw_decode(text, i)
        yield str(key), i, value
        index += 1
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)


@dataclass
class JsonDocument:
    """A parsed JSON file that can still say on which line each nested record starts."""

    path: Path
    text: str
    data: Any
    _lines: _LineIndex

    def children(self, offset: int = 0) -> Iterator[Record]:
        for index, (key, pos, value) in enumerate(_json_children(self.text, offset)):
            yield Record(self.path, self._lines.line(pos), key, value, index)

    def child_offset(self, key: str, offset: int = 0) -> int | None:
        for k, pos, _ in _json_children(self.text, offset):
            if k == key:
                return pos
        return None


def _parse_json(path: Path, text: str, ctx: LoadContext) -> JsonDocument | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        ctx.fail(
            DataError(
                f"malformed JSON: {err.msg} (column {err.colno})", file=str(path), line=err.lineno
            )
        )
        return None
    return JsonDocument(path, text, data, _LineIndex(text))


def read_json(path: Path, ctx: LoadContext) -> JsonDocument | None:
    """Parse a JSON file; a malformed file raises (or is skipped whole under on_error=skip)."""
    return _parse_json(path, read_text(path, ctx), ctx)


def _jsonl_lines(path: Path, text: str, ctx: LoadContext) -> Iterator[Record]:
    index = -1
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        index += 1
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            ctx.fail(
                DataError(
                    f"malformed JSON line: {err.msg} (column {err.colno})",
                    file=str(path),
                    line=number,
                )
            )
            continue
        if not isinstance(data, dict):
            ctx.fail(
                DataError(
                    f"expected a JSON object, got {type(data).__name__}",
                    file=str(path),
                    line=number,
                )
            )
            continue
        yield Record(path, number, str(number), data, index)


def iter_jsonl(path: Path, ctx: LoadContext) -> Iterator[Record]:
    """One record per non-blank line; a malformed line raises or is counted as skipped."""
    yield from _jsonl_lines(path, read_text(path, ctx), ctx)


def _looks_like_jsonl(text: str) -> bool:
    """JSONL saved as .json (FOLIO does this): the first line alone is a complete object."""
    first = text.lstrip().split("\n", 1)[0].strip()
    if not first.startswith("{") or first == text.strip():
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _iter_json_file_records(path: Path, ctx: LoadContext) -> Iterator[Record]:
    """Records of a .json file: the items of a top-level list, the members of a top-level
    object, or one per line for JSONL content saved as .json."""
    text = read_text(path, ctx)
    if _looks_like_jsonl(text):
        yield from _jsonl_lines(path, text, ctx)
        return
    doc = _parse_json(path, text, ctx)
    if doc is None:
        return
    if isinstance(doc.data, (list, dict)):
        yield from doc.children()
    else:
        ctx.fail(DataError("expected a JSON list or object of records", file=str(path), line=1))


def iter_csv(
    path: Path, ctx: LoadContext, *, header: bool = True, delimiter: str = ","
) -> Iterator[Record]:
    """CSV rows as records; with ``header`` each row is a dict, otherwise a list of cells.

    The line is the one where the row starts (quoted cells may span lines, as in MMLU).
    """
    text = read_text(path, ctx)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    columns: list[str] | None = None
    start, index = 1, -1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header and columns is None:
            columns = [c.strip() for c in row]
            continue
        index += 1
        if columns is not None:
            if len(row) != len(columns):
                ctx.fail(
                    DataError(
                        f"{len(row)} cells, header has {len(columns)}",
                        file=str(path),
                        line=line,
                        field="columns",
                    )
                )
                continue
            yield Record(path, line, str(line), dict(zip(columns, row, strict=True)), index)
        else:
            yield Record(path, line, str(line), row, index)


def iter_records(
    path: Path, ctx: LoadContext, *, csv_header: bool = True, delimiter: str | None = None
) -> Iterator[Record]:
    """Records of any supported file, chosen by suffix (.jsonl/.ndjson, .json, .csv/.tsv)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from iter_jsonl(path, ctx)
    elif suffix == ".json":
        yield from _iter_json_file_records(path, ctx)
    elif suffix in (".csv", ".tsv"):
        sep = delimiter or ("\t" if suffix == ".tsv" else ",")
        yield from iter_csv(path, ctx, header=csv_header, delimiter=sep)
    else:
        raise DataError(
            "unsupported file type (expected .json, .jsonl, .csv or .tsv)", file=str(path)
        )


def spec_files(
    spec: DataSpec,
    ctx: LoadContext,
    suffixes: tuple[str, ...],
    exclude: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """The files a spec names: folders expand (recursively, sorted) to files with ``suffixes``."""
    out: list[Path] = []
    for path in spec.files():
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
            )
            if exclude is not None:
                found = [p for p in found if not exclude(p)]
            if not found:
                raise DataError(f"folder holds no {'/'.join(suffixes)} files", file=str(path))
            out.extend(found)
        else:
            out.append(path)
    for path in out:
        ctx.add_file(path)
    return out


# --------------------------------------------------------------------------------------------
# Item helpers shared by the formats
# --------------------------------------------------------------------------------------------

_SPLIT_WORDS = {
    "train": "train",
    "dev": "dev",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def split_from_name(stem: str) -> str | None:
    """``..._dev`` -> "dev": the last underscore/dash token naming a split."""
    for token in reversed(re.split(r"[_\-.]", stem.lower())):
        if token in _SPLIT_WORDS:
            return _SPLIT_WORDS[token]
    return None


def make_item(
    item_id: str,
    context: str,
    statement: str,
    label: str,
    options: Sequence[str] = TRUE_FALSE,
    **meta: Any,
) -> Item:
    """An Item whose meta drops unknown (None) values and always says whether it is negated."""
    clean = {k: v for k, v in meta.items() if v is not None}
    clean.setdefault("negated", has_negation(statement))
    return Item(
        id=item_id,
        context=context,
        statement=statement,
        label=label,
        options=tuple(options),
        meta=clean,
    )


def to_int(record: Record, value: Any, field: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise record.error(f"expected an integer, got {value!r}", field=field) from None


def strip_prefix(text: str, prefix: str) -> str | None:
    """``text`` without ``prefix`` (case-insensitive), or None when it lacks it."""
    if text.lower().startswith(prefix.lower()):
        return text[len(prefix) :].strip()
    return None


def letter_label(record: Record, value: Any, options: Sequence[str], field: str) -> str:
    """The gold option as a letter, from a letter, a 0-based index or the option text."""
    n = len(options)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return string.ascii_uppercase[value]
    text = str(value).strip()
    if len(text) == 1 and text.upper() in string.ascii_uppercase[:n]:
        return text.upper()
    if text in options:
        return string.ascii_uppercase[list(options).index(text)]
    if text.isdigit() and int(text) < n:
        return string.ascii_uppercase[int(text)]
    raise record.error(f"answer {value!r} names none of the {n} options", field=field)

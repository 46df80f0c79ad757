"""Loaders that turn public reasoning sets (and generic JSONL/CSV/HF data) into :class:`Item` s.

Every loader is registered under a format name (``prontoqa:PATH``, ``multi-logieval:PATH`` ...)
so a run is fully described by its spec string. All loaders share the same plumbing, defined at
the top of this module, so that every set behaves the same way on bad input:

* records carry their file and 1-based line, so a :class:`DataError` always says where to look;
* ``?on_error=skip`` skips a bad record instead of raising, and counts it in a :class:`LoadReport`
  (``last_load_report``) so nothing is dropped silently;
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

from qkscore.data.items import TRUE_FALSE, TRUE_FALSE_UNKNOWN, DataError, Item, normalize_label
from qkscore.data.negation import has_negation, lower_first, negate, upper_first
from qkscore.data.spec import DataSpec, register_loader
from qkscore.data.textio import read_text_file

__all__ = [
    "LoadContext",
    "LoadReport",
    "MissingDependencyError",
    "Record",
    "get_last_load_report",
    "iter_records",
    "last_load_report",
    "multi_logieval_statement",
    "prontoqa_shots",
    "read_text",
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
"""The report of the most recent loader call (read it as ``loaders.last_load_report``)."""


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


def _loader(name: str, description: str, *, takes_path: bool = True) -> Callable[[ImplFn], Any]:
    """Register ``impl(spec, ctx)`` as format ``name``, giving it a context and a report."""

    def deco(impl: ImplFn) -> Callable[[DataSpec], list[Item]]:
        @functools.wraps(impl)
        def run(spec: DataSpec) -> list[Item]:
            ctx = LoadContext(spec)
            return ctx.finish(impl(spec, ctx))

        register_loader(name, takes_path=takes_path, description=description)(run)
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


def _spec_files(
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


def _split_from_name(stem: str) -> str | None:
    """``..._dev`` -> "dev": the last underscore/dash token naming a split."""
    for token in reversed(re.split(r"[_\-.]", stem.lower())):
        if token in _SPLIT_WORDS:
            return _SPLIT_WORDS[token]
    return None


def _item(
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


def _to_int(record: Record, value: Any, field: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise record.error(f"expected an integer, got {value!r}", field=field) from None


def _strip_prefix(text: str, prefix: str) -> str | None:
    """``text`` without ``prefix`` (case-insensitive), or None when it lacks it."""
    if text.lower().startswith(prefix.lower()):
        return text[len(prefix) :].strip()
    return None


def _letter_label(record: Record, value: Any, options: Sequence[str], field: str) -> str:
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


# --------------------------------------------------------------------------------------------
# ProntoQA (True/False) and ProntoQA-OOD ("Prove: X.")
# --------------------------------------------------------------------------------------------

_TRUE_OR_FALSE = "True or false: "
_PROVE = "Prove: "


def _prontoqa_file_meta(path: Path) -> dict[str, Any]:
    """What the generator's file names encode: hops, distractors, ontology, deduction rule.

    ``_random`` in these names is the generator's random sentence ordering; distractor sentences
    are the generator default, so only ``_nodistractor`` files lack them.
    """
    stem = path.stem
    hops = re.match(r"(\d+)hop", stem)
    if "trueontology" in stem:
        ontology = "true"
    elif "falseontology" in stem:
        ontology = "false"
    else:
        ontology = "fictional"
    meta: dict[str, Any] = {
        "file": str(path),
        "split": "test",
        "depth": int(hops.group(1)) if hops else None,
        "distractors": "nodistractor" not in stem,
        "ontology": ontology,
    }
    rule = re.match(r"\d+hop_(?:(OOD)_)?([A-Za-z]+?)_random", stem)
    if rule and rule.group(2) != "0shot":
        meta["rule"] = rule.group(2)
        meta["ood"] = rule.group(1) is not None
    return meta


def _prontoqa_depth(example: Mapping[str, Any]) -> int | None:
    """Hops from a modus-ponens proof: each hop adds a rule and a derived fact."""
    chain = example.get("chain_of_thought")
    if isinstance(chain, list) and len(chain) >= 3:
        return (len(chain) - 1) // 2
    return None


def _prontoqa_example_items(
    record: Record, example_key: str, file_meta: Mapping[str, Any], item_id: str, source: str
) -> list[Item]:
    """Items from one ProntoQA example: one labelled item, or a goal/negation pair for
    "Prove: X." examples (X is provable, so X is True and its negation False)."""
    base = f"{example_key}."
    example = record.require(example_key)
    if not isinstance(example, Mapping):
        raise record.error("expected an object", field=example_key)
    context = record.text(base + "question")
    query = record.text(base + "query")
    meta = dict(file_meta)
    meta["depth"] = meta.get("depth") or _prontoqa_depth(example)
    meta.update(
        source=source,
        record=record.key,
        chain_of_thought=list(example.get("chain_of_thought") or []),
    )
    goal = _strip_prefix(query, _PROVE)
    if goal is not None and not goal.strip(" ."):
        raise record.error("empty 'Prove:' goal", field=base + "query")
    if goal is None:
        if "answer" not in example:
            raise record.error(
                "missing field (no True/False answer and no 'Prove:' query)", field=base + "answer"
            )
        statement = _strip_prefix(query, _TRUE_OR_FALSE) or query
        return [_item(item_id, context, statement, record.label(base + "answer"), **meta)]
    if "answer" in example and normalize_label(example["answer"]) != "True":
        raise record.error("a 'Prove:' query must have a provable goal", field=base + "answer")
    pair = dict(meta, pair=item_id)
    negation = negate(goal)
    return [
        _item(f"{item_id}/goal", context, goal, "True", constructed_negation=False, **pair),
        _item(f"{item_id}/negation", context, negation, "False", constructed_negation=True, **pair),
    ]


def _prontoqa_build(
    record: Record, *, path: Path, file_meta: Mapping[str, Any], ood: bool
) -> list[Item]:
    """Items of one test example; each loader insists on its own query kind so a file given to
    the wrong format fails loudly instead of yielding unlabelled or unbalanced items."""
    is_proof = _strip_prefix(str(record.get("test_example.query", "")), _PROVE) is not None
    if ood and not is_proof:
        raise record.error(
            "expected a 'Prove: X.' query (True/False files: use prontoqa)",
            field="test_example.query",
        )
    if not ood and is_proof:
        raise record.error(
            "a 'Prove: X.' query: load this file with prontoqa-ood", field="test_example.query"
        )
    return _prontoqa_example_items(
        record,
        "test_example",
        file_meta,
        f"{path.stem}/{record.key}",
        "prontoqa-ood" if ood else "prontoqa",
    )


def _prontoqa_load(spec: DataSpec, ctx: LoadContext, *, ood: bool) -> Iterator[Item]:
    for path in _spec_files(spec, ctx, (".json",)):
        doc = read_json(path, ctx)
        if doc is None:
            continue
        if not isinstance(doc.data, dict):
            ctx.fail(DataError("expected an object of examples", file=str(path), line=1))
            continue
        build = functools.partial(
            _prontoqa_build, path=path, file_meta=_prontoqa_file_meta(path), ood=ood
        )
        for record in doc.children():
            yield from ctx.build(record, build)


@_loader(
    "prontoqa",
    "ProntoQA True/False JSON (asaparov/prontoqa json mode); in-context "
    "examples are ignored here, prontoqa_shots() returns them",
)
def _load_prontoqa(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    return _prontoqa_load(spec, ctx, ood=False)


@_loader("prontoqa-ood", "PrOntoQA-OOD 'Prove: X.' JSON: X (True) and its negation (False)")
def _load_prontoqa_ood(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    return _prontoqa_load(spec, ctx, ood=True)


def prontoqa_shots(path: str | Path, record: str | None = None) -> list[Item]:
    """The in-context examples (``in_context_example0..7``) of a ProntoQA file as Items.

    Loaders ignore them for the test item; a k-shot template takes them from here, for one
    record (``item.meta["record"]``) or for the whole file. "Prove:" shots become a goal/negation
    pair like the test items, so shots are label-balanced too.
    """
    path = Path(path)
    ctx = LoadContext(DataSpec(format="prontoqa", path=str(path)))
    doc = read_json(path, ctx)
    if doc is None or not isinstance(doc.data, dict):
        raise DataError("expected an object of examples", file=str(path), line=1)
    file_meta = dict(_prontoqa_file_meta(path), split="shot")
    out: list[Item] = []
    for rec in doc.children():
        if record is not None and rec.key != record:
            continue
        keys = sorted(
            (k for k in rec.data if k.startswith("in_context_example")),
            key=lambda k: int(k[len("in_context_example") :] or 0),
        )
        for key in keys:
            shot_id = f"{path.stem}/{rec.key}/shot{key[len('in_context_example') :]}"
            out.extend(_prontoqa_example_items(rec, key, file_meta, shot_id, "prontoqa-shot"))
    if record is not None and not out:
        raise DataError(f"record {record!r} has no in-context examples", file=str(path))
    return out


# --------------------------------------------------------------------------------------------
# PARARULE-Plus
# --------------------------------------------------------------------------------------------


def _pararule_items(record: Record) -> list[Item]:
    rid = record.text("id")
    context = record.text("context")
    questions = record.require("questions")
    if not isinstance(questions, list):
        raise record.error("expected a list", field="questions")
    # ids read "NegationRule-Animal-D2-17" or "NonNegationRule-D2-5" (people entities)
    theory = re.match(r"([A-Za-z]+)-(?:(Animal)-)?D\d+", rid)
    out = []
    for i, _ in enumerate(questions):
        q = f"questions.{i}."
        out.append(
            _item(
                f"{record.file.stem}/{rid}/q{i + 1}",
                context,
                record.text(q + "text"),
                record.label(q + "label"),
                source="pararule-plus",
                file=str(record.file),
                split=_split_from_name(record.file.stem),
                depth=_to_int(record, record.require(q + "meta.QDep"), q + "meta.QDep"),
                qcat=record.get(q + "meta.QCat"),
                qid=record.get(q + "id"),
                theory=theory.group(1) if theory else None,
                entities=(("animals" if theory.group(2) else "people") if theory else None),
            )
        )
    return out


@_loader(
    "pararule-plus",
    "PARARULE-Plus JSONL (one item per question); debias=1 hands the "
    "records to qkscore.data.debias",
)
def _load_pararule(spec: DataSpec, ctx: LoadContext) -> Iterable[Item]:
    records = [rec for path in _spec_files(spec, ctx, (".jsonl",)) for rec in iter_jsonl(path, ctx)]
    if spec.get_bool("debias"):
        return _pararule_debiased([(str(r.file), r.line, r.data) for r in records], spec)
    return [item for rec in records for item in ctx.build(rec, _pararule_items)]


def _pararule_debiased(records: list[tuple[str, int, dict]], spec: DataSpec) -> Iterable[Item]:
    from qkscore.data.debias import debias_pararule

    return debias_pararule(records, spec)


# --------------------------------------------------------------------------------------------
# Multi-LogiEval
# --------------------------------------------------------------------------------------------

_ML_ASK = re.compile(
    r"^(?:(?:given|based on|in light of|considering|according to|from) (?:the |this )?"
    r"(?:above |given )?(?:context|information|premises)\s*,?\s*)?"  # optional frame
    r"(?:can we (?:conclude|say|infer|deduce|assume)|can it be concluded"
    r"|should we (?:infer|conclude)"
    r"|(?:does|would|do) (?:it|this|that|the context|context|these) (?:entail|mean|imply|suggest)"
    r"|is it (?:true|the case))(?:\s+that)?[\s,:]+(?P<x>.+)$",
    re.IGNORECASE,
)
_ML_AUX = re.compile(
    r"^(?P<aux>is|are|was|were|will|would|can|could|should|shall|may|might|must|do|does|did"
    r"|has|have|had)\s+(?P<subj>\S+)\s+(?P<rest>.+)$",
    re.IGNORECASE,
)
_ML_PRONOUNS = frozenset(["he", "she", "they", "it", "i", "we", "you", "there"])
_ML_NAME = re.compile(r"^[A-Z][a-z]+$")
_ML_IF = re.compile(
    r"^(?:if|given that|given|suppose that|suppose|assuming that|assuming)\s+", re.IGNORECASE
)
_ML_THEN = re.compile(r"^(?:then|so),?\s+", re.IGNORECASE)
_ML_SETTING = re.compile(r"^(?:in|on|at|during|within|for)\s", re.IGNORECASE)
_ML_SPLIT = re.compile(r"[,.]\s+")


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".").strip()
    return upper_first(text) + "."


def _uninvert(question: str) -> str | None:
    """ "did she take X" -> "she did take X": undo subject-auxiliary inversion when the subject
    is unambiguous (a pronoun, "there", or a single capitalized name), else None."""
    match = _ML_AUX.match(question)
    if not match:
        return None
    subj, rest = match.group("subj"), match.group("rest")
    is_pronoun = subj.lower() in _ML_PRONOUNS
    is_name = bool(_ML_NAME.match(subj)) and subj.lower() not in _ML_FUNCTION_WORDS
    if not (is_pronoun or (is_name and rest[:1].islower())):
        return None
    subj = subj.lower() if is_pronoun and subj != "I" else subj
    return f"{subj} {match.group('aux').lower()} {rest}"


_ML_FUNCTION_WORDS = frozenset(
    ["the", "a", "an", "this", "that", "these", "those", "there", "it", "its"]
)


def _ml_claim(question: str) -> str | None:
    """The claim a yes/no question asks about: "can we conclude X" -> X, "is Ryan ready" ->
    "Ryan is ready"; None when it cannot be read off safely."""
    question = _ML_THEN.sub("", question.strip())
    match = _ML_ASK.match(question)
    if match:
        claim = match.group("x").strip()
        return _uninvert(claim) or (None if _ML_AUX.match(claim) else claim)
    return _uninvert(question)


def multi_logieval_statement(question: str) -> tuple[str, str]:
    """(statement, form) for a Multi-LogiEval yes/no question.

    A statement probe needs the claim itself, and "yes" means the claim follows:

    * "Can we conclude X?", "Is it true that X?", "Does Sam get enough sleep?" -> "X." /
      "Sam does get enough sleep." (form "conclusion");
    * "If P, can we conclude X?", "Given that P, will she Y?", "P. Does this mean X?" ->
      "If P, then X." (form "conditional": the context entails it exactly when the context plus
      P entails X);
    * "In the startup world, does it entail that X?" -> "In the startup world, X." (conclusion).

    Anything else (several premise sentences, inversions with a long subject such as
    "are tickets hard to get?") is kept verbatim, form "question".
    """
    q = " ".join(question.split())
    if q.count("?") != 1 or not q.endswith("?"):
        return q, "question"
    body = q[:-1].strip()
    claim = _ml_claim(body)
    if claim:
        return _sentence(claim), "conclusion"
    conditional = _ML_IF.match(body)
    head = body[conditional.end() :] if conditional else body
    for split in _ML_SPLIT.finditer(head):
        premise, rest = head[: split.start()].strip(), head[split.end() :]
        if not conditional and ". " in premise:
            break  # several premise sentences: "If P1. P2, then X" would misread them
        claim = _ml_claim(rest)
        if not claim:
            continue
        if not conditional and _ML_SETTING.match(premise):
            return _sentence(f"{premise}, {claim}"), "conclusion"
        return _sentence(f"If {lower_first(premise)}, then {claim}"), "conditional"
    return q, "question"


_ML_LOGIC = {"pl": "pl", "fol": "fol", "nm": "nm", "mm": "nm", "multivar_fol": "fol"}
_ML_MULTIVARIABLE = "multivariable_fol_Data"


def _ml_file_meta(doc: JsonDocument) -> dict[str, Any]:
    """Logic family from the folder (pl/fol/nm; "mm" in depth-2 files means nm), depth from
    the ``dN_Data`` folder or the file's ``depth`` field, rule from the file name."""
    path, data = doc.path, doc.data
    logic = _ML_LOGIC.get(path.parent.name) or _ML_LOGIC.get(str(data.get("logic", "")).lower())
    depth_dir = next(
        (m for p in reversed(path.parts) if (m := re.fullmatch(r"d(\d+)_Data", p))), None
    )
    depth_field = re.fullmatch(r"d?(\d+)", str(data.get("depth", "")).strip())
    depth = int((depth_dir or depth_field).group(1)) if (depth_dir or depth_field) else None
    multivariable = _ML_MULTIVARIABLE in path.parts
    prefix = "/".join(p for p in path.parent.parts[-2:] if p != "data")
    return {
        "file": str(path),
        "logic": logic,
        "depth": depth,
        "rule": path.stem,
        "multivariable": multivariable,
        "_prefix": f"{prefix}/{path.stem}",
    }


def _ml_item(record: Record, file_meta: Mapping[str, Any]) -> list[Item]:
    question = record.text("question")
    statement, form = multi_logieval_statement(question)
    sample_id = record.get("id", record.key)
    meta = {k: v for k, v in file_meta.items() if not k.startswith("_")}
    return [
        _item(
            f"{file_meta['_prefix']}/{sample_id}",
            record.text("context"),
            statement,
            record.label("answer"),
            source="multi-logieval",
            question=question,
            question_form=form,
            **meta,
        )
    ]


@_loader(
    "multi-logieval",
    "Multi-LogiEval data/ folder or JSON files (yes/no); "
    "multivariable=1 adds multivariable_fol_Data",
)
def _load_multi_logieval(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    with_multi = spec.get_bool("multivariable")

    def exclude(path: Path) -> bool:
        return not with_multi and _ML_MULTIVARIABLE in path.parts

    for path in _spec_files(spec, ctx, (".json",), exclude=exclude):
        doc = read_json(path, ctx)
        if doc is None:
            continue
        if not isinstance(doc.data, dict) or not isinstance(doc.data.get("samples"), list):
            ctx.fail(
                DataError(
                    "expected an object with a 'samples' list",
                    file=str(path),
                    line=1,
                    field="samples",
                )
            )
            continue
        file_meta = _ml_file_meta(doc)
        offset = doc.child_offset("samples")
        for record in doc.children(offset or 0):
            yield from ctx.build(record, functools.partial(_ml_item, file_meta=file_meta))


# --------------------------------------------------------------------------------------------
# ProofWriter (Logic-LLM packaging) and FOLIO
# --------------------------------------------------------------------------------------------

_PW_PREFIX = "Based on the above information, is the following statement true, false, or unknown?"
_OPTION_RE = re.compile(r"^\s*\(?([A-Z])\)\s*(.+?)\s*$")


def _proofwriter_items(record: Record) -> list[Item]:
    rid = str(record.require("id"))
    question = record.text("question")
    raw_options = record.require("options")
    if not isinstance(raw_options, list) or not raw_options:
        raise record.error("expected a list of options", field="options")
    letters: dict[str, str] = {}
    for i, opt in enumerate(raw_options):
        match = _OPTION_RE.match(str(opt))
        letter, text = (
            (match.group(1), match.group(2))
            if match
            else (string.ascii_uppercase[i], str(opt).strip())
        )
        letters[letter] = normalize_label(
            text, file=str(record.file), line=record.line, field=f"options.{i}"
        )
    answer = str(record.require("answer")).strip()
    label = letters.get(answer.upper()) or normalize_label(
        answer, file=str(record.file), line=record.line, field="answer"
    )
    options = TRUE_FALSE_UNKNOWN if "Unknown" in letters.values() else TRUE_FALSE
    if label not in options:
        raise record.error(f"answer {answer!r} is not among the options", field="answer")
    depth = re.search(r"-D(\d+)", rid)
    theory = re.search(r"_(\w+?)-(?:OWA|CWA)", rid)
    return [
        _item(
            f"{record.file.stem}/{rid}",
            record.text("context"),
            _strip_prefix(question, _PW_PREFIX) or question,
            label,
            options,
            source="proofwriter",
            file=str(record.file),
            split=_split_from_name(record.file.stem),
            depth=int(depth.group(1)) if depth else None,
            theory=theory.group(1) if theory else None,
        )
    ]


@_loader("proofwriter", "ProofWriter as packaged by Logic-LLM (JSON list, options A/B/C)")
def _load_proofwriter(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    for path in _spec_files(spec, ctx, (".json", ".jsonl")):
        for record in iter_records(path, ctx):
            yield from ctx.build(record, _proofwriter_items)


def _folio_items(record: Record) -> list[Item]:
    rid = record.get("example_id", record.get("id", record.key))
    # FOLIO's own files give premises as one string, one premise per line.
    premises = " ".join(line.strip() for line in record.text("premises").splitlines())
    return [
        _item(
            f"{record.file.stem}/{rid}",
            premises,
            record.text("conclusion"),
            record.label("label"),
            TRUE_FALSE_UNKNOWN,
            source="folio",
            file=str(record.file),
            split=_split_from_name(record.file.stem),
            story_id=record.get("story_id"),
            premises_fol=record.get("premises-FOL"),
            conclusion_fol=record.get("conclusion-FOL"),
        )
    ]


@_loader("folio", "FOLIO JSONL/JSON: premises, conclusion, label True/False/Uncertain")
def _load_folio(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    for path in _spec_files(spec, ctx, (".json", ".jsonl")):
        for record in iter_records(path, ctx):
            yield from ctx.build(record, _folio_items)


# --------------------------------------------------------------------------------------------
# MMLU (multiple choice)
# --------------------------------------------------------------------------------------------


def _mmlu_subject_split(stem: str) -> tuple[str, str | None]:
    match = re.fullmatch(r"(.+?)_(dev|val|test|train)", stem)
    return (match.group(1), match.group(2)) if match else (stem, None)


def _mmlu_items(record: Record) -> list[Item]:
    path = record.file
    if isinstance(record.data, list):  # hendrycks CSV row: question, A, B, C, D, answer
        if len(record.data) != 6:
            raise record.error(f"expected 6 cells, got {len(record.data)}", field="columns")
        subject, split = _mmlu_subject_split(path.stem)
        question, *choices, answer = (c.strip() for c in record.data)
        item_id = f"{path.stem}/{record.index}"
        field = "answer (column 6)"
    else:  # JSONL subset: subject, row, question, choices, answer
        question, subject = record.text("question"), record.text("subject")
        choices = record.require("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise record.error("expected a list of choices", field="choices")
        choices = [str(c) for c in choices]
        answer = record.require("answer")
        split = _split_from_name(path.stem)
        item_id = f"{path.stem}/{subject}/{record.get('row', record.key)}"
        field = "answer"
    if not question:
        raise record.error("empty text", field="question")
    return [
        _item(
            item_id,
            "",
            question,
            _letter_label(record, answer, choices, field),
            choices,
            source="mmlu",
            file=str(path),
            split=split,
            subject=subject,
        )
    ]


@_loader("mmlu", "MMLU (hendrycks/test) CSV folders/files and JSONL subsets; subjects=a,b filters")
def _load_mmlu(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    subjects = {s.strip() for s in (spec.get("subjects") or "").split(",") if s.strip()}
    for path in _spec_files(spec, ctx, (".csv", ".jsonl")):
        for record in iter_records(path, ctx, csv_header=False):
            for item in ctx.build(record, _mmlu_items):
                if not subjects or item.meta["subject"] in subjects:
                    yield item


# --------------------------------------------------------------------------------------------
# Generic JSONL / CSV / Hugging Face with a field mapping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold the item parts (``?context=premises&statement=hypothesis``).

    A mapped field that is absent is an error; the default ``context`` may be absent (empty
    context), the default ``id`` is the line number, ``options`` is used when present.
    """

    context: str = "context"
    statement: str = "statement"
    label: str = "label"
    id: str | None = None
    options: str | None = None
    meta: tuple[str, ...] = ()
    context_required: bool = False
    options_required: bool = False

    @classmethod
    def from_spec(cls, spec: DataSpec) -> FieldMap:
        meta = tuple(f.strip() for f in (spec.get("meta") or "").split(",") if f.strip())
        return cls(
            context=spec.get("context") or "context",
            statement=spec.get("statement") or "statement",
            label=spec.get("label") or "label",
            id=spec.get("id") or None,
            options=spec.get("options") or "options",
            meta=meta,
            context_required="context" in spec.params,
            options_required="options" in spec.params,
        )


def _mapped_item(record: Record, fmap: FieldMap, prefix: str, extra: Mapping[str, Any]) -> Item:
    """One item through a field mapping; ``extra`` meta (source, file, split) wins over mapped
    meta fields of the same name."""
    context = ""
    if fmap.context_required or record.get(fmap.context) is not None:
        context = record.text(fmap.context)
    options: tuple[str, ...] = TRUE_FALSE
    raw_options = record.get(fmap.options) if fmap.options else None
    if fmap.options_required and raw_options is None:
        raise record.error("missing field", field=fmap.options)
    if isinstance(raw_options, str):
        raw_options = [o.strip() for o in raw_options.split("|")]
    if raw_options is not None:
        if not isinstance(raw_options, list) or len(raw_options) < 2:
            raise record.error("expected a list of at least 2 options", field=fmap.options)
        options = tuple(str(o) for o in raw_options)
        label = _letter_label(record, record.require(fmap.label), options, fmap.label)
    else:
        label = record.label(fmap.label)
        if label == "Unknown":
            options = TRUE_FALSE_UNKNOWN
    key = record.get(fmap.id) if fmap.id else record.key
    if key is None:
        raise record.error("missing field", field=str(fmap.id))
    meta = {name: record.get(name) for name in fmap.meta}
    meta.update(extra)
    return _item(f"{prefix}/{key}", context, record.text(fmap.statement), label, options, **meta)


def _with_unknown(items: list[Item]) -> list[Item]:
    """A set whose labels include Unknown is three-way: give every True/False item the same
    three options, so the label space is the set's, not the item's."""
    if not any(item.options == TRUE_FALSE_UNKNOWN for item in items):
        return items
    return [
        Item(i.id, i.context, i.statement, i.label, TRUE_FALSE_UNKNOWN, i.meta)
        if i.options == TRUE_FALSE
        else i
        for i in items
    ]


def _mapped_records(
    records: Iterable[Record],
    ctx: LoadContext,
    fmap: FieldMap,
    prefix: str,
    extra: Mapping[str, Any],
) -> list[Item]:
    def build(record: Record) -> list[Item]:
        return [_mapped_item(record, fmap, prefix, {**extra, "file": str(record.file)})]

    return _with_unknown([item for record in records for item in ctx.build(record, build)])


@_loader(
    "jsonl", "generic JSONL with field mapping: ?context=&statement=&label=&id=&options=&meta="
)
def _load_jsonl(spec: DataSpec, ctx: LoadContext) -> list[Item]:
    fmap = FieldMap.from_spec(spec)
    items: list[Item] = []
    for path in _spec_files(spec, ctx, (".jsonl", ".json")):
        extra = {"source": "jsonl", "split": _split_from_name(path.stem)}
        items += _mapped_records(iter_records(path, ctx), ctx, fmap, path.stem, extra)
    return _with_unknown(items)


@_loader(
    "csv",
    "generic CSV/TSV with a header row and field mapping (as jsonl); "
    "header=0 uses column numbers, delimiter= sets the separator",
)
def _load_csv(spec: DataSpec, ctx: LoadContext) -> list[Item]:
    fmap = FieldMap.from_spec(spec)
    header = spec.get_bool("header", True)
    delimiter = spec.get("delimiter") or None
    if delimiter == "tab":
        delimiter = "\t"
    items: list[Item] = []
    for path in _spec_files(spec, ctx, (".csv", ".tsv")):
        records = iter_records(path, ctx, csv_header=header, delimiter=delimiter)
        extra = {"source": "csv", "split": _split_from_name(path.stem)}
        items += _mapped_records(records, ctx, fmap, path.stem, extra)
    return _with_unknown(items)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            "the hf format needs the Hugging Face 'datasets' package: pip install datasets",
            field="hf",
        ) from None
    return datasets


@_loader(
    "hf",
    "Hugging Face datasets: hf:NAME?split=&config= (or a save_to_disk folder), "
    "field mapping as jsonl",
)
def _load_hf(spec: DataSpec, ctx: LoadContext) -> list[Item]:
    datasets = _import_datasets()
    split, config = spec.get("split"), spec.get("config")
    if Path(spec.path).is_dir():
        data = datasets.load_from_disk(spec.path)
    else:
        data = datasets.load_dataset(spec.path, config, split=split)
    if isinstance(data, Mapping):  # a DatasetDict
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise DataError(
                f"choose a split with ?split=: one of {', '.join(sorted(data))}",
                file=spec.path,
                field="split",
            )
        data = data[split]
    ctx.add_file(spec.path)
    name = Path(spec.path).name or spec.path
    records = (Record(Path(spec.path), i + 1, str(i), dict(row), i) for i, row in enumerate(data))
    prefix = f"{name}/{split}" if split else name
    extra = {"source": "hf", "split": split}
    return _mapped_records(records, ctx, FieldMap.from_spec(spec), prefix, extra)

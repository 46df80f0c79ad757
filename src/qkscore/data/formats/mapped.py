"""Generic JSONL and CSV with a field mapping (``FieldMap``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qkscore.data.formats.helpers import (
    LoadContext,
    Record,
    iter_records,
    letter_label,
    loader,
    make_item,
    spec_files,
    split_from_name,
)
from qkscore.data.items import TRUE_FALSE, TRUE_FALSE_UNKNOWN, Item
from qkscore.data.spec import DataSpec

#: The spec parameters of a field mapping (every format that takes one accepts these).
FIELD_PARAMS = ("context", "statement", "label", "id", "options", "meta")


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
        label = letter_label(record, record.require(fmap.label), options, fmap.label)
    else:
        label = record.label(fmap.label)
        if label == "Unknown":
            options = TRUE_FALSE_UNKNOWN
    key = record.get(fmap.id) if fmap.id else record.key
    if key is None:
        raise record.error("missing field", field=str(fmap.id))
    meta = {name: record.get(name) for name in fmap.meta}
    meta.update(extra)
    return make_item(
        f"{prefix}/{key}", context, record.text(fmap.statement), label, options, **meta
    )


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


def mapped_records(
    records: Iterable[Record],
    ctx: LoadContext,
    fmap: FieldMap,
    prefix: str,
    extra: Mapping[str, Any],
) -> list[Item]:
    def build(record: Record) -> list[Item]:
        return [_mapped_item(record, fmap, prefix, {**extra, "file": str(record.file)})]

    return _with_unknown([item for record in records for item in ctx.build(record, build)])


@loader(
    "jsonl",
    "generic JSONL with field mapping: ?context=&statement=&label=&id=&options=&meta=",
    params=FIELD_PARAMS,
)
def _load_jsonl(spec: DataSpec, ctx: LoadContext) -> list[Item]:
    fmap = FieldMap.from_spec(spec)
    items: list[Item] = []
    for path in spec_files(spec, ctx, (".jsonl", ".json")):
        extra = {"source": "jsonl", "split": split_from_name(path.stem)}
        items += mapped_records(iter_records(path, ctx), ctx, fmap, path.stem, extra)
    return _with_unknown(items)


@loader(
    "csv",
    "generic CSV/TSV with a header row and field mapping (as jsonl); "
    "header=0 uses column numbers, delimiter= sets the separator",
    params=(*FIELD_PARAMS, "header", "delimiter"),
)
def _load_csv(spec: DataSpec, ctx: LoadContext) -> list[Item]:
    fmap = FieldMap.from_spec(spec)
    header = spec.get_bool("header", True)
    delimiter = spec.get("delimiter") or None
    if delimiter == "tab":
        delimiter = "\t"
    items: list[Item] = []
    for path in spec_files(spec, ctx, (".csv", ".tsv")):
        records = iter_records(path, ctx, csv_header=header, delimiter=delimiter)
        extra = {"source": "csv", "split": split_from_name(path.stem)}
        items += mapped_records(records, ctx, fmap, path.stem, extra)
    return _with_unknown(items)

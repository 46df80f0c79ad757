"""FOLIO JSONL/JSON: premises, conclusion, label True/False/Uncertain."""

from __future__ import annotations

from collections.abc import Iterator

from qkscore.data.formats.helpers import (
    LoadContext,
    Record,
    iter_records,
    loader,
    make_item,
    spec_files,
    split_from_name,
)
from qkscore.data.items import TRUE_FALSE_UNKNOWN, Item
from qkscore.data.spec import DataSpec


def _folio_items(record: Record) -> list[Item]:
    rid = record.get("example_id", record.get("id", record.key))
    # FOLIO's own files give premises as one string, one premise per line.
    premises = " ".join(line.strip() for line in record.text("premises").splitlines())
    return [
        make_item(
            f"{record.file.stem}/{rid}",
            premises,
            record.text("conclusion"),
            record.label("label"),
            TRUE_FALSE_UNKNOWN,
            source="folio",
            file=str(record.file),
            split=split_from_name(record.file.stem),
            story_id=record.get("story_id"),
            premises_fol=record.get("premises-FOL"),
            conclusion_fol=record.get("conclusion-FOL"),
        )
    ]


@loader("folio", "FOLIO JSONL/JSON: premises, conclusion, label True/False/Uncertain")
def _load_folio(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    for path in spec_files(spec, ctx, (".json", ".jsonl")):
        for record in iter_records(path, ctx):
            yield from ctx.build(record, _folio_items)

"""MMLU (hendrycks/test) CSV folders/files and JSONL subsets."""

from __future__ import annotations

import re
from collections.abc import Iterator

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
from qkscore.data.items import Item
from qkscore.data.spec import DataSpec


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
        split = split_from_name(path.stem)
        item_id = f"{path.stem}/{subject}/{record.get('row', record.key)}"
        field = "answer"
    if not question:
        raise record.error("empty text", field="question")
    return [
        make_item(
            item_id,
            "",
            question,
            letter_label(record, answer, choices, field),
            choices,
            source="mmlu",
            file=str(path),
            split=split,
            subject=subject,
        )
    ]


@loader(
    "mmlu",
    "MMLU (hendrycks/test) CSV folders/files and JSONL subsets; subjects=a,b filters",
    params=("subjects",),
)
def _load_mmlu(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    subjects = {s.strip() for s in (spec.get("subjects") or "").split(",") if s.strip()}
    for path in spec_files(spec, ctx, (".csv", ".jsonl")):
        for record in iter_records(path, ctx, csv_header=False):
            for item in ctx.build(record, _mmlu_items):
                if not subjects or item.meta["subject"] in subjects:
                    yield item

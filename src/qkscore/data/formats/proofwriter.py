"""ProofWriter as packaged by Logic-LLM (JSON list, options A/B/C)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

from qkscore.data.formats.helpers import (
    LoadContext,
    Record,
    iter_records,
    loader,
    make_item,
    spec_files,
    split_from_name,
    strip_prefix,
)
from qkscore.data.items import TRUE_FALSE, TRUE_FALSE_UNKNOWN, Item, normalize_label
from qkscore.data.spec import DataSpec

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
        make_item(
            f"{record.file.stem}/{rid}",
            record.text("context"),
            strip_prefix(question, _PW_PREFIX) or question,
            label,
            options,
            source="proofwriter",
            file=str(record.file),
            split=split_from_name(record.file.stem),
            depth=int(depth.group(1)) if depth else None,
            theory=theory.group(1) if theory else None,
        )
    ]


@loader("proofwriter", "ProofWriter as packaged by Logic-LLM (JSON list, options A/B/C)")
def _load_proofwriter(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    for path in spec_files(spec, ctx, (".json", ".jsonl")):
        for record in iter_records(path, ctx):
            yield from ctx.build(record, _proofwriter_items)

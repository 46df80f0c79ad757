"""PARARULE-Plus JSONL, optionally debiased."""

from __future__ import annotations

import re
from collections.abc import Iterable

from qkscore.data.formats.helpers import (
    LoadContext,
    Record,
    iter_jsonl,
    loader,
    make_item,
    spec_files,
    split_from_name,
    to_int,
)
from qkscore.data.items import Item
from qkscore.data.spec import DataSpec


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
            make_item(
                f"{record.file.stem}/{rid}/q{i + 1}",
                context,
                record.text(q + "text"),
                record.label(q + "label"),
                source="pararule-plus",
                file=str(record.file),
                split=split_from_name(record.file.stem),
                depth=to_int(record, record.require(q + "meta.QDep"), q + "meta.QDep"),
                qcat=record.get(q + "meta.QCat"),
                qid=record.get(q + "id"),
                theory=theory.group(1) if theory else None,
                entities=(("animals" if theory.group(2) else "people") if theory else None),
            )
        )
    return out


#: Settings of the debias step (:func:`qkscore.data.debias.debias_pararule`).
_DEBIAS_PARAMS = ("per_context", "n", "min_depth", "max_depth")


@loader(
    "pararule-plus",
    "PARARULE-Plus JSONL (one item per question); debias=1 hands the "
    "records to qkscore.data.debias",
    params=("debias", *_DEBIAS_PARAMS),
)
def _load_pararule(spec: DataSpec, ctx: LoadContext) -> Iterable[Item]:
    debias = spec.get_bool("debias")
    given = [key for key in _DEBIAS_PARAMS if key in spec.params]
    if given and not debias:
        raise spec.error(f"parameter {given[0]!r} applies only with debias=1", given[0])
    records = [rec for path in spec_files(spec, ctx, (".jsonl",)) for rec in iter_jsonl(path, ctx)]
    if debias:
        return _pararule_debiased([(str(r.file), r.line, r.data) for r in records], spec)
    return [item for rec in records for item in ctx.build(rec, _pararule_items)]


def _pararule_debiased(records: list[tuple[str, int, dict]], spec: DataSpec) -> Iterable[Item]:
    from qkscore.data.debias import debias_pararule

    return debias_pararule(records, spec)

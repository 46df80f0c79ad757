"""ProntoQA (True/False) and PrOntoQA-OOD ("Prove: X.") JSON, and ProntoQA few-shot examples.

PrOntoQA-OOD goals become goal/negation pairs; ``debias=1`` keeps shape-matched pairs only
(see :func:`_load_prontoqa_ood` and :mod:`qkscore.data.matched`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from qkscore.data.formats.helpers import (
    LoadContext,
    Record,
    loader,
    make_item,
    read_json,
    spec_files,
    strip_prefix,
)
from qkscore.data.items import DataError, Item, normalize_label
from qkscore.data.matched import match_pairs
from qkscore.data.negation import negate
from qkscore.data.spec import DataSpec

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
    goal = strip_prefix(query, _PROVE)
    if goal is not None and not goal.strip(" ."):
        raise record.error("empty 'Prove:' goal", field=base + "query")
    if goal is None:
        if "answer" not in example:
            raise record.error(
                "missing field (no True/False answer and no 'Prove:' query)", field=base + "answer"
            )
        statement = strip_prefix(query, _TRUE_OR_FALSE) or query
        return [make_item(item_id, context, statement, record.label(base + "answer"), **meta)]
    if "answer" in example and normalize_label(example["answer"]) != "True":
        raise record.error("a 'Prove:' query must have a provable goal", field=base + "answer")
    pair = dict(meta, pair=item_id)
    negation = negate(goal)
    return [
        make_item(f"{item_id}/goal", context, goal, "True", constructed_negation=False, **pair),
        make_item(
            f"{item_id}/negation", context, negation, "False", constructed_negation=True, **pair
        ),
    ]


def _prontoqa_build(
    record: Record, *, path: Path, file_meta: Mapping[str, Any], ood: bool
) -> list[Item]:
    """Items of one test example; each loader insists on its own query kind so a file given to
    the wrong format fails loudly instead of yielding unlabelled or unbalanced items."""
    is_proof = strip_prefix(str(record.get("test_example.query", "")), _PROVE) is not None
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
    for path in spec_files(spec, ctx, (".json",)):
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


@loader(
    "prontoqa",
    "ProntoQA True/False JSON (asaparov/prontoqa json mode); in-context "
    "examples are ignored here, prontoqa_shots() returns them",
)
def _load_prontoqa(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    return _prontoqa_load(spec, ctx, ood=False)


def _shape_matched(items: Iterable[Item], seed: int) -> list[Item]:
    """The goal/negation pairs of :func:`qkscore.data.matched.match_pairs`, matched per file."""
    by_pair: dict[str, list[Item]] = {}
    for item in items:
        by_pair.setdefault(item.meta["pair"], []).append(item)
    pairs = [(p[0], p[1]) for p in by_pair.values()]
    kept = match_pairs(pairs, seed=seed, stratum=[t.meta["file"] for t, _ in pairs])
    return [
        dataclasses.replace(it, meta={**it.meta, "debiased": True}) for pair in kept for it in pair
    ]


@loader(
    "prontoqa-ood",
    "PrOntoQA-OOD 'Prove: X.' JSON: X (True) and its negation (False); debias=1 keeps "
    "shape-matched pairs (negation says nothing about the label)",
    params=("debias",),
)
def _load_prontoqa_ood(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    """Every "Prove: X." example gives a pair: X (True: the generator proved it) and
    :func:`~qkscore.data.negation.negate` of X (False: it contradicts a provable statement).
    The pair shares its context and its content words, so the set is label-balanced by
    construction (``balance=1`` changes nothing) and the in-context examples are ignored
    (:func:`prontoqa_shots` returns them).

    Raw, each file leaks its label through the wording: goals of one file mostly share a
    polarity (every 1-hop AndElim goal is plain, every ProofByContra goal negated), so "not"
    alone predicts the label. ``debias=1`` keeps, per file, only pairs whose statement shapes
    are mirrored by other pairs (:mod:`qkscore.data.matched`): then each shape, negated or not,
    is True as often as False and the statement-only audit (``qkscore data shortcuts``) is at
    chance. Files with goals of one polarity only keep nothing. The seed is ``seed`` (0).
    Shallow matching (context-statement word overlap) is untouched by this: the sets have no
    distractor sentences, so check it with the same audit.
    """
    items = _prontoqa_load(spec, ctx, ood=True)
    return _shape_matched(items, spec.get_int("seed", 0)) if spec.get_bool("debias") else items


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

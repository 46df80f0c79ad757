"""Multi-LogiEval: each question rewritten as the statement to judge."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from qkscore.data.formats.helpers import (
    JsonDocument,
    LoadContext,
    Record,
    loader,
    make_item,
    read_json,
    spec_files,
)
from qkscore.data.items import DataError, Item
from qkscore.data.negation import lower_first, upper_first
from qkscore.data.spec import DataSpec

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
        make_item(
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


@loader(
    "multi-logieval",
    "Multi-LogiEval data/ folder or JSON files (yes/no); "
    "multivariable=1 adds multivariable_fol_Data; debias=1 keeps a sample whose wording "
    "alone does not give the label",
    params=("multivariable", "debias"),
)
def _load_multi_logieval(spec: DataSpec, ctx: LoadContext) -> Iterable[Item]:
    """One item per sample: the question rewritten as the statement to judge
    (:func:`multi_logieval_statement`), "yes" True, meta ``logic``, ``depth`` and ``rule``.

    Raw, the wording gives the label away: 93 of the 104 rule files hold one label only, so a
    statement-only classifier that recognises the rule scores 0.714 on a label-balanced sample.
    ``debias=1`` balances labels within each logic family and depth and then drops the items
    a statement-only classifier gets right most often, as many of each label, until the
    shortcut audit's statement-only accuracy is at most 0.55
    (:func:`qkscore.data.cue_filter.filter_statement_cues`, seeded by ``seed``).
    """
    items = _multi_logieval_items(spec, ctx)
    if not spec.get_bool("debias"):
        return items
    from qkscore.data.cue_filter import filter_statement_cues

    kept, _ = filter_statement_cues(list(items), seed=spec.get_int("seed", 0))
    return [dataclasses.replace(it, meta={**it.meta, "debiased": True}) for it in kept]


def _multi_logieval_items(spec: DataSpec, ctx: LoadContext) -> Iterator[Item]:
    with_multi = spec.get_bool("multivariable")

    def exclude(path: Path) -> bool:
        return not with_multi and _ML_MULTIVARIABLE in path.parts

    for path in spec_files(spec, ctx, (".json",), exclude=exclude):
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

"""Rewrite PARARULE-Plus questions so that the statement alone predicts nothing.

Why: in raw PARARULE-Plus every plain statement is True and every negated one ("... is not
...") is False, so a classifier that reads only the word "not" scores 100%; a head that merely
reacts to "not" would look like a perfect reasoner. Here each context is parsed with
:mod:`qkscore.data.logic`, saturated under the closed world (the semantics the set was
generated with), and new statements are drawn in *quadruples* that share one adjective and one
depth::

    plain-true     "Anne is small."        (small derived for Anne at depth d)
    negated-false  "Anne is not small."
    plain-false    "Bob is small."         (small fails for Bob, failure depth d)
    negated-true   "Bob is not small."

Within a quadruple every word, entity names included, occurs equally often with each label,
so negation, adjective, entity and depth are all uninformative, and every depth holds the four
kinds in exactly equal numbers. Depth is the prover's (derivation depth for the first two,
failure depth for the last two; see :mod:`qkscore.data.logic`), not the file's ``QDep``.
Labels come from the prover; where an original question has the same text, the two labels are
compared and counted.

Report: :func:`debias_with_report` returns ``(items, DebiasReport)``; :func:`debias_report`
returns the report's dict; and :func:`debias_pararule` (the loader hook, ``?debias=1``) keeps
the last report in ``debias_pararule.last_report`` so a CLI can print it after loading.

Known data quirk, measured and explained rather than hidden: in the ``NegationRule-D4``
people files 1,032 of 4,128 original questions (25%; 1.8% of the whole set) disagree with the
closed-world prover. Every one of them is reproduced exactly when negation as failure is
tested against the *stated* facts only (``naf_scope="given"``): the set's generator ignored
facts derived through other rules (e.g. it treats "Gary is not clever" as true although
"not poor -> nice -> quiet -> smart -> clever" derives it). The report counts these under
``explained_by_given_only_naf``; the debiased items carry the correct closed-world labels.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qkscore.data.items import DataError, Item
from qkscore.data.logic import (
    Closure,
    Fact,
    LogicError,
    ParseError,
    Predicate,
    forward_chain,
    parse_statement,
    parse_theory,
    render_fact,
)
from qkscore.data.spec import DataSpec

__all__ = [
    "KINDS",
    "DebiasReport",
    "debias_pararule",
    "debias_report",
    "debias_with_report",
]

Record = tuple[str, int, Mapping[str, Any]]

#: The four statement kinds, in the order a quadruple lists them.
KINDS: tuple[str, str, str, str] = ("plain-true", "negated-false", "plain-false", "negated-true")
_EXAMPLES = 5


@dataclass
class DebiasReport:
    """What the debias step did, so a user can trust (or distrust) the rewritten set."""

    records: int = 0
    contexts_parsed: int = 0
    contexts_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    unparsed_examples: list[dict[str, Any]] = field(default_factory=list)
    contexts_without_candidates: int = 0
    original_questions_checked: int = 0
    original_agree: int = 0
    original_disagree: int = 0
    explained_by_given_only_naf: int = 0
    disagreement_examples: list[dict[str, Any]] = field(default_factory=list)
    items: int = 0
    items_matching_original_text: int = 0
    items_agreeing_with_original: int = 0
    per_depth_kind: dict[int, dict[str, int]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def parse_rate(self) -> float:
        return self.contexts_parsed / self.records if self.records else 0.0

    @property
    def unexplained_disagreements(self) -> int:
        return self.original_disagree - self.explained_by_given_only_naf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parse_rate"] = round(self.parse_rate, 6)
        d["unexplained_disagreements"] = self.unexplained_disagreements
        d["per_depth_kind"] = {int(k): dict(v) for k, v in sorted(self.per_depth_kind.items())}
        return d


@dataclass(frozen=True)
class _Drawn:
    """A quadruple chosen from one context, with what its items need."""

    record_id: str
    file: str
    line: int
    q_index: int
    quad: _Quad
    context: str
    originals: Mapping[str, str]


@dataclass(frozen=True)
class _Quad:
    """One adjective, one depth, an entity it holds for and one it fails for."""

    pred: Predicate
    holds_for: str
    fails_for: str
    depth: int


def _context_tags(record_id: str, file: str) -> dict[str, Any]:
    """Rule family, entity theme, dataset depth and split, read from the id and file name."""
    tags: dict[str, Any] = {  # same keys as the raw pararule-plus loader uses
        "theory": record_id.split("-", 1)[0],
        "entities": "animals" if "-Animal-" in record_id else "people",
    }
    m = re.search(r"-D(\d+)-", record_id)
    if m:
        tags["dataset_depth"] = int(m.group(1))
    stem = Path(file).stem.lower()
    for split in ("train", "dev", "test"):
        if stem.endswith(split):
            tags["split"] = split
    return tags


def _candidates(
    closure: Closure, entities: Sequence[str], min_depth: int, max_depth: int | None
) -> dict[int, list[_Quad]]:
    """All quadruples of a context, grouped by depth."""
    by_depth: dict[int, list[_Quad]] = defaultdict(list)
    adjectives = [p for p in closure.theory.predicates if p.kind == "adj"]
    for pred in adjectives:
        holds: dict[int, list[str]] = defaultdict(list)
        fails: dict[int, list[str]] = defaultdict(list)
        for entity in entities:
            depth = closure.depth(Fact(entity, pred, True))
            if depth is not None:
                holds[depth].append(entity)
                continue
            fd = closure.fail_depth(entity, pred)
            if fd is not None and Fact(entity, pred, False) not in closure.derived:
                fails[fd].append(entity)
        for depth in sorted(holds):
            if depth < min_depth or (max_depth is not None and depth > max_depth):
                continue
            for a in holds[depth]:
                for b in fails.get(depth, ()):
                    by_depth[depth].append(_Quad(pred, a, b, depth))
    return by_depth


def _pick(by_depth: dict[int, list[_Quad]], count: int, rng: random.Random) -> list[_Quad]:
    """Draw ``count`` quadruples: a depth uniformly among those available (so deep items are
    not drowned by shallow ones), then a quadruple, avoiding reuse of an adjective or entity."""
    pools = {d: list(q) for d, q in by_depth.items() if q}
    chosen: list[_Quad] = []
    used_preds: set[Predicate] = set()
    while pools and len(chosen) < count:
        depth = rng.choice(sorted(pools))
        pool = pools[depth]
        fresh = [q for q in pool if q.pred not in used_preds] or pool
        quad = rng.choice(fresh)
        chosen.append(quad)
        used_preds.add(quad.pred)
        pool.remove(quad)
        if not pool:
            del pools[depth]
    return chosen


def debias_with_report(
    records: Sequence[Record],
    *,
    seed: int = 0,
    per_context: int = 4,
    n: int | None = None,
    min_depth: int = 1,
    max_depth: int | None = None,
) -> tuple[list[Item], DebiasReport]:
    """Debias PARARULE-Plus records; returns the items and a :class:`DebiasReport`.

    ``records`` are ``(file, 1-based line, parsed JSON object)``. ``per_context`` statements
    are drawn per context in whole quadruples (rounded up to a multiple of 4). ``n`` caps the
    total, again in whole quadruples, chosen at random with ``seed``. ``min_depth`` (default 1)
    leaves out depth-0 statements, which restate or trivially miss a context sentence.
    """
    if per_context < 1:
        raise DataError(f"per_context={per_context} must be at least 1", field="per_context")
    if n is not None and n < 0:
        raise DataError(f"n={n} must not be negative", field="n")
    quads_per_context = -(-per_context // 4)
    report = DebiasReport(
        records=len(records),
        params={
            "seed": seed,
            "per_context": quads_per_context * 4,
            "n": n,
            "min_depth": min_depth,
            "max_depth": max_depth,
            "world": "closed",
        },
    )
    skipped: Counter[str] = Counter()
    drawn: list[_Drawn] = []
    seen_ids: set[str] = set()

    for file, line, raw in records:
        obj: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        context = obj.get("context")
        record_id = str(obj.get("id") or f"{Path(file).stem}:{line}")
        if record_id in seen_ids:
            record_id = f"{record_id}@{Path(file).stem}:{line}"
        seen_ids.add(record_id)
        if not isinstance(context, str) or not context.strip():
            skipped["no context"] += 1
            continue
        theory = parse_theory(context, strict=False)
        if theory.unparsed:
            skipped["unparsed sentence"] += 1
            if len(report.unparsed_examples) < _EXAMPLES:
                report.unparsed_examples.append(
                    {"file": file, "line": line, "id": record_id, "sentence": theory.unparsed[0]}
                )
            continue
        try:
            closure = forward_chain(theory, "closed")
        except LogicError as exc:
            reason = type(exc).__name__
            skipped[reason] += 1
            if len(report.unparsed_examples) < _EXAMPLES:
                report.unparsed_examples.append(
                    {"file": file, "line": line, "id": record_id, "sentence": str(exc)}
                )
            continue
        report.contexts_parsed += 1

        originals = _check_originals(
            obj.get("questions") or [], closure, theory, report, file, line
        )
        entities = list(dict.fromkeys(f.entity for f in theory.facts))
        by_depth = _candidates(closure, entities, min_depth, max_depth)
        if not by_depth:
            report.contexts_without_candidates += 1
            continue
        rng = random.Random(f"qkscore-debias:{seed}:{record_id}")
        for q_index, quad in enumerate(_pick(by_depth, quads_per_context, rng)):
            drawn.append(_Drawn(record_id, file, line, q_index, quad, context, originals))

    report.contexts_skipped = sum(skipped.values())
    report.skipped_reasons = dict(skipped)

    if n is not None and len(drawn) * 4 > n:
        rng = random.Random(f"qkscore-debias-cap:{seed}")
        keep = sorted(rng.sample(range(len(drawn)), n // 4))
        drawn = [drawn[i] for i in keep]

    items: list[Item] = []
    per_depth: dict[int, Counter[str]] = defaultdict(Counter)
    for entry in drawn:
        record_id, file, line, quad = entry.record_id, entry.file, entry.line, entry.quad
        q_index, context, originals = entry.q_index, entry.context, entry.originals
        tags = _context_tags(record_id, file)
        rng = random.Random(f"qkscore-debias-order:{seed}:{record_id}:{q_index}")
        kinds = list(KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            entity = quad.holds_for if kind in ("plain-true", "negated-false") else quad.fails_for
            negated = kind.startswith("negated")
            statement = render_fact(Fact(entity, quad.pred, not negated))
            label = "True" if kind.endswith("true") else "False"
            original = originals.get(statement)
            if original is not None:
                report.items_matching_original_text += 1
                report.items_agreeing_with_original += original == label
            items.append(
                Item(
                    id=f"{record_id}-db{q_index}-{kind}",
                    context=context,
                    statement=statement,
                    label=label,
                    meta={
                        "source": "pararule-plus",
                        "debiased": True,
                        "depth": quad.depth,
                        "negated": negated,
                        "kind": kind,
                        "logic": "closed-world",
                        "original_id": record_id,
                        "original_label": original,
                        "file": file,
                        "line": line,
                        **tags,
                    },
                )
            )
            per_depth[quad.depth][kind] += 1
    report.items = len(items)
    report.per_depth_kind = {d: {k: c[k] for k in KINDS} for d, c in sorted(per_depth.items())}
    return items, report


def _check_originals(
    questions: Sequence[Any],
    closure: Closure,
    theory: Any,
    report: DebiasReport,
    file: str,
    line: int,
) -> dict[str, str]:
    """Label every original question with the prover and count agreement; returns the
    original labels by statement text."""
    labels: dict[str, str] = {}
    given_only: Closure | None = None
    for q in questions:
        if not isinstance(q, Mapping) or "text" not in q or "label" not in q:
            continue
        text = str(q["text"]).strip()
        original = "True" if str(q["label"]).strip().lower() == "true" else "False"
        try:
            statement = parse_statement(text)
        except ParseError:
            continue
        labels[text] = original
        report.original_questions_checked += 1
        ours = closure.query(statement).label
        if ours == original:
            report.original_agree += 1
            continue
        report.original_disagree += 1
        if given_only is None:
            given_only = forward_chain(theory, "closed", naf_scope="given")
        explained = given_only.query(statement).label == original
        report.explained_by_given_only_naf += explained
        if len(report.disagreement_examples) < _EXAMPLES:
            report.disagreement_examples.append(
                {
                    "file": file,
                    "line": line,
                    "question": q.get("id"),
                    "text": text,
                    "original": original,
                    "prover": ours,
                    "explained_by_given_only_naf": explained,
                }
            )
    return labels


def _spec_params(spec: DataSpec | None) -> dict[str, Any]:
    if spec is None:
        return {}
    params: dict[str, Any] = {
        "seed": spec.get_int("seed", 0),
        "per_context": spec.get_int("per_context", 4),
        "min_depth": spec.get_int("min_depth", 1),
    }
    if spec.get("n") is not None:
        params["n"] = spec.get_int("n", 0)
    if spec.get("max_depth") is not None:
        params["max_depth"] = spec.get_int("max_depth", 0)
    return params


def debias_pararule(records: Sequence[Record], spec: DataSpec | None = None) -> list[Item]:
    """Loader hook for ``pararule-plus:...?debias=1``; spec parameters ``seed`` (0),
    ``per_context`` (4), ``n`` (no cap), ``min_depth`` (1), ``max_depth`` (none). The report is
    kept in ``debias_pararule.last_report`` (a dict)."""
    items, report = debias_with_report(records, **_spec_params(spec))
    debias_pararule.last_report = report.to_dict()  # type: ignore[attr-defined]
    return items


debias_pararule.last_report = None  # type: ignore[attr-defined]


def debias_report(records: Sequence[Record], spec: DataSpec | None = None) -> dict[str, Any]:
    """Run the debias step and return only its report (counts, skips, agreement, balance)."""
    return debias_with_report(records, **_spec_params(spec))[1].to_dict()

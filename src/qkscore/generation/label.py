"""Label each step of a generated chain with the project's own parser and prover.

A step is judged against the context plus the chain's earlier steps (what the QK verifier
reads too, see :func:`qkscore.audit.chain.context_with_steps`):

* ``valid``: entailed (a restated premise counts). A fact step is entailed when the prover
  derives it; a rule step ("Every wumpus is a zumpus.") when it restates a rule of the context
  or when a fresh individual that has the rule's body gets its head derived;
* ``invalid``: contradicted (its negation is derived) or not entailed;
* ``unparsed``: the parser reads no fact or rule in it. Such a step is never counted as valid
  or invalid, and it adds nothing to what later steps may rest on.

An earlier step is added to the premises only when it keeps them consistent (a contradicted
step is not), so a later step that follows from an unsupported earlier one is locally valid;
``grounded`` says whether a step also follows from the context alone. ``depth`` is the number
of proof hops the step needs from the context (0 for a restated premise, None when it does not
follow). ProntoQA and the built-in generator are open-world sets, so the prover runs open-world.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qkscore.data.logic import (
    Fact,
    LogicError,
    ParseError,
    Rule,
    Theory,
    World,
    forward_chain,
    parse_sentence,
    parse_theory,
)

__all__ = ["LABELS", "label_steps", "parse_coverage"]

LABELS = ("valid", "invalid", "unparsed")
_HYPOTHETICAL = "the individual under consideration"


def _closure(theory: Theory, world: World):
    try:
        return forward_chain(theory, world)
    except LogicError:
        return None


def _extend(theory: Theory, parsed: Fact | Rule) -> Theory:
    if isinstance(parsed, Rule):
        return Theory(list(theory.facts), [*theory.rules, parsed])
    return Theory([*theory.facts, parsed], list(theory.rules))


def _same_rule(a: Rule, b: Rule) -> bool:
    return set(a.body) == set(b.body) and a.head == b.head


def _judge_fact(fact: Fact, local, base) -> tuple[str, int | None, bool, str]:
    answer = local.query(fact)
    grounded = base is not None and base.query(fact).label == "True"
    if answer.label == "True":
        if not grounded:  # it rests on an earlier step the context does not support
            return "valid", local.depth(fact), False, "follows from an unsupported earlier step"
        depth = base.depth(fact)
        return "valid", depth, True, "restated premise" if depth == 0 else "derived"
    if answer.label == "False":
        return "invalid", None, False, "contradicted"
    return "invalid", None, False, "not entailed"


def _judge_rule(rule: Rule, theory: Theory, context_rules: Sequence[Rule], world: World):
    """A rule holds when a fresh individual with its body gets its head derived."""
    if any(_same_rule(rule, r) for r in context_rules):
        return "valid", 0, True, "restated premise"
    body = [Fact(_HYPOTHETICAL, lit.pred, lit.positive) for lit in rule.body]
    head = Fact(_HYPOTHETICAL, rule.head.pred, rule.head.positive)
    closure = _closure(Theory([*theory.facts, *body], list(theory.rules)), world)
    if closure is None:
        return "invalid", None, False, "its body contradicts the premises"
    answer = closure.query(head)
    if answer.label == "True":
        return "valid", closure.depth(head), None, "derived rule"
    return "invalid", None, False, "contradicted" if answer.label == "False" else "not entailed"


def label_steps(context: str, steps: Sequence[str], world: World = "open") -> list[dict[str, Any]]:
    """One label record per step: ``label`` (valid / invalid / unparsed), ``depth``,
    ``grounded``, ``kind`` (fact / rule / None) and ``reason``."""
    base_theory = parse_theory(context, strict=False)
    base_theory.unparsed = []
    base = _closure(base_theory, world)
    theory = base_theory
    local = base
    out: list[dict[str, Any]] = []
    for step in steps:
        try:
            parsed = parse_sentence(step)
        except ParseError:
            out.append(dict(label="unparsed", depth=None, grounded=None, kind=None, reason=""))
            continue
        if local is None:  # the context itself cannot be reasoned over
            out.append(
                dict(label="unparsed", depth=None, grounded=None, kind=None, reason="context")
            )
            continue
        if isinstance(parsed, Rule):
            label, depth, grounded, reason = _judge_rule(parsed, theory, base_theory.rules, world)
            kind = "rule"
        else:
            label, depth, grounded, reason = _judge_fact(parsed, local, base)
            kind = "fact"
        out.append(dict(label=label, depth=depth, grounded=grounded, kind=kind, reason=reason))
        extended = _extend(theory, parsed)
        closure = _closure(extended, world)
        if closure is not None:  # a step that contradicts the premises is not built upon
            theory, local = extended, closure
    return out


def parse_coverage(labels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts per label and the share of steps the parser read."""
    counts = {k: sum(1 for lab in labels if lab["label"] == k) for k in LABELS}
    n = sum(counts.values())
    return {"steps": n, **counts, "coverage": (n - counts["unparsed"]) / n if n else None}

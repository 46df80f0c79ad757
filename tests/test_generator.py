"""The prover (qkscore.data.logic) and the generated default data built on it.

The prover is tested first on hand-written theories whose answers are known, because every
generated and debiased label is only as good as it is.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from qkscore.data import DataError, load_items
from qkscore.data.generator import (
    KINDS,
    GeneratorError,
    _kind_plan,
    generate_items,
    invent_noun,
    parse_depths,
)
from qkscore.data.logic import (
    ContradictionError,
    Fact,
    LogicError,
    ParseError,
    Predicate,
    Rule,
    forward_chain,
    parse_sentence,
    parse_statement,
    parse_theory,
    pluralize,
    prove,
    singularize,
)
from qkscore.data.shortcuts import find_shortcuts

# ------------------------------------------------------------------------------------ prover


def test_chain_depth_and_proof() -> None:
    context = (
        "Jompuses are not bitter. Every wumpus is a jompus. Each yumpus is a wumpus. "
        "Max is a yumpus."
    )
    closure = forward_chain(parse_theory(context), "open")
    bitter = Predicate("bitter", "adj")
    assert closure.query(Fact("Max", bitter, False)).label == "True"
    assert closure.query(Fact("Max", bitter, False)).depth == 3
    assert closure.query(Fact("Max", bitter, True)).label == "False"
    assert closure.depth(Fact("Max", Predicate("jompus", "noun"))) == 2
    assert closure.proof(Fact("Max", bitter, False)) == [
        "Max is a yumpus.",
        "Each yumpus is a wumpus.",
        "Max is a wumpus.",
        "Every wumpus is a jompus.",
        "Max is a jompus.",
        "Jompuses are not bitter.",
        "Max is not bitter.",
    ]


def test_negated_rule_makes_plain_statement_false_in_both_worlds() -> None:
    context = "Every wumpus is not sour. Sam is a wumpus."
    assert prove(context, "Sam is sour.", "open").label == "False"
    assert prove(context, "Sam is sour.", "closed").label == "False"
    assert prove(context, "Sam is not sour.", "open").label == "True"
    assert prove(context, "Sam is not sour.", "open").depth == 1


def test_conjunction_rule_needs_every_conjunct() -> None:
    context = (
        "Bob is big. Bob is red. Anne is big. "
        "If someone is big and red then they are kind. All kind people are happy."
    )
    closure = forward_chain(parse_theory(context), "closed")
    kind, happy = Predicate("kind"), Predicate("happy")
    assert closure.depth(Fact("Bob", kind)) == 1
    assert closure.depth(Fact("Bob", happy)) == 2
    assert closure.query(Fact("Anne", kind)).label == "False"
    # Anne fails "kind" one rule layer down (red has no rule), "happy" two layers down.
    assert closure.fail_depth("Anne", kind) == 1
    assert closure.query(Fact("Anne", happy)).depth == 2


def test_closed_world_versus_open_world() -> None:
    context = "Bob is big. If someone is not red then they are calm."
    assert prove(context, "Bob is red.", "closed").label == "False"
    assert prove(context, "Bob is red.", "open").label == "Unknown"
    assert prove(context, "Bob is not red.", "closed").label == "True"
    assert prove(context, "Bob is calm.", "closed").label == "True"  # negation as failure
    assert prove(context, "Bob is calm.", "open").label == "Unknown"  # needs "Bob is not red."
    explicit = context + " Bob is not red."
    assert prove(explicit, "Bob is calm.", "open").label == "True"


def test_negation_as_failure_sees_derived_facts_and_given_scope_does_not() -> None:
    # The PARARULE-Plus NegationRule-D4 quirk in miniature: "not clever" must look at the
    # derived "clever", which the data's generator ignored.
    context = (
        "Gary is small. If someone is not poor then they are clever. "
        "If someone is small and not clever then they are rough."
    )
    theory = parse_theory(context)
    statement = parse_statement("Gary is rough.")
    assert forward_chain(theory, "closed").query(statement).label == "False"
    given = forward_chain(theory, "closed", naf_scope="given")
    assert given.query(statement).label == "True"


def test_pararule_templates_parse() -> None:
    cases = {
        "The bald eagle is big.": Fact("the bald eagle", Predicate("big")),
        "Bob is not big.": Fact("Bob", Predicate("big"), False),
        "The lion sees the cat.": Fact("the lion", Predicate("sees", "rel", "the cat")),
    }
    for text, fact in cases.items():
        assert parse_sentence(text) == fact
    rule = parse_sentence("If something is furry and not fierce then it is lovely.")
    assert isinstance(rule, Rule)
    assert [(lit.pred.name, lit.positive) for lit in rule.body] == [
        ("furry", True),
        ("fierce", False),
    ]
    relation = parse_sentence("If something is not round then it needs the dog.")
    assert isinstance(relation, Rule) and relation.head.pred == Predicate("needs", "rel", "the dog")
    for text in ("All poor people are rough.", "Huge people are smart.", "Kind animals are furry."):
        r = parse_sentence(text)
        assert isinstance(r, Rule) and r.head.pred.kind == "adj" and len(r.body) == 1
    context = "The lion is quiet. If something is quiet then it chases the cat. " + (
        "If something chases the cat then it is lazy."
    )
    assert prove(context, "The lion is lazy.").depth == 2


def test_parse_errors_and_inconsistent_theories() -> None:
    with pytest.raises(ParseError):
        parse_sentence("Colourless green ideas sleep furiously.")
    lenient = parse_theory("Bob is big. Bob quickly ran home today. Bob is red.", strict=False)
    assert lenient.unparsed == ["Bob quickly ran home today."] and len(lenient.facts) == 2
    with pytest.raises(ContradictionError):
        forward_chain(parse_theory("Max is a wumpus. Every wumpus is red. Max is not red."), "open")
    with pytest.raises(LogicError, match="stratified"):
        forward_chain(
            parse_theory(
                "Bob is big. If someone is not red then they are blue. "
                "If someone is not blue then they are red."
            ),
            "closed",
        )


def test_invented_nouns_round_trip_through_plural() -> None:
    rng = random.Random(5)
    for _ in range(300):
        noun = invent_noun(rng)
        assert noun.isalpha() and singularize(pluralize(noun)) == noun
        rule = parse_sentence(f"{pluralize(noun).capitalize()} are {pluralize('gorpus')}.")
        assert isinstance(rule, Rule) and rule.body[0].pred == Predicate(noun, "noun")


# --------------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def mixed() -> list:
    return generate_items(n=400, depth="1-5", distractors=True, seed=11)


def test_every_label_is_reverified_by_the_prover(mixed: list) -> None:
    for item in mixed:
        theory = parse_theory(item.context)  # strict: every generated sentence parses
        statement = parse_statement(item.statement)
        for world in ("open", "closed"):
            assert forward_chain(theory, world).query(statement).label == item.label, item


def test_depth_is_exactly_the_requested_one(mixed: list) -> None:
    for item in mixed:
        answer = forward_chain(parse_theory(item.context), "open").query(
            parse_statement(item.statement)
        )
        assert answer.depth == item.meta["depth"]
        chain = item.meta["chain_of_thought"]
        assert len(chain) == 2 * item.meta["depth"] + 1
        # The chain ends in the statement (True) or its negation (False).
        statement = parse_statement(item.statement)
        last = parse_statement(chain[-1])
        assert (last == statement) == (item.label == "True")
        assert last.atom == statement.atom


def test_labels_balanced_overall_and_within_negated_and_plain(mixed: list) -> None:
    by = Counter((it.meta["negated"], it.label) for it in mixed)
    assert by == {(False, "True"): 100, (False, "False"): 100, (True, "True"): 100,
                  (True, "False"): 100}  # fmt: skip
    per_depth = Counter((it.meta["depth"], it.meta["kind"]) for it in mixed)
    assert set(per_depth.values()) == {20} and len(per_depth) == 20
    assert all(it.meta["negated"] == (" not " in it.statement) for it in mixed)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 30])
def test_balance_within_one_for_awkward_sizes(n: int) -> None:
    for depths in ([2], [1, 2, 3]):
        plan = _kind_plan(n, depths)
        assert len(plan) == n
        labels = Counter(k.endswith("true") for _, k in plan)
        assert abs(labels[True] - labels[False]) <= 1
        for neg in (True, False):
            sub = Counter(k.endswith("true") for _, k in plan if k.startswith("negated") == neg)
            assert abs(sub[True] - sub[False]) <= 1
        for d in depths:
            kinds = Counter(k for dd, k in plan if dd == d)
            assert max(kinds.values(), default=0) - min(kinds.get(k, 0) for k in KINDS) <= 1


def test_deterministic_for_a_seed() -> None:
    a = generate_items(n=24, depth="1-3", seed=3)
    b = load_items("generated:depth=1-3&n=24&seed=3")
    assert [x.to_dict() for x in a] == [y.to_dict() for y in b]
    c = generate_items(n=24, depth="1-3", seed=4)
    assert [x.context for x in a] != [y.context for y in c]
    assert len({x.id for x in a}) == 24


def test_spec_defaults_and_meta() -> None:
    items = load_items("generated:n=8")
    assert len(items) == 8
    meta = items[0].meta
    assert meta["source"] == "generated" and meta["depth"] == 3 and meta["distractors"] is True
    assert meta["rule"] == "modus_ponens" and meta["ontology"] == "fictional"
    json.dumps([it.to_dict() for it in items])  # meta stays JSON-serialisable


def test_distractors_present_or_absent() -> None:
    plain = generate_items(n=40, depth=3, distractors=False, seed=1)
    noisy = generate_items(n=40, depth=3, distractors=True, seed=1)
    for item in plain:  # exactly the fact and the chain
        assert len(parse_theory(item.context).facts) == 1
        assert len(parse_theory(item.context).rules) == 3
        assert item.meta["distractors"] is False
    near_misses = 0
    for item in noisy:
        theory = parse_theory(item.context)
        assert len(theory.facts) >= 2 and len(theory.rules) >= 6
        target = parse_statement(item.statement).pred
        polarities = {r.head.positive for r in theory.rules if r.head.pred == target}
        near_misses += polarities == {True, False}
    assert near_misses == len(noisy)  # the target adjective appears with both polarities


def test_parse_depths_and_errors() -> None:
    assert parse_depths("1-3,5") == [1, 2, 3, 5]
    assert parse_depths(4) == [4]
    for bad in ("0", "3-1", "x", "1-99"):
        with pytest.raises(DataError):
            parse_depths(bad)
    with pytest.raises(DataError, match="unknown parameter"):
        load_items("generated:dept=3")


def test_generator_error_is_a_logic_error() -> None:
    assert issubclass(GeneratorError, LogicError)


def test_generated_set_passes_the_shortcut_audit() -> None:
    items = generate_items(n=500, depth="1-5", seed=0)
    report = find_shortcuts(items)
    assert report.statement_only_accuracy is not None
    assert report.statement_only_accuracy < 0.65 and not report.flagged
    assert report.negation_gap == 0.0

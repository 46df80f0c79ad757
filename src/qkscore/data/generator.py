"""The embedded default data: ProntoQA-style deduction over invented words, checked by a prover.

Why generate at all: public sets carry shortcuts (raw PARARULE-Plus is answerable from the word
"not" alone) and their terms carry world knowledge ("All cats are animals"). Here every class
name is a pronounceable nonsense word from a seeded syllable generator, so only the context can
tell what follows; statements come in four kinds -- plain-true, negated-false, negated-true,
plain-false -- in equal numbers overall and within every depth, so neither the label prior nor
the word "not" predicts anything; and every label is re-derived by
:mod:`qkscore.data.logic` (open and closed world) before an item is emitted: a disagreement is
a bug and raises :class:`GeneratorError`.

Spec: ``generated:depth=3&n=500&distractors=1&seed=0``. ``depth`` may be a range or a list
(``depth=1-5``, ``depth=1,3,5``), which splits ``n`` equally between depths.

A problem of depth ``d``::

    Max is a wumpus.                  (fact)
    Every wumpus is a jompus.         (d - 1 class rules, 2-4 phrasings each)
    Jompuses are not bitter.          (the property rule, plain or negated)
    statement: "Max is bitter."       -> False at depth d (its negation is derived)

With ``distractors=1`` the context also holds: a near-miss rule giving the target property the
opposite polarity on a class Max is not in (often with another entity who is), a second chain
Max belongs to that never reaches the property, a side branch off the main chain, and other
properties (plain and negated) on chain classes. Property adjectives come from distinct
families (one colour, one taste, ...) so no two clash by world knowledge.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from qkscore.data.items import DataError, Item
from qkscore.data.logic import (
    Fact,
    LogicError,
    Predicate,
    forward_chain,
    indefinite,
    parse_statement,
    parse_theory,
    pluralize,
    render_fact,
)

__all__ = [
    "KINDS",
    "MAX_ITEMS",
    "GeneratorError",
    "Problem",
    "generate_items",
    "invent_noun",
    "parse_depths",
]

#: Kind order, chosen so that any run of consecutive kinds has labels balanced within one and,
#: within negated and within plain statements, labels balanced within one.
KINDS: tuple[str, str, str, str] = ("plain-true", "negated-false", "negated-true", "plain-false")
MAX_DEPTH = 30
#: Most items one call generates: each is held in memory (about 2 KB with its proof), and an
#: unbounded ``n`` (``n=99999999999``) would take every byte of memory before failing.
MAX_ITEMS = 100_000

_ONSETS = (
    "b", "d", "f", "g", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
    "br", "dr", "fl", "gr", "kl", "pr", "sh", "sk", "sl", "sn", "st", "tr",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("m", "n", "l", "r")
_SUFFIXES = ("pus", "rax", "mox", "lon", "zel", "dith", "grum")
_NAMES = (
    "Max", "Sam", "Alex", "Sally", "Polly", "Rex", "Stella", "Wren", "Fae", "Nina",
    "Omar", "Lena", "Tom", "Ivy", "Hugo", "Mira", "Otto", "Ruby", "Theo", "Jade",
)  # fmt: skip
# One adjective per family per problem, so properties never clash by world knowledge. No
# adjective ends in "s": "Wumpuses are X" reads X ending in "s" as a plural noun.
_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("red", "blue", "green", "yellow", "orange", "purple", "brown"),
    ("sweet", "sour", "bitter", "salty", "spicy"),
    ("hot", "cold", "warm", "cool"),
    ("large", "small", "tiny", "huge"),
    ("happy", "sad", "angry", "calm", "shy"),
    ("wooden", "metallic", "liquid", "rubbery"),
    ("fast", "slow"),
    ("bright", "dull", "shiny", "dark"),
    ("opaque", "transparent"),
    ("loud", "quiet"),
    ("kind", "mean", "brave", "feisty", "aggressive"),
    ("wet", "dry"),
    ("heavy", "light"),
    ("hard", "soft"),
    ("young", "old"),
    ("fuzzy", "smooth", "rough"),
    ("earthy", "floral", "fruity"),
    ("windy", "sunny", "rainy"),
)


class GeneratorError(LogicError):
    """The generator and the prover disagree: a bug, never a data condition."""


@dataclass
class Problem:
    """One generated problem before it becomes an :class:`Item`."""

    rules: list[str]
    facts: list[str]
    statement: str
    label: str
    depth: int
    negated: bool
    kind: str
    entity: str
    target: Fact  # the literal derived at ``depth`` (the statement or its negation)


def invent_noun(rng: random.Random) -> str:
    """A pronounceable nonsense class noun ("satimpus", "obelrax"); plural is regular."""
    first = ("" if rng.random() < 0.15 else rng.choice(_ONSETS)) + rng.choice(_VOWELS)
    second = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
    return first + second + rng.choice(_SUFFIXES)


def parse_depths(value: str | int | Sequence[int]) -> list[int]:
    """``3`` / ``"1-5"`` / ``"1,3,5"`` / ``"1-3,5"`` -> sorted distinct depths."""
    if isinstance(value, int):
        parts: list[int] = [value]
    elif isinstance(value, str):
        parts = []
        for chunk in value.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", chunk)
            if not m:
                raise DataError(
                    f"depth={value!r}: expected an integer, a range like 1-5 or a list like 1,3,5",
                    field="depth",
                )
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise DataError(f"depth={value!r}: range {chunk} runs backwards", field="depth")
            if lo < 1 or hi > MAX_DEPTH:  # before the range is listed: 1-999999999 is huge
                raise DataError(
                    f"depth={value!r}: depths must lie in 1..{MAX_DEPTH}", field="depth"
                )
            parts.extend(range(lo, hi + 1))
    else:
        parts = [int(v) for v in value]
    depths = sorted(set(parts))
    if not depths or depths[0] < 1 or depths[-1] > MAX_DEPTH:
        raise DataError(f"depth={value!r}: depths must lie in 1..{MAX_DEPTH}", field="depth")
    return depths


# -- phrasing -------------------------------------------------------------------------------


def _class_rule(rng: random.Random, a: str, b: str) -> str:
    """ "Every A is a B." in one of three phrasings."""
    return rng.choice(
        (
            f"Every {a} is {indefinite(b)}.",
            f"Each {a} is {indefinite(b)}.",
            f"{pluralize(a).capitalize()} are {pluralize(b)}.",
        )
    )


def _property_rule(rng: random.Random, a: str, adj: str, positive: bool) -> str:
    """ "Every A is [not] P." in one of four phrasings."""
    neg = "" if positive else "not "
    return rng.choice(
        (
            f"Every {a} is {neg}{adj}.",
            f"Each {a} is {neg}{adj}.",
            f"{pluralize(a).capitalize()} are {neg}{adj}.",
            f"If something is {indefinite(a)} then it is {neg}{adj}.",
        )
    )


def _member(entity: str, noun: str) -> str:
    return f"{entity} is {indefinite(noun)}."


# -- construction ---------------------------------------------------------------------------


def _fresh_nouns(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        noun = invent_noun(rng)
        if noun not in taken:
            taken.add(noun)
            out.append(noun)
    return out


def _build(rng: random.Random, depth: int, kind: str, distractors: bool) -> Problem:
    """Assemble one problem of the given kind; labels are set here and checked later."""
    negated = kind.startswith("negated")
    label = "True" if kind.endswith("true") else "False"
    # The derived literal's polarity: a true plain or a false negated statement needs "P".
    derived_positive = (label == "True") != negated
    entity, other = rng.sample(_NAMES, 2)
    families = list(_FAMILIES)
    rng.shuffle(families)
    target_adj = rng.choice(families.pop())
    spare = [rng.choice(f) for f in families]  # one adjective per remaining family

    taken: set[str] = set()
    chain = _fresh_nouns(rng, depth, taken)
    rules = [_class_rule(rng, chain[i], chain[i + 1]) for i in range(depth - 1)]
    rules.append(_property_rule(rng, chain[-1], target_adj, derived_positive))
    facts = [_member(entity, chain[0])]

    if distractors:
        # Near miss: the target property with the opposite polarity, on a class Max is not in.
        miss_parent, miss = _fresh_nouns(rng, 2, taken)
        rules.append(_property_rule(rng, miss, target_adj, not derived_positive))
        if rng.random() < 0.5:
            rules.append(_class_rule(rng, miss_parent, miss))
            facts.append(_member(other, rng.choice((miss, miss_parent))))
        # A second chain Max belongs to, which never reaches the target property.
        branch = _fresh_nouns(rng, rng.randint(1, max(1, depth - 1)), taken)
        facts.append(_member(entity, branch[0]))
        rules.extend(_class_rule(rng, branch[i], branch[i + 1]) for i in range(len(branch) - 1))
        # A side branch off the main chain.
        side = _fresh_nouns(rng, 1, taken)[0]
        rules.append(_class_rule(rng, rng.choice(chain), side))
        # Other properties, plain and negated, on the classes above.
        for noun in [*chain, *branch, side, miss]:
            if spare and rng.random() < 0.6:
                rules.append(_property_rule(rng, noun, spare.pop(), rng.random() < 0.5))

    rng.shuffle(rules)
    rng.shuffle(facts)
    target = Fact(entity, Predicate(target_adj, "adj"), derived_positive)
    statement = render_fact(Fact(entity, target.pred, not negated))
    return Problem(rules, facts, statement, label, depth, negated, kind, entity, target)


def _verify(problem: Problem) -> list[str]:
    """Re-derive the label in both worlds and the depth; returns the gold proof sentences."""
    context = " ".join(problem.rules + problem.facts)
    try:
        theory = parse_theory(context)
        statement = parse_statement(problem.statement)
        closures = {w: forward_chain(theory, w) for w in ("open", "closed")}
    except LogicError as exc:
        raise GeneratorError(f"generated context does not parse or chain: {exc}") from exc
    for world, closure in closures.items():
        answer = closure.query(statement)
        if answer.label != problem.label:
            raise GeneratorError(
                f"{world}-world prover says {answer.label}, generator says {problem.label} "
                f"for {problem.statement!r} given {context!r}"
            )
    depth = closures["open"].depth(problem.target)
    if depth != problem.depth:
        raise GeneratorError(
            f"prover derives {render_fact(problem.target)!r} at depth {depth}, "
            f"not the requested {problem.depth}: {context!r}"
        )
    chain = closures["open"].proof(problem.target)
    if len(chain) != 2 * problem.depth + 1:
        raise GeneratorError(f"proof of unexpected length {len(chain)}: {chain}")
    return chain


def _kind_plan(n: int, depths: Sequence[int]) -> list[tuple[int, str]]:
    """(depth, kind) per item: depths share ``n`` as equally as possible and kinds cycle
    depth-major through :data:`KINDS`, so every depth and the whole set are balanced within
    one; the returned order interleaves depths so a prefix (``limit=``) mixes them."""
    per = [n // len(depths) + (1 if j < n % len(depths) else 0) for j in range(len(depths))]
    blocks: list[list[tuple[int, str]]] = []
    cursor = 0
    for depth, count in zip(depths, per, strict=True):
        blocks.append([(depth, KINDS[(cursor + k) % 4]) for k in range(count)])
        cursor += count
    plan: list[tuple[int, str]] = []
    for row in range(max(per, default=0)):
        plan.extend(block[row] for block in blocks if row < len(block))
    return plan


def generate_items(
    n: int = 500,
    depth: int | str | Sequence[int] = 3,
    distractors: bool = True,
    seed: int = 0,
) -> list[Item]:
    """Generate ``n`` verified items; identical arguments give identical items."""
    if not 0 <= n <= MAX_ITEMS:
        raise DataError(f"n={n} must lie in 0..{MAX_ITEMS}", field="n")
    depths = parse_depths(depth)
    items: list[Item] = []
    for index, (d, kind) in enumerate(_kind_plan(n, depths)):
        rng = random.Random(f"qkscore-generated:{seed}:{d}:{kind}:{index}")
        problem = _build(rng, d, kind, distractors)
        chain = _verify(problem)
        items.append(
            Item(
                id=f"gen-s{seed}-d{d}-{index:05d}",
                context=" ".join(problem.rules + problem.facts),
                statement=problem.statement,
                label=problem.label,
                meta={
                    "source": "generated",
                    "depth": d,
                    "distractors": bool(distractors),
                    "negated": problem.negated,
                    "kind": kind,
                    "rule": "modus_ponens",
                    "ontology": "fictional",
                    "logic": "open-world",
                    "seed": seed,
                    "chain_of_thought": chain,
                },
            )
        )
    return items

"""A small, exact logic layer: parse rule-base sentences, forward-chain them, answer queries.

Why it exists: every label qkscore generates or rewrites (the ``generated`` set, the debiased
PARARULE-Plus statements) must be *checked*, not assumed. Both the generator and the debias
step therefore go through this one parser and prover, and refuse to emit an item the prover
disagrees with.

The fragment is deliberately tiny and decidable:

* **facts**: an entity has a predicate, or does not ("Bob is big.", "Max is not a wumpus.",
  "The bald eagle sees the dog.");
* **rules**: a conjunction of literals about one implicit individual implies one literal
  ("All poor people are rough.", "Every wumpus is a jompus.", "Wumpuses are not bitter.",
  "If someone is big and not rough then they are kind.", "If something needs the dog then it
  is sleepy.").

There is one variable per rule and every predicate is unary (a relation with a fixed object,
"chases the mouse", is one unary predicate), so grounding is over the finite set of entities
the theory mentions and forward chaining always terminates.

Two semantics are supported:

* ``world="closed"`` (PARARULE-Plus, ProofWriter CWA): what is not derivable is false; a
  negated body literal is negation as failure, evaluated stratum by stratum;
* ``world="open"`` (ProntoQA, ProofWriter OWA): a statement is True when derived, False when
  its negation is derived, Unknown otherwise; negated body literals need an explicitly derived
  negative fact.

Depth conventions (documented because every breakdown by depth depends on them):

* a given fact has depth 0; a derived fact has depth ``1 + max(depth of its positive
  premises)``, minimised over all derivations; a negation-as-failure premise adds 0 (the
  ProofWriter / PARARULE-Plus convention: "Erin is little" via ``not strong -> dull -> sad ->
  short -> little`` is depth 4 in the data, and so it is here);
* the *failure depth* of an atom that is not derivable under the closed world is how many
  rule layers one must look through to be sure it fails: 0 when no rule concludes it, else the
  maximum over the rules that conclude it of ``1 + min(cost of refuting one body literal)``,
  where refuting a positive literal costs its failure depth and refuting a negated literal
  costs the derivation depth of the atom it negates. It mirrors derivation depth, so a false
  statement at depth 3 needs as many steps as a true one at depth 3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal as TypingLiteral

World = TypingLiteral["closed", "open"]
PredKind = TypingLiteral["adj", "noun", "rel"]

__all__ = [
    "Answer",
    "Closure",
    "ContradictionError",
    "Derivation",
    "Fact",
    "Lit",
    "LogicError",
    "ParseError",
    "Predicate",
    "Rule",
    "Theory",
    "forward_chain",
    "indefinite",
    "parse_sentence",
    "parse_statement",
    "parse_theory",
    "pluralize",
    "prove",
    "render_fact",
    "render_rule",
    "singularize",
    "split_sentences",
]


class LogicError(ValueError):
    """The theory cannot be reasoned over (contradiction, negation through recursion, ...)."""


class ParseError(LogicError):
    """A sentence matches none of the templates this parser understands."""

    def __init__(self, sentence: str, reason: str = "matches no known sentence template") -> None:
        self.sentence = sentence
        super().__init__(f"{reason}: {sentence!r}")


class ContradictionError(LogicError):
    """Both an atom and its negation are derivable."""


# --------------------------------------------------------------------------------------------
# Representation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Predicate:
    """A unary predicate: an adjective ("big"), a class noun ("wumpus", singular) or a relation
    with a fixed object (``name="chases"``, ``obj="the mouse"``; verb in third person)."""

    name: str
    kind: PredKind = "adj"
    obj: str = ""

    def phrase(self, positive: bool = True, *, plural_subject: bool = False) -> str:
        """The verb phrase after the subject: "is big", "is not a wumpus", "does not see Bob"."""
        if self.kind == "rel":
            if plural_subject:
                verb = _verb_base(self.name)
                return f"{verb} {self.obj}" if positive else f"do not {verb} {self.obj}"
            return (
                f"{self.name} {self.obj}"
                if positive
                else f"does not {_verb_base(self.name)} {self.obj}"
            )
        cop = "are" if plural_subject else "is"
        neg = "" if positive else "not "
        if self.kind == "noun":
            noun = pluralize(self.name) if plural_subject else indefinite(self.name)
            return f"{cop} {neg}{noun}"
        return f"{cop} {neg}{self.name}"

    def __str__(self) -> str:
        return f"{self.name} {self.obj}" if self.kind == "rel" else self.name


@dataclass(frozen=True, order=True)
class Lit:
    """A predicate or its negation, about the rule's implicit individual."""

    pred: Predicate
    positive: bool = True

    def negate(self) -> Lit:
        return Lit(self.pred, not self.positive)


@dataclass(frozen=True, order=True)
class Fact:
    """A ground literal. ``text`` (the source sentence) is not part of identity, so a parsed fact
    and a derived one compare equal."""

    entity: str
    pred: Predicate
    positive: bool = True
    text: str = field(default="", compare=False, hash=False, repr=False)

    def negate(self) -> Fact:
        return Fact(self.entity, self.pred, not self.positive)

    @property
    def atom(self) -> tuple[str, Predicate]:
        return (self.entity, self.pred)


@dataclass(frozen=True)
class Rule:
    """``body[0] and body[1] and ... -> head`` for every individual."""

    body: tuple[Lit, ...]
    head: Lit
    text: str = field(default="", compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.body:
            raise LogicError("a rule needs at least one body literal")
        object.__setattr__(self, "body", tuple(self.body))

    @property
    def sentence(self) -> str:
        return self.text or render_rule(self)


@dataclass
class Theory:
    """Facts and rules, plus the sentences that did not parse (lenient parsing only)."""

    facts: list[Fact] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)

    @property
    def entities(self) -> list[str]:
        """Every entity mentioned: subjects of facts and objects of relations (closed-world
        negation ranges over all of them), in first-mention order."""
        seen: dict[str, None] = {}
        for f in self.facts:
            seen.setdefault(f.entity, None)
            if f.pred.kind == "rel":
                seen.setdefault(f.pred.obj, None)
        for r in self.rules:
            for lit in (*r.body, r.head):
                if lit.pred.kind == "rel":
                    seen.setdefault(lit.pred.obj, None)
        return list(seen)

    @property
    def predicates(self) -> list[Predicate]:
        seen: dict[Predicate, None] = {}
        for f in self.facts:
            seen.setdefault(f.pred, None)
        for r in self.rules:
            for lit in (*r.body, r.head):
                seen.setdefault(lit.pred, None)
        return list(seen)


# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------

_SIBILANT_ENDINGS = ("s", "x", "z", "ch", "sh")


def pluralize(noun: str) -> str:
    """English-regular plural; the generator only invents nouns this round-trips for."""
    if noun.endswith(_SIBILANT_ENDINGS):
        return noun + "es"
    if len(noun) > 1 and noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def singularize(word: str) -> str:
    """Inverse of :func:`pluralize` for regular nouns ("jompuses" -> "jompus")."""
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    for end in ("sses", "shes", "ches", "xes", "zes", "uses"):
        if word.endswith(end):
            return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def indefinite(noun: str) -> str:
    """ "a wumpus" / "an impus"."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _verb_base(verb: str) -> str:
    """ "chases" -> "chase", "watches" -> "watch", "sees" -> "see"."""
    for end in ("sses", "shes", "ches", "xes", "zes"):
        if verb.endswith(end):
            return verb[:-2]
    if verb.endswith("ies") and len(verb) > 3:
        return verb[:-3] + "y"
    return verb[:-1] if verb.endswith("s") else verb


def _verb_third(base: str) -> str:
    """ "chase" -> "chases", "watch" -> "watches"."""
    if base.endswith(_SIBILANT_ENDINGS):
        return base + "es"
    if len(base) > 1 and base.endswith("y") and base[-2] not in "aeiou":
        return base[:-1] + "ies"
    return base + "s"


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_WORD = r"[a-z][a-z\-']*"
# An entity: a capitalised name ("Bob", "Mr Smith") or a definite description ("the bald eagle").
_ENTITY = r"(?:[Tt]he(?: [a-z][a-z\-]*){1,3}|[A-Z][a-z]+(?: [A-Z][a-z]+)?)"
_UNIVERSAL_SUBJECTS = ("people", "animals", "things")
_IF_SUBJECTS = r"(?:someone|something|somebody|a person|an animal|anyone|anything)"
_PRONOUNS = r"(?:they|it|he|she)"
# Adjectives that end in "s" must not be mistaken for plural nouns in "Wumpuses are X".
_ADJ_S_ENDINGS = ("ous", "ss", "less", "ful")


def split_sentences(text: str) -> list[str]:
    """Split a context into sentences on ., ! or ? followed by space."""
    return [s.strip() for s in _SENT_SPLIT.split(text.strip()) if s.strip()]


def _norm_entity(text: str) -> str:
    """ "The bald eagle" and "the bald eagle" are one entity; names keep their case."""
    text = " ".join(text.split())
    if text[:4].lower() == "the ":
        return "the " + text[4:].lower()
    return text


def _strip_period(sentence: str) -> str:
    return " ".join(sentence.strip().rstrip(".!?").split())


def _adjective_or_noun(words: str) -> Predicate | None:
    """After a singular copula: "a wumpus" / "an impus" -> noun, "big" -> adjective."""
    words = words.strip().lower()
    m = re.fullmatch(rf"(?:a|an) ({_WORD})", words)
    if m:
        return Predicate(m.group(1), "noun")
    if re.fullmatch(_WORD, words):
        return Predicate(words, "adj")
    return None


def _plural_complement(words: str) -> Predicate | None:
    """After "are": "jompuses" -> noun jompus, "bitter" -> adjective."""
    words = words.strip().lower()
    if not re.fullmatch(_WORD, words):
        return None
    if words.endswith("s") and not words.endswith(_ADJ_S_ENDINGS):
        return Predicate(singularize(words), "noun")
    return Predicate(words, "adj")


def _parse_condition(text: str, *, plural: bool) -> Lit | None:
    """One literal about the rule's individual, without the subject:
    "is big", "is not a wumpus", "not big", "big", "needs the dog", "does not chase Bob"."""
    text = text.strip()
    low = text.lower()
    m = re.fullmatch(r"(?:is|are)(?: (not))? (.+)", low)
    if m:
        positive = m.group(1) is None
        rest = m.group(2)
        pred = _plural_complement(rest) if plural and not rest.startswith(("a ", "an ")) else None
        pred = pred or _adjective_or_noun(rest)
        return Lit(pred, positive) if pred else None
    m = re.fullmatch(rf"(?:does|do) not ({_WORD}) ({_ENTITY})", text)
    if m:
        return Lit(
            Predicate(_verb_third(m.group(1).lower()), "rel", _norm_entity(m.group(2))), False
        )
    m = re.fullmatch(rf"({_WORD}) ({_ENTITY})", text)
    if m and m.group(1) not in ("is", "are", "not"):
        verb = m.group(1).lower()
        verb = verb if verb.endswith("s") and not plural else _verb_third(verb)
        return Lit(Predicate(verb, "rel", _norm_entity(m.group(2))), True)
    m = re.fullmatch(r"(not )?(.+)", low)
    if m:  # bare adjective continuing an "is" list: "is big and not rough"
        pred = _adjective_or_noun(m.group(2))
        return Lit(pred, m.group(1) is None) if pred else None
    return None


def _parse_conditions(text: str, *, plural: bool) -> tuple[Lit, ...] | None:
    parts = re.split(r",? and |, ", text)
    lits = []
    for part in parts:
        lit = _parse_condition(part, plural=plural)
        if lit is None:
            return None
        lits.append(lit)
    return tuple(lits)


def _parse_rule(s: str, original: str) -> Rule | None:
    low = s.lower()
    # If someone is big and not rough then they are kind. / If something needs the dog then it ...
    m = re.fullmatch(rf"if {_IF_SUBJECTS} (.+?),? then ({_PRONOUNS}) (.+)", s, flags=re.IGNORECASE)
    if m:
        body = _parse_conditions(m.group(1), plural=False)
        heads = _parse_conditions(m.group(3), plural=m.group(2).lower() == "they")
        if body and heads and len(heads) == 1:
            return Rule(body, heads[0], original)
        return None
    # All poor people are rough. / Huge people are smart. / All cute animals are not lazy.
    m = re.fullmatch(
        rf"(?:all )?((?:{_WORD}(?:,? and |, | ))*?{_WORD}) (?:{'|'.join(_UNIVERSAL_SUBJECTS)}) "
        r"are (.+)",
        low,
    )
    if m:
        body = tuple(Lit(Predicate(w, "adj")) for w in re.split(r",? and |, | ", m.group(1)))
        head = _parse_condition("are " + m.group(2), plural=True)
        if head is not None and head.pred.kind == "adj":
            return Rule(body, head, original)
        return None
    # Every wumpus is a jompus. / Each wumpus is not bitter.
    m = re.fullmatch(rf"(?:every|each|any) ({_WORD}) (is(?: not)? .+)", low)
    if m:
        head = _parse_condition(m.group(2), plural=False)
        if head is not None:
            return Rule((Lit(Predicate(m.group(1), "noun")),), head, original)
        return None
    # Wumpuses are jompuses. / All wumpuses are not bitter.
    m = re.fullmatch(rf"(?:all )?({_WORD}) (are(?: not)? .+)", low)
    if m and m.group(1).endswith("s"):
        head = _parse_condition(m.group(2), plural=True)
        if head is not None:
            return Rule((Lit(Predicate(singularize(m.group(1)), "noun")),), head, original)
    return None


def _parse_fact(s: str, original: str) -> Fact | None:
    m = re.fullmatch(rf"({_ENTITY}) is (not )?(.+)", s)
    if m:
        pred = _adjective_or_noun(m.group(3))
        if pred is not None:
            return Fact(_norm_entity(m.group(1)), pred, m.group(2) is None, original)
        return None
    m = re.fullmatch(rf"({_ENTITY}) does not ({_WORD}) ({_ENTITY})", s)
    if m:
        pred = Predicate(_verb_third(m.group(2)), "rel", _norm_entity(m.group(3)))
        return Fact(_norm_entity(m.group(1)), pred, False, original)
    m = re.fullmatch(rf"({_ENTITY}) ({_WORD}s) ({_ENTITY})", s)
    if m:
        pred = Predicate(m.group(2), "rel", _norm_entity(m.group(3)))
        return Fact(_norm_entity(m.group(1)), pred, True, original)
    return None


def parse_sentence(sentence: str) -> Fact | Rule:
    """Parse one sentence into a fact or a rule; :class:`ParseError` when no template fits."""
    s = _strip_period(sentence)
    if not s:
        raise ParseError(sentence, "empty sentence")
    original = sentence.strip()
    if re.match(r"(?i)(if|all|every|each|any)\b", s) or re.search(r"\bare\b", s):
        rule = _parse_rule(s, original)
        if rule is not None:
            return rule
        raise ParseError(sentence)
    fact = _parse_fact(s, original)
    if fact is not None:
        return fact
    raise ParseError(sentence)


def parse_statement(sentence: str) -> Fact:
    """Parse a candidate conclusion ("Bob is not big."); a rule is not a statement."""
    s = _strip_period(sentence)
    s = re.sub(r"(?i)^(true or false|prove)\s*:\s*", "", s)
    fact = _parse_fact(s, sentence.strip())
    if fact is None:
        raise ParseError(sentence, "not a fact statement")
    return fact


def parse_theory(text: str | Iterable[str], *, strict: bool = True) -> Theory:
    """Parse a context (a string, or pre-split sentences). With ``strict=False`` sentences that
    do not parse are collected in ``Theory.unparsed`` instead of raising."""
    sentences = split_sentences(text) if isinstance(text, str) else list(text)
    theory = Theory()
    for sentence in sentences:
        try:
            parsed = parse_sentence(sentence)
        except ParseError:
            if strict:
                raise
            theory.unparsed.append(sentence)
            continue
        if isinstance(parsed, Rule):
            theory.rules.append(parsed)
        else:
            theory.facts.append(parsed)
    return theory


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_fact(fact: Fact) -> str:
    """Canonical sentence for a fact ("The bald eagle is not big.")."""
    return _capitalize(f"{fact.entity} {fact.pred.phrase(fact.positive)}.")


def _condition_text(lit: Lit) -> str:
    return lit.pred.phrase(lit.positive)


def render_rule(rule: Rule) -> str:
    """Canonical "If someone ... then they ..." sentence (used when a rule has no source text)."""
    body = " and ".join(_condition_text(lit) for lit in rule.body)
    head = rule.head.pred.phrase(rule.head.positive, plural_subject=True)
    return f"If someone {body} then they {head}."


# --------------------------------------------------------------------------------------------
# Forward chaining
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derivation:
    """How a fact was (first, i.e. shallowest) obtained: given (rule None) or by a rule."""

    depth: int
    rule: Rule | None = None
    premises: tuple[Fact, ...] = ()


@dataclass(frozen=True)
class Answer:
    """A query's label and the depth at which it is established (None for Unknown)."""

    label: str
    depth: int | None


def _stratify(rules: Sequence[Rule], world: World) -> dict[Predicate, int]:
    """Predicate strata so that negation as failure only looks at completed lower strata."""
    stratum: dict[Predicate, int] = {}
    for r in rules:
        for lit in (*r.body, r.head):
            stratum.setdefault(lit.pred, 0)
    limit = len(stratum) + 1
    changed = True
    while changed:
        changed = False
        for r in rules:
            for lit in r.body:
                need = stratum[lit.pred] + (1 if world == "closed" and not lit.positive else 0)
                if stratum[r.head.pred] < need:
                    stratum[r.head.pred] = need
                    changed = True
                    if need > limit:
                        raise LogicError(
                            "rules are not stratified (negation as failure through recursion), "
                            f"e.g. {r.sentence!r}"
                        )
    return stratum


class Closure:
    """Everything a theory entails under one semantics, with depths and shallowest proofs.

    Build with :func:`forward_chain`. Closed world: ``holds`` of a negative fact is negation as
    failure. Open world: only explicitly derived literals hold.

    ``naf_scope="given"`` is a diagnostic, not a semantics to reason with: rule bodies then test
    negation as failure against the *stated* facts only, ignoring derived ones. Some dataset
    generators labelled questions that way (PARARULE-Plus's NegationRule-D4 files: every one of
    their 1,032 disagreements with this prover is reproduced by it), so comparing the two tells
    a labelling quirk of the data from a bug here.
    """

    def __init__(
        self,
        theory: Theory,
        world: World,
        *,
        naf_scope: TypingLiteral["derived", "given"] = "derived",
    ) -> None:
        if world not in ("closed", "open"):
            raise ValueError(f"world must be 'closed' or 'open', not {world!r}")
        if naf_scope not in ("derived", "given"):
            raise ValueError(f"naf_scope must be 'derived' or 'given', not {naf_scope!r}")
        self.theory = theory
        self.world: World = world
        self.naf_scope = naf_scope
        self._given = {Fact(f.entity, f.pred, f.positive) for f in theory.facts}
        self.entities = theory.entities
        self.derived: dict[Fact, Derivation] = {}
        self._fail: dict[tuple[str, Predicate], int | None] = {}
        self._fail_done: set[Predicate] = set()
        self._heads: dict[Predicate, list[Rule]] = {}
        for r in theory.rules:
            if r.head.positive:
                self._heads.setdefault(r.head.pred, []).append(r)
        self._run()

    # -- construction ------------------------------------------------------------------------

    def _run(self) -> None:
        for f in self.theory.facts:
            key = Fact(f.entity, f.pred, f.positive)
            if key not in self.derived:
                self.derived[key] = Derivation(0, None, ())
        self._given_text = {Fact(f.entity, f.pred, f.positive): f.text for f in self.theory.facts}
        strata = _stratify(self.theory.rules, self.world)
        levels = sorted(set(strata.values())) or [0]
        for level in levels:
            rules = [r for r in self.theory.rules if strata.get(r.head.pred, 0) == level]
            self._saturate(rules)
        for key in self.derived:
            if key.positive and key.negate() in self.derived:
                raise ContradictionError(
                    f"both {render_fact(key)!r} and {render_fact(key.negate())!r} are derivable"
                )

    def _saturate(self, rules: Sequence[Rule]) -> None:
        """Apply rules until nothing new is derived and no depth can be lowered."""
        changed = True
        while changed:
            changed = False
            for rule in rules:
                for entity in self.entities:
                    got = self._fire(rule, entity)
                    if got is None:
                        continue
                    depth, premises = got
                    head = Fact(entity, rule.head.pred, rule.head.positive)
                    old = self.derived.get(head)
                    if old is None or depth < old.depth:
                        self.derived[head] = Derivation(depth, rule, premises)
                        changed = True

    def _fire(self, rule: Rule, entity: str) -> tuple[int, tuple[Fact, ...]] | None:
        depth = 0
        premises = []
        for lit in rule.body:
            fact = Fact(entity, lit.pred, lit.positive)
            if lit.positive or self.world == "open":
                d = self.derived.get(fact)
                if d is None:
                    return None
                depth = max(depth, d.depth)
            else:  # closed world: negation as failure over a completed lower stratum
                scope = self.derived if self.naf_scope == "derived" else self._given
                if fact.negate() in scope:
                    return None
            premises.append(fact)
        return depth + 1, tuple(premises)

    # -- queries -----------------------------------------------------------------------------

    def depth(self, fact: Fact) -> int | None:
        """Derivation depth of an explicitly derived (or given) literal, else None."""
        d = self.derived.get(Fact(fact.entity, fact.pred, fact.positive))
        return None if d is None else d.depth

    def holds(self, fact: Fact) -> bool:
        key = Fact(fact.entity, fact.pred, fact.positive)
        if key in self.derived:
            return True
        if self.world == "closed" and not fact.positive:
            return key.negate() not in self.derived
        return False

    def fail_depth(self, entity: str, pred: Predicate) -> int | None:
        """Closed world: failure depth of an atom that is not derivable (see module docstring);
        None when the atom is derivable or its failure is only unfounded (a positive cycle)."""
        if Fact(entity, pred, True) in self.derived:
            return None
        if pred not in self._fail_done:
            self._compute_fail_depths()
        return self._fail.get((entity, pred), 0 if pred not in self._heads else None)

    def _compute_fail_depths(self) -> None:
        preds = set(self.theory.predicates) | set(self._heads)
        atoms = [
            (e, p) for e in self.entities for p in preds if Fact(e, p, True) not in self.derived
        ]
        fail: dict[tuple[str, Predicate], int | None] = {}
        for e, p in atoms:
            fail[(e, p)] = 0 if p not in self._heads else None
        changed = True
        while changed:
            changed = False
            for e, p in atoms:
                rules = self._heads.get(p)
                if not rules:
                    continue
                worst: int | None = 0
                for r in rules:
                    best: int | None = None
                    for lit in r.body:
                        pos = Fact(e, lit.pred, True)
                        if lit.positive:
                            if pos in self.derived:
                                continue  # the literal holds: it cannot refute the rule
                            cost = fail.get((e, lit.pred))
                        else:
                            if pos not in self.derived:
                                continue  # negation as failure holds
                            cost = self.derived[pos].depth
                        if cost is not None and (best is None or cost < best):
                            best = cost
                    if best is None:
                        worst = None
                        break
                    worst = max(worst, best + 1)
                old = fail[(e, p)]
                if worst is not None and (old is None or worst < old):
                    fail[(e, p)] = worst
                    changed = True
        self._fail.update(fail)
        self._fail_done.update(preds)

    def query(self, statement: Fact) -> Answer:
        """Label a statement ("True"/"False"/"Unknown") with the depth that settles it."""
        pos = Fact(statement.entity, statement.pred, True)
        neg = pos.negate()
        if self.world == "open":
            if statement in self.derived:
                return Answer("True", self.derived[statement].depth)
            other = statement.negate()
            if other in self.derived:
                return Answer("False", self.derived[other].depth)
            return Answer("Unknown", None)
        # closed world
        if pos in self.derived:
            d = self.derived[pos].depth
            return Answer("True" if statement.positive else "False", d)
        depth = self.fail_depth(statement.entity, statement.pred)
        if neg in self.derived:
            nd = self.derived[neg].depth
            depth = nd if depth is None else min(depth, nd)
        return Answer("False" if statement.positive else "True", depth)

    def proof(self, fact: Fact) -> list[str]:
        """The shallowest proof as sentences, premises first: for a chain
        ``["Max is a wumpus.", "Every wumpus is a jompus.", "Max is a jompus.", ...]``.
        Closed-world negation-as-failure premises appear as their negative sentence."""
        key = Fact(fact.entity, fact.pred, fact.positive)
        out: list[str] = []
        seen: set[Fact] = set()

        def walk(f: Fact) -> None:
            if f in seen:
                return
            seen.add(f)
            d = self.derived.get(f)
            if d is None:
                if self.holds(f):  # negation as failure
                    out.append(render_fact(f))
                    return
                raise LogicError(f"{render_fact(f)!r} is not derivable")
            if d.rule is None:
                out.append(self._given_text.get(f) or render_fact(f))
                return
            for p in d.premises:
                walk(p)
            out.append(d.rule.sentence)
            out.append(render_fact(f))

        walk(key)
        return out

    def facts(self, *, positive: bool | None = None) -> Iterator[tuple[Fact, Derivation]]:
        """Iterate derived (and given) facts, optionally only one polarity."""
        for f, d in self.derived.items():
            if positive is None or f.positive == positive:
                yield f, d


def forward_chain(
    theory: Theory,
    world: World = "closed",
    *,
    naf_scope: TypingLiteral["derived", "given"] = "derived",
) -> Closure:
    """Saturate a theory; raises :class:`LogicError` on contradiction or unstratified negation."""
    return Closure(theory, world, naf_scope=naf_scope)


def prove(context: str, statement: str, world: World = "closed") -> Answer:
    """One-shot: parse a context and a statement and answer it."""
    closure = forward_chain(parse_theory(context), world)
    return closure.query(parse_statement(statement))

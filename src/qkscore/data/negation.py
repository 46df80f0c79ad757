"""Grammatical negation of simple English statements, and a negation detector.

PrOntoQA-OOD only ships provable goals ("Prove: X."), so a True/False set needs a False
counterpart for every X. A counterpart that always adds the word "not" would let a model score
well by spotting "not", so :func:`negate` *toggles* negation instead: a goal that already says
"not" loses it. Together with the balanced pairing this makes the word "not" carry no information
about the label.

The rules, tried in order, each an involution where the grammar allows
(``negate(negate(x)) == x``):

1. ``It is not the case that X.`` -> ``X.`` (undoes the fallback of rule 5).
2. A list of whole clauses joined by one connective, ``A and B``, ``A, B, and C``, ``A or B``:
   De Morgan, each clause negated and ``and``/``or`` swapped
   ("Sam is not a lempus and Sam is not a sterpus." -> "Sam is a lempus or Sam is a sterpus.").
3. One copular clause with a predicate list, ``S is P1 or P2``, ``S is P1, P2, or P3``:
   De Morgan inside the predicate ("Polly is slow and a numpus." ->
   "Polly is not slow or not a numpus.").
4. One copular clause, ``S is [not] P``: toggle ``not`` after the copula. Quantified subjects follow
   PrOntoQA's own reading ("Every wumpus is a jompus." -> "Every wumpus is not a jompus.", i.e.
   no wumpus is a jompus), which is how PrOntoQA phrases its negative rules.
5. Anything else (conditionals, non-copular verbs, "No X is Y"): ``It is not the case that X.``

:func:`negate` never returns its input unchanged.
"""

from __future__ import annotations

import re

__all__ = ["NEGATION_WORDS", "has_negation", "lower_first", "negate", "upper_first"]

#: Words that make a statement "negated": for ``meta["negated"]``, the shortcut audit's
#: negated/plain split and the shallow matcher alike, so they can never disagree.
NEGATION_WORDS: frozenset[str] = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot", "without"}
)
_TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)?", re.IGNORECASE)
_FALLBACK_PREFIX = "It is not the case that "
_FALLBACK_RE = re.compile(r"^it is not the case that\s+(?P<inner>.+)$", re.IGNORECASE | re.DOTALL)
_CLAUSE_RE = re.compile(r"^(?P<subj>\S.*?)\s+(?P<cop>is|are|was|were)\s+(?P<pred>\S.*)$")
# Separators between list members; the capture group keeps them so a list can be rebuilt as-is.
_SEPARATOR_RE = re.compile(r"(,\s*(?:and|or)\s+|\s+(?:and|or)\s+|,\s+)")
_CONNECTIVE_RE = re.compile(r"\b(and|or)\b")
_COPULA_WORD_RE = re.compile(r"\b(?:is|are|was|were)\b")
# Subjects and openings that rule 4 would turn into nonsense ("No wumpus is not ...").
_NO_TOGGLE_SUBJECT_RE = re.compile(r"^(?:no|none|nothing|nobody|neither|if|either)\b", re.I)
_NO_TOGGLE_PRED_RE = re.compile(r"^(?:neither|nor|not both|both)\b", re.IGNORECASE)
# First words that are not proper nouns, so they may be lower-cased inside the fallback.
_FUNCTION_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "every",
        "each",
        "all",
        "some",
        "no",
        "none",
        "nothing",
        "nobody",
        "everyone",
        "everything",
        "someone",
        "something",
        "anyone",
        "anything",
        "if",
        "either",
        "neither",
        "both",
        "any",
        "many",
        "most",
        "few",
        "he",
        "she",
        "they",
        "we",
        "you",
        "his",
        "her",
        "their",
        "our",
    ]
)


def has_negation(text: str) -> bool:
    """Whether ``text`` contains a negation word (:data:`NEGATION_WORDS`) or an n't contraction.

    Breakdowns use this (``meta["negated"]``) to check that a score does not merely track the
    surface word "not"; the shortcut audit splits items by it. Whole words only ("notable" and
    "nothingness" are not negations); a typographic apostrophe counts as one ("isn’t").
    """
    tokens = _TOKEN_RE.findall(text.lower().replace("\u2019", "'"))
    return any(t in NEGATION_WORDS or t.endswith("n't") for t in tokens)


def negate(sentence: str) -> str:
    """The grammatical negation of ``sentence`` (see the module docstring for the rules)."""
    text = sentence.strip()
    if not text:
        raise ValueError("cannot negate an empty sentence")
    body, end = _split_end(text)
    if not body:
        raise ValueError(f"cannot negate {sentence!r}: no words")

    fallback = _FALLBACK_RE.match(body)
    if fallback:
        return upper_first(fallback.group("inner")) + end

    result = _negate_clause_list(body) or _negate_clause(body)
    if result is None or result == body:
        result = _FALLBACK_PREFIX + lower_first(body)
    return result + end


def _split_end(text: str) -> tuple[str, str]:
    """Separate terminal punctuation so rules work on the bare clause."""
    match = re.search(r"[.!]+$", text)
    if match:
        return text[: match.start()].rstrip(), match.group(0)
    return text, ""


def _split_list(text: str) -> tuple[list[str], list[str]] | None:
    """Split ``A, B, and C`` into members and separators, or None unless exactly one of
    ``and``/``or`` joins them (mixed or comma-only lists are ambiguous)."""
    pieces = _SEPARATOR_RE.split(text)
    members, separators = pieces[0::2], pieces[1::2]
    if len(members) < 2 or any(not m.strip() for m in members):
        return None
    connectives = {c for sep in separators for c in _CONNECTIVE_RE.findall(sep)}
    if len(connectives) != 1:
        return None
    return members, separators


def _swap_connective(separator: str) -> str:
    return _CONNECTIVE_RE.sub(lambda m: "or" if m.group(1) == "and" else "and", separator)


def _join(members: list[str], separators: list[str]) -> str:
    out = [members[0]]
    for sep, member in zip(separators, members[1:], strict=True):
        out += [_swap_connective(sep), member]
    return "".join(out)


def _negate_clause_list(body: str) -> str | None:
    """Rule 2: every member is a copular clause -> negate each, swap the connective."""
    split = _split_list(body)
    if split is None:
        return None
    members, separators = split
    negated = [_negate_clause(m, allow_list=False) for m in members]
    if any(n is None for n in negated):
        return None
    return _join([n for n in negated if n is not None], separators)


def _negate_clause(body: str, *, allow_list: bool = True) -> str | None:
    """Rules 3 and 4 on one copular clause, or None when the clause is not that simple."""
    match = _CLAUSE_RE.match(body)
    if not match or _NO_TOGGLE_SUBJECT_RE.match(match.group("subj")):
        return None
    subj, cop, pred = match.group("subj"), match.group("cop"), match.group("pred")
    if _NO_TOGGLE_PRED_RE.match(pred) or " then " in f" {pred} ":
        return None
    split = _split_list(pred) if allow_list else None
    if split is not None:
        members, separators = split
        if any(not _is_predicate(m) for m in members):
            return None  # "Polly is a wumpus or Polly likes Rex": not one subject's list
        return f"{subj} {cop} {_join([_toggle(m) for m in members], separators)}"
    if allow_list is False and _CONNECTIVE_RE.search(pred):
        return None
    return f"{subj} {cop} {_toggle(pred)}"


def _is_predicate(member: str) -> bool:
    """A list member that is a bare predicate ("a wumpus", "not slow"), not a clause."""
    return member[:1].islower() and not _COPULA_WORD_RE.search(member)


def _toggle(predicate: str) -> str:
    if predicate.startswith("not "):
        return predicate[len("not ") :]
    return "not " + predicate


def lower_first(text: str) -> str:
    """Lower-case the first letter when the first word is a function word ("The", "Every"),
    never a name, so a sentence can be embedded after "that" or "If"."""
    if not text.strip():
        return text
    first = text.split(maxsplit=1)[0]
    if first.lower() in _FUNCTION_WORDS and first[:1].isupper():
        return text[:1].lower() + text[1:]
    return text


def upper_first(text: str) -> str:
    """Capitalize the first letter only (``str.capitalize`` would lower-case the rest)."""
    return text[:1].upper() + text[1:]

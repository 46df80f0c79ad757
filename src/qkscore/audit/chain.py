"""Chains of thought as lists of steps: splitting text, results per step, and corruptions.

A chain is verified step by step: step ``i`` is a statement judged against the context plus
steps ``0..i-1``, so a step may rest on what the chain already derived but on nothing after it.
The first step the head rejects is the place a reader should look first.

The corruption helpers build the benchmark's faulty chains from gold ones (ProntoQA's
``chain_of_thought``, every step valid): one step replaced by its negation, or by a conclusion
about a term the context never mentions. A verifier should flag the replaced step and only it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qkscore.data.negation import negate

__all__ = [
    "ChainResult",
    "ChainStep",
    "assemble_chain",
    "chain_subject",
    "context_with_steps",
    "corrupt_negation",
    "corrupt_unrelated",
    "pick_unrelated_predicate",
    "predicate_pool",
    "split_steps",
    "step_kind",
    "step_pairs",
]

# A sentence ends at . ! or ? followed by whitespace (or the end); newlines always end a step.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_COPULA_RE = re.compile(r"^(?P<subj>[A-Z][\w-]*) is (?P<pred>.+?)\.?$")


def split_steps(text: str) -> list[str]:
    """Split free text into steps: one per line, and lines into sentences.

    Kept simple on purpose (no abbreviation list): chains of thought are short declarative
    sentences; a caller with other needs passes a list of steps instead.
    """
    steps: list[str] = []
    for line in text.splitlines():
        steps.extend(s.strip() for s in _SENTENCE_END_RE.split(line.strip()) if s.strip())
    return steps


def context_with_steps(context: str, steps: Sequence[str]) -> str:
    """The premises step ``len(steps)`` is judged against: the context, then earlier steps."""
    parts = [p.strip() for p in (context, *steps) if p and p.strip()]
    return " ".join(parts)


def step_pairs(context: str, steps: Sequence[str]) -> list[tuple[str, str]]:
    """(premises, statement) per step: step ``i`` against the context and steps ``0..i-1``.
    ``verify-chain``, ``rank`` and step calibration all judge a chain through these pairs."""
    return [(context_with_steps(context, steps[:i]), step) for i, step in enumerate(steps)]


@dataclass
class ChainStep:
    """The head's judgement of one step (see :class:`qkscore.audit.check.Verdict` fields)."""

    index: int
    statement: str
    verdict: str
    valid: bool
    probability: float
    margin: float
    score: float
    model_answer: bool | None = None
    model_probability: float | None = None
    disagree: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChainResult:
    """Per-step judgements; ``first_failure`` is the index of the first invalid step or None.

    ``profile_unit`` is what the profile was calibrated on (``"step"`` or ``"answer"``);
    ``warning`` says so when it was not calibrated on steps (None otherwise)."""

    steps: list[ChainStep]
    first_failure: int | None
    head: str
    fast: bool
    latency_ms: float
    profile_unit: str = "answer"
    warning: str | None = None
    valid: bool = field(init=False)

    def __post_init__(self) -> None:
        self.valid = self.first_failure is None

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_steps"] = self.n_steps
        return d


def assemble_chain(
    steps: Sequence[str],
    verdicts: Sequence[Any],
    *,
    head: str,
    fast: bool,
    latency_ms: float,
    profile_unit: str = "answer",
    warning: str | None = None,
) -> ChainResult:
    """Combine the verdicts of each step (judged in order) into a :class:`ChainResult`."""
    if len(steps) != len(verdicts):
        raise ValueError(f"{len(steps)} steps but {len(verdicts)} verdicts")
    out = [
        ChainStep(
            index=i,
            statement=s,
            verdict=v.verdict,
            valid=v.valid,
            probability=v.probability,
            margin=v.margin,
            score=v.score,
            model_answer=v.model_answer,
            model_probability=v.model_probability,
            disagree=v.disagree,
        )
        for i, (s, v) in enumerate(zip(steps, verdicts))
    ]
    first = next((s.index for s in out if not s.valid), None)
    return ChainResult(
        out,
        first,
        head=head,
        fast=fast,
        latency_ms=latency_ms,
        profile_unit=profile_unit,
        warning=warning,
    )


# --------------------------------------------------------------------------------------------
# corruptions for the benchmark


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def step_kind(context: str, step: str) -> str:
    """``"copied"`` when the step restates a context sentence verbatim, else ``"derived"``.

    ProntoQA chains alternate facts and rules copied from the context with derived facts; only
    the derived ones need reasoning, so the benchmark reports them apart.
    """
    return "copied" if f" {_normalise(step)} " in f" {_normalise(context)} " else "derived"


def chain_subject(chain: Sequence[str]) -> str | None:
    """The entity a chain reasons about: the subject of its first ``X is ...`` step."""
    for step in chain:
        m = _COPULA_RE.match(step.strip())
        if m:
            return m.group("subj")
    return None


def predicate_pool(chains: Iterable[Sequence[str]]) -> list[str]:
    """Predicates of ``Name is P.`` steps across chains ("a wumpus", "not orange"), deduplicated
    in first-seen order, to build conclusions about terms another context never mentions."""
    seen: dict[str, None] = {}
    for chain in chains:
        for step in chain:
            m = _COPULA_RE.match(step.strip())
            if m:
                seen.setdefault(m.group("pred").strip(), None)
    return list(seen)


def _content_word(predicate: str) -> str:
    words = [w for w in re.findall(r"[A-Za-z]+", predicate.lower()) if w not in {"a", "an", "not"}]
    return words[-1] if words else predicate.lower()


def pick_unrelated_predicate(context: str, chain: Sequence[str], pool: Sequence[str], rng) -> str:
    """A predicate from ``pool`` whose content word starts no word of the context or the chain
    ("jompus" is found in "Jompuses"), so the resulting conclusion is not entailed: its truth
    is unknown from the premises."""
    text = (context + " " + " ".join(chain)).lower()
    candidates = [p for p in pool if not re.search(r"\b" + re.escape(_content_word(p)), text)]
    if not candidates:
        raise ValueError("no predicate in the pool is unrelated to this context")
    return candidates[int(rng.integers(len(candidates)))]


def corrupt_negation(chain: Sequence[str], index: int) -> list[str]:
    """The chain with step ``index`` replaced by its grammatical negation."""
    out = list(chain)
    out[index] = negate(out[index])
    return out


def corrupt_unrelated(chain: Sequence[str], index: int, subject: str, predicate: str) -> list[str]:
    """The chain with step ``index`` replaced by ``"{subject} is {predicate}."``."""
    out = list(chain)
    out[index] = f"{subject} is {predicate}."
    return out


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Detection figures over benchmark records.

    Each record: ``kind`` ("gold" or a corruption name), ``corrupted`` (index or None),
    ``steps`` (list of valid flags per step), ``step_kinds``. Returns the false-alarm rate on
    gold steps, and per corruption the detection rate of the corrupted step, the rate of flags on
    the untouched steps before it, and how often ``first_failure`` is exactly the corrupted step.
    """
    out: dict[str, Any] = {}
    gold = [r for r in records if r["kind"] == "gold"]
    if gold:
        flags = [not ok for r in gold for ok in r["steps"]]
        by_kind: dict[str, list[bool]] = {}
        for r in gold:
            for ok, k in zip(r["steps"], r["step_kinds"]):
                by_kind.setdefault(k, []).append(not ok)
        out["gold"] = {
            "chains": len(gold),
            "steps": len(flags),
            "false_alarm_rate": _rate(flags),
            "false_alarm_by_kind": {k: _rate(v) for k, v in sorted(by_kind.items())},
            "clean_chain_rate": _rate([all(r["steps"]) for r in gold]),
        }
    for kind in sorted({r["kind"] for r in records} - {"gold"}):
        rs = [r for r in records if r["kind"] == kind]
        detected = [not r["steps"][r["corrupted"]] for r in rs]
        before = [not ok for r in rs for ok in r["steps"][: r["corrupted"]]]
        first = [r["first_failure"] == r["corrupted"] for r in rs]
        by_kind = {}
        for r in rs:
            by_kind.setdefault(r["step_kinds"][r["corrupted"]], []).append(
                not r["steps"][r["corrupted"]]
            )
        out[kind] = {
            "chains": len(rs),
            "detection_rate": _rate(detected),
            "detection_by_kind": {k: _rate(v) for k, v in sorted(by_kind.items())},
            "false_alarm_before": _rate(before),
            "first_failure_accuracy": _rate(first),
        }
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return float(sum(flags) / len(flags)) if flags else None

"""Step sets: chain-of-thought steps labelled valid or invalid, grouped by problem, to calibrate
and measure step verdicts on.

A step is judged as ``verify-chain`` judges it: against the problem's context plus the chain's
earlier steps (:func:`qkscore.audit.chain.step_pairs`). Two sources give such steps:

* a generation folder (``qkscore generate``): every step the prover labelled ``valid`` or
  ``invalid``, with its ``depth``, ``grounded`` and ``kind``; unparsed steps are no example
  either way, but they stay among the earlier steps of the ones after them, as the judge
  sees the chain;
* a labelled-steps JSONL file users bring, one step per line::

      {"problem": "p1", "context": "Every cat is a mammal. Tom is a cat.",
       "earlier": ["Tom is a cat."], "step": "Tom is a mammal.", "label": "valid"}

  ``earlier`` (default none), ``depth``, ``grounded``, ``kind`` and ``hops`` are optional. A
  malformed line raises :class:`~qkscore.data.items.DataError` naming the file, the line and
  the field.

Steps of one problem are not independent examples (they share a context, and the chains of one
problem share most of their steps), so every split, fold and choice over a step set is by
problem, never by step: :meth:`StepSet.split` deals problems, :meth:`StepSet.groups` gives the
problem of each step for grouped cross-validation and the cluster bootstrap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.audit.chain import context_with_steps
from qkscore.data.items import DataError
from qkscore.generation.byo import json_lines
from qkscore.generation.folder import GenFolder
from qkscore.generation.rank_cache import chain_key

__all__ = ["LabelledStep", "StepSet", "read_steps_file", "steps_from_generations"]

LABELS = ("valid", "invalid")
KINDS = ("fact", "rule")


@dataclass(frozen=True)
class LabelledStep:
    """One step with its label: ``valid`` (follows from the context and the earlier steps) or
    not. ``depth`` counts proof hops from the context (0: a restated premise; None: unknown or
    invalid), ``grounded`` whether it follows from the context alone, ``kind`` fact or rule;
    ``chain`` names the chain it comes from (steps of one chain are judged in one pass)."""

    problem: str
    context: str
    earlier: tuple[str, ...]
    step: str
    valid: bool
    depth: int | None = None
    grounded: bool | None = None
    kind: str | None = None
    chain: str | None = None
    hops: int | None = None

    @property
    def restated(self) -> bool:
        """A valid step that only restates a premise (depth 0): copying, not reasoning."""
        return self.valid and self.depth == 0

    @property
    def pair(self) -> tuple[str, str]:
        """(premises, statement) as the judge reads this step."""
        return context_with_steps(self.context, self.earlier), self.step


@dataclass
class StepSet:
    """Labelled steps and where they came from (``source``: kind, path, provenance)."""

    steps: list[LabelledStep]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def problems(self) -> list[str]:
        """Problem ids in first-seen order."""
        return list(dict.fromkeys(s.problem for s in self.steps))

    def subset(self, problems: Iterable[str]) -> StepSet:
        """The steps of these problems only (in the set's order)."""
        keep = set(problems)
        return StepSet([s for s in self.steps if s.problem in keep], dict(self.source))

    def split(self, size: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
        """Problem ids to calibrate on (``size`` of them, default half) and the rest, each in
        first-seen order; the choice is a seeded random draw of problems, never of steps."""
        ids = self.problems()
        n = len(ids) // 2 if size is None else int(size)
        if not 1 <= n <= len(ids):
            raise ValueError(f"cannot calibrate on {n} of the {len(ids)} problems")
        chosen = set(np.random.default_rng(seed).permutation(len(ids))[:n].tolist())
        calib = [p for i, p in enumerate(ids) if i in chosen]
        return calib, [p for i, p in enumerate(ids) if i not in chosen]

    def chains(self) -> dict[str, list[int]]:
        """Step indices per chain (per problem for a steps file), in order: one pass each,
        where the steps share their context's tokens."""
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.steps):
            out.setdefault(s.chain or s.problem, []).append(i)
        return out

    def pairs(self) -> list[tuple[str, str]]:
        return [s.pair for s in self.steps]

    def labels(self) -> np.ndarray:
        """Option index per step as the readers take it: 0 = valid (True), 1 = invalid."""
        return np.array([0 if s.valid else 1 for s in self.steps], dtype=np.int64)

    def groups(self) -> np.ndarray:
        """The problem of each step: the unit of every fold and resample."""
        return np.array([s.problem for s in self.steps], dtype=object)

    def derived(self) -> np.ndarray:
        """Mask of the steps left once restated premises are left out (every invalid step and
        the valid steps that needed at least one rule)."""
        return np.array([not s.restated for s in self.steps], dtype=bool)

    def counts(self) -> dict[str, int]:
        valid = sum(s.valid for s in self.steps)
        restated = sum(s.restated for s in self.steps)
        return {
            "problems": len(self.problems()),
            "chains": len(self.chains()),
            "steps": len(self.steps),
            "valid": valid,
            "invalid": len(self.steps) - valid,
            "valid_derived": valid - restated,
        }


def steps_from_generations(
    gen: str | Path,
    *,
    records: Sequence[Mapping[str, Any]] | None = None,
    problems: Sequence[Any] | None = None,
) -> StepSet:
    """Every step of a finished generation folder the prover labelled valid or invalid.

    ``records`` and ``problems``, when the caller has read them already (``rank``), are used
    instead of reading the folder's files a second time."""
    folder = GenFolder(gen)
    meta = folder.meta()
    problems = folder.problems() if problems is None else problems
    steps = []
    for r in folder.records() if records is None else records:
        problem = problems[r["problem"]]
        for i, (text, lab) in enumerate(zip(r["steps"], r["labels"])):
            if lab["label"] not in LABELS:
                continue
            steps.append(
                LabelledStep(
                    problem=str(r["id"]),
                    context=problem.context,
                    earlier=tuple(r["steps"][:i]),
                    step=text,
                    valid=lab["label"] == "valid",
                    depth=lab.get("depth"),
                    grounded=lab.get("grounded"),
                    kind=lab.get("kind"),
                    chain=chain_key(r),
                    hops=r.get("hops"),
                )
            )
    source = {
        "kind": "generations",
        "path": str(folder.path),
        "problems_sha256": meta.get("problems"),
        "created": meta.get("created"),
        "model": (meta.get("model") or {}).get("name"),
        "data": meta.get("data"),
    }
    return StepSet(steps, source)


def _text(record: Mapping[str, Any], key: str, err, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if key not in record:
        raise err("missing field", key)
    if not isinstance(value, str) or not value.strip():
        raise err("expected non-empty text", key)
    return value


def _optional_int(record: Mapping[str, Any], key: str, err) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise err("expected a whole number >= 0 (or null)", key)
    return value


def _step(record: Any, file: str, line: int) -> LabelledStep:
    def err(message: str, key: str | None = None) -> DataError:
        return DataError(message, file=file, line=line, field=key)

    if not isinstance(record, dict):
        raise err("expected a JSON object")
    problem = record.get("problem")
    if "problem" not in record:
        raise err("missing field", "problem")
    if isinstance(problem, bool) or not isinstance(problem, str | int) or not str(problem).strip():
        raise err("expected a problem id (text or a number)", "problem")
    context = _text(record, "context", err)
    step = _text(record, "step", err)
    earlier = record.get("earlier", [])
    if not isinstance(earlier, list):
        raise err("expected a list of the earlier steps' texts", "earlier")
    for i, e in enumerate(earlier):
        if not isinstance(e, str) or not e.strip():
            raise err("expected non-empty text", f"earlier[{i}]")
    label = record.get("label")
    if "label" not in record:
        raise err("missing field", "label")
    if label not in LABELS:
        raise err(f'expected "valid" or "invalid", not {label!r}', "label")
    grounded = record.get("grounded")
    if grounded is not None and not isinstance(grounded, bool):
        raise err("expected true, false or null", "grounded")
    kind = record.get("kind")
    if kind is not None and kind not in KINDS:
        raise err(f'expected "fact", "rule" or null, not {kind!r}', "kind")
    return LabelledStep(
        problem=str(problem),
        context=context,
        earlier=tuple(earlier),
        step=step,
        valid=label == "valid",
        depth=_optional_int(record, "depth", err),
        grounded=grounded,
        kind=kind,
        hops=_optional_int(record, "hops", err),
    )


def read_steps_file(path: str | Path) -> StepSet:
    """A labelled-steps JSONL file (see the module docstring); a malformed line raises
    :class:`DataError` naming the file, the line and the field. Lines of one problem must
    share its context: the problem is the unit every fold and resample keeps whole."""
    steps: list[LabelledStep] = []
    contexts: dict[str, tuple[str, int]] = {}
    for n, record in json_lines(path):
        step = _step(record, str(path), n)
        first = contexts.setdefault(step.problem, (step.context, n))
        if first[0] != step.context:
            raise DataError(
                f"problem {step.problem!r} has another context on line {first[1]}",
                file=str(path),
                line=n,
                field="context",
            )
        steps.append(step)
    if not steps:
        raise DataError("no labelled steps", file=str(path))
    return StepSet(steps, {"kind": "file", "path": str(path)})

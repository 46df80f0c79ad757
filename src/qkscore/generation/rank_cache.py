"""What ``qkscore rank`` has scored so far, kept beside its results so a killed run resumes.

Why: ranking 600 chains takes about an hour on a CPU (a pass per step, and one per chain for the
solution-level score). Each chain's step verdicts, and each batch's solution-level scores, are
appended to ``RANKED/cache/`` as soon as they exist; a rerun scores only the chains missing
there, and a rerun of a finished folder only recomputes the summary (other ``--folds`` or
``--include-calibration`` cost no forward pass).

::

    cache/settings.json    what the scores depend on: the generation folder's problems hash
                           and creation time, the profiles' SHA-256 (and the answer profile's),
                           the model, the dtype and the cache's format
    cache/steps.jsonl      {"key", "verdicts"} per chain
    cache/solutions.jsonl  {"key", "qk" [layers][heads], "confidence", "step_logprob"} per
                           scored chain

A cache written under other settings is set aside (renamed ``cache.stale-N``), never mixed in.
Floats round-trip exactly through JSON, so resumed figures equal an uninterrupted run's up to
the rounding of different batch shapes in the solution pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.io import FolderError, ResumableFolder, append_jsonl, drop_torn_tail, read_jsonl

__all__ = ["RankCache", "chain_key", "rank_settings"]


def chain_key(record: Mapping[str, Any]) -> str:
    return f"{record['id']}#{record['sample']}"


#: What a cached row holds; a cache of another format is set aside. 2: step verdicts with the
#: hidden-state probe and an answer profile beside the step profile, each step's logit confidence.
CACHE_FORMAT = 2


def rank_settings(
    gen_meta: Mapping[str, Any],
    profile_digest: str,
    model: str,
    dtype: str,
    answer_profile_digest: str | None = None,
) -> dict:
    """The inputs every cached score depends on; the profiles by their one digest
    (:attr:`qkscore.profile.Profile.digest`), so a profile saved again unchanged keeps the
    cache."""
    return {
        "generations": {k: gen_meta.get(k) for k in ("problems", "created", "source")},
        "profile_digest": profile_digest,
        "answer_profile_digest": answer_profile_digest,
        "model": model,
        "dtype": dtype,
        "format": CACHE_FORMAT,
    }


class RankCache(ResumableFolder):
    """Per-chain scores of one ``rank`` output folder; see the module docstring."""

    SETTINGS = "settings.json"
    JOB = "rank"

    def __init__(
        self, out: Path, settings: Mapping[str, Any], log: Callable[[str], None] = print
    ) -> None:
        super().__init__(Path(out) / "cache")
        if self.exists():
            try:
                old = self.read_settings()
            except FolderError:
                old = None
            if not self.same(old, settings):
                stale = self.move_aside(self.path, lambda k: f"cache.stale-{k + 1}")
                log(f"{self.meta_path} was made with other settings: set aside as {stale}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_settings(settings)
        for path in (self.steps_path, self.solutions_path):
            drop_torn_tail(path)

    @property
    def steps_path(self) -> Path:
        return self.path / "steps.jsonl"

    @property
    def solutions_path(self) -> Path:
        return self.path / "solutions.jsonl"

    def steps(self) -> dict[str, list[dict[str, Any]]]:
        return {row["key"]: row["verdicts"] for row in read_jsonl(self.steps_path)}

    def add_steps(self, key: str, verdicts: Sequence[Mapping[str, Any]]) -> None:
        append_jsonl(self.steps_path, [{"key": key, "verdicts": list(verdicts)}])

    def solutions(self) -> dict[str, dict[str, Any]]:
        return {row["key"]: row for row in read_jsonl(self.solutions_path)}

    def add_solutions(
        self,
        keys: Sequence[str],
        qk: np.ndarray,
        confidence: Mapping[str, np.ndarray],
        step_logprob: Sequence[Sequence[float]] = (),
    ) -> list[dict[str, Any]]:
        """One batch: ``qk[i]``, ``confidence[name][i]`` and ``step_logprob[i]`` belong to
        ``keys[i]``; chains the pass could not score (NaN) are stored too, so a rerun does not
        try them again. Returns the rows as :meth:`solutions` reads them back."""
        rows = [
            {
                "key": key,
                "qk": qk[i].astype(float).tolist(),
                "confidence": {name: float(v[i]) for name, v in confidence.items()},
                "step_logprob": [float(x) for x in step_logprob[i]] if step_logprob else [],
            }
            for i, key in enumerate(keys)
        ]
        append_jsonl(self.solutions_path, rows)
        return rows

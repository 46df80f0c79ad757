"""A generation folder: the problems, the chains sampled for them, and their provenance.

::

    run.json            provenance: model (name, fingerprint, dtype), data spec, the problems'
                        content hash, sampling settings, prompt version, package version, the
                        generation wall time and tokens/s, and whether the run is complete
    problems.jsonl      one problem per line: id, context, question, gold, hops
    generations.jsonl   one chain per line: id, sample, batch, text, steps, answer, correct,
                        tokens, finish, and the prover's step labels (qkscore.generation.label)

Chains are appended one batch at a time (one write, then fsync). A kill -9 can leave a torn
last line or half a batch: :meth:`GenFolder.complete_records` keeps whole batches only, and a
resumed run rewrites the file without the rest and samples those batches again, with the same
seeds and the same batch composition, so the texts come out the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qkscore.generation.jsonl import append_jsonl, jsonl_bytes, read_jsonl
from qkscore.generation.problems import Problem
from qkscore.run import RunFolderError, _atomic_write_bytes, write_json

__all__ = ["GenFolder", "problems_sha256"]


def problems_sha256(problems: Iterable[Problem]) -> str:
    """SHA-256 over one canonical JSON line per problem, in order."""
    digest = hashlib.sha256()
    for p in problems:
        digest.update(json.dumps(p.to_dict(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


class GenFolder:
    """Read and write one generation folder; see the module docstring for its layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    @property
    def problems_path(self) -> Path:
        return self.path / "problems.jsonl"

    @property
    def generations_path(self) -> Path:
        return self.path / "generations.jsonl"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a generation folder (no run.json)")
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunFolderError(f"{self.meta_path} is unreadable ({err})") from err
        if not isinstance(meta, dict) or meta.get("kind") != "generations":
            raise RunFolderError(f"{self.meta_path} is not a generation folder's run.json")
        return meta

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        write_json(self.meta_path, dict(meta))

    def write_problems(self, problems: Sequence[Problem]) -> None:
        data = jsonl_bytes(p.to_dict() for p in problems)
        _atomic_write_bytes(self.problems_path, lambda fh: fh.write(data))

    def problems(self) -> list[Problem]:
        lines = self.problems_path.read_text().splitlines()
        return [Problem.from_dict(json.loads(line)) for line in lines if line.strip()]

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one batch's chains in one write, flushed to disk before returning."""
        append_jsonl(self.generations_path, records)

    def rewrite(self, records: Sequence[Mapping[str, Any]]) -> None:
        data = jsonl_bytes(records)
        _atomic_write_bytes(self.generations_path, lambda fh: fh.write(data))

    def raw_records(self) -> list[dict[str, Any]]:
        """Every whole JSON line of generations.jsonl; a torn line (a kill mid-write) is
        dropped, as is everything after it."""
        return read_jsonl(self.generations_path)

    def complete_records(self, batch_sizes: Mapping[int, int]) -> list[dict[str, Any]]:
        """The records of batches present in full (``batch_sizes``: expected count per batch)."""
        records = self.raw_records()
        counts: dict[int, int] = {}
        for r in records:
            counts[r.get("batch", -1)] = counts.get(r.get("batch", -1), 0) + 1
        whole = {b for b, n in counts.items() if batch_sizes.get(b) == n}
        return [r for r in records if r.get("batch") in whole]

    def records(self) -> list[dict[str, Any]]:
        """The chains of a finished folder, in problem then sample order."""
        meta = self.meta()
        if not meta.get("complete"):
            raise RunFolderError(
                f"{self.path} is not complete: run the same `qkscore generate` command again "
                "to finish it"
            )
        return sorted(self.raw_records(), key=lambda r: (r["problem"], r["sample"]))

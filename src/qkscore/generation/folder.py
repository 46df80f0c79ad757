"""A generation folder: the problems, the chains sampled for them, and their provenance.

::

    run.json            provenance: model (name, fingerprint, dtype), data spec, the problems'
                        content hash, sampling settings, prompt version, package version, the
                        generation wall time and tokens/s, and whether the run is complete
    problems.jsonl      one problem per line: id, context, question, gold, hops
    generations.jsonl   one chain per line: id, problem, sample, text, steps, answer, correct,
                        tokens, finish, and the prover's step labels (qkscore.generation.label)

Each chain is appended as it finishes (one write, then fsync). A kill -9 can leave a torn last
line; a resumed run rewrites the file with the whole chains only (so the next chain never lands
glued onto the fragment) and samples the missing (problem, sample) pairs, each from its own
seed, so the texts come out the same. A folder is marked complete only after every pair was
found in the file exactly once, and :meth:`GenFolder.records` checks that again before anything
reads the chains. Folders written one batch at a time (records with a ``batch`` field) read
and resume the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qkscore.generation.problems import Problem
from qkscore.io import (
    FolderError,
    JsonlScan,
    ResumableFolder,
    append_jsonl,
    jsonl_bytes,
    read_jsonl,
    scan_jsonl,
    write_bytes,
)

__all__ = ["GenFolder", "problems_sha256"]


def problems_sha256(problems: Iterable[Problem]) -> str:
    """SHA-256 over one canonical JSON line per problem, in order."""
    digest = hashlib.sha256()
    for p in problems:
        digest.update(json.dumps(p.to_dict(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


class GenFolder(ResumableFolder):
    """Read and write one generation folder; see the module docstring for its layout."""

    JOB = "generate run"
    KIND = "a generation folder's run.json"

    @property
    def problems_path(self) -> Path:
        return self.path / "problems.jsonl"

    @property
    def generations_path(self) -> Path:
        return self.path / "generations.jsonl"

    def is_one(self) -> bool:
        """Whether run.json says this is a generation folder (damaged or not): the commands that
        take either kind of folder choose by it, and a damaged one then gets :meth:`meta`'s
        error instead of being read as the other kind."""
        try:
            return self._raw_meta().get("kind") == "generations"
        except (FileNotFoundError, FolderError):
            return False

    def _raw_meta(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a generation folder (no run.json)")
        return self.read_settings()

    def meta(self) -> dict[str, Any]:
        meta = self._raw_meta()
        if meta.get("kind") != "generations":
            raise FolderError(f"{self.meta_path} is not {self.KIND}")
        for field in ("n_problems", "samples"):
            value = meta.get(field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FolderError(
                    f"{self.meta_path}: field '{field}' is {value!r}, not a positive integer: "
                    "a damaged generation folder (run the same `qkscore generate` again)"
                )
        return meta

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        self.write_settings(meta)

    def write_problems(self, problems: Sequence[Problem]) -> None:
        write_bytes(self.problems_path, jsonl_bytes(p.to_dict() for p in problems))

    def problems(self) -> list[Problem]:
        lines = self.problems_path.read_text().splitlines()
        return [Problem.from_dict(json.loads(line)) for line in lines if line.strip()]

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one batch's chains in one write, flushed to disk before returning."""
        append_jsonl(self.generations_path, records)

    def rewrite(self, records: Sequence[Mapping[str, Any]]) -> None:
        write_bytes(self.generations_path, jsonl_bytes(records))

    def raw_records(self) -> list[dict[str, Any]]:
        """Every record of generations.jsonl; a torn last line (a kill mid-write) is left out,
        and a damaged line before it raises :class:`~qkscore.data.items.DataError`."""
        return read_jsonl(self.generations_path)

    def scan(self) -> JsonlScan:
        """generations.jsonl line by line, damaged lines reported instead of raised (for a
        resumed run, which samples their chains again)."""
        return scan_jsonl(self.generations_path)

    def expected_pairs(self, meta: Mapping[str, Any] | None = None) -> list[tuple[int, int]] | None:
        """Every (problem, sample) a complete folder holds, or None when that is not fixed
        (imported chains may have a different number of samples per problem)."""
        meta = self.meta() if meta is None else meta
        if meta.get("source") == "import":
            return None
        return [(p, s) for p in range(int(meta["n_problems"])) for s in range(int(meta["samples"]))]

    def pair_problems(
        self, records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
    ) -> list[str]:
        """What keeps ``records`` from being the folder's complete set of chains (empty when
        nothing does): missing and repeated (problem, sample) pairs, and pairs no problem has."""
        meta = self.meta() if meta is None else meta
        seen: dict[tuple[int, int], int] = {}
        for r in records:
            pair = (r.get("problem"), r.get("sample"))
            seen[pair] = seen.get(pair, 0) + 1  # type: ignore[index]
        expected = self.expected_pairs(meta)
        if expected is None:  # imported: samples 0..k-1 of every problem
            n = int(meta["n_problems"])
            counts: dict[int, int] = {}
            for p, _ in seen:
                counts[p] = counts.get(p, 0) + 1
            expected = [(p, s) for p in range(n) for s in range(max(counts.get(p, 0), 1))]
        wanted = set(expected)
        issues = []
        missing = [pair for pair in expected if pair not in seen]
        repeated = sorted((pair for pair, n in seen.items() if n > 1), key=str)
        foreign = sorted((pair for pair in seen if pair not in wanted), key=str)
        for name, pairs in (("missing", missing), ("repeated", repeated), ("unexpected", foreign)):
            if pairs:
                shown = ", ".join(f"problem {p} sample {s}" for p, s in pairs[:5])
                more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
                issues.append(f"{len(pairs)} chain(s) {name} ({shown}{more})")
        return issues

    def whole_chains(
        self, records: Sequence[dict[str, Any]], pairs: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        """The records to keep on resume: one per (problem, sample) of ``pairs`` (the first
        one in the file), whatever batch wrote it."""
        wanted, out = set(pairs), []
        for r in records:
            pair = (r.get("problem"), r.get("sample"))
            if pair in wanted:
                wanted.discard(pair)
                out.append(r)
        return out

    def records(self) -> list[dict[str, Any]]:
        """The chains of a finished folder, in problem then sample order; a folder whose file
        lacks a chain, or holds one twice, raises :class:`~qkscore.io.FolderError` saying which."""
        meta = self.meta()
        if not meta.get("complete"):
            raise FolderError(
                f"{self.path} is not complete: run the same `qkscore generate` command again "
                "to finish it"
            )
        records = self.raw_records()
        issues = self.pair_problems(records, meta)
        if issues:
            raise FolderError(
                f"{self.generations_path} does not hold every chain run.json promises "
                f"({meta.get('n_problems')} problems x {meta.get('samples')} samples): "
                + "; ".join(issues)
                + (
                    ". Import the chains again into a new folder"
                    if meta.get("source") == "import"
                    else ". Run the same `qkscore generate` command again to generate them"
                )
            )
        return sorted(records, key=lambda r: (r["problem"], r["sample"]))

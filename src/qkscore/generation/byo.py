"""Bring your own chains: import chains of thought made elsewhere (vLLM, an API) into a
generation folder, so ``qkscore rank`` reads them exactly as it reads sampled ones.

The format (docs/generation.md) is JSONL, one problem per line::

    {"id": "p1", "context": "...", "question": "True or false: ...", "gold": true,
     "generations": ["chain text ... Answer: True", "..."], "hops": 3}

``gold`` may be given as ``"answer": "True"`` / ``"False"`` instead; ``hops`` is optional.
A malformed record raises :class:`qkscore.data.items.DataError` naming the file, the line and
the field.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qkscore._version import __version__
from qkscore.data.items import DataError, normalize_label
from qkscore.data.textio import read_text_file
from qkscore.generation.chains import chain_record
from qkscore.generation.folder import GenFolder, problems_sha256
from qkscore.generation.problems import Problem

__all__ = ["import_chains", "json_lines", "read_chains_file"]


def _problem(record: Any, file: str, line: int) -> tuple[Problem, list[str]]:
    def err(message: str, field: str | None = None) -> DataError:
        return DataError(message, file=file, line=line, field=field)

    if not isinstance(record, dict):
        raise err("expected a JSON object")
    for key in ("id", "context", "question"):
        value = record.get(key)
        if key not in record:
            raise err("missing field", key)
        if not isinstance(value, str if key != "id" else (str, int)) or not str(value).strip():
            raise err("expected non-empty text" if key != "id" else "expected a string", key)
    if "gold" in record:
        if not isinstance(record["gold"], bool):
            raise err("expected true or false", "gold")
        gold = record["gold"]
    elif "answer" in record:
        label = normalize_label(record["answer"], file=file, line=line, field="answer")
        if label not in ("True", "False"):
            raise err(f"expected True or False, not {record['answer']!r}", "answer")
        gold = label == "True"
    else:
        raise err('missing field (give gold: true|false or answer: "True"|"False")', "gold")
    gens = record.get("generations")
    if not isinstance(gens, list) or not gens:
        raise err("expected a non-empty list of chain texts", "generations")
    for i, g in enumerate(gens):
        if not isinstance(g, str):
            raise err("expected text", f"generations[{i}]")
    hops = record.get("hops")
    if hops is not None and (isinstance(hops, bool) or not isinstance(hops, int)):
        raise err("expected an integer", "hops")
    problem = Problem(str(record["id"]), record["context"], record["question"], gold, hops)
    return problem, list(gens)


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` for each non-blank line of a JSONL file; a line that is
    not JSON raises :class:`DataError` naming the file and the line."""
    text, _ = read_text_file(path)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error.msg})", file=str(path), line=n) from None


def read_chains_file(path: str | Path) -> list[tuple[Problem, list[str]]]:
    """Every problem and its chains from a JSONL file; a bad line raises naming line and field."""
    out: list[tuple[Problem, list[str]]] = []
    seen: dict[str, int] = {}
    for n, record in json_lines(path):
        problem, gens = _problem(record, str(path), n)
        if problem.id in seen:
            raise DataError(
                f"duplicate id {problem.id!r} (first on line {seen[problem.id]})",
                file=str(path),
                line=n,
                field="id",
            )
        seen[problem.id] = n
        out.append((problem, gens))
    if not out:
        raise DataError("no records", file=str(path))
    return out


def import_chains(
    path: str | Path,
    out: str | Path,
    *,
    exclude_ids: Sequence[str] = (),
    limit: int | None = None,
) -> GenFolder:
    """Write the chains of a JSONL file as a finished generation folder at ``out``."""
    entries = [e for e in read_chains_file(path) if e[0].id not in set(exclude_ids)]
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ValueError(f"{path}: no problems left after --limit and --exclude-ids-from")
    folder = GenFolder(out)
    if folder.exists() or folder.generations_path.exists():
        raise ValueError(f"{folder.path} already holds a generation folder; use another --out")
    problems = [p for p, _ in entries]
    records = [
        chain_record(p, text, problem=i, sample=s, batch=-1)
        for i, (p, gens) in enumerate(entries)
        for s, text in enumerate(gens)
    ]
    folder.write_problems(problems)
    folder.rewrite(records)
    folder.write_meta(
        {
            "kind": "generations",
            "source": "import",
            "imported_from": str(path),
            "problems": problems_sha256(problems),
            "n_problems": len(problems),
            "samples": max(len(g) for _, g in entries),
            "qkscore_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "complete": True,
        }
    )
    return folder

"""The one item type every loader, template and scan shares.

A reasoning item is premises (``context``), a candidate conclusion (``statement``) and a gold
``label``. True/False sets keep the default options ``("True", "False")``; multiple-choice sets
list their option texts and give the gold option as a letter. Everything downstream works with
``answer_index`` so that binary and multiple-choice items flow through one code path.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TRUE_FALSE: tuple[str, str] = ("True", "False")
TRUE_FALSE_UNKNOWN: tuple[str, str, str] = ("True", "False", "Unknown")

_LABEL_ALIASES = {
    "true": "True",
    "yes": "True",
    "valid": "True",
    "entailment": "True",
    "false": "False",
    "no": "False",
    "invalid": "False",
    "contradiction": "False",
    "unknown": "Unknown",
    "uncertain": "Unknown",
    "neutral": "Unknown",
}


class DataError(ValueError):
    """Bad input data, located by file, line and field so the user can fix it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ""
        if file is not None:
            where = str(file) + (f":{line}" if line is not None else "")
        if field is not None:
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


def normalize_label(
    raw: Any, *, file: str | None = None, line: int | None = None, field: str = "label"
) -> str:
    """Map the spellings public sets use ("yes", "TRUE", "Uncertain", ...) to one vocabulary."""
    if isinstance(raw, bool):
        return "True" if raw else "False"
    text = str(raw).strip()
    canon = _LABEL_ALIASES.get(text.lower())
    if canon is None:
        raise DataError(
            f"unknown label {raw!r}; expected one of True/False/Unknown (or yes/no, uncertain)",
            file=file,
            line=line,
            field=field,
        )
    return canon


@dataclass(frozen=True)
class Item:
    """One reasoning problem.

    ``label`` is "True"/"False"/"Unknown" for statement-verification sets, or the gold option's
    letter ("A", "B", ...) for multiple choice. ``meta`` holds what breakdowns need: ``source``,
    ``split``, ``depth`` (int), ``distractors`` (bool), ``rule``, ``logic``, ``ontology``,
    ``negated`` (bool).
    """

    id: str
    context: str
    statement: str
    label: str
    options: tuple[str, ...] = TRUE_FALSE
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "meta", dict(self.meta))
        self.answer_index  # noqa: B018 - validates label against options at construction

    @property
    def answer_index(self) -> int:
        """Index of the gold option in ``options``."""
        if self.label in self.options:
            return self.options.index(self.label)
        if len(self.label) == 1 and self.label in string.ascii_uppercase:
            idx = string.ascii_uppercase.index(self.label)
            if idx < len(self.options):
                return idx
        raise DataError(
            f"label {self.label!r} names none of the options {list(self.options)}",
            field=f"label (item {self.id})",
        )

    @property
    def is_multiple_choice(self) -> bool:
        return self.options not in (TRUE_FALSE, TRUE_FALSE_UNKNOWN)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "context": self.context,
            "statement": self.statement,
            "label": self.label,
            "options": list(self.options),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Item:
        return cls(
            id=str(d["id"]),
            context=d.get("context", ""),
            statement=d["statement"],
            label=d["label"],
            options=tuple(d.get("options") or TRUE_FALSE),
            meta=d.get("meta") or {},
        )


_SPACE = re.compile(r"\s+")


def _normal_text(text: Any) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", str(text or ""))).strip().casefold()


def content_hash(context: Any, statement: Any, options: Sequence[str] | None = None) -> str:
    """A short hash of what an item asks, whatever its id or the spec it came from.

    Context, statement and option texts are normalised (Unicode NFKC, runs of whitespace as one
    space, case folded; options as a set, so their order does not matter) before hashing, so
    the same problem read from a renamed file, under other ids or with other line breaks hashes
    alike. Evaluation uses it to keep calibration items out whatever their id.
    """
    opts = sorted({_normal_text(o) for o in (options or TRUE_FALSE)})
    blob = json.dumps([_normal_text(context), _normal_text(statement), opts], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_content_hash(record: Mapping[str, Any]) -> str | None:
    """:func:`content_hash` of an item record (items.jsonl, ``Item.to_dict``); None for records
    that do not keep the item's text (run folders made before they did)."""
    if record.get("statement") is None:
        return None
    return content_hash(record.get("context"), record["statement"], record.get("options"))

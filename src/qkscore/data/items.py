"""The one item type every loader, template and scan shares.

A reasoning item is premises (``context``), a candidate conclusion (``statement``) and a gold
``label``. True/False sets keep the default options ``("True", "False")``; multiple-choice sets
list their option texts and give the gold option as a letter. Everything downstream works with
``answer_index`` so that binary and multiple-choice items flow through one code path.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
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

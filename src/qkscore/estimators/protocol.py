"""What a reader is, and the one registry every command reads its readers from.

A *reader* turns the QK-scores of an item, ``[items, layers, heads, options]``, into option
probabilities. Every reader is a :class:`Reader`: sklearn-style settings in ``__init__``,
``fit(scores, labels, *, baseline=None, groups=None)`` returning ``self``, learned state ending
in ``_``, ``predict_proba``, ``decision_function`` (evidence for option 0 on two-option items:
positive when option 0 is predicted), ``predict`` (always :func:`~qkscore.decision.decide` of
``predict_proba``: the one verdict rule), ``deepest_layer_`` (a judge's pass may stop after it),
``label`` (display text for reports) and ``to_dict``/``from_dict`` (a ``kind`` and a
``format_version``). ``needs_baseline`` says whether it reads the model's own answer, which is
passed as ``baseline=`` (log-probabilities of the options, ``[items, options]``).

``@register_reader("name")`` puts a reader class in :data:`READERS` under that name: the
profile's ``reader`` field, ``calibrate(reader=...)``, the CLI's ``--reader`` choices and help,
an evaluation's method keys and loading a saved profile all read this one registry. A reader
defined outside qkscore registers the same way (``qkscore.register_reader``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
from sklearn.base import BaseEstimator

from qkscore.decision import decide

__all__ = [
    "AUTO",
    "BASELINE_KEYS",
    "READERS",
    "Reader",
    "ReaderEntry",
    "SavedFieldError",
    "make_reader",
    "reader_from_dict",
    "reader_names",
    "register_reader",
]

#: The ``reader`` value that picks among every registered reader by cross-validation.
AUTO = "auto"
#: Method keys an evaluation gives its fair baselines; no reader may take one of these names.
BASELINE_KEYS = (
    "model_answer",
    "model_margin",
    "attention",
    "hidden_probe",
    "shallow",
    "majority",
)
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


class SavedFieldError(ValueError):
    """A saved reader's field holds a value no fitted reader has (``field`` names it, relative
    to the reader's dict, so a profile can say where in the file it sits)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}' {problem}")
        self.field = field
        self.problem = problem


_R = TypeVar("_R", bound="Reader")


class Reader(BaseEstimator, ABC):
    """The reader protocol (see the module docstring). Subclass it, implement the abstract
    methods and register the class with :func:`register_reader`."""

    #: The saved dicts' ``kind``; defaults to ``module.ClassName``.
    kind: ClassVar[str] = "qkscore.Reader"
    #: Whether ``fit``, ``predict_proba`` and ``decision_function`` need ``baseline=``.
    needs_baseline: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def build(cls: type[_R], seed: int = 0, metric: str = "auroc", **settings: Any) -> _R:
        """An unfitted reader with a registration's ``settings``: ``random_state=seed`` where
        the class takes one. ``metric`` (how single heads are ranked) is for those that rank."""
        if "random_state" in cls._get_param_names():
            settings.setdefault("random_state", seed)
        return cls(**settings)

    @abstractmethod
    def fit(self, scores: Any, labels: Any, *, baseline: Any = None, groups: Any = None) -> Reader:
        """Learn from calibration items; ``groups`` (one per item) keeps each group in one
        fold of any inner cross-validation."""

    @abstractmethod
    def predict_proba(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """Option probabilities ``[items, options]``."""

    @abstractmethod
    def decision_function(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """Two options: evidence for option 0 ``[items]``, positive exactly when option 0 is
        predicted. More options: a score per option ``[items, options]``."""

    def predict(self, scores: Any, *, baseline: Any = None) -> np.ndarray:
        """The option each item is judged to have: the one verdict rule, ``decide``."""
        return decide(self.predict_proba(scores, baseline=baseline))

    @property
    @abstractmethod
    def deepest_layer_(self) -> int:
        """The deepest layer whose scores the fitted reader reads."""

    def label(self, name: str) -> str:
        """Display text for reports (never parsed back); ``name`` is its registered name."""
        return name

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with ``kind`` and ``format_version``; ``from_dict`` restores it."""

    @classmethod
    @abstractmethod
    def from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Rebuild a fitted reader from ``to_dict`` output, refusing what it cannot trust."""


@dataclass(frozen=True)
class ReaderEntry:
    """One registered name: the class and the settings it is made with."""

    name: str
    cls: type[Reader]
    settings: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""

    def make(self, seed: int = 0, metric: str = "auroc") -> Reader:
        return self.cls.build(seed, metric, **self.settings)


#: Every registered reader by name, in registration order (the built-in readers first, simplest
#: first: ``choose_reader`` breaks ties toward the earlier one).
READERS: dict[str, ReaderEntry] = {}


def register_reader(
    name: str, help: str = "", **settings: Any
) -> Callable[[type[Reader]], type[Reader]]:
    """Class decorator: register a :class:`Reader` under ``name``, made with ``settings``.

    One class may register several names with different settings (``linear``/``linear-l1``);
    a name or a saved ``kind`` already taken by another class is refused.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"reader name {name!r}: lowercase letters, digits, '-' and '_'")
    if name == AUTO or name in BASELINE_KEYS:
        raise ValueError(f"reader name {name!r} is reserved ({AUTO}, {', '.join(BASELINE_KEYS)})")

    def register(cls: type[Reader]) -> type[Reader]:
        if not (isinstance(cls, type) and issubclass(cls, Reader)):
            raise TypeError(f"@register_reader({name!r}) needs a Reader subclass, got {cls!r}")
        taken = READERS.get(name)
        if taken is not None and taken.cls is not cls:
            raise ValueError(f"reader {name!r} is already registered ({taken.cls.__qualname__})")
        for entry in READERS.values():
            if entry.cls.kind == cls.kind and entry.cls is not cls:
                raise ValueError(f"kind {cls.kind!r} is already {entry.cls.__qualname__}'s")
        doc = (cls.__doc__ or "").strip().splitlines()
        READERS[name] = ReaderEntry(name, cls, dict(settings), help or (doc[0] if doc else ""))
        return cls

    return register


def reader_names() -> tuple[str, ...]:
    return tuple(READERS)


def make_reader(name: str, seed: int = 0, metric: str = "auroc") -> Reader:
    """An unfitted reader of a registered name."""
    entry = READERS.get(name)
    if entry is None:
        raise ValueError(f"unknown reader {name!r}; choose from {', '.join(READERS)} or {AUTO}")
    return entry.make(seed, metric)


def reader_from_dict(data: Mapping[str, Any]) -> Reader:
    """Restore any saved reader from its ``to_dict`` output (dispatching on ``kind``)."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    cls = next((e.cls for e in READERS.values() if e.cls.kind == kind), None)
    if cls is None:
        raise ValueError(
            f"unknown reader kind {kind!r} (a reader defined outside qkscore must be "
            "registered before a profile that holds it is loaded)"
        )
    return cls.from_dict(data)

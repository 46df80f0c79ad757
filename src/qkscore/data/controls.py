"""Controls: registered transformations of items that say *what* a reader reads.

A control scan scores the same statements with the context changed: a head that reasons from
the context falls to chance on them, one that reads the statement alone does not. Each control
is one function ``items -> items`` registered here under its name with a one-line description;
``qkscore scan --control NAME``, the run folder (``controls/NAME/``), the evaluation's control
table and the CLI help all read this registry, so adding a control is one function below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qkscore.data.items import Item

__all__ = [
    "Control",
    "control_items",
    "control_names",
    "controls_help",
    "get_control",
    "register_control",
]

ControlFn = Callable[[Sequence[Item]], list[Item]]


@dataclass(frozen=True)
class Control:
    name: str
    fn: ControlFn
    description: str


_CONTROLS: dict[str, Control] = {}


def register_control(name: str, description: str) -> Callable[[ControlFn], ControlFn]:
    """Decorator: make ``fn(items) -> items`` available as control ``name``."""

    def deco(fn: ControlFn) -> ControlFn:
        if name in _CONTROLS:
            raise ValueError(f"control {name!r} is already registered")
        _CONTROLS[name] = Control(name, fn, description)
        return fn

    return deco


def control_names() -> tuple[str, ...]:
    """Every registered control, in registration order (the order scans and tables use)."""
    return tuple(_CONTROLS)


def get_control(name: str) -> Control:
    """The control registered as ``name``; a ValueError naming the known ones otherwise."""
    try:
        return _CONTROLS[name]
    except KeyError:
        raise ValueError(
            f"unknown control {name!r}; choose from {', '.join(control_names())}"
        ) from None


def control_items(items: Sequence[Item], control: str) -> list[Item]:
    """``items`` transformed by the control named ``control``."""
    return get_control(control).fn(items)


def controls_help() -> str:
    """One line for CLI help: each control with what it does."""
    return "; ".join(f"{c.name}: {c.description}" for c in _CONTROLS.values())


@register_control("context-ablated", "the context removed, the statement alone")
def context_ablated(items: Sequence[Item]) -> list[Item]:
    return [dataclasses.replace(it, context="") for it in items]


@register_control("context-swapped", "each statement under another item's context")
def context_swapped(items: Sequence[Item]) -> list[Item]:
    """Rotate contexts by half the set, so no item keeps its own."""
    n = len(items)
    if n < 2:
        raise ValueError("context-swapped needs at least two items")
    shift = max(1, n // 2)
    return [
        dataclasses.replace(it, context=items[(i + shift) % n].context)
        for i, it in enumerate(items)
    ]

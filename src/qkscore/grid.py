"""The settings a sweep crosses: their names, their usual values, the grid spec that names
them (``"chat_template=false,true;num_fewshot=0,3"``) and each cell's folder name.

Kept apart from :mod:`qkscore.sweep` so the CLI can build its help and check a grid with no
heavy import (the sweep itself pulls in the readers and their solvers).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_GRID",
    "GRID_KEYS",
    "TEMPLATE_AXES",
    "grid_help",
    "grid_spec",
    "parse_grid",
    "settings",
]

#: Setting names and the values a sweep tries when the grid names the setting without values.
GRID_KEYS: dict[str, tuple[Any, ...]] = {
    "template": ("answer-statement", "last-option"),
    "rope": (False, True),
    "chat_template": (False, True),
    "num_fewshot": (0, 3),
    "swap_options": (False, True),
    "statement_anchor": ("last", "last_word"),
    "option_style": ("letters", "plain"),
    "baseline_tokens": ("letters", "words"),
}
#: Grid settings that are template fields; a grid that does not name one keeps each template's
#: own value (None), so grids written before they existed sweep what they swept.
TEMPLATE_AXES = ("statement_anchor", "option_style", "baseline_tokens")
_SLUG_NAMES = {
    "statement_anchor": "anchor",
    "option_style": "options",
    "baseline_tokens": "answers",
}
DEFAULT_GRID = "template=answer-statement;rope=false;chat_template=false,true;num_fewshot=0,3"


def _value(key: str, text: str) -> Any:
    text = text.strip()
    if key in ("rope", "chat_template", "swap_options"):
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"grid setting {key}: {text!r} is not true or false")
        return low in ("true", "1", "yes")
    if key == "num_fewshot":
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"grid setting num_fewshot: {text!r} is not a number") from None
        if value < 0:
            raise ValueError("grid setting num_fewshot must be 0 or more")
        return value
    if key in TEMPLATE_AXES and text not in GRID_KEYS[key]:
        raise ValueError(f"grid setting {key}: {text!r} is not one of {', '.join(GRID_KEYS[key])}")
    return text


def _unnamed(key: str) -> Any:
    """The value of a setting the grid does not name: the template's own for template axes."""
    return None if key in TEMPLATE_AXES else GRID_KEYS[key][0]


def parse_grid(spec: str) -> dict[str, list[Any]]:
    """``"template=answer-statement,last-option;rope=false;num_fewshot=0,3"`` as a dict.

    A key given without ``=values`` takes every value of :data:`GRID_KEYS`; keys not named
    keep their default: the first value listed there, or for the template axes
    (:data:`TEMPLATE_AXES`) None, each template's own value (today's prompts).
    """
    grid: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if key not in GRID_KEYS:
            raise ValueError(f"unknown grid setting {key!r}; known: {', '.join(GRID_KEYS)}")
        grid[key] = (
            [_value(key, v) for v in values.split(",") if v.strip()]
            if values
            else list(GRID_KEYS[key])
        )
        if not grid[key]:
            raise ValueError(f"grid setting {key} has no values")
    return {key: grid.get(key, [_unnamed(key)]) for key in GRID_KEYS}


def settings(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def slug(setting: Mapping[str, Any]) -> str:
    """A cell's folder name: :func:`slug_parts` joined by underscores."""
    return "_".join(slug_parts(setting))


def slug_parts(setting: Mapping[str, Any]) -> list[str]:
    """A setting's values as short words (what the leaderboard shows, one word per axis)."""
    parts = [
        str(setting["template"]),
        "rope" if setting["rope"] else "prerope",
        "chat" if setting["chat_template"] else "plain",
        f"{setting['num_fewshot']}shot",
        "swapped" if setting["swap_options"] else "inorder",
    ]
    # template axes appear only when named, so grids without them keep their folder names
    parts += [
        f"{_SLUG_NAMES[key]}-{str(setting[key]).replace('_', '')}"
        for key in TEMPLATE_AXES
        if setting.get(key) is not None
    ]
    return parts


def _text(value: Any) -> str:
    """A setting's value as a grid spec writes it (``true``/``false`` for flags)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def grid_spec(setting: Mapping[str, Any]) -> str:
    """One cell's setting as a one-cell grid spec (``parse_grid`` reads it back to it): how a
    sweep's chosen cell is run again on other data. Settings left to the template are left out."""
    return ";".join(f"{k}={_text(setting[k])}" for k in GRID_KEYS if setting.get(k) is not None)


def grid_help() -> str:
    """The ``--grid`` help: every setting with its usual values, read from :data:`GRID_KEYS`."""
    values = "; ".join(
        f"{key} ({', '.join(_text(v) for v in vals)})" for key, vals in GRID_KEYS.items()
    )
    return (
        f"Settings to try: {values}; as 'key=v1,v2;key2=...'. A key alone tries its usual "
        "values; a template axis not named keeps the template's own. Impossible cells are "
        "skipped; cells with the same prompt tokens share one forward pass."
    )

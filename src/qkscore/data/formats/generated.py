"""The embedded default data, ``generated:depth=3&n=500&distractors=1&seed=0``.

The items come from :mod:`qkscore.data.generator`; this module only registers the format and
checks its parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

from qkscore.data.generator import generate_items
from qkscore.data.items import DataError, Item
from qkscore.data.spec import DataSpec, register_loader

__all__ = ["load_generated"]


@register_loader(
    "generated",
    takes_path=False,
    description=(
        "Prover-checked modus-ponens chains over invented words, labels balanced overall and "
        "within negated/plain statements: generated:depth=3&n=500&distractors=1&seed=0 "
        "(depth may be 1-5 or 1,3,5)"
    ),
)
def load_generated(spec: DataSpec) -> Iterable[Item]:
    """Loader for ``generated:...``."""
    known = {"depth", "n", "distractors", "seed", "limit", "on_error"}
    unknown = sorted(set(spec.params) - known)
    if unknown:
        raise DataError(
            f"unknown parameter(s) {unknown} for generated data; known: {sorted(known)}",
            field=unknown[0],
        )
    return generate_items(
        n=spec.get_int("n", 500),
        depth=spec.get("depth", "3") or "3",
        distractors=spec.get_bool("distractors", True),
        seed=spec.get_int("seed", 0),
    )

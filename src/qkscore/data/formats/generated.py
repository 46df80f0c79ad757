"""The embedded default data, ``generated:depth=3&n=500&distractors=1&seed=0``.

The items come from :mod:`qkscore.data.generator`; this module only registers the format and
checks its parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

from qkscore.data.generator import MAX_ITEMS, generate_items
from qkscore.data.items import DataError, Item
from qkscore.data.spec import DataSpec, register_loader

__all__ = ["load_generated"]


@register_loader(
    "generated",
    takes_path=False,
    description=(
        "Prover-checked modus-ponens chains over invented words, labels balanced overall and "
        "within negated/plain statements: generated:depth=3&n=500&distractors=1&seed=0 "
        f"(depth may be 1-5 or 1,3,5; n at most {MAX_ITEMS})"
    ),
    params=("depth", "n", "distractors"),
)
def load_generated(spec: DataSpec) -> Iterable[Item]:
    """Loader for ``generated:...``; parameters out of range are refused naming the spec
    before anything is generated (``n`` is bounded: every item is held in memory)."""
    n = spec.get_int("n", 500, minimum=0, maximum=MAX_ITEMS)
    distractors = spec.get_bool("distractors", True)
    seed = spec.get_int("seed", 0)
    try:
        return generate_items(
            n=n or 0, depth=spec.get("depth", "3") or "3", distractors=distractors, seed=seed or 0
        )
    except DataError as err:  # the generator's own checks (depth) do not know the spec
        raise spec.error(err.reason, err.field) from None

"""One generated chain as a record: its steps, its final answer and whether that is right.

Both ways into a generation folder (sampling with ``qkscore generate``, or importing chains
made elsewhere) build their records here, so ``qkscore rank`` reads them the same way.
"""

from __future__ import annotations

from typing import Any

from qkscore.generation.label import label_steps
from qkscore.generation.problems import Problem, chain_steps, parse_answer

__all__ = ["chain_record"]


def chain_record(source: Problem, text: str, /, **extra: Any) -> dict[str, Any]:
    """The record of one chain: id, the caller's fields (problem index, sample, batch,
    tokens, finish), text, steps, the prover's label of each step, the problem's hop count,
    answer (None when no answer line), gold and correct (a missing answer is wrong)."""
    answer = parse_answer(text)
    steps = chain_steps(text)
    return {
        "id": source.id,
        **extra,
        "text": text,
        "steps": steps,
        "labels": label_steps(source.context, steps),
        "hops": source.hops,
        "answer": answer,
        "gold": source.gold,
        "correct": answer is not None and answer == source.gold,
    }

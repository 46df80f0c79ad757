"""The one dtype policy of every entry point, and the one spelling of a dtype's name.

Two kinds of work, two defaults:

* a **scan** (``scan``, ``sweep``) reads a data set once in bulk: :data:`SCAN_DTYPE`, ``"auto"``
  (bfloat16; float16 on GPUs without bf16), about 1.9x faster than float32 on the development
  CPU and half the memory on a GPU;
* everything that **gives, serves or reproduces verdicts** (``check``, ``verify-chain``,
  ``serve``, ``Judge``, ``calibrate`` on steps, ``generate``, ``rank``, lm-eval):
  :data:`VERDICT_DTYPE`, ``"float32"``. In bf16 a borderline verdict can depend on what it was
  batched with (5.5% of 200 chain steps flipped), and an audit must reproduce.

``--dtype`` (``dtype=``) overrides either. No torch here: the CLI reads these defaults without
loading it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCAN_DTYPE", "VERDICT_DTYPE", "dtype_name"]

SCAN_DTYPE = "auto"
VERDICT_DTYPE = "float32"


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16 -> "bfloat16"``: the name recorded in run folders, logs and results."""
    return str(dtype).removeprefix("torch.")

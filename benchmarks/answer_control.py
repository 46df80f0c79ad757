"""The answer-line control of `qkscore rank`, recomputed from a ranked folder's ranked.jsonl.

For folders ranked before the control was part of summary.json, or to print it alone:
    python benchmarks/answer_control.py runs/best_of_n/<model>/ranked
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from qkscore.generation.rank import _answer_control_markdown, answer_control, group_by_problem


def main(folder: str) -> None:
    rows = [json.loads(line) for line in (Path(folder) / "ranked.jsonl").open()]
    scores = {k: np.array([r["scores"][k] for r in rows], dtype=float) for k in rows[0]["scores"]}
    by_problem = group_by_problem(rows)
    control = answer_control(scores, rows, by_problem, n_boot=1000)["answer_control"]
    print("\n".join(_answer_control_markdown(control)))


if __name__ == "__main__":
    main(sys.argv[1])

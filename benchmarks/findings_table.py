"""Print the findings table from benchmarks/findings.sh's run folders.

    python benchmarks/findings_table.py [runs/findings]

One row per (model, set): the chosen head and the top-k ensemble against the model's own
answer and the attention-score baseline, with 95% bootstrap intervals, McNemar's p (head vs
model) and the head's accuracy on the context-ablated control.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _acc(method: dict) -> str:
    a = method["accuracy"]
    return f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def rows(root: Path) -> list[str]:
    out = []
    for path in sorted(root.glob("*/*/evaluation.json")):
        r = json.loads(path.read_text())
        methods = r["methods"]
        head = next(k for k in methods if k.startswith("head"))
        ens = next((k for k in methods if k.startswith("ensemble")), None)
        att = next((k for k in methods if k.startswith("attention")), None)
        p = r["mcnemar"].get(f"{head} vs model", {}).get("pvalue")
        ablated = r["controls"].get("context-ablated", {})
        out.append(
            " | ".join(
                [
                    "",
                    path.parent.parent.name,
                    path.parent.name,
                    str(r["n_eval"]),
                    f"{r['head']} ({r['sign']:+d})",
                    _acc(methods[head]),
                    f"{_acc(methods[ens])} {ens.split()[1][1:-1]}" if ens else "n/a",
                    _acc(methods["model (own answer)"]),
                    _acc(methods[att]) if att else "n/a",
                    f"{p:.2f}" if p is not None else "n/a",
                    f"{ablated['ablated']:.3f}{' FLAG' if ablated.get('flagged') else ''}"
                    if ablated
                    else "n/a",
                    "",
                ]
            ).strip()
        )
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/findings")
    print(
        "| model | set | eval n | head (sign) | head acc. [95% CI] | ensemble | model's answer "
        "| attention baseline | McNemar p | head, context-ablated |"
    )
    print("|" + "---|" * 10)
    for row in rows(root):
        print(row)


if __name__ == "__main__":
    main()

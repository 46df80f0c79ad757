"""Print the readers findings tables from benchmarks/findings.sh's run folders.

    python benchmarks/findings_table.py [runs/findings]

Table 1, accuracy (AUROC) on the evaluation split with 95% bootstrap intervals: every reader
beside the fair baselines (the model's margin with a threshold fitted on the same calibration
items, the hidden-state probe, shallow matching with no model) and the model's raw answer.
Table 2, the same readers under the context-ablated control, the cross-validated AUROC each
reader had on the calibration split (the figure the choice was made on), and the hybrid's CV
AUROC minus the better of its parts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    ("model_answer", "model's answer"),
    ("model_margin", "model margin, calibrated"),
    ("shallow", "shallow matching"),
    ("hidden_probe", "hidden-state probe"),
    ("head", "single head"),
    ("ensemble", "top-k ensemble"),
    ("linear", "linear QK reader"),
    ("linear-l1", "linear L1"),
    ("hybrid", "hybrid"),
)


def _cell(method: dict | None, key: str = "accuracy") -> str:
    if not method or not method.get(key):
        return "n/a"
    a = method[key]
    return f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def _both(method: dict | None) -> str:
    if not method:
        return "n/a"
    auc = method.get("auroc")
    return _cell(method) + (f" ({auc['value']:.3f})" if auc else "")


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def evaluations(root: Path) -> list[tuple[str, str, dict]]:
    return [
        (p.parent.parent.name, p.parent.name, json.loads(p.read_text()))
        for p in sorted(root.glob("*/*/evaluation.json"))
    ]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/findings")
    found = evaluations(root)
    print("Accuracy [95% CI] (AUROC) on the evaluation split; chosen reader in bold\n")
    print("| model | set | n | chosen | " + " | ".join(t for _, t in COLUMNS) + " |")
    print("|" + "---|" * (4 + len(COLUMNS)))
    for model, name, r in found:
        chosen = r.get("reader", "head")
        cells = []
        for key, _ in COLUMNS:
            text = _both(r["methods"].get(key))
            cells.append(f"**{text}**" if key == chosen else text)
        print(f"| {model} | {name} | {r['n_eval']} | {chosen} | " + " | ".join(cells) + " |")
    print("\nContext-ablated control (accuracy) and calibration CV AUROC per reader\n")
    readers = ("head", "ensemble", "linear", "linear-l1", "hybrid")
    print(
        "| model | set | "
        + " | ".join(f"{k} ablated" for k in (*readers, "model_answer", "hidden_probe"))
        + " | "
        + " | ".join(f"{k} CV" for k in readers)
        + " | margin AUROC | hybrid - better part |"
    )
    print("|" + "---|" * (2 + len(readers) * 2 + 4))
    for model, name, r in found:
        ablated = (r.get("controls") or {}).get("context-ablated", {}).get("accuracy", {})
        choice = r.get("reader_choice") or {}
        cv = choice.get("cv") or {}
        print(
            f"| {model} | {name} | "
            + " | ".join(_num(ablated.get(k)) for k in (*readers, "model_answer", "hidden_probe"))
            + " | "
            + " | ".join(_num(cv.get(k, {}).get("auroc")) for k in readers)
            + f" | {_num(choice.get('model_margin_auroc'))} | {_hybrid_gap(choice)} |"
        )


def _hybrid_gap(choice: dict) -> str:
    """The issue's rule: the hybrid's CV AUROC minus the better of its two parts (the linear
    reader's CV AUROC and the model margin's AUROC on the same calibration items)."""
    cv = choice.get("cv") or {}
    parts = [cv.get("linear", {}).get("auroc"), choice.get("model_margin_auroc")]
    hybrid = cv.get("hybrid", {}).get("auroc")
    if hybrid is None or None in parts:
        return "n/a"
    return f"{hybrid - max(parts):+.3f}"


if __name__ == "__main__":
    main()

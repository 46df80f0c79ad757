"""Print issue 20's protocol-grid tables from benchmarks/protocol_grid.sh's sweep folders.

    python benchmarks/protocol_table.py runs/protocol/qwen2.5-coder-1.5b [more folders]

Per cell (settings as ``chat / shots / key anchor / option style / answer tokens``), on the
evaluation split with 95% bootstrap intervals: the calibrated model margin (over the cell's
answer tokens: letters or words), the hidden-state probe, shallow matching, the single head
chosen by AUROC and the paper's way, the linear QK reader and the reader chosen by
calibration CV. Then the scan cost (seconds per pass, which cells shared one) and the
question the grid asks: does any cell lift the probe or a reader above chance (the interval
excludes 0.5) and above the calibrated margin? With ~24 cells x 5 readers, a few intervals
excluding 0.5 are expected by chance alone (about 1 in 40 per one-sided test), so the count
is printed beside the number of tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from findings_table import _cell

#: Columns: (evaluation method key, or a figure name in the leaderboard, short title).
COLUMNS = (
    ("model_margin", "margin"),
    ("hidden_probe", "probe"),
    ("shallow", "shallow"),
    ("head", "head (AUROC)"),
    ("paper head", "head (paper)"),
    ("linear", "linear"),
)
#: The methods that count as "a reader or the probe" for the grid's question.
READERS = ("hidden_probe", "head", "paper head", "linear", "chosen")


def _short(cell: dict) -> str:
    return " / ".join(
        [
            "chat" if cell["chat_template"] else "plain",
            f"{cell['num_fewshot']}-shot",
            "word" if cell["statement_anchor"] == "last_word" else "period",
            cell["option_style"],
            cell["baseline_tokens"],
        ]
    )


def _methods(folder: Path, cell: dict) -> dict[str, dict]:
    """A cell's evaluation methods, plus its paper head and chosen reader from the leaderboard."""
    report = json.loads((folder / cell["setting"] / "evaluation.json").read_text())
    methods = dict(report["methods"])
    for name, figure in cell["figures"].items():
        if name.startswith("paper head"):
            methods["paper head"] = figure
        elif name.startswith("reader "):
            methods["chosen"] = figure
    return methods


def _above(method: dict | None, margin: dict | None, key: str) -> bool:
    """The interval excludes 0.5 from above and the point beats the calibrated margin's."""
    if not method or not method.get(key):
        return False
    figure, base = method[key], (margin or {}).get(key) or {}
    return figure["low"] > 0.5 and figure["value"] > base.get("value", 0.5)


def report(folder: Path) -> None:
    board = json.loads((folder / "leaderboard.json").read_text())
    cells = sorted(board["cells"], key=lambda c: int(c["cell"][1:]))
    print(f"## {board['model']}: {board['data']}\n")
    print(
        f"{board['n_cells']} cells in {board['n_passes']} forward passes; "
        f"{len(board['skipped'])} impossible settings skipped.\n"
    )
    lifted: list[str] = []
    tests = 0
    for key, title in (("accuracy", "Accuracy"), ("auroc", "AUROC")):
        print(f"{title} [95% CI] on the evaluation split\n")
        head = " | ".join(t for _, t in COLUMNS)
        print(f"| cell | chat / shots / anchor / options / answers | {head} | chosen (CV AUROC) |")
        print("|---" * (len(COLUMNS) + 3) + "|")
        for cell in cells:
            methods = _methods(folder, cell)
            values = " | ".join(_cell(methods.get(k), key) for k, _ in COLUMNS)
            cv = "n/a" if cell["cv_auroc"] is None else f"{cell['cv_auroc']:.3f}"
            chosen = f"{cell['reader']} {_cell(methods.get('chosen'), key)} ({cv})"
            print(f"| {cell['cell']} | {_short(cell)} | {values} | {chosen} |")
            for name in READERS:
                tests += 1
                if _above(methods.get(name), methods.get("model_margin"), key):
                    lifted.append(f"{cell['cell']} {name} {key}")
        print()
    print("Scan cost (one forward pass may serve several cells)\n")
    print("| cell | seconds | pass shared with |")
    print("|---|---|---|")
    for cell in cells:
        seconds = cell["pass_seconds"] or cell["scan_seconds"]
        seconds = "n/a" if seconds is None else f"{seconds:.0f}"
        print(f"| {cell['cell']} | {seconds} | {', '.join(cell['shared_with']) or '-'} |")
    print()
    print(
        f"Above chance (interval excludes 0.5) and above the calibrated margin: "
        f"{len(lifted)} of {tests} tests"
        + (": " + ", ".join(lifted) if lifted else "")
        + f" (about {tests / 40:.1f} expected by chance).\n"
    )


def main() -> None:
    folders = [Path(a) for a in sys.argv[1:]] or sorted(Path("runs/protocol").glob("*"))
    for folder in folders:
        report(folder)


if __name__ == "__main__":
    main()

"""The shortcut audit of Multi-LogiEval: raw, label-balanced and debiased (`debias=1`), and the
statement-only classifier's out-of-fold accuracy per depth, logic family and rule.

No model. Each item's statement-only verdict comes from a classifier fitted without it (5-fold,
as `qkscore data shortcuts` does it), so the per-group figures say where the wording alone
gives the label.

    python benchmarks/ml_audit.py [--shared ../shared/data] [--rules]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from _audit import HEADER, audit_row

from qkscore.data.items import Item
from qkscore.data.shortcuts import statement_out_of_fold
from qkscore.data.spec import load_items
from qkscore.stats import accuracy_by_group

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (("raw", ""), ("balance=1", "?balance=1&seed=0"), ("debias=1", "?debias=1"))


def _cell(group: dict) -> str:
    return f"{group['value']:.3f} [{group['low']:.3f}, {group['high']:.3f}]"


def group_table(sets: dict[str, list[Item]], field: str) -> list[str]:
    """Statement-only out-of-fold accuracy [95% CI] per value of ``field``, one column a set."""
    columns = {}
    for name, items in sets.items():
        pred = statement_out_of_fold(items)
        if pred is None:
            continue
        groups = accuracy_by_group(pred, [it.label for it in items], items, field, n_boot=1000)
        labels = {
            value: Counter(it.label for it in items if str(it.meta.get(field)) == value)
            for value in groups
        }
        columns[name] = (groups, labels)
    values = list(dict.fromkeys(v for groups, _ in columns.values() for v in groups))
    head = " | ".join(f"{name}: n (True/False) | {name}: statement-only acc" for name in columns)
    lines = [f"| {field} | {head} |", "|---|" + "---:|---:|" * len(columns)]
    for value in values:
        cells = []
        for groups, labels in columns.values():
            g = groups.get(value)
            c = labels.get(value, Counter())
            cells += ["-", "-"] if g is None else [
                f"{g['n']} ({c['True']}/{c['False']})", _cell(g)
            ]  # fmt: skip
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return lines


def rule_table(items: Sequence[Item]) -> list[str]:
    """Per rule file: items, labels and statement-only out-of-fold accuracy (raw set)."""
    pred = statement_out_of_fold(items) or []
    rows: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        rows.setdefault((it.meta["logic"], it.meta["depth"], it.meta["rule"]), []).append(i)
    lines = [
        "| logic | depth | rule | n | True/False | statement-only acc |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for (logic, depth, rule), idx in sorted(rows.items()):
        c = Counter(items[i].label for i in idx)
        acc = sum(pred[i] == items[i].label for i in idx) / len(idx)
        lines.append(
            f"| {logic} | {depth} | {rule} | {len(idx)} | {c['True']}/{c['False']} | {acc:.2f} |"
        )
    single = sum(1 for idx in rows.values() if len({items[i].label for i in idx}) == 1)
    lines.append(f"\n{single} of {len(rows)} rule files hold one label only.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="data folder")
    ap.add_argument("--rules", action="store_true", help="also the table per rule file")
    args = ap.parse_args()
    print("$ " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]))
    folder = Path(args.shared) / "multi_logieval" / "data"
    sets = {name: load_items(f"multi-logieval:{folder}{query}") for name, query in VARIANTS}
    print("\n#### Multi-LogiEval: the shortcut audit\n")
    print(HEADER)
    for name, items in sets.items():
        print(audit_row(name, items)["row"], flush=True)
    for field in ("depth", "logic"):
        print(f"\n#### Statement-only accuracy by {field} (out of fold, 95% CI)\n")
        print("\n".join(group_table(sets, field)), flush=True)
    if args.rules:
        print("\n#### Statement-only accuracy by rule file (raw)\n")
        print("\n".join(rule_table(sets["raw"])))


if __name__ == "__main__":
    main()

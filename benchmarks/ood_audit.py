"""The shortcut audit of every PrOntoQA-OOD file, raw and shape-matched (`debias=1`).

No model: the statement-only classifier and shallow matching of `qkscore data shortcuts`, with
the intervals of benchmarks/_audit.py. A set is FLAGGED when either scores >= 0.65 (5-fold,
folds grouped by context); only PASS sets say anything about reasoning when a reader scores
well on them.

    python benchmarks/ood_audit.py [--shared ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from _audit import HEADER, audit_row

from qkscore.data.spec import load_items

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path("prontoqa") / "ood_proofs_only_8shot"
POOLED = (("Composed 2-4 hops", "*Composed*.json"), ("ProofsOnly 1-5 hops", "*ProofsOnly*.json"),
          ("all files", "*.json"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="data folder")
    ap.add_argument("--json", help="also write the verdicts as JSON here")
    args = ap.parse_args()
    print("$ " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]))
    folder = Path(args.shared) / FOLDER
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"no PrOntoQA-OOD files under {folder}")
    sets = [(path.stem, str(path)) for path in files] + [
        (f"pooled: {kind}", str(folder / glob)) for kind, glob in POOLED
    ]
    verdicts = {}
    for variant, query in (("raw", ""), ("debias=1", "?debias=1")):
        print(f"\n#### PrOntoQA-OOD, {variant}\n")
        print(HEADER)
        for name, path in sets:
            row = audit_row(name, load_items(f"prontoqa-ood:{path}{query}"))
            print(row["row"], flush=True)
            verdicts[f"{name}{query}"] = row["verdict"]
    print(
        "\nFLAGGED: the statement alone, or word overlap and polarity between context and "
        "statement (shallow matching, no model), gives the label with >= 0.65 accuracy. "
        "debias=1 keeps shape-matched goal/negation pairs (qkscore.data.matched); files whose "
        "goals have one polarity keep none. Below-chance figures on small exactly balanced sets "
        "come from cross-validation itself (a held-out fold's labels mirror the training folds')."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(verdicts, indent=2) + "\n")


if __name__ == "__main__":
    main()

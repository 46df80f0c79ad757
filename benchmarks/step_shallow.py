"""Shallow matching on chain steps: the anchor a step reader must clear.

A depth-4 tree over the word-overlap features of (context + earlier steps, step)
(`qkscore.data.shallow`), fitted on the step profile's calibration problems and scored on the
problems `rank` judged: AUROC (valid = positive) on all steps and on derived steps (restated
premises left out), the same steps as rank's step table.

    python benchmarks/step_shallow.py runs/step_verifier/MODEL   # gen/ and step.json inside
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from qkscore.data.shallow import shallow_features
from qkscore.generation.steps import steps_from_generations
from qkscore.stats import auroc


def main(base: Path) -> None:
    steps = steps_from_generations(base / "gen")
    profile = json.loads((base / "step.json").read_text())
    calib = steps.subset(profile["calibration"]["item_ids"])
    rest = steps.subset(profile["evaluation_ids"])

    def features(subset):
        return np.stack([shallow_features(*pair) for pair in subset.pairs()])

    tree = DecisionTreeClassifier(max_depth=4, min_samples_leaf=5, random_state=0)
    tree.fit(features(calib), calib.labels())
    p_valid = tree.predict_proba(features(rest))[:, list(tree.classes_).index(0)]
    valid, derived = rest.labels() == 0, rest.derived()
    print("| steps | n | shallow matching AUROC |")
    print("|---|---:|---:|")
    print(f"| all | {len(valid)} | {auroc(p_valid, valid):.3f} |")
    print(f"| derived | {int(derived.sum())} | {auroc(p_valid[derived], valid[derived]):.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

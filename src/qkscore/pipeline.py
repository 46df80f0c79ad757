"""The paper's protocol over run folders: calibrate on a balanced split, evaluate on the rest.

Evaluation never touches calibration items, compares the chosen head with the model's own
answer, the attention-score baseline of the same head and the majority class, and reports the
shortcut controls, so a head that reads the statement alone cannot pass for one that reasons.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore import evaluate as ev
from qkscore._version import __version__
from qkscore.heads import HeadSelector, TopKEnsemble, head_name
from qkscore.profile import Profile
from qkscore.run import CONTROLS, MAIN, RunFolder

MIN_CALIBRATION = 400


def balanced_split(labels: np.ndarray, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a label-balanced calibration split of ``size`` items and of the rest.

    When a class has too few items the split takes all of them and says so; the evaluation
    split is everything not chosen, in item order.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = size // len(classes)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        take = min(per_class, len(members))
        if take < per_class:
            warnings.warn(
                f"class {c} has only {len(members)} items; calibration takes all of them",
                stacklevel=2,
            )
        chosen.append(rng.choice(members, size=take, replace=False))
    calib = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.arange(len(labels)), calib)
    if len(rest) == 0:
        raise ValueError(
            f"calibration size {size} leaves no items to evaluate ({len(labels)} items in all)"
        )
    return calib, rest


def calibrate(
    run_path: str | Path,
    calib_size: int = MIN_CALIBRATION,
    seed: int = 0,
    out: str | Path | None = None,
    metric: str = "accuracy",
    ensemble: bool = True,
) -> Profile:
    """Rank every head on a balanced calibration split and store the choice as a profile."""
    run = RunFolder(run_path)
    meta = run.meta()
    if not meta.get("scans", {}).get(MAIN, {}).get("complete"):
        raise RuntimeError(f"{run.path}: the main scan is not complete; run `qkscore scan` again")
    records = run.items()
    labels = run.labels(records)
    calib, rest = balanced_split(labels, calib_size, seed)
    scores = np.asarray(run.load(MAIN))[calib]
    y = labels[calib]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selector = HeadSelector(metric=metric).fit(scores, y)
        ens = TopKEnsemble(random_state=seed).fit(scores, y) if ensemble else None
    notes = sorted({str(w.message) for w in caught})
    for w in caught:  # recorded in the profile, and still shown to the caller
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    layer, head = selector.head_
    best = selector.ranking_[0]
    data: dict[str, Any] = {
        "qkscore_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": meta["model"],
        "template": meta["template"],
        "rope": meta["rope"],
        "data": meta["data"],
        "run": str(run.path),
        "head": head_name(layer, head),
        "layer": int(layer),
        "head_index": int(head),
        "sign": int(best["sign"]),
        "threshold": best.get("threshold"),
        "calibration": {
            "size": int(len(calib)),
            "seed": seed,
            "metric": metric,
            "label_counts": {str(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))},
            "accuracy": best["accuracy"],
            "balanced_accuracy": best["balanced_accuracy"],
            "auroc": best["auroc"],
            "warnings": notes,
            "item_ids": [records[i]["id"] for i in calib],
        },
        "evaluation_ids": [records[i]["id"] for i in rest],
        "selector": selector.to_dict(),
        "ensemble": ens.to_dict() if ens is not None else None,
        "ranking": selector.ranking_,
    }
    profile = Profile(data)
    if out is not None:
        profile.save(out)
    return profile


def evaluation_indices(
    run: RunFolder, profile: Profile, records: Sequence[dict[str, Any]] | None = None
) -> tuple[np.ndarray, str]:
    """Evaluation items of this run: outside the calibration split when the run holds the
    profile's calibration data, else every item (transfer to another set)."""
    records = run.items() if records is None else records
    if profile.data.get("data") == run.meta()["data"]:
        calib_ids = set(profile.data["calibration"]["item_ids"])
        idx = np.array([i for i, r in enumerate(records) if r["id"] not in calib_ids], dtype=int)
        return idx, "evaluation split (calibration items excluded)"
    return np.arange(len(records)), "all items (transfer from another set)"


def evaluate(
    run_path: str | Path,
    profile: Profile | str | Path,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score the profile's head, its ensemble and the baselines on the evaluation items."""
    run = RunFolder(run_path)
    prof = profile if isinstance(profile, Profile) else Profile.load(profile)
    meta = run.meta()
    prof.check_run(meta, str(run.path))
    all_records = run.items()
    all_labels = run.labels(all_records)
    idx, split = evaluation_indices(run, prof, all_records)
    if len(idx) == 0:
        raise ValueError(f"{run.path}: no evaluation items left outside the calibration split")
    labels = all_labels[idx]
    records = [all_records[i] for i in idx]
    scores = np.asarray(run.load(MAIN))[idx]
    selector = prof.selector()
    layer, head = prof.head
    name = prof.data["head"]
    preds: dict[str, np.ndarray] = {}
    margins: dict[str, np.ndarray | None] = {}
    preds[f"head {name}"] = selector.predict(scores)
    margins[f"head {name}"] = _positive_score(selector.predict_proba(scores))
    ens = prof.ensemble()
    if ens is not None:
        preds[f"ensemble (k={ens.k_})"] = ens.predict(scores)
        margins[f"ensemble (k={ens.k_})"] = _positive_score(ens.predict_proba(scores))
    baseline = np.asarray(run.load(MAIN, "baseline"))[idx]
    if np.isfinite(baseline).all():
        preds["model (own answer)"] = baseline.argmax(-1)
        margins["model (own answer)"] = _positive_score(_softmax(baseline))
    if run.has(MAIN, "attention"):
        preds[f"attention {name}"], margins[f"attention {name}"] = _attention_baseline(
            run, prof, idx, layer, head, all_records, all_labels
        )
    calib_labels = _calibration_labels(prof)
    preds["majority class"] = np.full_like(labels, np.bincount(calib_labels).argmax())
    margins["majority class"] = None
    methods = {
        m: ev.metric_report(p, labels, score=margins[m], n_boot=n_boot, seed=seed)
        for m, p in preds.items()
    }
    tests = {}
    if "model (own answer)" in preds:
        model_ok = preds["model (own answer)"] == labels
        for m in preds:
            if m.startswith(("head", "ensemble")):
                tests[f"{m} vs model"] = ev.mcnemar(preds[m] == labels, model_ok)._asdict()
    meta_list = [r.get("meta", {}) for r in records]
    breakdowns = {
        m: ev.breakdown(preds[m], labels, meta_list)
        for m in preds
        if m.startswith(("head", "model", "ensemble"))
    }
    controls = {}
    for control in CONTROLS:
        if run.has(control):
            c_scores = np.asarray(run.load(control))[idx]
            acc_full = float((preds[f"head {name}"] == labels).mean())
            acc_ctrl = float((selector.predict(c_scores) == labels).mean())
            controls[control] = ev.shortcut_gap(acc_full, acc_ctrl)
            if ens is not None:  # an ensemble can lean on the statement where its head does not
                ens_ctrl = ens.predict(c_scores) == labels
                controls[control]["ensemble_accuracy"] = float(ens_ctrl.mean())
            c_base = np.asarray(run.load(control, "baseline"))[idx]
            if np.isfinite(c_base).all():
                controls[control]["model_accuracy"] = float((c_base.argmax(-1) == labels).mean())
    return {
        "qkscore_version": __version__,
        "run": str(run.path),
        "profile": str(prof.path) if prof.path else None,
        "model": meta["model"].get("name"),
        "fingerprint": meta["model"].get("fingerprint"),
        "template": meta["template"].get("name"),
        "data": meta["data"],
        "calibration_data": prof.data.get("data"),
        "head": name,
        "sign": prof.data.get("sign"),
        "split": split,
        "n_eval": int(len(idx)),
        "label_counts": {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))},
        "methods": methods,
        "mcnemar": tests,
        "breakdowns": breakdowns,
        "controls": controls,
        "calibration": {k: v for k, v in prof.data["calibration"].items() if k != "item_ids"},
    }


def _calibration_labels(prof: Profile) -> np.ndarray:
    counts = prof.data["calibration"]["label_counts"]
    return np.repeat([int(k) for k in counts], [int(v) for v in counts.values()])


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _positive_score(proba: np.ndarray) -> np.ndarray | None:
    """Score for option 0 (the AUROC's positive class) on binary items; None otherwise."""
    return proba[:, 0] if proba.ndim == 2 and proba.shape[1] == 2 else None


def _attention_baseline(run, prof, idx, layer, head, records, labels):
    """The MCQA paper's attention-score baseline at the same head, its direction fit on the
    calibration items so it gets the same chance as the QK-score."""
    calib_ids = set(prof.data["calibration"]["item_ids"])
    calib_idx = np.array([i for i, r in enumerate(records) if r["id"] in calib_ids])
    attention = np.asarray(run.load(MAIN, "attention"))
    one = slice(layer, layer + 1), slice(head, head + 1)
    if len(calib_idx) == 0:  # transfer: no calibration items here, keep the QK head's sign
        calib_idx = idx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = HeadSelector().fit(attention[calib_idx][:, one[0], one[1]], labels[calib_idx])
    test = attention[idx][:, one[0], one[1]]
    return sel.predict(test), _positive_score(sel.predict_proba(test))


def transfer(
    runs: Sequence[str | Path], calib_size: int = MIN_CALIBRATION, seed: int = 0
) -> dict[str, Any]:
    """Calibrate on each run (row) and test its head on every run (column).

    On the diagonal the test items are that run's evaluation split; off the diagonal all items.
    """
    names = [str(r) for r in runs]
    profiles = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in runs:
            profiles[str(r)] = calibrate(r, calib_size=calib_size, seed=seed, ensemble=False)
    matrix = []
    for row in names:
        cells = []
        for col in names:
            report = evaluate(col, profiles[row], n_boot=200, seed=seed)
            head = next(v for k, v in report["methods"].items() if k.startswith("head"))
            cells.append(head["accuracy"]["value"])
        matrix.append(cells)
    return {"runs": names, "heads": [profiles[n].data["head"] for n in names], "accuracy": matrix}

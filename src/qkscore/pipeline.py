"""The paper's protocol over run folders: calibrate on a balanced split, evaluate on the rest.

Evaluation never touches calibration items, compares the chosen head with the model's own
answer, the attention-score baseline of the same head and the majority class, and reports the
shortcut controls, so a head that reads the statement alone cannot pass for one that reasons.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore import stats
from qkscore.data.controls import control_names
from qkscore.data.items import record_content_hash
from qkscore.data.shallow import ShallowMatcher, supports_shallow
from qkscore.estimators.base import DECISION_RULE, decide
from qkscore.estimators.ensemble import TopKEnsemble
from qkscore.estimators.heads import HeadSelector, head_name
from qkscore.estimators.probe import HiddenStateProbe
from qkscore.estimators.protocol import AUTO, Reader, make_reader, reader_names
from qkscore.estimators.readers import (
    as_margin_scores,
    choose_reader,
    model_margin_selector,
    reader_fit,
)
from qkscore.outputs import prediction_rows, write_evaluation
from qkscore.profile import Profile
from qkscore.run import MAIN, RunFolder
from qkscore.schemas import stamp

MIN_CALIBRATION = 400
#: The profile's per-item lists of the calibration split, left out of reports.
ITEM_LISTS = ("item_ids", "item_hashes")


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


#: Fewest items of each option a calibration split may hold: the readers choose their settings by
#: 5-fold cross-validation, which needs every option in every fold.
MIN_PER_CLASS = 5
#: Below this many evaluation items the summary warns that its intervals are wide.
MIN_EVALUATION = 50


def check_calibration_labels(labels: np.ndarray, calib_size: int, where: str = "") -> None:
    """Refuse a calibration split that cannot fit a reader, before anything is written.

    A split with one option only would "select" a head that predicts that option for every
    item (accuracy 1.0 on calibration, meaningless afterwards).
    """
    values, counts = np.unique(labels, return_counts=True)
    found = ", ".join(f"{int(c)} of option {int(v)}" for v, c in zip(values, counts)) or "none"
    per_class = calib_size // max(len(values), 2)
    if len(values) < 2:
        raise ValueError(
            f"{where}cannot calibrate: the items hold one option only ({found}); calibration "
            "needs items of at least two options"
        )
    if min(counts.min(), per_class) < MIN_PER_CLASS:
        raise ValueError(
            f"{where}cannot calibrate on {min(calib_size, len(labels))} items ({found}): "
            f"calibration needs at least {MIN_PER_CLASS} items of each option in the split "
            f"(--calib-size {calib_size} takes up to {per_class} per option)"
        )


def calibrate(
    run_path: str | Path,
    calib_size: int = MIN_CALIBRATION,
    seed: int = 0,
    out: str | Path | None = None,
    metric: str = "auroc",
    ensemble: bool = True,
    reader: str = "auto",
    cv: int = 5,
    calibration_ids: Sequence[str] | None = None,
) -> Profile:
    """Fit every reader and the fair baselines on a balanced calibration split; keep them all
    in a profile, with the reader chosen by cross-validated AUROC on that split alone.

    ``reader="auto"`` picks among every registered reader
    (:data:`qkscore.estimators.protocol.READERS`, your own included); a name
    fits that one as the profile's reader (the others are still fitted for the evaluation
    table). The evaluation items are never read here: their labels cannot change what is written.
    ``calibration_ids`` reuses a split (e.g. another profile's ``calibration.item_ids``)
    instead of drawing a balanced one.
    """
    run = RunFolder(run_path)
    meta = run.meta()
    if not meta.get("scans", {}).get(MAIN, {}).get("complete"):
        raise ValueError(f"{run.path}: the main scan is not complete; run `qkscore scan` again")
    _check_reader_name(reader)
    records = run.items()
    labels = run.labels(records)
    check_calibration_labels(labels, calib_size, f"{run.path}: ")
    if calibration_ids is None:
        calib, rest = balanced_split(labels, calib_size, seed)
    else:
        calib, rest = _split_by_ids(records, calibration_ids, run.path)
    scores = np.asarray(run.load(MAIN))[calib]
    y = labels[calib]
    check_calibration_labels(y, calib_size, f"{run.path}: ")
    baseline = np.asarray(run.load(MAIN, "baseline"))[calib]
    fitted = fit_readers(
        scores, y, baseline, reader=reader, ensemble=ensemble, cv=cv, seed=seed, metric=metric
    )
    selector, ens, choice = fitted["selector"], fitted["ensemble"], fitted["choice"]
    best = selector.ranking_[0]
    data: dict[str, Any] = stamp(
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "unit": "answer",
            "model": meta["model"],
            "template": meta["template"],
            "rope": meta["rope"],
            "data": meta["data"],
            "run": str(run.path),
            "reader": choice["chosen"],
            "decision_rule": DECISION_RULE,
            "reader_choice": choice,
            "readers": fitted["readers"],
            "baselines": _fit_baselines(run, meta, calib, y, baseline),
            **head_fields(selector),
            "calibration": {
                "size": int(len(calib)),
                "seed": seed,
                "metric": metric,
                "cv_folds": cv,
                "label_counts": {str(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))},
                "accuracy": best["accuracy"],
                "balanced_accuracy": best["balanced_accuracy"],
                "auroc": best["auroc"],
                "warnings": fitted["notes"],
                "item_ids": [records[i]["id"] for i in calib],
                "item_hashes": _content_hashes(records[i] for i in calib),
            },
            "evaluation_ids": [records[i]["id"] for i in rest],
            **estimator_fields(selector, ens),
        }
    )
    profile = Profile(data)
    if out is not None:
        profile.save(out)
    return profile


def fit_readers(
    scores: np.ndarray,
    y: np.ndarray,
    baseline: np.ndarray,
    *,
    reader: str = "auto",
    ensemble: bool = True,
    cv: int = 5,
    seed: int = 0,
    metric: str = "auroc",
    groups: Sequence[Any] | None = None,
    subsets: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit the single head, the ensemble and every reader on calibration items and choose the
    profile's reader by cross-validated AUROC (``reader="auto"``) or as asked.

    ``groups`` (one per item: the problem a chain step comes from) keeps each group whole in
    every fold, inner ones included; ``subsets`` also reports each reader's CV AUROC on those
    items only. Returns ``selector``, ``ensemble`` (None when off), ``readers`` (name -> saved
    dict), ``choice`` (the CV table and the rule) and ``notes`` (calibration warnings).
    """
    _check_reader_name(reader)
    ens, ens_error = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selector = HeadSelector(metric=metric).fit(scores, y)
        if ensemble:
            try:
                ens = TopKEnsemble(random_state=seed).fit(scores, y, groups=groups)
            except ValueError as err:  # too few items (or problems) to choose k by CV
                ens_error = str(err)
    notes = sorted({str(w.message) for w in caught})
    for w in caught:  # recorded in the profile, and still shown to the caller
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    candidates = [r for r in reader_names() if (ensemble and ens_error is None) or r != "ensemble"]
    if reader != "auto" and reader not in candidates:
        why = ens_error or "the ensemble is switched off"
        raise ValueError(f"reader {reader!r} was asked for but {why}")
    asked = candidates if reader == "auto" else [reader]
    choice = choose_reader(
        scores, y, baseline, asked, cv=cv, seed=seed, metric=metric, groups=groups, subsets=subsets
    )
    if reader != "auto":
        if "skipped" in choice["cv"][reader]:
            raise ValueError(f"reader {reader!r} cannot be used here: {choice['cv'][reader]}")
        choice["rule"] = "asked for (--reader); the others fitted but not cross-validated"
    choice["requested"] = reader
    if ens_error is not None:
        choice["cv"]["ensemble"] = {"skipped": ens_error}
    prefitted: dict[str, Reader | None] = {"head": selector, "ensemble": ens}
    readers: dict[str, Any] = {}
    for name in candidates:
        if "skipped" in choice["cv"].get(name, {}):
            continue
        fitted = prefitted.get(name)
        if fitted is None:
            try:
                made = make_reader(name, seed, metric)
                fitted = reader_fit(made, scores, y, baseline, groups=groups)
            except ValueError as err:  # e.g. the hybrid without the model's answer
                choice["cv"].setdefault(name, {"skipped": str(err)})
                continue
        readers[name] = fitted.to_dict()
    return {
        "selector": selector,
        "ensemble": ens,
        "readers": readers,
        "choice": choice,
        "notes": notes,
    }


def _check_reader_name(reader: str) -> None:
    if reader != AUTO and reader not in reader_names():
        names = ", ".join(reader_names())
        raise ValueError(f"unknown reader {reader!r}; choose from {AUTO}, {names}")


def head_fields(selector: HeadSelector) -> dict[str, Any]:
    """The profile's single-head fields: the best head, its layer, sign and threshold."""
    layer, head = selector.head_
    best = selector.ranking_[0]
    return {
        "head": head_name(layer, head),
        "layer": int(layer),
        "head_index": int(head),
        "sign": int(best["sign"]),
        "threshold": best.get("threshold"),
    }


def estimator_fields(selector: HeadSelector, ens: TopKEnsemble | None) -> dict[str, Any]:
    """The profile's saved head selector, ensemble and head ranking."""
    return {
        "selector": selector.to_dict(),
        "ensemble": ens.to_dict() if ens is not None else None,
        "ranking": selector.ranking_,
    }


def _split_by_ids(
    records: Sequence[dict[str, Any]], ids: Sequence[str], where: Path
) -> tuple[np.ndarray, np.ndarray]:
    wanted = set(ids)
    calib = np.array([i for i, r in enumerate(records) if r["id"] in wanted], dtype=int)
    if len(calib) != len(wanted):
        raise ValueError(f"{where}: {len(wanted) - len(calib)} calibration ids are not in the run")
    rest = np.setdiff1d(np.arange(len(records)), calib)
    return calib, rest


def _fit_baselines(
    run: RunFolder, meta: dict[str, Any], calib: np.ndarray, y: np.ndarray, baseline: np.ndarray
) -> dict[str, Any]:
    """The model's margin with a fitted threshold, and the hidden-state probe, on the same
    calibration items the readers saw (so every contender gets the same chance)."""
    out: dict[str, Any] = {"model_margin": None, "hidden_probe": None}
    if np.isfinite(baseline).all():
        out["model_margin"] = model_margin_selector(baseline, y).to_dict()
    if run.has(MAIN, "hidden"):
        hidden = np.asarray(run.load(MAIN, "hidden"))[calib]
        probe = HiddenStateProbe(random_state=0).fit(hidden, y, meta.get("hidden_layers"))
        out["hidden_probe"] = probe.to_dict()
    return out


def _content_hashes(records: Iterable[dict[str, Any]]) -> list[str]:
    """The content hash of each record (:func:`qkscore.data.items.record_content_hash`); empty
    when the run keeps no item texts."""
    hashes = [record_content_hash(r) for r in records]
    return [h for h in hashes if h is not None] if all(hashes) else []


def evaluation_indices(
    run: RunFolder, profile: Profile, records: Sequence[dict[str, Any]] | None = None
) -> tuple[np.ndarray, str]:
    """Evaluation items of this run: outside the calibration split when the run holds the
    profile's calibration data, else every item (transfer to another set).

    Either way an item whose content (context, statement, options; see
    :func:`qkscore.data.items.content_hash`) is that of a calibration item is left out, with a
    warning: the same items read under another spec or other ids are still calibration items.
    Profiles made before they recorded content hashes are matched by id only.
    """
    records = run.items() if records is None else records
    same_data = profile.data.get("data") == run.meta()["data"]
    calib_ids = set(profile.data["calibration"]["item_ids"]) if same_data else set()
    calib_hashes = set(profile.data["calibration"].get("item_hashes") or ())
    keep, by_content = [], []
    for i, r in enumerate(records):
        if r["id"] in calib_ids:
            continue
        if calib_hashes and record_content_hash(r) in calib_hashes:
            by_content.append(r["id"])
        else:
            keep.append(i)
    if same_data:
        split = "evaluation split (calibration items excluded)"
    else:
        split = "all items (transfer from another set)"
    if by_content:
        left_out = (
            f"{len(by_content)} items of {run.path} have the content of calibration items of "
            f"the profile ({', '.join(by_content[:3])}{', ...' if len(by_content) > 3 else ''}) "
            "and are left out"
        )
        warnings.warn(left_out, stacklevel=2)
        split = f"{split}; {left_out}"
    return np.array(keep, dtype=int), split


def evaluate(
    run_path: str | Path,
    profile: Profile | str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """Score every reader of the profile and the fair baselines on the evaluation items.

    Methods are keyed by stable machine names (each registered reader's name, then the
    baselines ``model_answer``, ``model_margin``, ``attention``, ``hidden_probe``,
    ``shallow``, ``majority``: :func:`qkscore.schemas.method_keys`); each carries a display
    ``label`` (the reader's :meth:`~qkscore.estimators.protocol.Reader.label`). Every
    reader is also scored under each control scan the run holds.

    ``by`` names item metadata fields (``depth``, ``rule``, ``logic`` ...): ``report["by"][field]
    [method][value]`` is each method's accuracy with a bootstrap interval and ``n`` on the items
    with that value (items without it form the group ``"(none)"``, so the groups add up to
    ``n_eval``).

    ``out`` (an ``evaluation.json`` path) writes the report, validated
    (:class:`qkscore.schemas.Evaluation`), and beside it the per-item verdicts of every method:
    ``predictions.jsonl`` always, ``predictions.parquet`` when pyarrow is installed.
    """
    report, rows = _evaluate(run_path, profile, n_boot, seed, by)
    if out is not None:
        write_evaluation(out, report, rows)
    return report


def _evaluate(
    run_path: str | Path, profile: Profile | str | Path, n_boot: int, seed: int, by: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The evaluation report and its per-item prediction rows."""
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
    inputs = _scan_inputs(run, MAIN, idx)
    readers = prof.readers()
    name = prof.data["head"]
    layer, head = prof.head
    preds: dict[str, np.ndarray] = {}
    margins: dict[str, np.ndarray | None] = {}
    labels_of: dict[str, str] = {}
    kinds: dict[str, str] = {}
    option_proba: dict[str, np.ndarray] = {}  # multi-option items: for the macro AUROC

    def add(key: str, label: str, kind: str, pred: np.ndarray, margin: np.ndarray | None) -> None:
        preds[key], margins[key], labels_of[key], kinds[key] = pred, margin, label, kind

    def add_proba(key: str, label: str, kind: str, proba: np.ndarray) -> None:
        """A method judged by its probabilities: the verdict is the one rule, ``decide``."""
        add(key, label, kind, decide(proba), _positive_score(proba))
        if proba.shape[1] > 2:
            option_proba[key] = proba

    for key, reader in readers.items():
        proba = _reader_proba(reader, inputs)
        if proba is not None:
            add_proba(key, reader.label(key), "reader", proba)
    base = inputs["baseline"]
    if np.isfinite(base).all():
        add_proba("model_answer", "model (own answer)", "baseline", _softmax(base))
        margin_sel = prof.baseline("model_margin")
        if margin_sel is not None:
            margin_scores = as_margin_scores(base)
            add_proba("model_margin", "model margin (threshold fit on calibration)", "baseline",
                      margin_sel.predict_proba(margin_scores))  # fmt: skip
    if run.has(MAIN, "attention"):
        add("attention", f"attention {name}", "baseline",
            *_attention_baseline(run, prof, idx, layer, head, all_records, all_labels))  # fmt: skip
    notes: list[str] = []
    probe = _usable_probe(prof, meta, notes)
    if probe is not None and inputs.get("hidden") is not None:
        add_proba("hidden_probe", f"hidden-state probe (layer {probe.layer_})", "baseline",
                  probe.predict_proba(inputs["hidden"]))  # fmt: skip
    shallow = _shallow_predictions(prof, all_records, records, notes)
    if shallow is not None:
        add_proba("shallow", "shallow matching (no model)", "baseline", shallow)
    calib_labels = _calibration_labels(prof)
    add("majority", "majority class", "baseline",
        np.full_like(labels, np.bincount(calib_labels).argmax()), None)  # fmt: skip
    methods = {}
    for key, p in preds.items():
        score = option_proba.get(key, margins[key])
        methods[key] = stats.metric_report(p, labels, score=score, n_boot=n_boot, seed=seed)
        methods[key]["label"] = labels_of[key]
        methods[key]["kind"] = kinds[key]
    chosen = prof.reader_name if prof.reader_name in preds else "head"
    methods[chosen]["chosen"] = True
    tests = [
        stats.mcnemar_record(reader_key, other, preds[reader_key] == labels, preds[other] == labels)
        for reader_key in [chosen, *[k for k in ("head",) if k != chosen]]
        for other in ("model_margin", "model_answer", "shallow", "hidden_probe")
        if other in preds
    ]
    meta_list = [r.get("meta", {}) for r in records]
    breakdowns = {
        k: stats.breakdown(preds[k], labels, meta_list)
        for k in preds
        if kinds[k] == "reader" or k in ("model_answer", "model_margin")
    }
    by_field = {
        field: {
            k: stats.accuracy_by_group(preds[k], labels, meta_list, field, n_boot, seed=seed)
            for k in preds
        }
        for field in dict.fromkeys(by)
    }
    controls = {}
    for control in control_names():
        if run.has(control):
            controls[control] = _control_report(
                run, control, idx, labels, readers, probe, prof, preds
            )
    if len(idx) < MIN_EVALUATION:
        notes.append(
            f"only {len(idx)} evaluation items (fewer than {MIN_EVALUATION}): intervals are wide "
            "and small differences mean little"
        )
    rows = prediction_rows(
        records,
        labels,
        "evaluation" if prof.data.get("data") == meta["data"] else "transfer",
        preds,
        margins,
    )
    report = stamp(
        {
            "run": str(run.path),
            "profile": str(prof.path) if prof.path else None,
            "model": meta["model"].get("name"),
            "fingerprint": meta["model"].get("fingerprint"),
            "template": meta["template"].get("name"),
            "template_settings": meta["template"],
            "data": meta["data"],
            "calibration_data": prof.data.get("data"),
            "reader": chosen,
            "reader_choice": prof.data.get("reader_choice"),
            "head": name,
            "sign": prof.data.get("sign"),
            "split": split,
            "n_eval": int(len(idx)),
            "label_counts": {
                str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))
            },
            "methods": methods,
            "mcnemar": tests,
            "breakdowns": breakdowns,
            "by": by_field,
            "controls": controls,
            "notes": notes,
            "calibration": {
                k: v for k, v in prof.data["calibration"].items() if k not in ITEM_LISTS
            },
        }
    )
    return report, rows


def paper_head_report(
    run_path: str | Path, profile: Profile | str | Path, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The single head chosen the paper's way, reported on the evaluation items as
    :func:`evaluate` reports a reader: the head with the best calibration *accuracy* (its
    threshold fitted there; Tulchinskii et al.), fitted on the profile's calibration items of
    this run. The profile's ``head`` reader ranks heads by calibration AUROC instead (a choice
    no threshold can flatter); this is a figure to read beside it, not a reader."""
    run = RunFolder(run_path)
    prof = profile if isinstance(profile, Profile) else Profile.load(profile)
    records = run.items()
    labels = run.labels(records)
    calib, _ = _split_by_ids(records, prof.data["calibration"]["item_ids"], run.path)
    idx, _ = evaluation_indices(run, prof, records)
    scores = np.asarray(run.load(MAIN))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # calibrate already said what it thinks of the split
        selector = HeadSelector(metric="accuracy").fit(scores[calib], labels[calib])
    proba = selector.predict_proba(scores[idx])
    score = proba if proba.shape[1] > 2 else _positive_score(proba)
    report = stats.metric_report(decide(proba), labels[idx], score=score, n_boot=n_boot, seed=seed)
    report["head"] = selector.head_name_
    report["label"] = f"head {selector.head_name_} (the paper's: best calibration accuracy)"
    return report


def _scan_inputs(run: RunFolder, scan_name: str, idx: np.ndarray) -> dict[str, Any]:
    """What readers and baselines read from one scan, at the evaluation items."""
    out: dict[str, Any] = {
        "scores": np.asarray(run.load(scan_name))[idx],
        "baseline": np.asarray(run.load(scan_name, "baseline"))[idx],
        "hidden": None,
    }
    if run.has(scan_name, "hidden"):
        out["hidden"] = np.asarray(run.load(scan_name, "hidden"))[idx]
    return out


def _reader_proba(reader: Reader, inputs: dict[str, Any]) -> np.ndarray | None:
    """A reader's option probabilities, or None when it needs the model's answer and the
    scan has none."""
    base = inputs["baseline"]
    if reader.needs_baseline and not np.isfinite(base).all():
        return None
    return reader.predict_proba(inputs["scores"], baseline=base)


def _shallow_predictions(
    prof: Profile,
    all_records: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    notes: list[str],
) -> np.ndarray | None:
    """The shallow-matching baseline, fit on this run's calibration items (same split the
    readers saw); None (with a note) where it does not apply."""
    calib_ids = set(prof.data["calibration"]["item_ids"])
    calib = [r for r in all_records if r["id"] in calib_ids]
    if not calib:
        notes.append("shallow matching not fitted: the calibration items are in another run")
        return None
    if not supports_shallow(calib):
        return None
    try:
        matcher = ShallowMatcher().fit(calib, [r["answer_index"] for r in calib])
        return matcher.predict_proba(records)
    except ValueError as err:  # an older run folder without the item texts
        notes.append(f"shallow matching not fitted: {err}")
        return None


def _usable_probe(prof: Profile, meta: dict[str, Any], notes: list[str]) -> Any:
    """The profile's hidden-state probe, if this run kept the same layers it was fit on."""
    probe = prof.baseline("hidden_probe")
    if probe is None:
        return None
    if list(meta.get("hidden_layers") or []) != list(probe.layers_):
        notes.append(
            f"hidden-state probe not applied: it was fit on layers {probe.layers_}, this run "
            f"kept {meta.get('hidden_layers') or 'none'}"
        )
        return None
    return probe


def _control_report(run, control, idx, labels, readers, probe, prof, preds) -> dict[str, Any]:
    """Accuracy of every reader (and the model and probe) on a control scan's items."""
    inputs = _scan_inputs(run, control, idx)
    accuracy: dict[str, float] = {}
    for key, reader in readers.items():
        proba = _reader_proba(reader, inputs)
        if proba is not None:
            accuracy[key] = float((decide(proba) == labels).mean())
    if np.isfinite(inputs["baseline"]).all():
        accuracy["model_answer"] = float((decide(_softmax(inputs["baseline"])) == labels).mean())
    if probe is not None and inputs["hidden"] is not None:
        accuracy["hidden_probe"] = float((probe.predict(inputs["hidden"]) == labels).mean())
    chosen = prof.reader_name if prof.reader_name in accuracy else "head"
    out = stats.shortcut_gap(float((preds[chosen] == labels).mean()), accuracy[chosen])
    out["reader"] = chosen
    out["accuracy"] = accuracy
    out["head_accuracy"] = accuracy.get("head")
    out["ensemble_accuracy"] = accuracy.get("ensemble")
    out["model_accuracy"] = accuracy.get("model_answer")
    return out


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
    """Calibrate on each run (row) and test on every run (column): the single head and the
    reader each row chose.

    On the diagonal the test items are that run's evaluation split; off the diagonal all items.
    """
    names = [str(r) for r in runs]
    profiles = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in runs:
            profiles[str(r)] = calibrate(r, calib_size=calib_size, seed=seed)
    head_matrix, reader_matrix = [], []
    for row in names:
        heads, readers = [], []
        chosen = profiles[row].reader_name
        for col in names:
            report = evaluate(col, profiles[row], n_boot=200, seed=seed)
            heads.append(report["methods"]["head"]["accuracy"]["value"])
            method = report["methods"].get(chosen)
            readers.append(None if method is None else method["accuracy"]["value"])
        head_matrix.append(heads)
        reader_matrix.append(readers)
    return {
        "runs": names,
        "heads": [profiles[n].data["head"] for n in names],
        "accuracy": head_matrix,
        "readers": [profiles[n].reader_name for n in names],
        "reader_accuracy": reader_matrix,
    }

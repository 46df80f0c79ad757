"""Calibrate on chain-of-thought steps: a step profile, whose verdicts mean what they say on
steps a model wrote.

Why: an answer profile is calibrated on True/False answers about a whole context. On chains a
model actually wrote its head read steps backwards (README, best-of-N: AUROC 0.350 against the
prover's labels) while the model's own step log-odds reached 0.755. The prover labels every
generated step exactly, so the readers can be fitted on those labels instead.

The features are those of the judge's own pass: each step is the statement of a True/False
item whose context is the problem's context plus the chain's earlier steps
(:func:`qkscore.audit.chain.step_pairs`), rendered by the profile's template and scored by
:func:`qkscore.scoring.score_pairs` with the chain's shared prefix, exactly as
``Judge.verify_chain`` scores it when the profile is served. One pass per chain gives every
head's scores, the model's own answer (its step log-odds) and the residual stream at the query
positions.

Steps of one problem are not independent, so every choice is by problem: the calibration
problems are a seeded draw of problems (half by default, their ids recorded so ``rank`` judges
only the rest), and every fold of every cross-validation (the reader choice, each reader's
inner settings, the hidden-state probe's layer) keeps a problem's steps together. The profile
records each candidate's cross-validated AUROC on all steps and on derived steps (restated
premises left out), with the model's own step log-odds and the hidden-state probe beside them.
The probe is the anchor to beat ("Hidden Error Awareness", arXiv 2605.09502, reports AUROC
0.95 for step errors from the residual stream); it is kept as a baseline, not as the reader.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.dtypes import VERDICT_DTYPE, dtype_name
from qkscore.estimators.base import DECISION_RULE, stratified_folds
from qkscore.estimators.readers import (
    HiddenStateProbe,
    cross_val_scores,
    margin_cv_auroc,
    model_margin_selector,
)
from qkscore.io import atomic_write, json_digest
from qkscore.pipeline import estimator_fields, fit_readers, head_fields
from qkscore.profile import Profile
from qkscore.progress import Progress
from qkscore.prompts import Template, get_template
from qkscore.run import hidden_layer_choice
from qkscore.schemas import stamp

__all__ = ["StepFeatures", "calibrate_steps", "step_features"]


@dataclass
class StepFeatures:
    """Per step: ``scores`` ``[steps, layers, heads, 2]`` (True, False), ``baseline``
    ``[steps, 2]`` (the model's log-probabilities of the two answers) and ``hidden``
    ``[steps, hidden layers, 2, d_model]`` (None when no layer is kept)."""

    scores: np.ndarray
    baseline: np.ndarray
    hidden: np.ndarray | None

    @property
    def model_logodds(self) -> np.ndarray:
        """The model's own log-odds that the step is true: the fair step baseline."""
        b = self.baseline.astype(np.float64)
        return b[:, 0] - b[:, 1]


def step_features(
    lm: Any,
    template: Template,
    steps: Any,
    *,
    hidden_layers: Sequence[int] = (),
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
    checkpoint: Callable[[StepFeatures, np.ndarray], None] | None = None,
    resume: tuple[StepFeatures, np.ndarray] | None = None,
) -> StepFeatures:
    """The judge's whole pass over every step of ``steps`` (a
    :class:`~qkscore.generation.steps.StepSet`), one chain at a time.

    ``resume`` (features and a per-chain done mask, as ``checkpoint`` was last given them)
    skips the chains already scored; ``checkpoint`` is called after each chain so that a long
    pass (an hour for a 1.5B model on a CPU) can keep what it has."""
    from qkscore.extraction import prefix_supported
    from qkscore.scoring import score_pairs

    pairs = steps.pairs()
    n = len(pairs)
    chains = steps.chains()
    if resume is not None:
        feats, done = resume
    else:
        hidden = None
        if hidden_layers:
            hidden = np.full((n, len(hidden_layers), 2, lm.d_model), np.nan, dtype=np.float16)
        feats = StepFeatures(
            np.full((n, lm.n_layers, lm.n_heads, 2), np.nan, dtype=np.float32),
            np.full((n, 2), np.nan, dtype=np.float32),
            hidden,
        )
        done = np.zeros(len(chains), dtype=bool)
    scores, baseline, hidden = feats.scores, feats.baseline, feats.hidden
    with Progress(progress, "steps", len(chains), int(done.sum()), unit="chains") as advance:
        for c, idx in enumerate(chains.values()):
            if done[c]:
                continue
            out = score_pairs(
                lm,
                template,
                [pairs[i] for i in idx],
                max_tokens=max_tokens,
                batch_size=batch_size,
                rope=False,
                baseline=True,
                share_prefix=prefix_supported(False),
                hidden_layers=list(hidden_layers) or None,
            )
            scores[idx], baseline[idx] = out.scores, out.baseline
            if hidden is not None:
                hidden[idx] = out.hidden
            done[c] = True
            advance(1)
            if checkpoint is not None:
                checkpoint(feats, done)
    return feats


def _features_key(lm: Any, template: Template, steps: Any, layers: Sequence[int]) -> str:
    """What the pass's features depend on: the model and its dtype, the template, the kept
    layers and every step's text and label (one :func:`qkscore.io.json_digest`)."""
    return json_digest(
        {
            "model": lm.fingerprint,
            "dtype": dtype_name(lm.dtype),
            "template": template.describe(),
            "layers": list(layers),
            "steps": [[s.chain or s.problem, *s.pair, s.valid] for s in steps.steps],
        }
    )


#: Seconds between saves of a pass in progress: a kill loses at most this much of the pass.
CHECKPOINT_EVERY_S = 300.0


def _save_features(path: Path, key: str, feats: StepFeatures, done: np.ndarray | None) -> None:
    hidden = feats.hidden if feats.hidden is not None else np.zeros(0, np.float16)
    extra = {} if done is None else {"done": done}
    atomic_write(
        path,
        lambda fh: np.savez(
            fh, key=np.array(key), scores=feats.scores, baseline=feats.baseline, hidden=hidden,
            **extra,
        ),
    )  # fmt: skip


def _load_features(path: Path, key: str) -> tuple[StepFeatures, np.ndarray | None] | None:
    """The features saved at ``path`` for ``key`` (and their done mask when partial), or None
    when the file is missing or was made for other steps, another model or template."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            return None
        hidden = z["hidden"] if z["hidden"].size else None
        done = z["done"] if "done" in z.files else None
        return StepFeatures(z["scores"], z["baseline"], hidden), done


def _cached_features(
    path: Path | None,
    key: str,
    compute: Callable[..., StepFeatures],
    log: Callable[[str], None],
    every_s: float | None = None,
) -> StepFeatures:
    """The pass's features, kept beside the profile (``STEP.json.features.npz``) so that a
    calibration stopped after its pass (a crash, a kill, a changed reader or seed) does not run
    the model again: the pass is most of a calibration's time. While the pass runs, what it has
    is saved every ``every_s`` seconds (default :data:`CHECKPOINT_EVERY_S`) to
    ``STEP.json.features.partial.npz``, and a pass stopped midway resumes from there. A file
    made for other steps, a model or a template is recomputed and replaced."""
    if path is None:
        return compute()
    saved = _load_features(path, key)
    if saved is not None:
        log(f"features of this pass read from {path}")
        return saved[0]
    partial = path.with_name(path.name.removesuffix(".npz") + ".partial.npz")
    resume = _load_features(partial, key)
    if resume is not None and resume[1] is not None:
        log(f"resuming the pass: {int(resume[1].sum())}/{resume[1].size} chains from {partial}")
    else:
        resume = None
    every = CHECKPOINT_EVERY_S if every_s is None else every_s
    last = [time.monotonic()]

    def checkpoint(feats: StepFeatures, done: np.ndarray) -> None:
        if time.monotonic() - last[0] >= every and not done.all():
            _save_features(partial, key, feats, done)
            last[0] = time.monotonic()

    feats = compute(checkpoint=checkpoint, resume=resume)
    _save_features(path, key, feats, None)
    partial.unlink(missing_ok=True)
    return feats


def _check_steps(steps: Any, where: str) -> None:
    """Refuse a calibration set whose labels cannot be cross-validated by problem."""
    counts = steps.counts()
    if not counts["valid"] or not counts["invalid"]:
        raise ValueError(
            f"{where}: cannot calibrate on {counts['steps']} steps of {counts['problems']} "
            f"problems ({counts['valid']} valid, {counts['invalid']} invalid): calibration needs "
            "both valid and invalid steps"
        )
    try:
        stratified_folds(steps.labels(), 2, 0, steps.groups())
    except ValueError as err:
        raise ValueError(
            f"{where}: cannot calibrate on {counts['problems']} problems: {err}; take more "
            "problems (--calib-size)"
        ) from None


def calibrate_steps(
    steps: Any,
    model: Any,
    out: str | Path | None = None,
    *,
    calib_size: int | None = None,
    seed: int = 0,
    reader: str = "auto",
    cv: int = 5,
    metric: str = "auroc",
    template: str | Template = "answer-statement",
    chat_template: bool | None = None,
    hidden_layers: str | Sequence[int] | None = "auto",
    dtype: str = VERDICT_DTYPE,
    batch_size: int = 8,
    ensemble: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Profile:
    """Fit the readers on the steps of ``calib_size`` problems of ``steps`` (default half;
    ``None`` with a steps file the caller wants whole: pass its problem count) and write a
    profile with ``unit: "step"`` to ``out``.

    ``model`` is a loaded model or anything ``load_model`` accepts (in ``dtype``, float32 by
    default as the judge). The readers are the answer profiles' own (single head, ensemble,
    linear, L1, hybrid with the model's step log-odds), chosen by cross-validated AUROC with
    every fold grouped by problem; the model's step log-odds and the hidden-state probe are
    fitted and cross-validated on the same folds as baselines.
    """
    from qkscore.models import LoadedModel, load_model

    where = str(steps.source.get("path") or "steps")
    calib_ids, rest_ids = steps.split(calib_size, seed)
    calib = steps.subset(calib_ids)
    _check_steps(calib, where)
    overrides = {} if chat_template is None else {"use_chat_template": bool(chat_template)}
    tmpl = get_template(template, **overrides)
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
    layers = hidden_layer_choice(hidden_layers, lm.n_layers)
    counts = calib.counts()
    log(
        f"calibrating on {counts['steps']} steps ({counts['valid']} valid, {counts['invalid']} "
        f"invalid) of {counts['problems']} problems; {len(rest_ids)} problems left for rank"
    )
    feats = _cached_features(
        None if out is None else Path(str(out) + ".features.npz"),
        _features_key(lm, tmpl, calib, layers),
        lambda **resumable: step_features(
            lm,
            tmpl,
            calib,
            hidden_layers=layers,
            batch_size=batch_size,
            progress=progress,
            **resumable,
        ),
        log,
    )
    y, groups = calib.labels(), calib.groups()
    derived = {"derived": calib.derived()}
    folds = len(stratified_folds(y, cv, seed, groups))
    fitted = fit_readers(
        feats.scores,
        y,
        feats.baseline,
        reader=reader,
        ensemble=ensemble,
        cv=cv,
        seed=seed,
        metric=metric,
        groups=groups,
        subsets=derived,
    )
    choice = fitted["choice"]
    if reader == "auto":
        choice["rule"] = (
            f"highest {folds}-fold cross-validated AUROC on the calibration steps, folds "
            "grouped by problem"
        )
    baselines, baseline_cv = _step_baselines(feats, y, groups, derived, layers, cv, seed)
    choice["baselines"] = baseline_cv
    selector = fitted["selector"]
    best = selector.ranking_[0]
    label_counts = {str(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))}
    data: dict[str, Any] = stamp(
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "unit": "step",
            "model": lm.describe(),
            "template": tmpl.describe(),
            "rope": False,
            "data": f"steps:{where}",
            "run": None,
            "reader": choice["chosen"],
            "decision_rule": DECISION_RULE,
            "reader_choice": choice,
            "readers": fitted["readers"],
            "baselines": baselines,
            **head_fields(selector),
            "calibration": {
                "size": int(len(y)),
                "seed": seed,
                "metric": metric,
                "cv_folds": folds,
                "grouped_by": "problem",
                "label_counts": label_counts,
                "accuracy": best["accuracy"],
                "balanced_accuracy": best["balanced_accuracy"],
                "auroc": best["auroc"],
                "warnings": fitted["notes"],
                "item_ids": calib_ids,
            },
            "evaluation_ids": rest_ids,
            "steps": {
                "source": steps.source,
                "calibration": counts,
                "held_out_problems": len(rest_ids),
                "hidden_layers": layers,
                "batch_size": batch_size,
            },
            **estimator_fields(selector, fitted["ensemble"]),
        }
    )
    profile = Profile(data)
    if out is not None:
        profile.save(out)
    return profile


def _step_baselines(
    feats: StepFeatures,
    y: np.ndarray,
    groups: np.ndarray,
    subsets: dict[str, np.ndarray],
    layers: Sequence[int],
    cv: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's step log-odds (a threshold fitted on the calibration steps) and the
    hidden-state probe, fitted, and their CV figures on the readers' folds."""
    fitted: dict[str, Any] = {
        "model_margin": model_margin_selector(feats.baseline, y).to_dict(),
        "hidden_probe": None,
    }
    cv_figures: dict[str, Any] = {
        "model_logodds": {
            "auroc": margin_cv_auroc(feats.baseline, y, cv, seed, groups),
            "subsets": {
                name: {"auroc": margin_cv_auroc(feats.baseline, y, cv, seed, groups, mask)}
                for name, mask in subsets.items()
            },
        }
    }
    if feats.hidden is not None:
        probe = HiddenStateProbe(random_state=seed).fit(feats.hidden, y, layers, groups=groups)
        fitted["hidden_probe"] = probe.to_dict()
        # The cross-validated figure keeps the layer and C chosen on all calibration steps:
        # searching them inside every fold fits hundreds of models on thousands of steps and
        # held a calibration for most of an hour (0.5B), longer at 1.5B. Choosing them on all
        # steps can only flatter the probe, the anchor the readers are measured against.
        keep = [probe.layer_index_]
        try:
            cv_figures["hidden_probe"] = cross_val_scores(
                "hidden_probe",
                feats.scores,
                y,
                cv=cv,
                seed=seed,
                groups=groups,
                subsets=subsets,
                hidden=feats.hidden[:, keep],
                hidden_layers=[probe.layer_],
                probe_cs=[probe.C_],
            )
        except ValueError as err:  # too few problems for its inner folds, as for the readers
            cv_figures["hidden_probe"] = {"skipped": str(err)}
        cv_figures["hidden_probe"].update(layer=probe.layer_, C=probe.C_)
    return fitted, cv_figures

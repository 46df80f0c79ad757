"""Rank sampled chains: per-step QK verdicts, the solution-level QK score, logit confidence,
and best-of-N selectors compared with majority vote and the oracle.

Why the solution-level readers are cross-fitted by problem: the head (or the linear readout of
every head) is chosen on labelled generations, and a chain must never be scored by a reader
that saw its own problem. Problems are dealt into ``folds`` groups; each group's chains are
scored by readers fitted on the other groups only.

Problems whose ids are in the profile's calibration split are left out of every figure by
default (the step reader was fitted on them); the summary says how many there were. A step
profile (``qkscore calibrate GEN``) never judges the problems it was calibrated on: keeping
them is refused. An answer profile still runs on steps, and the summary says its step verdicts
come from a profile calibrated on answers.

Step-level figures are measured by problem: their intervals resample whole problems (the steps
of one problem share a context and most of their text), and the step reader is compared with
the model's own step log-odds by a paired bootstrap of the AUROC difference over the same
problems.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore._version import __version__
from qkscore.audit.chain import step_pairs
from qkscore.dtypes import VERDICT_DTYPE
from qkscore.generation.folder import GenFolder
from qkscore.generation.label import parse_coverage
from qkscore.generation.rank_cache import RankCache, chain_key, rank_settings
from qkscore.generation.solution import CONFIDENCE, SolutionScores, score_solutions
from qkscore.io import save_array, write_bytes, write_json
from qkscore.progress import Progress
from qkscore.schemas import RankSummary
from qkscore.stats import (
    accuracy,
    auroc,
    bootstrap_ci,
    mcnemar_record,
    outcome,
    paired_bootstrap,
)

__all__ = ["RANK_SUMMARY_VERSION", "STEP_SCORERS", "cross_fit_solution", "rank", "select"]

#: summary.json's layout: 2 keys every comparison as a record (``a``, ``b``, ``difference``,
#: ``pvalue``, ``outcome``: better, worse or no_difference) where 1 stored prose ("is beaten
#: by") and keyed pairs by "a vs b". Its JSON Schema: docs/schemas/rank-summary.schema.json.
RANK_SUMMARY_VERSION = 2

#: Step scorers, higher = more likely valid: the profile's reader margin and its single
#: head's margin; the model's own log-odds of "True" for the step (the fair baseline); the
#: step profile's hidden-state probe (log-odds); shallow matching (a word-overlap tree fitted
#: on the step profile's calibration steps, log-odds); the mean log-probability of the step's
#: tokens when the model wrote it (logit confidence); an answer profile's reader and head when
#: one is given beside a step profile. Only those a run has appear in its summary.
STEP_SCORERS = (
    "qk_reader",
    "qk_head",
    "model_logodds",
    "hidden_probe",
    "shallow_matching",
    "step_logprob",
    "answer_reader",
    "answer_head",
)
STEP_AGGREGATES = ("min", "mean", "last")
SOLUTION_SCORERS = ("qk_solution_head", "qk_solution_linear")
#: Step scorers compared pairwise on the same steps (paired bootstrap by problem).
STEP_PAIRS = (
    ("qk_reader", "model_logodds"),  # the fair baseline: the model's own answer on the step
    ("qk_reader", "hidden_probe"),  # the anchor to beat: the residual stream
    ("qk_reader", "shallow_matching"),  # word overlap alone: what needs no model at all
    ("qk_reader", "step_logprob"),  # logit confidence: how likely the model found the step
    ("qk_reader", "answer_reader"),  # the answer profile's reader on the same steps
)
#: An AUROC needs this many items of each class; with fewer it is reported as too few.
MIN_PER_CLASS = 5
#: Per-chain selectors of the step reader, each compared with majority vote as it is (not
#: picked among the others, so not optimistic).
STEP_READER_SELECTORS = ("qk_reader_min", "qk_reader_mean")


def _head_margin(judge: Any, v: Any) -> float:
    """The profile's single head: its signed QK difference minus its threshold."""
    return float(judge.sign * (v.qk_scores["True"] - v.qk_scores["False"]) - judge.threshold)


def _logodds(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p) - np.log1p(-p))


def _step_verdicts(
    judge: Any,
    context: str,
    steps: Sequence[str],
    answer: Any = None,
    probe: Any = None,
) -> list[dict[str, Any]]:
    """For each step, judged against the context plus the steps before it (as
    ``verify-chain`` does): the profile reader's margin, the profile head's signed margin and
    the model's own log-odds of "True"; with ``probe`` (a step profile's hidden-state probe) its
    log-odds, and with ``answer`` (a Judge on an answer profile) that profile's reader and head.
    One whole pass per chain serves them all (an answer profile with another template gets its
    own): the fast path stops at the reader's deepest layer, which may lie below the single
    head's (an L1 reader that kept no head stops at 0)."""
    if not steps:
        return []
    pairs = step_pairs(context, steps)
    out = judge.features(pairs, hidden_layers=None if probe is None else probe.layers_)
    rows = [
        {
            "qk_reader": v.margin,
            "qk_head": _head_margin(judge, v),
            "model_logodds": _logodds(v.model_probability),
            "probability": v.probability,
            "verdict": v.verdict,
        }
        for v in judge.verdicts(out)
    ]
    if probe is not None:
        for row, m in zip(rows, probe.decision_function(out.hidden)):
            row["hidden_probe"] = float(m)
    if answer is not None:
        same = answer.template.describe() == judge.template.describe()
        if same and answer.rope == judge.rope:
            verdicts = answer.verdicts(out)
        else:
            verdicts = answer.check_many(pairs, model_answer=True)
        for row, v in zip(rows, verdicts):
            row["answer_reader"] = v.margin
            row["answer_head"] = _head_margin(answer, v)
    return rows


def _shallow_scores(
    folder: GenFolder,
    judge: Any,
    records: Sequence[Mapping[str, Any]],
    keep: Sequence[Mapping[str, Any]],
    problems: Any,
) -> list[list[float]] | None:
    """Shallow matching on every step of ``keep``: a depth-4 tree over the word overlap of
    (context + earlier steps, step) (:class:`qkscore.data.shallow.ShallowMatcher`), fitted on
    the steps of the step profile's calibration problems in this folder, as the log-odds of
    valid. No model reads anything, so a step reader that does not beat it reads the wording
    (on Qwen2.5-Coder-0.5B's chains it did not: 0.938 against the reader's 0.904). None when
    the calibration steps are not in this folder (a profile calibrated on a steps file)."""
    from qkscore.data.shallow import ShallowMatcher
    from qkscore.generation.steps import steps_from_generations

    def as_items(pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"context": c, "statement": s, "options": ["True", "False"]} for c, s in pairs]

    every = steps_from_generations(folder.path, records=records, problems=problems)
    calib = every.subset(_calibration_ids(judge))
    y = calib.labels()
    if min(int((y == 0).sum()), int((y == 1).sum())) < MIN_PER_CLASS:
        return None
    matcher = ShallowMatcher().fit(as_items(calib.pairs()), y)
    out = []
    for r in keep:
        pairs = step_pairs(problems[r["problem"]].context, r["steps"])
        p_valid = matcher.predict_proba(as_items(pairs))[:, 0] if pairs else []
        out.append([_logodds(p) for p in p_valid])
    return out


def _solution_scores(
    judge: Any,
    cache: RankCache,
    records: Sequence[Mapping[str, Any]],
    problems: Sequence[Any],
    batch_size: int,
    progress: bool,
) -> SolutionScores:
    """The solution-level pass for the chains the cache lacks, one batch at a time (each
    batch is cached as it finishes), then every chain's scores in ``records`` order."""
    done = cache.solutions()
    todo = [r for r in records if chain_key(r) not in done]
    with Progress(
        progress, "solutions", len(records), len(records) - len(todo), unit="chains"
    ) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            part = score_solutions(
                judge.lm,
                [problems[r["problem"]].text for r in batch],
                [r["text"] for r in batch],
                rope=judge.rope,
                batch_size=batch_size,
                steps=[r["steps"] for r in batch],
            )
            keys = [chain_key(r) for r in batch]
            for row in cache.add_solutions(keys, part.qk, part.confidence, part.step_logprob):
                done[row["key"]] = row
            advance(len(batch))
    rows = [done[chain_key(r)] for r in records]
    qk = np.array([row["qk"] for row in rows], dtype=np.float32)
    confidence = {
        name: np.array([row["confidence"][name] for row in rows], dtype=float)
        for name in CONFIDENCE
    }
    return SolutionScores(qk, confidence, [row["step_logprob"] for row in rows])


def _constant_reader(judge: Any) -> bool:
    """Whether the profile's reader reads no head at all (an L1 readout that kept none): its
    margins are then one constant, and the summary says so."""
    return getattr(judge.reader, "n_kept_", None) == 0


def _folds(groups: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold of each chain: its problem's, problems dealt at random into ``k`` groups."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=int)


def cross_fit_solution(
    qk: np.ndarray, correct: np.ndarray, groups: Sequence[str], folds: int = 5, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Grouped cross-fitting of the single head (by AUROC) and the linear reader over every
    head's solution-level q.k, target = the final answer is correct. Returns the out-of-fold
    scores (higher = more likely correct; NaN where a fold could not be fitted) and, per fold,
    the head chosen."""
    from qkscore.estimators.base import CalibrationWarning
    from qkscore.estimators.heads import HeadSelector
    from qkscore.estimators.readers import LinearQKReader

    n = len(correct)
    scores = {name: np.full(n, np.nan) for name in SOLUTION_SCORERS}
    # as a two-option item: option 0 ("correct") has the raw q.k, option 1 zero, so a head's
    # margin is its raw score and its learned sign says which way it reads
    x = np.stack([qk, np.zeros_like(qk)], -1)
    y = np.where(correct, 0, 1)
    ok = np.isfinite(qk).all(axis=(1, 2))
    fold = _folds(groups, max(2, folds), seed)
    chosen = []
    for f in range(max(2, folds)):
        train, test = ok & (fold != f), ok & (fold == f)
        counts = np.bincount(y[train], minlength=2)
        if not test.any() or counts.min() < 2:
            chosen.append({"fold": f, "head": None, "train_chains": int(train.sum())})
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            head = HeadSelector(metric="auroc").fit(x[train], y[train])
            scores["qk_solution_head"][test] = head.margin(x[test])
            linear = LinearQKReader(cv=int(min(5, counts.min()))).fit(x[train], y[train])
            scores["qk_solution_linear"][test] = linear.decision_function(x[test])
        chosen.append({"fold": f, "head": head.head_name_, "train_chains": int(train.sum())})
    return scores, chosen


def select(
    scores: Mapping[str, np.ndarray],
    records: Sequence[Mapping[str, Any]],
    by_problem: Mapping[str, list[int]],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per problem, whether the kept answer is right, for each selector: the chain with the
    highest score per scorer (NaN never wins; ties go to the earlier sample), majority vote
    over parsed answers (a tie goes to the answer parsed first; no answer is wrong), the
    first sample, a random pick and the oracle (any chain right)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[bool]] = {name: [] for name in scores}
    for extra in ("majority_vote", "first_sample", "random", "oracle"):
        out[extra] = []
    for chains in by_problem.values():
        for name, s in scores.items():
            vals = np.array([s[i] for i in chains], dtype=float)
            vals = np.where(np.isfinite(vals), vals, -np.inf)
            out[name].append(bool(records[chains[int(np.argmax(vals))]]["correct"]))
        answers = [records[i]["answer"] for i in chains if records[i]["answer"] is not None]
        gold = records[chains[0]]["gold"]
        if answers:
            yes, no = answers.count(True), answers.count(False)
            vote = answers[0] if yes == no else yes > no
            out["majority_vote"].append(vote == gold)
        else:
            out["majority_vote"].append(False)
        out["first_sample"].append(bool(records[chains[0]]["correct"]))
        out["random"].append(bool(records[chains[int(rng.integers(len(chains)))]]["correct"]))
        out["oracle"].append(any(records[i]["correct"] for i in chains))
    return {k: np.array(v, dtype=bool) for k, v in out.items()}


def _auroc_entry(
    score: np.ndarray, positive: np.ndarray, n_boot: int, groups: np.ndarray | None = None
) -> dict[str, Any]:
    """AUROC with its 95% interval; ``groups`` (the problem of each chain or step) makes the
    bootstrap resample whole problems."""
    ok = np.isfinite(score)
    s, y = score[ok], positive[ok].astype(bool)
    entry: dict[str, Any] = {"n": int(ok.sum()), "positives": int(y.sum())}
    if min(int(y.sum()), int((~y).sum())) < MIN_PER_CLASS:
        return {**entry, "auroc": None, "ci": None, "too_few": True}
    g = None if groups is None else np.asarray(groups)[ok]
    ci = bootstrap_ci(auroc, s, y, n_boot=n_boot, groups=g)
    return {**entry, "auroc": float(ci.point), "ci": [ci.low, ci.high]}


def _accuracy_entry(correct: np.ndarray, n_boot: int) -> dict[str, Any]:
    ci = bootstrap_ci(accuracy, correct.astype(int), np.ones(len(correct), int), n_boot=n_boot)
    return {"accuracy": float(ci.point), "ci": [ci.low, ci.high], "n": len(correct)}


def _calibration_ids(judge: Any) -> set[str]:
    return {str(i) for i in judge.profile.data["calibration"].get("item_ids", [])}


def rank(
    gen: str | Path,
    profile: str | Path,
    out: str | Path,
    *,
    answer_profile: str | Path | None = None,
    model: Any = None,
    folds: int = 5,
    dtype: str = VERDICT_DTYPE,
    batch_size: int = 4,
    include_calibration: bool = False,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every chain of the generation folder ``gen`` and write ``out``: ranked.jsonl,
    solution_qk.npy, summary.json and summary.md. Returns the summary.

    ``profile`` judges the steps: a step profile (``unit: "step"``) on problems it never saw,
    or an answer profile (its step verdicts then carry a warning). ``answer_profile`` (an
    answer profile of the same model) is measured on the same steps beside a step profile."""
    from qkscore.audit import Judge

    folder = GenFolder(gen)
    records = folder.records()
    problems = folder.problems()
    judge = Judge(profile, model=model, dtype=dtype, model_answer=True)
    answer = None
    if answer_profile is not None:
        answer = Judge(answer_profile, model=judge.lm, model_answer=True)
        if answer.unit != "answer":
            raise ValueError(
                f"--answer-profile {answer_profile} was calibrated on steps; give the profile "
                "calibrated on answers (the step profile goes to --profile)"
            )
    step_profile = judge.unit == "step"
    if step_profile and include_calibration:
        raise ValueError(
            f"{profile} is a step profile calibrated on the steps of "
            f"{len(_calibration_ids(judge))} problems: judging those problems is refused "
            "(drop --include-calibration)"
        )
    probe = judge.profile.baseline("hidden_probe") if step_profile else None
    constant = _constant_reader(judge)
    calib = _calibration_ids(judge) | (set() if answer is None else _calibration_ids(answer))
    in_calib = sorted({p.id for p in problems} & calib)
    keep = [r for r in records if include_calibration or r["id"] not in calib]
    if not keep:
        raise ValueError(f"every problem of {folder.path} is in the profile's calibration split")
    settings = rank_settings(
        folder.meta(),
        judge.profile.digest,
        judge.lm.name,
        dtype,
        None if answer is None else answer.profile.digest,
    )
    cache = RankCache(Path(out), settings, log)
    done = cache.steps()
    cached = sum(chain_key(r) in done for r in keep)
    with Progress(progress, "steps", len(keep), cached, unit="chains") as advance:
        for r in keep:
            if chain_key(r) not in done:
                context = problems[r["problem"]].context
                verdicts = _step_verdicts(judge, context, r["steps"], answer, probe)
                cache.add_steps(chain_key(r), verdicts)
                done[chain_key(r)] = verdicts
                advance(1)
    solution = _solution_scores(judge, cache, keep, problems, batch_size, progress)
    shallow = _shallow_scores(folder, judge, records, keep, problems) if step_profile else None
    steps = []
    for i, (r, step_lp) in enumerate(zip(keep, solution.step_logprob)):
        rows = [
            {**v, "step_logprob": lp} for v, lp in zip(done[chain_key(r)], step_lp, strict=True)
        ]
        for row, m in zip(rows, [] if shallow is None else shallow[i]):
            row["shallow_matching"] = m
        steps.append(rows)
    correct = np.array([r["correct"] for r in keep], dtype=bool)
    groups = [r["id"] for r in keep]
    cross, chosen = cross_fit_solution(solution.qk, correct, groups, folds, seed)

    scorers = [n for n in STEP_SCORERS if any(n in v for verdicts in steps for v in verdicts)]
    chain_scores: dict[str, np.ndarray] = {}
    for name in scorers:
        for agg in STEP_AGGREGATES:
            chain_scores[f"{name}_{agg}"] = np.array(
                [_aggregate([v[name] for v in verdicts], agg) for verdicts in steps], dtype=float
            )
    chain_scores.update(cross)
    chain_scores.update(solution.confidence)

    by_problem = group_by_problem(keep)
    selected = select(chain_scores, keep, by_problem, seed)

    summary = _summary(
        keep,
        steps,
        scorers,
        chain_scores,
        selected,
        correct,
        n_boot=n_boot,
        folds=folds,
        chosen=chosen,
    )
    summary.update(answer_control(chain_scores, keep, by_problem, n_boot, seed))
    summary.update(
        constant_reader=constant,
        generations=str(folder.path),
        profile=str(profile),
        profile_unit=judge.unit,
        warning=judge.step_warning,
        answer_profile=None if answer_profile is None else str(answer_profile),
        hidden_probe_layer=None if probe is None else probe.layer_,
        reader=judge.reader_name,
        head=judge.head,
        n_problems=len(by_problem),
        n_chains=len(keep),
        calibration_overlap={
            "problems": len(in_calib),
            "excluded": not include_calibration and bool(in_calib),
            "ids": in_calib[:20],
        },
    )
    _write(Path(out), keep, steps, chain_scores, solution.qk, summary)
    return summary


def _aggregate(values: Sequence[float], how: str) -> float:
    """min, mean or last of a chain's step scores, over the steps that have one (NaN: a step
    whose logit confidence could not be placed); NaN for a chain with none."""
    xs = [x for x in values if x is not None and np.isfinite(x)]
    if not xs:
        return float("nan")
    return float({"min": min, "mean": np.mean, "last": lambda a: a[-1]}[how](xs))


def _compare(
    best: str, selected: Mapping[str, np.ndarray], others: Sequence[str]
) -> list[dict[str, Any]]:
    """McNemar records of selector ``best`` against each of ``others`` (``difference``: the
    accuracy difference; ``outcome`` better or worse only at p < 0.05)."""
    return [mcnemar_record(best, other, selected[best], selected[other]) for other in others]


def _best_qk(best_of_n: Mapping[str, Mapping[str, Any]]) -> str:
    names = [n for n in best_of_n if n.startswith("qk_")]
    return max(names, key=lambda n: (best_of_n[n]["accuracy"], -names.index(n)))


def group_by_problem(records: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Chain indices per problem id, in record order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["id"], []).append(i)
    return groups


#: The fewest chains on the smaller side (answered or not) for ``reads_finishing`` to be
#: tested: a bootstrap interval over 4 unanswered chains excluded 0.5 for an AUROC of 0.25,
#: which a rank test puts at p = 0.08.
MIN_FINISHING_SIDE = 10


def _far_from_chance(entry: Mapping[str, Any], distance: float = 0.2) -> bool:
    """AUROC at least ``distance`` from 0.5 with its 95% interval excluding 0.5: with a
    handful of unanswered chains the point estimate alone swings to 0 or 1 by chance."""
    value, ci = entry.get("auroc"), entry.get("ci")
    if value is None or ci is None or abs(value - 0.5) < distance:
        return False
    return ci[1] < 0.5 or ci[0] > 0.5


def answer_control(
    chain_scores: Mapping[str, np.ndarray],
    records: Sequence[Mapping[str, Any]],
    by_problem: Mapping[str, list[int]],
    n_boot: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Whether a scorer knows a chain is right, or only that it reached an answer line.

    A chain without an answer counts as wrong, so a scorer that only tells finished chains
    from rambling ones earns a high chain-level AUROC and wins best-of-N against selectors that
    prefer fluent loops (mean log-probability does). Per scorer: AUROC for a correct answer
    among the chains that have one, AUROC for having one at all, and best-of-N choosing only
    among answered chains. ``reads_finishing`` flags a scorer whose answered-vs-not AUROC is
    far from chance while among answered chains its interval does not lie above 0.5.
    """
    answered = np.array([r["answer"] is not None for r in records], dtype=bool)
    correct = np.array([r["correct"] for r in records], dtype=bool)
    # the same selectors choosing only among chains that reached an answer line
    masked = {k: np.where(answered, v, np.nan) for k, v in chain_scores.items()}
    selected_answered = select(masked, records, by_problem, seed)
    problem = np.array([r["id"] for r in records], dtype=object)
    among = {
        name: _auroc_entry(s[answered], correct[answered], n_boot, problem[answered])
        for name, s in chain_scores.items()
    }
    finishing = {
        name: _auroc_entry(s, answered, n_boot, problem) for name, s in chain_scores.items()
    }
    smaller_side = int(min(answered.sum(), (~answered).sum()))
    testable = smaller_side >= MIN_FINISHING_SIDE
    flagged = [
        name
        for name in chain_scores
        if testable
        and _far_from_chance(finishing[name])
        and (among[name]["ci"] is None or among[name]["ci"][0] <= 0.5)
    ]
    best_of_n = {name: _accuracy_entry(c, n_boot) for name, c in selected_answered.items()}
    best = _best_qk(best_of_n)
    return {
        "answer_control": {
            "chains_answered": int(answered.sum()),
            "chain_level_among_answered": among,
            "answered_vs_not": finishing,
            "reads_finishing": flagged,
            "finishing_testable": testable,
            "best_of_n_among_answered": best_of_n,
            "best_qk_selector_among_answered": best,
            "comparisons_among_answered": _compare(
                best, selected_answered, ("majority_vote", "logprob_mean")
            ),
            "step_reader_vs_majority_among_answered": _step_reader_vs_majority(selected_answered),
        }
    }


def _step_subsets(labels: Sequence[Mapping[str, Any]], valid: np.ndarray) -> dict[str, Any]:
    """Masks over the parsed steps for the step-level breakdowns. Invalid steps have no proof
    depth, so each subset keeps every invalid step and some of the valid ones: ``derived_only``
    leaves out the valid steps that restate a premise (depth 0), ``grounded_only`` those that
    follow only from an earlier unsupported step, ``by_depth`` keeps the valid steps of one
    depth."""
    depth = [lab.get("depth") for lab in labels]
    restated = valid & np.array([d == 0 for d in depth], dtype=bool)
    ungrounded = valid & np.array([lab.get("grounded") is False for lab in labels], dtype=bool)
    by_depth = {
        str(d): ~valid | np.array([x == d for x in depth], dtype=bool)
        for d in sorted({d for d, v in zip(depth, valid) if v and d is not None})
    }
    return {"derived_only": ~restated, "grounded_only": ~ungrounded, "by_depth": by_depth}


def _summary(records, steps, scorers, chain_scores, selected, correct, *, n_boot, folds, chosen):
    labels = [lab for r in records for lab in r["labels"]]
    step_rows = [
        (v, lab, r.get("hops"), r["id"])
        for r, verdicts in zip(records, steps)
        for v, lab in zip(verdicts, r["labels"])
        if lab["label"] != "unparsed"
    ]
    step_level: dict[str, Any] = {}
    valid = np.array([lab["label"] == "valid" for _, lab, _, _ in step_rows], dtype=bool)
    hops = np.array([-1 if h is None else h for _, _, h, _ in step_rows])
    problem = np.array([p for _, _, _, p in step_rows], dtype=object)
    # A valid step at depth 0 restates a premise: a scorer that only recognises text copied
    # from the context does well on those, so each scorer is also measured without them.
    subsets = _step_subsets([lab for _, lab, _, _ in step_rows], valid)
    values = {
        name: np.array([v.get(name, np.nan) for v, _, _, _ in step_rows], dtype=float)
        for name in scorers
    }

    def entry(s: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        return _auroc_entry(s[mask], valid[mask], n_boot, problem[mask])

    every = np.ones(len(step_rows), dtype=bool)
    for name in scorers:
        s = values[name]
        e: dict[str, Any] = {
            "overall": entry(s, every),
            "derived_only": entry(s, subsets["derived_only"]),
            "grounded_only": entry(s, subsets["grounded_only"]),
            "by_depth": {d: entry(s, m) for d, m in subsets["by_depth"].items()},
            "by_hops": {},
        }
        for h in sorted(set(hops.tolist())):
            e["by_hops"][str(h) if h >= 0 else "unknown"] = entry(s, hops == h)
        step_level[name] = e
    paired = [
        {"a": a, "b": b, "subset": key}
        | _paired_entry(values[a], values[b], valid, problem, mask, n_boot)
        for a, b in STEP_PAIRS
        if a in values and b in values
        for key, mask in (
            ("overall", every),
            ("derived_only", subsets["derived_only"]),
            ("grounded_only", subsets["grounded_only"]),
        )
    ]
    depths: dict[str, int] = {}
    for _, lab, _, _ in step_rows:
        if lab["label"] == "valid":
            key = str(lab["depth"])
            depths[key] = depths.get(key, 0) + 1
    chain_groups = np.array([r["id"] for r in records], dtype=object)
    chain_level = {
        name: _auroc_entry(s, correct, n_boot, chain_groups) for name, s in chain_scores.items()
    }
    best_of_n = {name: _accuracy_entry(c, n_boot) for name, c in selected.items()}
    best_qk = _best_qk(best_of_n)
    comparisons = _compare(best_qk, selected, ("majority_vote", "logprob_mean"))
    return {
        "format_version": RANK_SUMMARY_VERSION,
        "qkscore_version": __version__,
        "parse_coverage": parse_coverage(labels),
        "valid_steps_by_depth": dict(sorted(depths.items())),
        "chains_correct": float(correct.mean()),
        "answers_parsed": float(np.mean([r["answer"] is not None for r in records])),
        "step_level": step_level,
        "step_paired": paired,
        "chain_level": chain_level,
        "best_of_n": best_of_n,
        "best_qk_selector": best_qk,
        "comparisons": comparisons,
        "step_reader_vs_majority": _step_reader_vs_majority(selected),
        "solution_folds": {"folds": folds, "heads": chosen},
    }


def _paired_entry(a, b, valid, problem, mask, n_boot) -> dict[str, Any]:
    """Paired bootstrap of AUROC(a) - AUROC(b) on the same steps, resampling problems."""
    ok = mask & np.isfinite(a) & np.isfinite(b)
    y = valid[ok]
    entry: dict[str, Any] = {"test": "paired_bootstrap", "n": int(ok.sum())}
    if y.all() or not y.any():
        return {**entry, "difference": None, "ci": None, "pvalue": None, "outcome": None}
    test = paired_bootstrap(auroc, a[ok], b[ok], y, groups=problem[ok], n_boot=n_boot)
    return {
        **entry,
        "difference": test.difference,
        "ci": [test.low, test.high],
        "pvalue": test.pvalue,
        "outcome": outcome(test.pvalue, test.difference),
    }


#: How summary.md says each outcome (the summary stores the machine key, never these words).
BEATS = {"better": "beats", "worse": "is beaten by", "no_difference": "does not beat"}
READS_STEPS = {
    "better": "reads steps better than",
    "worse": "reads steps worse than",
    "no_difference": "is no different from",
}


def _step_reader_vs_majority(selected: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each per-chain selector of the step reader (min, mean) against majority vote."""
    return [
        record
        for name in STEP_READER_SELECTORS
        if name in selected
        for record in _compare(name, selected, ("majority_vote",))
    ]


def _fmt(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if entry.get("too_few"):
        return f"too few (< {MIN_PER_CLASS} of a class)"
    if value is None:
        return "–"
    ci = entry.get("ci")
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown; every comparison says plainly whether QK selection wins."""
    cov = summary["parse_coverage"]
    lines = [
        "# Best-of-N with query-key alignment",
        "",
        f"{summary['n_problems']} problems, {summary['n_chains']} chains; final answer parsed "
        f"in {summary['answers_parsed']:.1%}, correct in {summary['chains_correct']:.1%}. "
        f"Reader `{summary['reader']}` (head {summary['head']}).",
        f"Steps: {cov['steps']} ({cov['valid']} valid, {cov['invalid']} invalid, "
        f"{cov['unparsed']} unparsed; parse coverage "
        + ("–" if cov["coverage"] is None else f"{cov['coverage']:.1%}")
        + ").",
    ]
    if summary.get("warning"):
        lines.append(f"**Warning: {summary['warning']}.**")
    elif summary.get("profile_unit") == "step":
        lines.append(
            "Step verdicts come from a step profile (calibrated on the steps of other problems"
            + (
                f"; hidden-state probe at layer {summary['hidden_probe_layer']}"
                if summary.get("hidden_probe_layer") is not None
                else ""
            )
            + (
                f"; answer profile `{summary['answer_profile']}` beside it as `answer_*`"
                if summary.get("answer_profile")
                else ""
            )
            + ")."
        )
    if summary.get("constant_reader"):
        lines.append(
            f"**The profile's reader `{summary['reader']}` keeps no head: its margin is one "
            "constant, so `qk_reader_*` rank nothing; `qk_head_*` read the profile's single "
            "head.**"
        )
    overlap = summary["calibration_overlap"]
    lines.append(
        f"Problems in the profile's calibration split: {overlap['problems']}"
        + (" (excluded from every figure)." if overlap["excluded"] else ".")
    )
    lines += ["", "## Best-of-N accuracy (95% bootstrap CI)", "", "| selector | accuracy |"]
    lines.append("|---|---|")
    for name, entry in summary["best_of_n"].items():
        lines.append(f"| {name} | {_fmt(entry, 'accuracy')} |")
    lines += [""]
    lines += _best_qk_lines(summary["comparisons"])
    lines.append(
        "- The best QK selector is picked among the QK selectors by its accuracy on these same "
        "problems, so its figure is optimistic; the others are not picked."
    )
    lines += _step_reader_lines(summary.get("step_reader_vs_majority", []))
    lines += ["", "## Chain level: AUROC for a correct final answer", ""]
    lines += ["| scorer | AUROC | chains |", "|---|---|---|"]
    for name, entry in summary["chain_level"].items():
        lines.append(f"| {name} | {_fmt(entry, 'auroc')} | {entry['n']} |")
    control = summary.get("answer_control")
    if control:
        lines += _answer_control_markdown(control)
    lines += _step_level_markdown(summary)
    return "\n".join(lines) + "\n"


def _best_qk_lines(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"- Best QK selector `{c['a']}` {BEATS[c['outcome']]} `{c['b']}` "
        f"(difference {c['difference']:+.3f}, McNemar p = {c['pvalue']:.3g})."
        for c in comparisons
    ]


def _step_reader_lines(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"- Step reader selector `{c['a']}` {BEATS[c['outcome']]} majority vote "
        f"(difference {c['difference']:+.3f}, McNemar p = {c['pvalue']:.3g}; not picked)."
        for c in comparisons
    ]


def _step_level_markdown(summary: Mapping[str, Any]) -> list[str]:
    """The step-level tables: all, derived and grounded steps, by depth, by hop count, and the
    paired comparison of the step reader with the model's own step log-odds."""
    level = summary["step_level"]
    restated = summary.get("valid_steps_by_depth", {}).get("0", 0)
    lines = [
        "",
        "## Step level: AUROC against the prover's labels (valid = positive)",
        "",
        "95% intervals resample whole problems. Every column keeps all invalid steps; "
        f"{restated} valid steps restate a premise (depth 0): *derived* leaves them out, "
        "*grounded* leaves out valid steps that follow only from an unsupported earlier step.",
        "",
        "| scorer | all steps | derived | grounded | steps (valid): all / derived |",
        "|---|---|---|---|---|",
    ]
    for name, entry in level.items():
        a, d, g = entry["overall"], entry["derived_only"], entry["grounded_only"]
        lines.append(
            f"| {name} | {_fmt(a, 'auroc')} | {_fmt(d, 'auroc')} | {_fmt(g, 'auroc')} | "
            f"{a['n']} ({a['positives']}) / {d['n']} ({d['positives']}) |"
        )
    words = {"overall": "all", "derived_only": "derived", "grounded_only": "grounded"}
    lines.append("")
    for e in summary.get("step_paired", []):
        if e.get("difference") is None:
            continue
        lines.append(
            f"- `{e['a']}` {READS_STEPS[e['outcome']]} `{e['b']}` on "
            f"{words.get(e['subset'], e['subset'])} steps: AUROC difference "
            f"{e['difference']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}], paired bootstrap by "
            f"problem p = {e['pvalue']:.3g}."
        )
    depths = sorted({d for e in level.values() for d in e.get("by_depth", {})}, key=int)
    if depths:
        lines += [
            "",
            "By proof depth (valid steps of that depth against every invalid step):",
            "",
            "| scorer | " + " | ".join(f"depth {d}" for d in depths) + " |",
            "|---|" + "---|" * len(depths),
        ]
        for name, entry in level.items():
            cells = [_fmt(entry["by_depth"].get(d, {}), "auroc") for d in depths]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "By the problem's hop count:",
        "",
        "| scorer | problem hops | AUROC | steps (valid) |",
        "|---|---|---|---|",
    ]
    for name, entry in level.items():
        for hops, e in entry["by_hops"].items():
            lines.append(f"| {name} | {hops} | {_fmt(e, 'auroc')} | {e['n']} ({e['positives']}) |")
    return lines


def _answer_control_markdown(control: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "## Control: a right answer, or only an answer line?",
        "",
        f"{control['chains_answered']} chains reached an answer line; a chain without one counts "
        "as wrong above.",
        "",
        "| scorer | AUROC correct, among answered | AUROC answered vs not |",
        "|---|---|---|",
    ]
    for name, entry in control["chain_level_among_answered"].items():
        finishing = control["answered_vs_not"][name]
        lines.append(f"| {name} | {_fmt(entry, 'auroc')} | {_fmt(finishing, 'auroc')} |")
    if not control.get("finishing_testable", True):
        lines += [
            "",
            f"Too few chains on one side ({MIN_FINISHING_SIDE} needed) to tell whether a scorer "
            "only reads finishing; no scorer is flagged.",
        ]
    if control["reads_finishing"]:
        names = ", ".join(f"`{n}`" for n in control["reads_finishing"])
        lines += [
            "",
            f"**{names} tell finished chains from unfinished ones but not right answers from "
            "wrong ones among the finished: their chain-level figures above measure finishing.**",
        ]
    lines += ["", "Best-of-N choosing only among chains with an answer line:", ""]
    lines += ["| selector | accuracy |", "|---|---|"]
    for name, entry in control["best_of_n_among_answered"].items():
        lines.append(f"| {name} | {_fmt(entry, 'accuracy')} |")
    lines.append("")
    lines += _best_qk_lines(control["comparisons_among_answered"])
    lines += _step_reader_lines(control.get("step_reader_vs_majority_among_answered", []))
    return lines


def _write(out: Path, records, steps, chain_scores, qk, summary) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (r, verdicts) in enumerate(zip(records, steps)):
        row = {k: r[k] for k in ("id", "sample", "answer", "gold", "correct", "hops")}
        row["scores"] = {
            name: (None if not np.isfinite(s[i]) else float(s[i]))
            for name, s in chain_scores.items()
        }
        row["steps"] = [
            {"text": t, **lab, **v} for t, lab, v in zip(r["steps"], r["labels"], verdicts)
        ]
        lines.append(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    write_bytes(out / "ranked.jsonl", b"".join(lines))
    save_array(out / "solution_qk.npy", qk)
    write_json(out / "summary.json", RankSummary.checked(summary, out / "summary.json"))
    write_bytes(out / "summary.md", summary_markdown(summary).encode())

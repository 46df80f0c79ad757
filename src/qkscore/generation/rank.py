"""Rank sampled chains: per-step QK verdicts, the solution-level QK score, logit confidence,
and best-of-N selectors compared with majority vote and the oracle.

Why the solution-level readers are cross-fitted by problem: the head (or the linear readout of
every head) is chosen on labelled generations, and a chain must never be scored by a reader
that saw its own problem. Problems are dealt into ``folds`` groups; each group's chains are
scored by readers fitted on the other groups only.

Problems whose ids are in the profile's calibration split are left out of every figure by
default (the step reader was fitted on them); the summary says how many there were.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.audit.chain import context_with_steps
from qkscore.generation.folder import GenFolder
from qkscore.generation.label import parse_coverage
from qkscore.generation.rank_cache import RankCache, chain_key, rank_settings
from qkscore.generation.solution import CONFIDENCE, SolutionScores, score_solutions
from qkscore.run import _atomic_write_bytes, _progress, save_array, write_json
from qkscore.stats import accuracy, auroc, bootstrap_ci, mcnemar

__all__ = ["STEP_SCORERS", "cross_fit_solution", "rank", "select"]

#: Step scorers, higher = more likely valid: the profile's reader margin, its single head's
#: margin, and the model's own log-odds of "True" for the step (the fair baseline).
STEP_SCORERS = ("qk_reader", "qk_head", "model_logodds")
STEP_AGGREGATES = ("min", "mean", "last")
SOLUTION_SCORERS = ("qk_solution_head", "qk_solution_linear")


def _step_verdicts(judge: Any, context: str, steps: Sequence[str]) -> list[dict[str, float]]:
    """The profile reader's margin, the profile head's signed margin and the model's own
    log-odds of "True" for each step, judged against the context plus the steps before it (as
    ``verify-chain`` does). The whole pass runs: the fast path stops at the reader's deepest
    layer, which may lie below the single head's (an L1 reader that kept no head stops at 0)."""
    if not steps:
        return []
    queries = [(context_with_steps(context, steps[:i]), s) for i, s in enumerate(steps)]
    out = []
    for v in judge.check_many(queries, model_answer=True):
        head = judge.sign * (v.qk_scores["True"] - v.qk_scores["False"]) - judge.threshold
        p = min(max(float(v.model_probability), 1e-12), 1 - 1e-12)
        out.append(
            {
                "qk_reader": v.margin,
                "qk_head": float(head),
                "model_logodds": float(np.log(p) - np.log1p(-p)),
                "probability": v.probability,
                "verdict": v.verdict,
            }
        )
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
    with _progress(
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
            )
            keys = [chain_key(r) for r in batch]
            for row in cache.add_solutions(keys, part.qk, part.confidence):
                done[row["key"]] = row
            advance(len(batch))
    rows = [done[chain_key(r)] for r in records]
    qk = np.array([row["qk"] for row in rows], dtype=np.float32)
    confidence = {
        name: np.array([row["confidence"][name] for row in rows], dtype=float)
        for name in CONFIDENCE
    }
    return SolutionScores(qk, confidence)


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


def _auroc_entry(score: np.ndarray, positive: np.ndarray, n_boot: int) -> dict[str, Any]:
    ok = np.isfinite(score)
    s, y = score[ok], positive[ok].astype(bool)
    entry: dict[str, Any] = {"n": int(ok.sum()), "positives": int(y.sum())}
    if y.all() or not y.any():
        return {**entry, "auroc": None, "ci": None}
    ci = bootstrap_ci(auroc, s, y, n_boot=n_boot)
    return {**entry, "auroc": float(ci.point), "ci": [ci.low, ci.high]}


def _accuracy_entry(correct: np.ndarray, n_boot: int) -> dict[str, Any]:
    ci = bootstrap_ci(accuracy, correct.astype(int), np.ones(len(correct), int), n_boot=n_boot)
    return {"accuracy": float(ci.point), "ci": [ci.low, ci.high], "n": len(correct)}


def rank(
    gen: str | Path,
    profile: str | Path,
    out: str | Path,
    *,
    model: Any = None,
    folds: int = 5,
    dtype: str = "float32",
    batch_size: int = 4,
    include_calibration: bool = False,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every chain of the generation folder ``gen`` and write ``out``: ranked.jsonl,
    solution_qk.npy, summary.json and summary.md. Returns the summary."""
    from qkscore.audit import Judge

    folder = GenFolder(gen)
    records = folder.records()
    problems = folder.problems()
    judge = Judge(profile, model=model, dtype=dtype, model_answer=True)
    constant = _constant_reader(judge)
    calib = {str(i) for i in judge.profile.data["calibration"].get("item_ids", [])}
    in_calib = sorted({p.id for p in problems} & calib)
    keep = [r for r in records if include_calibration or r["id"] not in calib]
    if not keep:
        raise ValueError(f"every problem of {folder.path} is in the profile's calibration split")
    settings = rank_settings(folder.meta(), Path(profile), judge.lm.name, dtype)
    cache = RankCache(Path(out), settings, log)
    done = cache.steps()
    cached = sum(chain_key(r) in done for r in keep)
    with _progress(progress, "steps", len(keep), cached, unit="chains") as advance:
        for r in keep:
            if chain_key(r) not in done:
                verdicts = _step_verdicts(judge, problems[r["problem"]].context, r["steps"])
                cache.add_steps(chain_key(r), verdicts)
                done[chain_key(r)] = verdicts
                advance(1)
    steps = [done[chain_key(r)] for r in keep]
    solution = _solution_scores(judge, cache, keep, problems, batch_size, progress)
    correct = np.array([r["correct"] for r in keep], dtype=bool)
    groups = [r["id"] for r in keep]
    cross, chosen = cross_fit_solution(solution.qk, correct, groups, folds, seed)

    chain_scores: dict[str, np.ndarray] = {}
    for name in STEP_SCORERS:
        for agg in STEP_AGGREGATES:
            vals = []
            for verdicts in steps:
                xs = [v[name] for v in verdicts]
                if not xs:
                    vals.append(np.nan)
                else:
                    vals.append({"min": min, "mean": np.mean, "last": lambda a: a[-1]}[agg](xs))
            chain_scores[f"{name}_{agg}"] = np.array(vals, dtype=float)
    chain_scores.update(cross)
    chain_scores.update(solution.confidence)

    by_problem = group_by_problem(keep)
    selected = select(chain_scores, keep, by_problem, seed)

    summary = _summary(
        keep, steps, chain_scores, selected, correct, n_boot=n_boot, folds=folds, chosen=chosen
    )
    summary.update(answer_control(chain_scores, keep, by_problem, n_boot, seed))
    summary.update(
        constant_reader=constant,
        generations=str(folder.path),
        profile=str(profile),
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


def _compare(best: str, selected: Mapping[str, np.ndarray], others: Sequence[str]) -> dict:
    """McNemar of selector ``best`` against each of ``others``; "beats" only at p < 0.05."""
    out = {}
    for other in others:
        test = mcnemar(selected[best], selected[other])
        diff = float(selected[best].mean() - selected[other].mean())
        verdict = (
            "beats"
            if test.pvalue < 0.05 and diff > 0
            else ("is beaten by" if test.pvalue < 0.05 else "does not beat")
        )
        out[other] = {
            "selector": best,
            "accuracy_difference": diff,
            "mcnemar_statistic": test.statistic,
            "pvalue": test.pvalue,
            "verdict": verdict,
        }
    return out


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
    among = {
        name: _auroc_entry(s[answered], correct[answered], n_boot)
        for name, s in chain_scores.items()
    }
    finishing = {name: _auroc_entry(s, answered, n_boot) for name, s in chain_scores.items()}
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
        }
    }


def _summary(records, steps, chain_scores, selected, correct, *, n_boot, folds, chosen):
    labels = [lab for r in records for lab in r["labels"]]
    step_rows = [
        (v, lab, r.get("hops"))
        for r, verdicts in zip(records, steps)
        for v, lab in zip(verdicts, r["labels"])
        if lab["label"] != "unparsed"
    ]
    step_level: dict[str, Any] = {}
    valid = np.array([lab["label"] == "valid" for _, lab, _ in step_rows], dtype=bool)
    hops = np.array([-1 if h is None else h for _, _, h in step_rows])
    # A valid step at depth 0 restates a premise: a scorer that only recognises text copied
    # from the context does well on those, so each scorer is also measured without them.
    restated = valid & np.array([lab.get("depth") == 0 for _, lab, _ in step_rows], dtype=bool)
    for name in STEP_SCORERS:
        s = np.array([v[name] for v, _, _ in step_rows], dtype=float)
        entry = {
            "overall": _auroc_entry(s, valid, n_boot),
            "derived_only": _auroc_entry(s[~restated], valid[~restated], n_boot),
            "by_hops": {},
        }
        for h in sorted(set(hops.tolist())):
            m = hops == h
            entry["by_hops"][str(h) if h >= 0 else "unknown"] = _auroc_entry(s[m], valid[m], n_boot)
        step_level[name] = entry
    depths: dict[str, int] = {}
    for _, lab, _ in step_rows:
        if lab["label"] == "valid":
            key = str(lab["depth"])
            depths[key] = depths.get(key, 0) + 1
    chain_level = {name: _auroc_entry(s, correct, n_boot) for name, s in chain_scores.items()}
    best_of_n = {name: _accuracy_entry(c, n_boot) for name, c in selected.items()}
    best_qk = _best_qk(best_of_n)
    comparisons = _compare(best_qk, selected, ("majority_vote", "logprob_mean"))
    return {
        "parse_coverage": parse_coverage(labels),
        "valid_steps_by_depth": dict(sorted(depths.items())),
        "chains_correct": float(correct.mean()),
        "answers_parsed": float(np.mean([r["answer"] is not None for r in records])),
        "step_level": step_level,
        "chain_level": chain_level,
        "best_of_n": best_of_n,
        "best_qk_selector": best_qk,
        "comparisons": comparisons,
        "solution_folds": {"folds": folds, "heads": chosen},
    }


def _fmt(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
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
    for other, c in summary["comparisons"].items():
        lines.append(
            f"- Best QK selector `{c['selector']}` {c['verdict']} `{other}` "
            f"(difference {c['accuracy_difference']:+.3f}, McNemar p = {c['pvalue']:.3g})."
        )
    lines.append(
        "- The best QK selector is picked among the QK selectors by its accuracy on these same "
        "problems, so its figure is optimistic; the others are not picked."
    )
    lines += ["", "## Chain level: AUROC for a correct final answer", ""]
    lines += ["| scorer | AUROC | chains |", "|---|---|---|"]
    for name, entry in summary["chain_level"].items():
        lines.append(f"| {name} | {_fmt(entry, 'auroc')} | {entry['n']} |")
    control = summary.get("answer_control")
    if control:
        lines += _answer_control_markdown(control)
    lines += ["", "## Step level: AUROC against the prover's labels (valid = positive)", ""]
    lines += ["| scorer | problem hops | AUROC | steps (valid) |", "|---|---|---|---|"]
    for name, entry in summary["step_level"].items():
        rows = [("all", entry["overall"]), *entry["by_hops"].items()]
        for hops, e in rows:
            lines.append(f"| {name} | {hops} | {_fmt(e, 'auroc')} | {e['n']} ({e['positives']}) |")
    restated = summary.get("valid_steps_by_depth", {}).get("0", 0)
    lines += [
        "",
        f"{restated} valid steps restate a premise (depth 0). Without them (valid steps "
        "derived by at least one rule against the invalid ones):",
        "",
        "| scorer | AUROC | steps (valid) |",
        "|---|---|---|",
    ]
    for name, entry in summary["step_level"].items():
        e = entry.get("derived_only")
        if e:
            lines.append(f"| {name} | {_fmt(e, 'auroc')} | {e['n']} ({e['positives']}) |")
    return "\n".join(lines) + "\n"


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
    for other, c in control["comparisons_among_answered"].items():
        lines.append(
            f"- Best QK selector `{c['selector']}` {c['verdict']} `{other}` "
            f"(difference {c['accuracy_difference']:+.3f}, McNemar p = {c['pvalue']:.3g})."
        )
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
    _atomic_write_bytes(out / "ranked.jsonl", lambda fh: fh.write(b"".join(lines)))
    save_array(out / "solution_qk.npy", qk)
    write_json(out / "summary.json", summary)
    text = summary_markdown(summary).encode()
    _atomic_write_bytes(out / "summary.md", lambda fh: fh.write(text))

"""Can a profile's head find the faulty step of a chain of thought? And how fast is one check?

ProntoQA ships a gold ``chain_of_thought`` for every item (facts and rules copied from the
context, then derived facts; every step valid). For each sampled item this builds the gold chain
and two corrupted ones, each with ONE step replaced:

* ``negation``: the step's grammatical negation (contradicted by the premises);
* ``unrelated``: "<chain subject> is <predicate of another item>", a term this context never
  mentions (not entailed).

Every chain is verified with ``Judge.verify_chain`` semantics (step i against the context plus
steps before it) and the script reports, for the head and (unless ``--fast``) for the model's own
True/False answer as a baseline verifier: the false-alarm rate on gold steps, the detection
rate of the corrupted step, flags raised on the untouched steps before it, and how often the
first failing step is exactly the corrupted one.

``--latency N`` also times single checks (batch of one) both ways: the full pass with the
model's answer, and the fast path that stops after the chosen head's layer.

    .venv/bin/python benchmarks/bench_chain.py --profile runs/findings/MODEL/prontoqa/profile.json \
        [--n 100] [--seed 0] [--fast] [--threads 1] [--latency 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from qkscore.audit import Judge
from qkscore.audit.chain import (
    assemble_chain,
    chain_subject,
    context_with_steps,
    corrupt_negation,
    corrupt_unrelated,
    pick_unrelated_predicate,
    predicate_pool,
    step_kind,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QKSCORE_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_DATA = f"prontoqa:{SHARED}/prontoqa/truefalse_0shot/*hop_0shot_random.json"
console = Console(highlight=False)


def build_chains(items: list, n: int, seed: int) -> list[dict[str, Any]]:
    """Gold and corrupted chains for ``n`` sampled items (one corrupted step each)."""
    rng = np.random.default_rng(seed)
    usable = [it for it in items if len(it.meta.get("chain_of_thought") or []) >= 2]
    if not usable:
        raise SystemExit("no item carries a chain_of_thought: use a ProntoQA data spec")
    pool = predicate_pool(it.meta["chain_of_thought"] for it in usable)
    picked = rng.choice(len(usable), size=min(n, len(usable)), replace=False)
    chains = []
    for idx in sorted(picked):
        item = usable[int(idx)]
        gold = list(item.meta["chain_of_thought"])
        kinds = [step_kind(item.context, s) for s in gold]
        base = {"item": item.id, "context": item.context, "step_kinds": kinds}
        chains.append({**base, "kind": "gold", "corrupted": None, "steps": gold})
        j = int(rng.integers(len(gold)))
        chains.append(
            {**base, "kind": "negation", "corrupted": j, "steps": corrupt_negation(gold, j)}
        )
        subject = chain_subject(gold)
        if subject is not None:
            j = int(rng.integers(len(gold)))
            pred = pick_unrelated_predicate(item.context, gold, pool, rng)
            steps = corrupt_unrelated(gold, j, subject, pred)
            chains.append({**base, "kind": "unrelated", "corrupted": j, "steps": steps})
    return chains


def verify_all(judge: Judge, chains: list[dict], batch: int) -> None:
    """Judge every distinct (premises, step) once, then assemble each chain's result.

    Corrupted chains share their prefix with the gold chain, so deduplicating saves about a
    third of the passes without changing any verdict.
    """
    keys: dict[tuple[str, str], int] = {}
    for ch in chains:
        ch["queries"] = []
        for i, step in enumerate(ch["steps"]):
            key = (context_with_steps(ch["context"], ch["steps"][:i]), step)
            ch["queries"].append(keys.setdefault(key, len(keys)))
    queries = list(keys)
    verdicts: list = []
    start = time.perf_counter()
    for b in range(0, len(queries), batch):
        verdicts += judge.check_many(queries[b : b + batch])
        done = min(b + batch, len(queries))
        rate = (time.perf_counter() - start) / done
        console.print(f"  {done}/{len(queries)} steps judged ({rate * 1000:.0f} ms/step)", end="\r")
    console.print()
    for ch in chains:
        vs = [verdicts[q] for q in ch["queries"]]
        ch["result"] = assemble_chain(ch["steps"], vs, head=judge.head, fast=vs[0].fast,
                                      latency_ms=0.0)  # fmt: skip


def records(chains: list[dict], verifier: str) -> list[dict]:
    out = []
    for ch in chains:
        steps = ch["result"].steps
        if verifier == "head":
            flags = [s.valid for s in steps]
        else:
            flags = [bool(s.model_answer) for s in steps]
        first = next((i for i, ok in enumerate(flags) if not ok), None)
        out.append({"kind": ch["kind"], "corrupted": ch["corrupted"], "steps": flags,
                    "first_failure": first, "step_kinds": ch["step_kinds"]})  # fmt: skip
    return out


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def print_tables(summaries: dict[str, dict], title: str) -> None:
    """One row per figure, one column per verifier (narrow enough for a terminal)."""
    figures: list[tuple[str, Any]] = [
        ("gold: steps flagged", lambda s: s["gold"]["false_alarm_rate"]),
        ("  copied steps", lambda s: s["gold"]["false_alarm_by_kind"].get("copied")),
        ("  derived steps", lambda s: s["gold"]["false_alarm_by_kind"].get("derived")),
        ("gold: chains unflagged", lambda s: s["gold"]["clean_chain_rate"]),
    ]
    for kind in ("negation", "unrelated"):
        figures += [
            (f"{kind}: step detected", lambda s, k=kind: _get(s, k, "detection_rate")),
            ("  copied steps", lambda s, k=kind: _get(s, k, "detection_by_kind", "copied")),
            ("  derived steps", lambda s, k=kind: _get(s, k, "detection_by_kind", "derived")),
            (f"{kind}: flags before it", lambda s, k=kind: _get(s, k, "false_alarm_before")),
            (
                f"{kind}: first failure exact",
                lambda s, k=kind: _get(s, k, "first_failure_accuracy"),
            ),
        ]
    table = Table(title=title)
    table.add_column("figure")
    for name in summaries:
        table.add_column(name, justify="right")
    for label, value in figures:
        table.add_row(label, *(pct(value(s)) for s in summaries.values()))
    console.print(table)
    console.print(
        "gold steps flagged = false alarms; copied = restates a premise, derived = needs "
        "reasoning; flags before it = flags on the untouched steps before the corrupted one"
    )


def _get(summary: dict, kind: str, key: str, sub: str | None = None) -> Any:
    value = summary.get(kind, {}).get(key)
    return value.get(sub) if sub is not None and value is not None else value


def latency(judge: Judge, items: list, n: int, repeats: int = 1) -> dict[str, Any]:
    """Median ms per single check, full pass with the model's answer vs the early stop."""
    pairs = [(it.context, it.statement) for it in items[:n]]
    judge.check(*pairs[0])  # warm-up
    judge.check(*pairs[0], model_answer=False)
    out: dict[str, Any] = {"n": len(pairs)}
    for name, full in (("full", True), ("fast", False), ("full_again", True)):
        times = []
        for _ in range(repeats):
            for ctx, st in pairs:
                t = time.perf_counter()
                judge.check(ctx, st, model_answer=full)
                times.append((time.perf_counter() - t) * 1000)
        out[name] = {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times)}
    out["layers"] = judge.lm.n_layers
    out["fast_layers"] = judge.profile.head[0] + 1
    out["sweep"] = stop_sweep(judge, pairs)
    return out


def stop_sweep(judge: Judge, pairs: list[tuple[str, str]]) -> dict[int, float]:
    """Median ms of a single scoring pass stopped after layer L, for a few L: what the fast
    path would save with a head at that depth (the profile's own head is only one point)."""
    from qkscore.data import Item
    from qkscore.scoring import score_prompts

    lm = judge.lm
    prompts = [
        judge.template.render(Item(id="q", context=c, statement=s, label="True"), lm.tokenizer)
        for c, s in pairs
    ]
    layers = sorted({round(f * (lm.n_layers - 1)) for f in (0.25, 0.5, 0.75, 1.0)})
    out = {}
    for stop in layers:
        times = []
        for prompt in prompts:
            t = time.perf_counter()
            score_prompts(lm, [prompt], rope=judge.rope, max_layer=stop, baseline=False)
            times.append((time.perf_counter() - t) * 1000)
        out[stop] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="profile JSON (any model)")
    parser.add_argument("--n", type=int, default=60, help="ProntoQA items sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=DEFAULT_DATA, help="ProntoQA data spec")
    parser.add_argument("--fast", action="store_true", help="head only: skip the model's answer")
    parser.add_argument("--batch", type=int, default=16, help="steps per model call")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--latency", type=int, default=0, help="also time N single checks")
    parser.add_argument("--latency-only", action="store_true", help="skip the chain benchmark")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--no-share-prefix", action="store_true", help="re-run the shared context for every step"
    )
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    warnings.simplefilter("ignore")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from qkscore.data import load_items

    judge = Judge(
        args.profile,
        dtype=args.dtype,
        model_answer=not args.fast,
        batch_size=args.batch,
        share_prefix=not args.no_share_prefix,
    )
    items = load_items(args.data)
    console.print(
        f"profile {args.profile}: {judge.profile.data['model'].get('name')} head {judge.head} "
        f"(fast path stops after layer {judge.profile.head[0]} of {judge.lm.n_layers}); "
        f"{len(items)} items in {args.data}; torch threads {torch.get_num_threads()}"
    )
    report: dict[str, Any] = {"command": command, "profile": args.profile, "head": judge.head}
    if not args.latency_only:
        chains = build_chains(items, args.n, args.seed)
        n_steps = sum(len(c["steps"]) for c in chains)
        console.print(f"{len(chains)} chains ({n_steps} steps) from {args.n} items")
        start = time.perf_counter()
        verify_all(judge, chains, args.batch)
        elapsed = time.perf_counter() - start
        summaries = {f"head {judge.head}": summarise(records(chains, "head"))}
        if not args.fast:
            summaries["model's answer"] = summarise(records(chains, "model"))
        print_tables(summaries, f"Chain verification on {args.n} ProntoQA items ({elapsed:.0f} s)")
        report["chains"] = summaries
        report["seconds"] = elapsed
    if args.latency or args.latency_only:
        lat = latency(judge, items, args.latency or 20)
        report["latency"] = lat
        table = Table(title=f"Time per check, batch of one, {lat['n']} ProntoQA items")
        for c in ("pass", "layers run", "median ms", "mean ms"):
            table.add_column(c)
        for name, layers in (("full", lat["layers"]), ("fast", lat["fast_layers"])):
            table.add_row(
                "full + model answer" if name == "full" else "fast (early stop)",
                str(layers),
                f"{lat[name]['median_ms']:.0f}",
                f"{lat[name]['mean_ms']:.0f}",
            )
        table.add_row(
            "full again (drift check)",
            str(lat["layers"]),
            f"{lat['full_again']['median_ms']:.0f}",
            f"{lat['full_again']['mean_ms']:.0f}",
        )
        console.print(table)
        sweep = ", ".join(f"after layer {k}: {v:.0f} ms" for k, v in lat["sweep"].items())
        console.print(f"QK scores only, median per item, pass stopped {sweep}")
    console.print(f"command: {command}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

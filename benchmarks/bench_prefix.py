"""Does running a shared context once pay? Scan time with and without ``share_prefix``.

    python benchmarks/bench_prefix.py [--model qwen2.5-coder-0.5b] [--items 90]
        [--data SPEC] [--template answer-statement] [--batch-size 8] [--repeats 2]

Default data: the first ``--items`` questions of PARARULE-Plus depth-2 dev, which asks 8-10
questions of each context, in file order (a whole-file scan shares as much; a random sample
of a big set shares little). Both ways score the same rendered prompts; the table gives the
median time, the tokens each way feeds the model, and how far the scores moved: the largest
difference relative to the scores' spread, and the share of (item, layer, head) whose verdict
(which option scores higher) is unchanged. Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from _common import begin, common_arguments

from qkscore.data import load_items
from qkscore.models import load_model
from qkscore.prompts import get_template
from qkscore.scoring import prefix_groups, score_prompts

PARARULE = "pararule-plus:{shared}/pararule_plus/Depth2/PARARULE_Plus_Depth2_shuffled_dev.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--data", default="")
    ap.add_argument("--items", type=int, default=90)
    ap.add_argument("--template", default="answer-statement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    common_arguments(ap)
    args = ap.parse_args()
    begin(args)
    items = load_items(args.data or PARARULE.format(shared=args.shared))[: args.items]
    lm = load_model(args.model, dtype=args.dtype)
    template = get_template(args.template)
    prompts = [template.render(item, lm.tokenizer) for item in items]
    parts = [part for p in prompts for part in p.parts]
    groups = prefix_groups(parts)
    full_tokens = sum(len(p.input_ids) for p in parts)
    shared_tokens = sum(length * (len(m) - 1) for m, length in groups)
    print(
        f"{args.model}, {args.dtype}, torch threads {torch.get_num_threads()}, {len(items)} "
        f"items, {len(parts)} parts, {sum(1 for _, n in groups if n)} shared groups, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    ways = {"full prompts": False, "share_prefix": True}
    for share in ways.values():  # warm-up
        score_prompts(lm, prompts[:4], batch_size=args.batch_size, share_prefix=share)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    scores = {}
    for round_no in range(args.repeats):
        names = list(ways) if round_no % 2 == 0 else list(ways)[::-1]
        for name in names:
            start = time.perf_counter()
            scores[name] = score_prompts(
                lm, prompts, batch_size=args.batch_size, share_prefix=ways[name]
            ).scores
            seconds[name].append(time.perf_counter() - start)
            print(f"  round {round_no + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)
    full, shared = scores["full prompts"], scores["share_prefix"]
    spread = float(np.nanstd(full))
    rel = float(np.nanmax(np.abs(shared - full)) / spread)
    same = float(np.mean(np.argmax(full, -1) == np.argmax(shared, -1)))
    print(f"\nload average at end {os.getloadavg()[0]:.1f}\n")
    print("| way | tokens fed | median s | items/s | speed-up | max diff / score sd "
          "| verdicts unchanged |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(seconds["full prompts"])
    rows = (("full prompts", full_tokens, "- | -"),
            ("share_prefix", full_tokens - shared_tokens, f"{rel:.4f} | {same:.4f}"))  # fmt: skip
    for name, tokens, moved in rows:
        med = statistics.median(seconds[name])
        print(
            f"| {name} | {tokens} | {med:.1f} | {len(items) / med:.2f} | {base / med:.2f}x "
            f"| {moved} |"
        )


if __name__ == "__main__":
    main()

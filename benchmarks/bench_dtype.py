"""bfloat16 against float32: scan speed, and agreement of the chosen head's verdicts.

    python benchmarks/bench_dtype.py [--model smollm2-135m] [--data SPEC] [--n 400] [--threads 1]

Both dtypes score the same prompts (after a warm-up, alternating, so neither pays a cold
start). A head is chosen on the first half with the float32 scores; on the second half the
script reports how often its verdicts agree between the dtypes, and the accuracy of each.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from qkscore.data import load_items
from qkscore.estimators.heads import HeadSelector
from qkscore.models import load_model
from qkscore.prompts import get_template
from qkscore.scoring import score_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="generated:depth=1-3&n=400&distractors=1&seed=1")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    items = load_items(args.data)[: args.n]
    labels = np.array([it.answer_index for it in items])
    models = {d: load_model(args.model, dtype=d) for d in ("float32", "bfloat16")}
    template = get_template("answer-statement")
    prompts = [template.render(it, models["float32"].tokenizer) for it in items]
    for lm in models.values():
        score_prompts(lm, prompts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    scores, seconds = {}, {}
    for dtype, lm in models.items():
        start = time.perf_counter()
        scores[dtype] = score_prompts(lm, prompts, batch_size=args.batch_size).scores
        seconds[dtype] = time.perf_counter() - start
    half = len(items) // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selector = HeadSelector().fit(scores["float32"][:half], labels[:half])
    pred = {d: selector.predict(s[half:]) for d, s in scores.items()}
    agree = float((pred["float32"] == pred["bfloat16"]).mean())
    print(
        f"python benchmarks/bench_dtype.py --model {args.model} --data '{args.data}' "
        f"--n {args.n} --threads {torch.get_num_threads()}"
    )
    print(
        f"head {selector.head_name_} chosen on {half} items (float32); verdicts on "
        f"{len(items) - half} held-out items"
    )
    print("| dtype | items/s | head accuracy | verdicts equal to float32 |")
    print("|---|---|---|---|")
    for dtype in models:
        acc = float((pred[dtype] == labels[half:]).mean())
        same = 1.0 if dtype == "float32" else agree
        print(f"| {dtype} | {len(items) / seconds[dtype]:.2f} | {acc:.3f} | {same:.3f} |")


if __name__ == "__main__":
    main()

"""Scan throughput (items/s) against batch size, on real ProntoQA items.

    python benchmarks/bench_scan.py [--model qwen2.5-coder-0.5b] [--items 64]
        [--batches 1,4,8,16] [--device cpu|cuda] [--random-init] [--threads 0]

Each batch size runs ``qkscore.scanning.scan`` (the function behind ``qkscore scan``: rendering,
length-bucketed batches, extraction, chunk files) over the same items into a fresh temporary
run folder, after a warm-up scan of one batch at that size. Rounds alternate the batch sizes
and the table gives the median of ``--repeats`` rounds, so load drifting on a shared machine
hits every size alike. ``--random-init`` builds the model from its config and tokenizer alone
(see bench_extract.py), which is how benchmarks/gpu_check.sh times models whose weights
cannot travel to the GPU machine: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _common import begin, common_arguments

DEFAULT_DATA = "prontoqa:{shared}/prontoqa/truefalse_0shot/*hop_0shot_random.json?sample={n}&seed=0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", default="qwen2.5-coder-0.5b", help="alias, folder (or config folder)"
    )
    ap.add_argument("--data", default="", help="data spec; default: N ProntoQA items, all depths")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-init", action="store_true")
    common_arguments(ap)
    args = ap.parse_args()
    begin(args)

    import torch

    from qkscore.data import load_items
    from qkscore.models import load_model
    from qkscore.scanning import scan

    data = args.data or DEFAULT_DATA.format(shared=args.shared, n=args.items)
    items = load_items(data)[: args.items]
    if args.random_init:
        from bench_extract import _random_model

        lm = _random_model(args.model, args.dtype, args.device)
    else:
        lm = load_model(args.model, dtype=args.dtype, device=args.device)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"{args.model}{' (random weights)' if args.random_init else ''}, {args.dtype}, {name}, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, {len(items)} items, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    def run(subset, batch_size: int) -> float:
        with tempfile.TemporaryDirectory() as folder:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            scan(
                lm,
                subset,
                "answer-statement",
                folder,
                batch_size=batch_size,
                progress=False,
                log=lambda _: None,
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    for b in batches:
        run(items[:b], b)  # warm-up: kernels and allocator for this batch shape
    seconds: dict[int, list[float]] = {b: [] for b in batches}
    for round_no in range(args.repeats):
        order = batches if round_no % 2 == 0 else batches[::-1]
        for b in order:
            seconds[b].append(run(items, b))
            print(f"  round {round_no + 1} batch {b}: {seconds[b][-1]:.2f} s", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}\n")
    print(f"| batch | items | median s | items/s | vs batch {batches[0]} |")
    print("|---|---|---|---|---|")
    base = len(items) / statistics.median(seconds[batches[0]])
    for b in batches:
        rate = len(items) / statistics.median(seconds[b])
        print(
            f"| {b} | {len(items)} | {statistics.median(seconds[b]):.2f} | {rate:.2f} "
            f"| {rate / base:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""Generation speed: tokens/s of `qkscore generate`, against the memory-bandwidth limit.

    python benchmarks/bench_generate.py [--models smollm2-135m qwen2.5-coder-0.5b]
        [--problems 8] [--samples 4] [--batch-size 16] [--max-new-tokens 160] [--dtype bfloat16]
        [--chat-template] [--threads 0] [--keep DIR] [--compare DIR] [--profile-step]

The problems are best_of_n.sh's (ProntoQA, fictional ontology with distractors, 1-5 hops, 255
sampled with seed 1), the first ``--problems`` of them; the prompt is the plain one
(``--no-chat-template``, the README's figures) unless ``--chat-template``. Each model runs once
into a fresh folder after a warm-up batch; the table reads the folder's run.json (the run's own
wall time and token count, model loading excluded).

The bound: a decode step reads every weight once, so a step takes at least weight bytes /
bandwidth whatever the batch, and a full batch of B rows makes at most B tokens a step. The
bandwidth is measured here (a copy of a 512 MiB tensor, bytes copied per second), or given with
``--bandwidth-gbs``. ``--keep DIR`` keeps the folders (DIR/MODEL); ``--compare DIR`` counts the
texts equal to those of an earlier ``--keep`` (same problems and settings: the old and the new
decode loop, or two batch sizes). ``--profile-step`` prints where one decode step's time goes.
Note the machine's load (``uptime``) beside the table: the cores may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import common_arguments

DATA = "prontoqa:{shared}/prontoqa/truefalse_0shot/*hop_0shot_random.json?sample=255&seed=1"


def copy_bandwidth_gbs(mib: int = 512, repeats: int = 3) -> float:
    """Bytes copied per second by a tensor copy (the best of ``repeats``), in GB/s."""
    import torch

    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return src.numel() * 4 / best / 1e9


def weight_bytes(lm) -> int:
    """Bytes of the weights a decode step reads: all but the input embedding, of which a step
    reads a row per token (unless it is tied to the output layer, which reads it all)."""
    embedding = lm.model.get_input_embeddings().weight
    output = lm.model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    seen, total = set() if tied else {embedding.data_ptr()}, 0
    for p in lm.model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def load_texts(folder: Path) -> dict[tuple[int, int], str]:
    rows = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines() if x]
    return {(r["problem"], r["sample"]): r["text"] for r in rows}


def run_one(args, model: str, data: str, bandwidth: float) -> dict:
    import torch

    from qkscore.generation import generate
    from qkscore.models import load_model

    started = time.perf_counter()
    lm = load_model(model, dtype=args.dtype)
    load_s = time.perf_counter() - started
    settings = dict(
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        chat_template=args.chat_template,
        seed=args.seed,
        progress=False,
        log=lambda *_: None,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        # warm-up: one short batch (first calls pay for kernels and allocations)
        generate(lm, data, tmp / "warm", **{**settings, "samples": 1, "max_new_tokens": 4},
                 limit=min(args.batch_size, args.problems))  # fmt: skip
        cpu = time.process_time()
        folder = generate(lm, data, tmp / "run", limit=args.problems, **settings)
        cpu = time.process_time() - cpu
        meta = folder.meta()
        records = folder.records()
        if args.keep:
            dest = Path(args.keep) / model
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tmp / "run", dest)
        if args.profile_step:
            profile_step(lm, folder.problems(), args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stats = meta["generation"]
    wbytes = weight_bytes(lm)
    bound = args.batch_size * bandwidth * 1e9 / wbytes
    row = {
        "model": model,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "batch": args.batch_size,
        "chains": len(records),
        "tokens": stats["tokens"],
        "at_cap": sum(r["finish"] == "length" for r in records),
        "wall_s": stats["wall_s"],
        "cpu_s": cpu,
        "steps": stats.get("decode_steps"),
        "tokens_per_s": stats["tokens"] / stats["wall_s"],
        "weights_gb": wbytes / 1e9,
        "bound_tokens_per_s": bound,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "time_s": stats.get("time_s"),
    }
    if args.compare:
        before = load_texts(Path(args.compare) / model)
        now = {(r["problem"], r["sample"]): r["text"] for r in records}
        row["same_texts"] = sum(before.get(k) == v for k, v in now.items())
    return row


def profile_step(lm, problems, args) -> None:
    """One decode step of a full batch under torch.profiler: the phases and the top operators."""
    from qkscore.generation.generate import profile_decode_step

    prof, phases = profile_decode_step(
        lm, problems, batch_size=args.batch_size, chat_template=args.chat_template
    )
    total = sum(phases.values())
    print(f"\none decode step, batch {args.batch_size}, {lm.name}: {total * 1000:.0f} ms")
    for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:8s} {seconds * 1000:8.1f} ms  {seconds / total:6.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common_arguments(ap)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chat-template", action="store_true", help="default: the plain prompt")
    ap.add_argument("--data", default=None, help="data spec (default: best_of_n.sh's ProntoQA)")
    ap.add_argument("--bandwidth-gbs", type=float, default=0.0, help="0: measure it")
    ap.add_argument("--keep", default=None, help="keep the generation folders under DIR/MODEL")
    ap.add_argument("--compare", default=None, help="count texts equal to DIR/MODEL's")
    ap.add_argument("--profile-step", action="store_true")
    ap.add_argument("--profile-rows", type=int, default=15, help="operators in the profile table")
    args = ap.parse_args()
    from _common import begin

    begin(args)
    import qkscore

    data = args.data or DATA.format(shared=args.shared)
    bandwidth = args.bandwidth_gbs or copy_bandwidth_gbs()
    print(f"qkscore {qkscore.__version__} from {Path(qkscore.__file__).parent}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"copy bandwidth: {bandwidth:.1f} GB/s; data: {data}")
    rows = [run_one(args, model, data, bandwidth) for model in args.models]
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    cols = (
        "| model | dtype | batch | chains | tokens | at cap | wall s | cpu s | tokens/s "
        "| bound tokens/s | of bound |"
    )
    if args.compare:
        cols += " same texts |"
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['chains']} | {r['tokens']} | "
            f"{r['at_cap']} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} | {r['tokens_per_s']:.1f} | "
            f"{r['bound_tokens_per_s']:.0f} | {r['tokens_per_s'] / r['bound_tokens_per_s']:.0%} |"
        )
        if args.compare:
            line += f" {r['same_texts']}/{r['chains']} |"
        print(line)
    for r in rows:
        extra = (
            f"; {r['steps']} decode steps; seconds by phase: {r['time_s']}" if r["time_s"] else ""
        )
        print(
            f"{r['model']}: weights {r['weights_gb']:.2f} GB, loaded in {r['load_s']:.1f} s, "
            f"{r['threads']} threads{extra}"
        )


if __name__ == "__main__":
    main()

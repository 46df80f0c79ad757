"""Throughput and latency of ``qkscore serve`` on 127.0.0.1, one request at a time against
dynamic batching.

For each mode (``before``: ``--max-batch 1`` and no gather window, one request per pass;
``after``: waiting requests batched, ``--max-batch 32`` unless given, with this script's
batching options), store (SQLite, PostgreSQL) and worker count (1, 2) it starts ``qkscore serve
--workers N --threads T`` on a free loopback port, waits until every worker answers, warms each
up, then for each concurrency level sends ``--requests`` requests (checks of mixed lengths, or
chains with ``--route verify-chain``) with at most that many in flight. It prints req/s,
p50/p95 latency and the mean batch size (from the ``qkscore_batch_size`` histogram in
``/metrics``), stops the server and verifies the audit chain (rows = requests sent). Bounded: a
fixed number of requests, each with a timeout; nothing listens beyond 127.0.0.1.

The model is float32 (``--dtype``). Without ``--profile`` it builds the small profile the tests
use on ``--model`` (a scan of 120 generated items and a calibration: about a minute for
SmolLM2 on the CPU). ``--random-init`` builds the model from its config with random weights
(``--model`` may be a folder holding only config and tokenizer files, as on a lent GPU
machine: Qwen2.5-1.5B shapes, same speed), saves it in a temporary folder and serves that;
give it ``--no-fast``, since the fast path stops at the random profile's head, wherever that is.
Without ``--pg-url`` it starts a throwaway PostgreSQL (``initdb`` in a temporary folder, a Unix
socket only, as the tests do) and stops it at the end; ``--backends sqlite`` skips it.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_serve.py [--model smollm2-135m] \\
        [--requests 64] [--concurrency 1,8,32] [--workers 1,2] [--backends sqlite,postgresql] \\
        [--modes before,after] [--threads 1] [--max-batch-tokens N] [--batch-window-ms W]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' profile builder and PostgreSQL helper

KEY = "bench-key"
CONTEXT = "Every wumpus is a jompus. Every jompus is red. Max is a wumpus."
MORE = [
    "Every jompus is a zumpus. Every zumpus is a rompus.",
    "Every rompus is happy. Every impus is a tumpus. Fae is an impus.",
    "Every tumpus is not happy. Every numpus is a dumpus. Sam is a numpus.",
]
STATEMENTS = ["Max is a jompus.", "Max is not a jompus.", "Max is red.", "Max is not red.",
              "Max is a zumpus.", "Fae is not happy."]  # fmt: skip
MODES = {"before": ["--max-batch", "1", "--batch-window-ms", "0"], "after": []}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(i: int, route: str) -> dict:
    """Request ``i``: contexts of four lengths, so batches pad (and checks differ)."""
    context = " ".join([CONTEXT, *MORE[: i % (len(MORE) + 1)]])
    if route == "check":
        return {"context": context, "statement": STATEMENTS[i % len(STATEMENTS)]}
    steps = [STATEMENTS[(i + j) % len(STATEMENTS)] for j in range(2 + i % 3)]
    return {"context": context, "steps": steps}


def _model_and_profile(args, tmp: Path) -> tuple[Path, str]:
    """The profile to serve and the model to serve it with (a saved random model, or
    ``--model``)."""
    from audit_fixtures import build_profile
    from qkscore.models import load_model

    model = args.model
    if args.random_init:
        import torch
        from bench_extract import _random_model

        lm = _random_model(args.model, args.dtype, "cuda" if torch.cuda.is_available() else "cpu")
        model = str(tmp / "random-model")
        lm.model.save_pretrained(model)
        lm.tokenizer.save_pretrained(model)
        del lm
    if args.profile:
        return args.profile, model
    lm = load_model(model, dtype=args.dtype)
    return build_profile(tmp, lm), model


def _start(args, profile: Path, model: str, db: str, workers: int, mode: str, port: int,
           log: Path) -> subprocess.Popen:  # fmt: skip
    env = dict(os.environ, QKSCORE_API_KEY=KEY)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for name in [k for k in env if k.startswith("QKSCORE_SERVE_")]:  # only this script's flags
        del env[name]
    cmd = [sys.executable, "-m", "qkscore", "serve", "--profile", str(profile), "--db", db,
           "--port", str(port), "--workers", str(workers), "--threads", str(args.threads),
           "--model", model, "--dtype", args.dtype, "--max-queue", "1000",
           "--request-timeout", "600"]  # fmt: skip
    cmd += ["--fast"] if args.fast else ["--no-fast"]
    if mode == "after":
        for flag in ("max_batch_tokens", "max_batch", "batch_window_ms", "max_padding"):
            if getattr(args, flag) is not None:
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    cmd += MODES[mode]
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this script started
            proc.wait(timeout=10)


def _wait(base: str, workers: int, proc, log: Path, timeout: float = 600) -> None:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"serve did not come up: {log.read_text()[-1500:]}")
        try:
            r = httpx.get(f"{base}/healthz", headers={"X-API-Key": KEY}, timeout=5)
            seen.add(r.json()["worker"])
        except (httpx.HTTPError, KeyError):
            time.sleep(0.5)


def _batches(base: str) -> tuple[float, float]:
    """(passes, requests judged) so far, from the batch-size histogram (all workers)."""
    text = httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}, timeout=30).text

    def value(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("qkscore_batch_size_count"), value("qkscore_batch_size_sum")


async def _load(base: str, n: int, concurrency: int, route: str, offset: int = 0):
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    lat: list[float] = []
    failed = 0
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=600,
                                 limits=limits) as c:  # fmt: skip

        async def one(i: int) -> None:
            nonlocal failed
            async with sem:
                t = time.perf_counter()
                r = await c.post(f"/v1/{route}", json=_body(offset + i, route))
                lat.append(time.perf_counter() - t)
                failed += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start, lat, failed


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="alias or folder")
    ap.add_argument("--random-init", action="store_true", help="random weights, same shapes")
    ap.add_argument("--profile", type=Path, help="a profile of --model (default: build one)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=64, help="per concurrency level")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--modes", default="before,after")
    ap.add_argument("--route", default="check", choices=["check", "verify-chain"])
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                    help="fast path (no model answer); --no-fast runs the whole pass")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (0: all)")
    ap.add_argument("--max-batch-tokens", type=int, help="'after' mode (default: serve's)")
    ap.add_argument(
        "--max-batch", type=int, default=32,
        help="'after' mode (default 32; serve's own default is 1 on a CPU, 32 on a GPU)",
    )  # fmt: skip
    ap.add_argument("--batch-window-ms", type=float, help="'after' mode (default: serve's)")
    ap.add_argument("--max-padding", type=float, help="'after' mode (default: serve's)")
    ap.add_argument("--pg-url", help="PostgreSQL server URL (default: a throwaway server)")
    args = ap.parse_args()
    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), flush=True)
    from qkscore.audit.store import AuditStore

    tmp = Path(tempfile.mkdtemp(prefix="qkscore-bench-"))
    profile, model = _model_and_profile(args, tmp)
    backends = args.backends.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    server = None
    if "postgresql" in backends and not args.pg_url:
        from pg_fixtures import PostgresServer, _bindir

        bindir = _bindir()
        if bindir is None:
            raise SystemExit("no initdb/pg_ctl: bash scripts/install_postgres.sh, or --pg-url")
        server = PostgresServer(bindir)
        server.start()
    rows = []
    try:
        for mode in args.modes.split(","):
            for backend in backends:
                for workers in (int(w) for w in args.workers.split(",")):
                    if backend == "sqlite":
                        db = str(tmp / f"bench-{mode}-{workers}.db")
                    elif server is not None:
                        db = server.new_database()
                    else:
                        db = args.pg_url
                    port = _free_port()
                    base = f"http://127.0.0.1:{port}"
                    log = tmp / f"serve-{mode}-{backend}-{workers}.log"
                    proc = _start(args, profile, model, db, workers, mode, port, log)
                    sent = 0
                    try:
                        _wait(base, workers, proc, log)
                        warm = 2 * workers
                        asyncio.run(_load(base, warm, workers, args.route))
                        sent += warm
                        for level in levels:
                            passes0, judged0 = _batches(base)
                            wall, lat, failed = asyncio.run(
                                _load(base, args.requests, level, args.route, sent)
                            )
                            sent += args.requests
                            passes, judged = _batches(base)
                            mean_batch = (judged - judged0) / max(passes - passes0, 1)
                            rows.append((mode, backend, workers, level, args.requests / wall,
                                         _pct(lat, 50) * 1000, _pct(lat, 95) * 1000, mean_batch,
                                         failed))  # fmt: skip
                            print(f"{mode:6s} {backend:10s} workers {workers} concurrency "
                                  f"{level:3d}: {rows[-1][4]:6.1f} req/s, p50 {rows[-1][5]:6.0f}"
                                  f" ms, p95 {rows[-1][6]:6.0f} ms, mean batch {mean_batch:4.1f}"
                                  f", failed {failed}", flush=True)  # fmt: skip
                    finally:
                        _stop(proc)
                    store = AuditStore(db)
                    chain, count = store.verify(), store.count()
                    store.close()
                    if args.pg_url is None and (not chain.ok or count != sent):
                        raise SystemExit(f"audit log wrong: {count} rows for {sent} requests; "
                                         f"{chain.line()}")  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(
        f"\n{args.requests} POST /v1/{args.route} per row ({model}"
        f"{', random weights' if args.random_init else ''}, {args.dtype}, "
        f"{'fast path' if args.fast else 'whole pass'}, {args.threads} torch thread(s) per "
        f"worker) on {device}, {os.cpu_count()} CPUs; before: one request per pass; after: "
        f"batched (max_batch_tokens {args.max_batch_tokens or 'default'}, max_batch "
        f"{args.max_batch or 'default'}, window {args.batch_window_ms or 'default'} ms, "
        f"max_padding {args.max_padding or 'default'})"
    )
    print("| mode | store | workers | in flight | req/s | p50 ms | p95 ms | mean batch | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, b, w, level, rps, p50, p95, mean_batch, failed in rows:
        print(f"| {mode} | {b} | {w} | {level} | {rps:.1f} | {p50:.0f} | {p95:.0f} | "
              f"{mean_batch:.1f} | {failed} |")  # fmt: skip
    before = {r[1:4]: r[4] for r in rows if r[0] == "before"}
    after = {r[1:4]: r[4] for r in rows if r[0] == "after"}
    if before and after:
        print("\n| store | workers | in flight | after / before req/s |")
        print("|---|---:|---:|---:|")
        for key in sorted(set(before) & set(after)):
            print(f"| {key[0]} | {key[1]} | {key[2]} | {after[key] / before[key]:.2f}x |")
    shutil.rmtree(tmp, ignore_errors=True)  # a saved random model is gigabytes


if __name__ == "__main__":
    main()

"""Throughput and latency of ``qkscore serve`` for ``POST /v1/check`` on 127.0.0.1.

For each store (SQLite, PostgreSQL) and worker count (1, 2) it starts ``qkscore serve
--workers N --fast --threads T`` on a free loopback port, waits until every worker answers,
warms each up, sends ``--requests`` checks with at most ``--concurrency`` in flight, prints
requests/s and p50/p95 latency, stops the server and verifies the audit chain (rows = requests).
Bounded: a fixed number of requests, each with a timeout; nothing listens beyond 127.0.0.1.

Without ``--profile`` it builds the small SmolLM2 profile the tests use (about a minute on CPU).
Without ``--pg-url`` it starts a throwaway PostgreSQL (``initdb`` in a temporary folder, a Unix
socket only, as the tests do) and stops it at the end; ``--backends sqlite`` skips it.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_serve.py [--profile P] [--requests 60] \
        [--concurrency 8] [--workers 1,2] [--backends sqlite,postgresql] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
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
STATEMENTS = ["Max is a jompus.", "Max is not a jompus.", "Max is red.", "Max is not red."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _profile(tmp: Path) -> Path:
    from audit_fixtures import build_profile
    from qkscore.models import load_model

    return build_profile(tmp, load_model("smollm2-135m", dtype="float32"))


def _start(profile: Path, db: str, workers: int, threads: int, port: int, log: Path):
    env = dict(os.environ, QKSCORE_API_KEY=KEY)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "qkscore", "serve", "--profile", str(profile), "--db", db,
           "--port", str(port), "--workers", str(workers), "--threads", str(threads),
           "--fast", "--max-queue", "1000"]  # fmt: skip
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


def _wait(base: str, workers: int, proc, log: Path, timeout: float = 300) -> None:
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


async def _load(base: str, n: int, concurrency: int) -> tuple[float, list[float], int]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    lat: list[float] = []
    failed = 0
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=120,
                                 limits=limits) as c:  # fmt: skip

        async def one(i: int) -> None:
            nonlocal failed
            body = {"context": CONTEXT, "statement": STATEMENTS[i % len(STATEMENTS)]}
            async with sem:
                t = time.perf_counter()
                r = await c.post("/v1/check", json=body)
                lat.append(time.perf_counter() - t)
                failed += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start, lat, failed


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--pg-url", help="PostgreSQL server URL (default: a throwaway server)")
    args = ap.parse_args()
    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), flush=True)
    from qkscore.audit.store import AuditStore

    tmp = Path(tempfile.mkdtemp(prefix="qkscore-bench-"))
    profile = args.profile or _profile(tmp)
    backends = args.backends.split(",")
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
        for backend in backends:
            for workers in (int(w) for w in args.workers.split(",")):
                if backend == "sqlite":
                    db = str(tmp / f"bench-{workers}.db")
                elif server is not None:
                    db = server.new_database()
                else:
                    db = args.pg_url
                port = _free_port()
                base = f"http://127.0.0.1:{port}"
                log = tmp / f"serve-{backend}-{workers}.log"
                proc = _start(profile, db, workers, args.threads, port, log)
                try:
                    _wait(base, workers, proc, log)
                    asyncio.run(_load(base, 2 * workers, workers))  # warm-up
                    wall, lat, failed = asyncio.run(_load(base, args.requests, args.concurrency))
                finally:
                    _stop(proc)
                store = AuditStore(db)
                chain = store.verify()
                store.close()
                rows.append((backend, workers, args.requests / wall, _pct(lat, 50) * 1000,
                             _pct(lat, 95) * 1000, failed, chain.line()))  # fmt: skip
                print(f"{backend:10s} workers {workers}: {rows[-1][2]:.1f} req/s, p50 "
                      f"{rows[-1][3]:.0f} ms, p95 {rows[-1][4]:.0f} ms, failed {failed}; "
                      f"{chain.line()}", flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    print(
        f"\n{args.requests} POST /v1/check (SmolLM2-135M, --fast, float32, {args.threads} torch "
        f"thread(s) per worker), {args.concurrency} in flight, on {os.cpu_count()} CPUs"
    )
    print("| store | workers | req/s | p50 ms | p95 ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, w, rps, p50, p95, failed, _ in rows:
        print(f"| {b} | {w} | {rps:.1f} | {p50:.0f} | {p95:.0f} | {failed} |")


if __name__ == "__main__":
    main()

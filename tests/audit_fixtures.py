"""Shared by the audit tests: one small SmolLM2 profile, one Judge and one live server helper.

The profile is built once per session (scan of 120 generated items, calibration on 80) and
reused by every audit test module: building it is the slowest step of these tests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPEC = "generated:depth=1-2&n=120&seed=0"
CONTEXT = "Every wumpus is a jompus. Every jompus is red. Max is a wumpus."
STATEMENTS = [
    "Max is a jompus.",
    "Max is not a jompus.",
    "Max is red.",
    "Max is not red.",
    "Max is a wumpus.",
]

_cache: dict[str, Any] = {}


def build_profile(base: Path, lm) -> Path:
    """Scan and calibrate once per session (``base`` is the session's temporary root)."""
    from qkscore.estimators.base import CalibrationWarning
    from qkscore.pipeline import calibrate
    from qkscore.scanning import scan

    key = f"profile:{base}"
    if key not in _cache:
        from tiny_models import few_threads

        out = base / "audit-smollm2"
        # few_threads here too: session fixtures are set up before the modules' own thread limit
        with warnings.catch_warnings(), few_threads():
            warnings.simplefilter("ignore", CalibrationWarning)
            scan(lm, SPEC, "answer-statement", out / "run", progress=False, log=lambda *_: None)
            calibrate(out / "run", calib_size=80, out=out / "profile.json", reader="head")
        _cache[key] = out / "profile.json"
    return _cache[key]


def shared_judge(base: Path, lm):
    """One Judge per session on the shared model (its lock then guards every use)."""
    from qkscore.audit import Judge

    key = f"judge:{base}"
    if key not in _cache:
        _cache[key] = Judge(build_profile(base, lm), model=lm)
    return _cache[key]


def asgi_client(app):
    """An httpx client that calls the app in-process (no server, no port)."""
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def run(coro):
    """Run one coroutine to completion (the service tests drive an async client)."""
    import asyncio

    return asyncio.run(coro)


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1 with an ephemeral port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


#: A data path as long as real ones (a file of the shared data with its options): the dashboard
#: shows it whole without scrolling sideways.
LONG_DATA = (
    "jsonl:/work/shared/data/pararule-plus/Depth5/PARARULE_Plus_Depth5_shuffled_dev_huggingface"
    ".jsonl?limit=400&balance=true&seed=0&on_error=skip"
)


def linear_profile(base: Path, lm) -> Path:
    """A profile of the same scan with the linear reader (once per session), its data field a
    long path (:data:`LONG_DATA`)."""
    import json

    from qkscore.estimators.base import CalibrationWarning
    from qkscore.pipeline import calibrate

    key = f"linear:{base}"
    if key not in _cache:
        from tiny_models import few_threads

        out = build_profile(base, lm).parent
        with warnings.catch_warnings(), few_threads():
            warnings.simplefilter("ignore", CalibrationWarning)
            calibrate(out / "run", calib_size=80, out=out / "linear.json", reader="linear")
        data = json.loads((out / "linear.json").read_text())
        (out / "linear.json").write_text(json.dumps({**data, "data": LONG_DATA}))
        _cache[key] = out / "linear.json"
    return _cache[key]

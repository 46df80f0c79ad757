"""What the benchmark scripts share: the usual arguments and the first lines they print."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def common_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="data folder")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")


def begin(args: argparse.Namespace) -> None:
    """Apply the thread setting and echo the command, so a pasted table says how it was made."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), flush=True)

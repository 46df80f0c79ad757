"""The package layout keeps its promises: names say one thing and lower layers stay leaves.

Each check runs in a fresh interpreter, since what a module imports (and the order in which
modules are imported) is only visible before anything else has loaded them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this tree's ``qkscore``; return stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "first, second",
    [
        ("import qkscore.extraction", "from qkscore import extract"),
        ("from qkscore import extract", "import qkscore.extraction"),
    ],
)
def test_lazy_extract_is_the_function_in_either_import_order(first, second):
    out = _run(
        f"{first}\n{second}\nimport qkscore\n"
        "print(callable(qkscore.extract), qkscore.extract is qkscore.extraction.extract,"
        " callable(extract))"
    )
    assert out.split() == ["True", "True", "True"]

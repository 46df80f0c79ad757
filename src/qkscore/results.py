"""Deprecated name of :mod:`qkscore.schemas` (the output files' pydantic models), kept for one
release: importing it warns, and every name reads through to :mod:`qkscore.schemas`."""

from __future__ import annotations

import warnings
from typing import Any

from qkscore import schemas

warnings.warn(
    "qkscore.results is renamed qkscore.schemas (the output files' models); the old name "
    "goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(schemas, name)


def __dir__() -> list[str]:
    return dir(schemas)


if __name__ == "__main__":
    schemas.main()

"""Data specs (``FORMAT:PATH?key=value&...``) and the registry that maps a format to its loader.

A spec string fully describes which items a run reads, so run folders record it verbatim and a
run can be reproduced from it (the lm-evaluation-harness habit: data is declared, not coded).

This module is a leaf: it imports no format. The formats (:mod:`qkscore.data.formats`, one
module each) import it and register themselves; :mod:`qkscore.data` imports them, so the
registry is full whenever ``qkscore.data`` (or any module in it) has been imported.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from qkscore.data.items import DataError, Item

Loader = Callable[["DataSpec"], Iterable[Item]]


@dataclass(frozen=True)
class LoaderInfo:
    name: str
    fn: Loader
    takes_path: bool
    description: str


_LOADERS: dict[str, LoaderInfo] = {}


def register_loader(name: str, *, takes_path: bool = True, description: str = "") -> Callable:
    """Decorator: make ``fn(spec) -> Iterable[Item]`` available as format ``name``."""

    def deco(fn: Loader) -> Loader:
        _LOADERS[name] = LoaderInfo(name, fn, takes_path, description or (fn.__doc__ or "").strip())
        return fn

    return deco


def available_formats() -> dict[str, LoaderInfo]:
    return dict(_LOADERS)


@dataclass(frozen=True)
class DataSpec:
    format: str
    path: str = ""
    params: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)

    def get_int(self, key: str, default: int) -> int:
        value = self.params.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise DataError(f"parameter {key}={value!r} must be an integer", field=key) from None

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.params.get(key)
        if value is None:
            return default
        return value.strip().lower() in ("1", "true", "yes", "on")

    def files(self) -> list[Path]:
        """The files PATH names, glob expanded and sorted; an error when none exist."""
        matches = sorted(glob.glob(self.path, recursive=True)) if _is_glob(self.path) else []
        paths = [Path(m) for m in matches] if matches else [Path(self.path)]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise DataError(f"no such file or folder (spec {self.raw!r})", file=str(missing[0]))
        return paths

    def __str__(self) -> str:
        return self.raw or _format_spec(self)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _format_spec(spec: DataSpec) -> str:
    query = "&".join(f"{k}={v}" for k, v in spec.params.items())
    head = f"{spec.format}:{spec.path}"
    return f"{head}?{query}" if query else head


def parse_spec(text: str | DataSpec) -> DataSpec:
    """Parse ``FORMAT:PATH?k=v&...``; pathless formats take ``FORMAT:k=v&...`` too."""
    if isinstance(text, DataSpec):
        return text
    fmt, sep, rest = text.partition(":")
    fmt = fmt.strip().lower()
    if not sep or fmt not in _LOADERS:
        known = ", ".join(sorted(_LOADERS))
        raise DataError(f"data spec {text!r} must start with a known FORMAT: one of {known}")
    info = _LOADERS[fmt]
    if "?" in rest:
        path, _, query = rest.partition("?")
    elif not info.takes_path and "=" in rest:
        path, query = "", rest
    else:
        path, query = rest, ""
    params = dict(parse_qsl(query, keep_blank_values=True))
    if info.takes_path and not path:
        raise DataError(f"data spec {text!r}: format {fmt!r} needs a PATH after the colon")
    return DataSpec(format=fmt, path=path, params=params, raw=text)


def load_items(spec: str | DataSpec) -> list[Item]:
    """Read every item a spec names.

    Parameters every format takes: ``limit=N`` keeps the first N; ``sample=N`` draws N at random
    (``seed``, default 0), in file order, so a subset spans all files of a glob; with
    ``balance=1`` the sample holds equal numbers of each label. ``on_error=skip`` is honoured
    by the loaders, which count what they skip in their load report.
    """
    parsed = parse_spec(spec)
    items = list(_LOADERS[parsed.format].fn(parsed))
    if parsed.get("sample") is not None:
        items = _sample(
            items,
            parsed.get_int("sample", len(items)),
            parsed.get_int("seed", 0),
            parsed.get_bool("balance"),
        )
    limit = parsed.get("limit")
    if limit is not None:
        items = items[: parsed.get_int("limit", len(items))]
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"duplicate item id {item.id!r}", field="id", file=parsed.path or None)
        seen.add(item.id)
    return items


def _sample(items: list[Item], n: int, seed: int, balance: bool) -> list[Item]:
    """A seeded random subset in original order; per label equal shares when ``balance``."""
    import random

    rng = random.Random(seed)
    if not balance:
        keep = set(rng.sample(range(len(items)), min(n, len(items))))
    else:
        by_label: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_label.setdefault(item.label, []).append(i)
        share = n // len(by_label)
        short = {k: len(v) for k, v in by_label.items() if len(v) < share}
        if short:
            raise DataError(
                f"balance=1 with sample={n} needs {share} items per label, but "
                + ", ".join(f"{k!r} has {v}" for k, v in short.items()),
                field="sample",
            )
        keep = {i for idx in by_label.values() for i in rng.sample(idx, share)}
    return [it for i, it in enumerate(items) if i in keep]

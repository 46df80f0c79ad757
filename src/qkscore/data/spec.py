"""Data specs (``FORMAT:PATH?key=value&...``) and the registry that maps a format to its loader.

A spec string fully describes which items a run reads, so run folders record it verbatim and a
run can be reproduced from it (the lm-evaluation-harness habit: data is declared, not coded).

This module is a leaf: it imports no format. The formats (:mod:`qkscore.data.formats`, one
module each) import it and register themselves; :mod:`qkscore.data` imports them, so the
registry is full whenever ``qkscore.data`` (or any module in it) has been imported.
"""

from __future__ import annotations

import difflib
import glob
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from qkscore.data.items import DataError, Item

Loader = Callable[["DataSpec"], Iterable[Item]]

#: Parameters every format takes: :func:`load_items` applies them to what the loader returns
#: (``on_error`` is read by the loaders themselves).
COMMON_PARAMS = ("limit", "sample", "seed", "balance", "stratify", "on_error")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class LoaderInfo:
    name: str
    fn: Loader
    takes_path: bool
    description: str
    #: The format's own parameters (beside :data:`COMMON_PARAMS`); None: not declared, so
    #: unknown parameters cannot be refused (a format registered by code outside qkscore).
    params: frozenset[str] | None = None


_LOADERS: dict[str, LoaderInfo] = {}


def register_loader(
    name: str,
    *,
    takes_path: bool = True,
    description: str = "",
    params: Iterable[str] | None = None,
) -> Callable:
    """Decorator: make ``fn(spec) -> Iterable[Item]`` available as format ``name``.

    ``params`` names the spec parameters the format reads beside :data:`COMMON_PARAMS`; a spec
    with any other parameter (a typo such as ``smaple=3``) is then refused by
    :func:`parse_spec` instead of being ignored.
    """

    def deco(fn: Loader) -> Loader:
        _LOADERS[name] = LoaderInfo(
            name,
            fn,
            takes_path,
            description or (fn.__doc__ or "").strip(),
            None if params is None else frozenset(params),
        )
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

    def error(self, message: str, key: str | None = None) -> DataError:
        """A :class:`DataError` that names this spec (and the parameter ``key``)."""
        return DataError(f"data spec {str(self)!r}: {message}", field=key)

    def get_int(
        self,
        key: str,
        default: int | None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        """Parameter ``key`` as an integer within ``[minimum, maximum]``, else ``default``."""
        value = self.params.get(key)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self.error(f"parameter {key}={value!r} must be an integer", key) from None
        if minimum is not None and number < minimum:
            raise self.error(f"parameter {key}={number} must be at least {minimum}", key)
        if maximum is not None and number > maximum:
            raise self.error(f"parameter {key}={number} must be at most {maximum}", key)
        return number

    def get_bool(self, key: str, default: bool = False) -> bool:
        """Parameter ``key`` as a yes/no; a value that is neither (``balance=2``) is an error,
        never read as no."""
        value = self.params.get(key)
        if value is None:
            return default
        text = value.strip().lower()
        if text not in _TRUE + _FALSE:
            raise self.error(f"parameter {key}={value!r} must be 1 or 0 (true or false)", key)
        return text in _TRUE

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
    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    if info.takes_path and not path:
        raise DataError(f"data spec {text!r}: format {fmt!r} needs a PATH after the colon")
    spec = DataSpec(format=fmt, path=path, params=params, raw=text)
    if len(params) < len(pairs):
        twice = next(k for k in params if sum(k == key for key, _ in pairs) > 1)
        raise spec.error(f"parameter {twice!r} is given more than once", twice)
    if info.params is not None:
        known = sorted({*COMMON_PARAMS, *info.params})
        for key in params:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise spec.error(
                    f"unknown parameter {key!r} for format {fmt!r}{hint}; it takes "
                    + ", ".join(known),
                    key,
                )
    return spec


def load_items(spec: str | DataSpec) -> list[Item]:
    """Read every item a spec names.

    Parameters every format takes: ``limit=N`` keeps the first N; ``sample=N`` draws N at random
    (``seed``, default 0), in file order, so a subset spans all files of a glob; with
    ``balance=1`` the sample holds equal numbers of each label, and ``balance=1`` without
    ``sample`` keeps the largest such subset (every item of the rarest label, as many of each
    other label drawn at random). ``stratify=FIELD`` (a metadata field, e.g. ``depth``) draws
    the same share from every value of the field, and with ``balance=1`` from every (value,
    label) cell, so a ``--by depth`` breakdown is balanced too. ``on_error=skip`` is honoured by
    the loaders, which count what they skip in their load report. A parameter out of range
    (``limit=-1``) is an error naming the spec, checked before any file is read.
    """
    parsed = parse_spec(spec)
    sample = parsed.get_int("sample", None, minimum=1)
    seed = parsed.get_int("seed", 0)
    balance = parsed.get_bool("balance")
    stratify = parsed.get("stratify") or None
    if stratify is not None and sample is None and not balance:
        raise parsed.error("stratify needs sample=N or balance=1 (it splits a sample)", "stratify")
    limit = parsed.get_int("limit", None, minimum=1)
    items = list(_LOADERS[parsed.format].fn(parsed))
    if sample is not None or balance:
        items = _sample(items, sample, seed or 0, balance, stratify, parsed)
    if limit is not None:
        items = items[:limit]
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"duplicate item id {item.id!r}", field="id", file=parsed.path or None)
        seen.add(item.id)
    return items


def _sample(
    items: list[Item],
    n: int | None,
    seed: int,
    balance: bool,
    stratify: str | None,
    spec: DataSpec,
) -> list[Item]:
    """A seeded random subset in original order. ``balance`` and ``stratify`` cut the items
    into cells (by label, by a metadata field's value, or both) and draw an equal share from
    each: ``n`` split evenly, or without ``n`` as many as the smallest cell holds."""
    import random

    rng = random.Random(seed)
    if not balance and stratify is None:
        keep = set(rng.sample(range(len(items)), min(n or len(items), len(items))))
        return [it for i, it in enumerate(items) if i in keep]
    cells: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        cells.setdefault(_cell(item, balance, stratify, spec), []).append(i)
    if not cells:
        return []
    given = "&".join(
        ["balance=1"] * balance + ([f"stratify={stratify}"] if stratify is not None else [])
    )
    share = min(map(len, cells.values())) if n is None else n // len(cells)
    if share == 0:
        raise spec.error(
            f"{given} with sample={n} cannot hold one item of each of the {len(cells)} "
            + _cells_named(balance, stratify, plural=True),
            "sample",
        )
    short = {k: len(v) for k, v in cells.items() if len(v) < share}
    if short:
        raise spec.error(
            f"{given} with sample={n} needs {share} items per "
            f"{_cells_named(balance, stratify, plural=False)}, but "
            + ", ".join(f"{_cell_text(k)} has {v}" for k, v in short.items()),
            "sample",
        )
    keep = {i for idx in cells.values() for i in rng.sample(idx, share)}
    return [it for i, it in enumerate(items) if i in keep]


def _cell(item: Item, balance: bool, stratify: str | None, spec: DataSpec) -> tuple:
    """The sampling cell of one item: its ``stratify`` field's value and/or its label."""
    key: tuple = ()
    if stratify is not None:
        if item.meta.get(stratify) is None:
            raise spec.error(
                f"stratify={stratify}: item {item.id!r} has no {stratify!r} "
                f"(fields it has: {', '.join(sorted(item.meta)) or 'none'})",
                "stratify",
            )
        key += ((stratify, item.meta[stratify]),)
    return key + ((("label", item.label),) if balance else ())


def _cells_named(balance: bool, stratify: str | None, plural: bool) -> str:
    if stratify is None:
        return "labels" if plural else "label"
    if balance:
        return f"({stratify}, label) cell" + "s" * plural
    return f"value{'s' * plural} of {stratify}"


def _cell_text(cell: tuple) -> str:
    """A cell as an error names it: the label alone as before (``'True'``), else its fields."""
    if len(cell) == 1 and cell[0][0] == "label":
        return repr(cell[0][1])
    return "(" + ", ".join(f"{k}={v!r}" for k, v in cell) + ")"

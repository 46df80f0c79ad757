"""Hugging Face datasets (needs the ``hf`` extra, i.e. ``datasets``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qkscore.data.formats.helpers import (
    LoadContext,
    MissingDependencyError,
    Record,
    loader,
)
from qkscore.data.formats.mapped import FIELD_PARAMS, FieldMap, mapped_records
from qkscore.data.items import DataError, Item
from qkscore.data.spec import DataSpec


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            "the hf format needs the Hugging Face 'datasets' package: pip install datasets "
            "(or the qkscore[hf] extra)",
            field="hf",
        ) from None
    return datasets


@loader(
    "hf",
    "Hugging Face datasets: hf:NAME?split=&config= (or a save_to_disk folder), "
    "field mapping as jsonl",
    params=(*FIELD_PARAMS, "split", "config"),
)
def _load_hf(spec: DataSpec, ctx: LoadContext) -> list[Item]:
    datasets = _import_datasets()
    split, config = spec.get("split"), spec.get("config")
    if Path(spec.path).is_dir():
        data = datasets.load_from_disk(spec.path)
    else:
        data = datasets.load_dataset(spec.path, config, split=split)
    if isinstance(data, Mapping):  # a DatasetDict
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise DataError(
                f"choose a split with ?split=: one of {', '.join(sorted(data))}",
                file=spec.path,
                field="split",
            )
        data = data[split]
    ctx.add_file(spec.path)
    name = Path(spec.path).name or spec.path
    records = (Record(Path(spec.path), i + 1, str(i), dict(row), i) for i, row in enumerate(data))
    prefix = f"{name}/{split}" if split else name
    extra = {"source": "hf", "split": split}
    return mapped_records(records, ctx, FieldMap.from_spec(spec), prefix, extra)

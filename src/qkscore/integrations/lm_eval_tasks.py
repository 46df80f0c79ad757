"""The documents of qkscore's lm-evaluation-harness tasks, read from local files.

Each task YAML in ``qkscore/lm_eval_tasks/`` declares a qkscore data spec and a template in its
``dataset_kwargs`` and names :func:`load_dataset` as its ``custom_dataset``: the items come from
qkscore's own loaders (ProntoQA's nested JSON, Multi-LogiEval's encodings, debiased
PARARULE-Plus), so lm-eval reads exactly the items ``qkscore scan`` reads and nothing is
downloaded. The ``validation`` split is the balanced calibration split ``qkscore calibrate``
draws from the same spec (``validation_size``, seed 0), or a separate spec
(``validation_spec``); ``test`` is the rest. Each document carries the template's prompt text,
so lm-eval shows the model the very prompt a scan would.

Paths in a spec may start with ``{data}``: the shared data folder, ``$QKSCORE_SHARED_DATA`` or
``../shared/data`` relative to the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.data import Item, load_items
from qkscore.pipeline import balanced_split
from qkscore.prompts import LETTERS, Template, get_template

__all__ = [
    "DATA_ENV",
    "TASKS_DIR",
    "TaskSplits",
    "load_dataset",
    "packaged_task",
    "shared_data_dir",
    "task_config",
    "task_splits",
]

DATA_ENV = "QKSCORE_SHARED_DATA"
#: The packaged task YAMLs (pass to lm-eval as ``--include_path``).
TASKS_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks"


def shared_data_dir() -> Path:
    """The folder ``{data}`` stands for; refused when it does not exist, naming the variable."""
    folder = Path(os.environ.get(DATA_ENV, "../shared/data")).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"shared data folder {folder} not found: set {DATA_ENV} to the folder holding "
            "prontoqa/, mmlu/, ... (the tasks read their files from there)"
        )
    return folder


def _expand(spec: str) -> str:
    return spec.replace("{data}", str(shared_data_dir())) if "{data}" in spec else spec


@dataclass(frozen=True)
class TaskSplits:
    """A task's items: ``validation`` to calibrate on, ``test`` to score, and the template."""

    validation: list[Item]
    test: list[Item]
    template: Template


def task_splits(
    spec: str,
    template: str = "answer-statement",
    validation_size: int | None = None,
    validation_spec: str | None = None,
    seed: int = 0,
) -> TaskSplits:
    """Split a spec the way ``qkscore calibrate`` does, or pair it with a validation spec.

    With ``validation_size`` the validation items are exactly the calibration split
    ``calibrate(run, calib_size=validation_size, seed=seed)`` picks on a scan of ``spec``, so
    lm-eval's ``test`` split is that run's evaluation split.
    """
    items = load_items(_expand(spec))
    if (validation_size is None) == (validation_spec is None):
        raise ValueError(
            f"task over {spec!r}: give exactly one of validation_size, validation_spec"
        )
    if validation_spec is not None:
        validation = load_items(_expand(validation_spec))
        overlap = {it.id for it in validation} & {it.id for it in items}
        if overlap:
            raise ValueError(f"validation and test share items: {sorted(overlap)[:3]}")
        return TaskSplits(validation, items, get_template(template))
    labels = np.array([it.answer_index for it in items])
    calib, rest = balanced_split(labels, int(validation_size), seed)
    return TaskSplits([items[i] for i in calib], [items[i] for i in rest], get_template(template))


def document(item: Item, template: Template) -> dict[str, Any]:
    """One lm-eval document: the prompt text, the answer letters and the gold index."""
    if template.resolved_baseline_tokens != "letters" or template.swap_options:
        raise ValueError(
            f"template {template.name!r}: lm-eval tasks answer with the option letters in "
            "their listed order (letter options, no swapping)"
        )
    return {
        "id": item.id,
        "text": template.text(item),
        "choices": list(LETTERS[: len(item.options)]),
        "gold": item.answer_index,
        "label": item.label,
        "options": list(item.options),
    }


def load_dataset(
    spec: str,
    template: str = "answer-statement",
    validation_size: int | None = None,
    validation_spec: str | None = None,
    seed: int = 0,
    **_metadata: Any,
) -> Any:
    """``custom_dataset`` of the packaged tasks: a ``DatasetDict`` with validation and test.

    lm-eval passes the task's metadata (``version``, model arguments) as keywords too; they
    do not change the items.
    """
    import datasets

    splits = task_splits(spec, template, validation_size, validation_spec, seed)
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_list([document(it, splits.template) for it in items])
            for name, items in (("validation", splits.validation), ("test", splits.test))
        }
    )


def _read_task_yaml(path: Path) -> Mapping[str, Any]:
    """A task YAML's plain fields (lm-eval's ``!function`` tags are read as their text)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, tag, node: loader.construct_scalar(node))
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_Loader) or {}


def packaged_tasks() -> dict[str, Path]:
    """Task name -> YAML file of every packaged task."""
    out = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        name = _read_task_yaml(path).get("task")
        if name:
            out[str(name)] = path
    return out


def packaged_task(name: str) -> TaskSplits | None:
    """The splits of a packaged task by name, or None when no packaged task has that name."""
    path = packaged_tasks().get(name)
    if path is None:
        return None
    kwargs = dict(_read_task_yaml(path).get("dataset_kwargs") or {})
    return task_splits(**kwargs)


def task_config(name: str, **dataset_kwargs: Any) -> dict[str, Any]:
    """An lm-eval task config (for ``simple_evaluate(tasks=[...])``) over any spec.

    The packaged tasks' shared settings with ``dataset_kwargs`` of :func:`load_dataset`
    (``spec``, ``template``, ``validation_size`` or ``validation_spec``).
    """
    config = dict(_read_task_yaml(TASKS_DIR / "_qkscore_task_yaml"))
    config.update(task=name, custom_dataset=load_dataset, dataset_kwargs=dataset_kwargs)
    return config

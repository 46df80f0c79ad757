"""Write an evaluation with its per-item predictions, and load any qkscore output for analysis.

An evaluation folder holds ``evaluation.json`` (the metrics) and, beside it, one row per
evaluated item: ``predictions.jsonl`` always (:class:`qkscore.schemas.PredictionRow`) and
``predictions.parquet`` (the same rows, nested fields flattened to ``meta.depth``,
``head.prediction``, ...) when pyarrow is installed. :func:`load_run` reads a run folder, an
evaluation folder or an ``evaluation.json`` and hands back DataFrames (pandas: the ``data``
extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.io import atomic_write, write_json
from qkscore.run import MAIN, RunFolder
from qkscore.schemas import (
    Evaluation,
    PredictionRow,
    ProfileModel,
    ResultFileError,
    RunMeta,
    require_pandas,
)

PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_PARQUET = "predictions.parquet"


def prediction_rows(
    records: Sequence[Mapping[str, Any]],
    labels: np.ndarray,
    split: str,
    preds: Mapping[str, np.ndarray],
    probabilities: Mapping[str, np.ndarray | None],
) -> list[dict[str, Any]]:
    """One row per evaluated item: its id, gold option, split, meta and every method's
    prediction, correctness and (two-option items) probability of option 0."""
    rows = []
    for i, record in enumerate(records):
        methods = {}
        for key, pred in preds.items():
            proba = probabilities.get(key)
            methods[key] = {
                "prediction": int(pred[i]),
                "correct": bool(pred[i] == labels[i]),
                "probability": None if proba is None else float(proba[i]),
            }
        rows.append(
            {
                "id": str(record["id"]),
                "index": int(record.get("index", i)),
                "label": record.get("label"),
                "answer_index": int(labels[i]),
                "split": split,
                "meta": dict(record.get("meta") or {}),
                "methods": methods,
            }
        )
    return rows


def write_evaluation(
    path: str | Path, report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> list[Path]:
    """Write ``evaluation.json`` (validated) and its predictions beside it; the paths written."""
    out = Path(path)
    folder = out.parent
    written = [folder / PREDICTIONS_JSONL]
    for n, row in enumerate(rows, 1):
        PredictionRow.from_data(row, f"{written[0]} row {n}")
    atomic_write(
        written[0],
        lambda fh: fh.writelines((json.dumps(r, default=str) + "\n").encode() for r in rows),
    )
    if _has_pyarrow():
        written.append(folder / PREDICTIONS_PARQUET)
        table = _flatten(rows)
        atomic_write(written[1], lambda fh: table.to_parquet(fh, index=False))
    data = {**report, "predictions": [p.name for p in written]}
    write_json(out, Evaluation.checked(data, out))
    return [out, *written]


def _has_pyarrow() -> bool:
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _flatten(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Rows as a DataFrame, nested fields flattened (``meta.depth``, ``head.prediction``)."""
    pd = require_pandas()
    flat = [{k: v for k, v in r.items() if k != "methods"} | _prefixed(r["methods"]) for r in rows]
    frame = pd.json_normalize(flat, sep=".")
    return frame


def _prefixed(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {f"{key}.{name}": v for key, m in methods.items() for name, v in m.items()}


@dataclass
class RunResults:
    """What :func:`load_run` found: the run folder, the profile and the evaluation (each None
    when absent), with DataFrame views. Nothing is read before it is asked for."""

    path: Path
    run: RunFolder | None = None
    evaluation_path: Path | None = None
    profile_path: Path | None = None
    meta: RunMeta | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.run is not None:
            self.meta = RunMeta.load(self.run.meta_path)

    @cached_property
    def evaluation(self) -> Evaluation | None:
        if self.evaluation_path is None:
            return None
        return Evaluation.load(self.evaluation_path)

    @cached_property
    def profile(self) -> ProfileModel | None:
        return None if self.profile_path is None else ProfileModel.load(self.profile_path)

    @property
    def methods(self) -> Any:
        """Methods x metrics of the evaluation (:meth:`Evaluation.to_pandas`)."""
        return self._need(self.evaluation, "an evaluation.json").to_pandas()

    @cached_property
    def items(self) -> Any:
        """The run's items (``items.jsonl``): id, label, answer_index, context, statement and
        ``meta.*`` columns."""
        pd = require_pandas()
        run = self._need(self.run, "a run folder (run.json)")
        keep = ("index", "id", "label", "answer_index", "context", "statement", "meta")
        rows = [{k: r[k] for k in keep if k in r} for r in run.items()]
        return pd.json_normalize(rows, sep=".")

    @cached_property
    def predictions(self) -> Any:
        """One row per evaluated item (``predictions.parquet`` or ``predictions.jsonl``)."""
        pd = require_pandas()
        where = self._need(self.evaluation_path, "an evaluation.json").parent
        parquet, jsonl = where / PREDICTIONS_PARQUET, where / PREDICTIONS_JSONL
        if parquet.exists() and _has_pyarrow():
            return pd.read_parquet(parquet)
        if not jsonl.exists():
            raise FileNotFoundError(
                f"{where} holds no {PREDICTIONS_JSONL}: the evaluation was written before "
                "qkscore recorded per-item predictions; run `qkscore evaluate --out` again"
            )
        rows = []
        with open(jsonl, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    rows.append(_row(line, f"{jsonl}:{number}"))
        return _flatten(rows)

    @cached_property
    def heads(self) -> Any:
        """Per-head summary of the main scan: ``layer``, ``head``, ``name`` and, on two-option
        items, the mean QK margin (option 0 minus option 1) over items of each gold option
        and their difference (``separation``), the raw signal calibration ranks."""
        pd = require_pandas()
        run = self._need(self.run, "a run folder (run.json)")
        scores = np.asarray(run.load(MAIN), dtype=np.float64)
        labels = run.labels()
        n_layers, n_heads = scores.shape[1:3]
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        frame = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel()})
        frame.insert(0, "name", [f"L{a}H{b}" for a, b in zip(layer.ravel(), head.ravel())])
        if scores.shape[-1] == 2:
            margin = scores[..., 0] - scores[..., 1]
            for option in (0, 1):
                chosen = margin[labels == option]
                mean = chosen.mean(0) if len(chosen) else np.full(margin.shape[1:], np.nan)
                frame[f"margin_option{option}"] = mean.ravel()
            frame["separation"] = frame.margin_option0 - frame.margin_option1
        return frame.set_index("name")

    def _need(self, value: Any, what: str) -> Any:
        if value is None:
            raise FileNotFoundError(f"{self.path}: no {what} found here")
        return value


def _row(line: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultFileError(f"{where}: not a JSON record ({err})") from None
    return PredictionRow.from_data(data, where).to_data()


def load_run(path: str | Path) -> RunResults:
    """Open a scan folder (``run.json``), an evaluation folder (``evaluation.json``, with its
    run in ``run/`` or where the evaluation says) or an ``evaluation.json`` file.

    Every file found is validated through :mod:`qkscore.schemas`; DataFrames (``items``,
    ``predictions``, ``methods``, ``heads``) need pandas (``pip install 'qkscore[data]'``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_file():
        return _from_evaluation(p, p.parent)
    if (p / "run.json").exists():  # its evaluation and profile: inside it, or beside it
        return RunResults(p, RunFolder(p), _first(p, "evaluation.json"), _first(p, "profile.json"))
    if (p / "evaluation.json").exists():
        return _from_evaluation(p / "evaluation.json", p)
    raise FileNotFoundError(f"{p} holds neither run.json nor evaluation.json: not a qkscore output")


def _first(folder: Path, name: str) -> Path | None:
    return next((f / name for f in (folder, folder.parent) if (f / name).exists()), None)


def _from_evaluation(evaluation: Path, folder: Path) -> RunResults:
    report = Evaluation.load(evaluation)
    run = None
    for candidate in (folder / "run", Path(report.run)):
        if (candidate / "run.json").exists():
            run = RunFolder(candidate)
            break
    profile = folder / "profile.json"
    if report.profile and not profile.exists():
        profile = Path(report.profile)
    return RunResults(folder, run, evaluation, profile if profile.exists() else None)

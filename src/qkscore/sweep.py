"""Sweep prompt settings and readers, choosing on calibration cross-validation only.

A reader's figure depends on how the prompt was built (template scheme, rotary or not, chat
template, few-shot examples, option order) as much as on the reader. A sweep scans each setting
of a grid once into its own resumable run folder, fits every reader on the same balanced
calibration split, and ranks every (setting, reader) pair by the cross-validated AUROC it had
on that split. The evaluation split is read once, for the pair the ranking picked, and shown
beside the others so nobody mistakes the best of many evaluation figures for a finding.

``out/`` holds one folder per setting (``run/``, ``profile.json``, ``evaluation.json``) and
``leaderboard.json`` / ``leaderboard.md``. Run it again after a crash and finished settings are
reused as they are.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.dtypes import SCAN_DTYPE
from qkscore.io import write_json
from qkscore.pipeline import (
    MIN_CALIBRATION,
    balanced_split,
    calibrate,
    check_calibration_labels,
    evaluate,
)
from qkscore.profile import Profile
from qkscore.scanning import scan
from qkscore.schemas import Evaluation, read_json

__all__ = ["DEFAULT_GRID", "parse_grid", "sweep"]

#: Setting names and the values a sweep tries when the grid names the setting without values.
GRID_KEYS: dict[str, tuple[Any, ...]] = {
    "template": ("answer-statement", "last-option"),
    "rope": (False, True),
    "chat_template": (False, True),
    "num_fewshot": (0, 3),
    "swap_options": (False, True),
}
DEFAULT_GRID = "template=answer-statement;rope=false;chat_template=false,true;num_fewshot=0,3"


def _value(key: str, text: str) -> Any:
    text = text.strip()
    if key in ("rope", "chat_template", "swap_options"):
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"grid setting {key}: {text!r} is not true or false")
        return low in ("true", "1", "yes")
    if key == "num_fewshot":
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"grid setting num_fewshot: {text!r} is not a number") from None
        if value < 0:
            raise ValueError("grid setting num_fewshot must be 0 or more")
        return value
    return text


def parse_grid(spec: str) -> dict[str, list[Any]]:
    """``"template=answer-statement,last-option;rope=false;num_fewshot=0,3"`` as a dict.

    A key given without ``=values`` takes every value of :data:`GRID_KEYS`; keys not named
    keep their default (the first value listed there).
    """
    grid: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if key not in GRID_KEYS:
            raise ValueError(f"unknown grid setting {key!r}; known: {', '.join(GRID_KEYS)}")
        grid[key] = (
            [_value(key, v) for v in values.split(",") if v.strip()]
            if values
            else list(GRID_KEYS[key])
        )
        if not grid[key]:
            raise ValueError(f"grid setting {key} has no values")
    return {key: grid.get(key, [GRID_KEYS[key][0]]) for key in GRID_KEYS}


def _settings(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _slug(setting: Mapping[str, Any]) -> str:
    parts = [
        str(setting["template"]),
        "rope" if setting["rope"] else "prerope",
        "chat" if setting["chat_template"] else "plain",
        f"{setting['num_fewshot']}shot",
        "swapped" if setting["swap_options"] else "inorder",
    ]
    return "_".join(parts)


def sweep(
    model: Any,
    data: str,
    out: str | Path,
    grid: str | Mapping[str, Sequence[Any]] = DEFAULT_GRID,
    *,
    calib_size: int = MIN_CALIBRATION,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: str = SCAN_DTYPE,
    seed: int = 0,
    n_boot: int = 1000,
    controls: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Scan, calibrate and evaluate every setting of ``grid``; return the leaderboard.

    ``model`` is loaded once (pass a loaded model to reuse it) and shared by every setting.
    """
    from qkscore.models import LoadedModel, load_model
    from qkscore.prompts import get_template

    grid = parse_grid(grid) if isinstance(grid, str) else {k: list(v) for k, v in grid.items()}
    settings = _settings(grid)
    _check_before_loading(data, settings, calib_size, limit, controls, seed)
    root = Path(out)
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
    rows: list[dict[str, Any]] = []
    evaluations: dict[str, dict[str, Any]] = {}
    for setting in settings:
        slug = _slug(setting)
        folder = root / slug
        log(f"sweep: {slug}")
        template = get_template(setting["template"], swap_options=setting["swap_options"])
        run = scan(
            lm,
            data,
            template,
            folder / "run",
            limit=limit,
            batch_size=batch_size,
            rope=setting["rope"],
            controls=controls,
            chat_template=setting["chat_template"],
            num_fewshot=setting["num_fewshot"],
            progress=progress,
            log=log,
        )
        profile_path = folder / "profile.json"
        if profile_path.exists():
            profile = Profile.load(profile_path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                profile = calibrate(run.path, calib_size=calib_size, seed=seed, out=profile_path)
        eval_path = folder / "evaluation.json"
        if eval_path.exists():
            evaluations[slug] = Evaluation.checked(read_json(eval_path), eval_path)
        else:
            evaluations[slug] = evaluate(run.path, profile, n_boot=n_boot, seed=seed, out=eval_path)
        rows += _rows(slug, setting, profile, evaluations[slug])
    ranked = sorted(rows, key=lambda r: -(r["cv_auroc"] if r["cv_auroc"] is not None else -1))
    best = ranked[0] if ranked else None
    result = {
        "model": lm.name,
        "data": data,
        "grid": grid,
        "rule": "ranked by cross-validated AUROC on each setting's calibration split",
        "chosen": best,
        "rows": ranked,
    }
    write_json(root / "leaderboard.json", result)
    (root / "leaderboard.md").write_text(leaderboard_markdown(result) + "\n")
    return result


def _check_before_loading(
    data: str,
    settings: Sequence[Mapping[str, Any]],
    calib_size: int,
    limit: int | None,
    controls: Sequence[str],
    seed: int,
) -> None:
    """Refuse what every setting would fail on, before the model loads (minutes for a big
    one): an unknown template or control, and a data set whose items (after the few-shot
    examples a setting takes and ``limit``) cannot give a calibration split of ``calib_size``
    and leave items to evaluate."""
    from qkscore.data import load_items
    from qkscore.data.controls import get_control
    from qkscore.prompts import get_template, with_fewshot

    for control in controls:
        get_control(control)
    for setting in settings:
        get_template(setting["template"], swap_options=setting["swap_options"])
    items = load_items(data)
    for shots in sorted({int(s["num_fewshot"]) for s in settings}):
        _, rest = with_fewshot(get_template(settings[0]["template"]), items, shots)
        rest = rest[:limit] if limit is not None else rest
        labels = np.array([it.answer_index for it in rest])
        where = f"sweep over {data!r}" + (f" with num_fewshot={shots}" if shots else "") + ": "
        check_calibration_labels(labels, calib_size, where)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short class is said again by calibrate
            try:
                balanced_split(labels, calib_size, seed)
            except ValueError as err:
                raise ValueError(f"{where}{err}") from None


def _rows(
    slug: str, setting: Mapping[str, Any], profile: Profile, report: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per reader of a setting: its calibration CV figure and its evaluation figure."""
    cv = (profile.data.get("reader_choice") or {}).get("cv") or {}
    out = []
    for reader, result in cv.items():
        method = report["methods"].get(reader)
        if "skipped" in result or method is None:
            continue
        out.append(
            {
                "setting": slug,
                **dict(setting),
                "reader": reader,
                "cv_auroc": result.get("auroc"),
                "cv_accuracy": result.get("accuracy"),
                "accuracy": method.get("accuracy"),
                "auroc": method.get("auroc"),
                "model_margin_accuracy": (report["methods"].get("model_margin") or {}).get(
                    "accuracy"
                ),
            }
        )
    return out


def _ci(metric: Mapping[str, Any] | None) -> str:
    if not metric:
        return "n/a"
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def leaderboard_markdown(result: Mapping[str, Any]) -> str:
    lines = [
        f"### qkscore sweep: {result['model']} on `{result['data']}`",
        "",
        f"Ranked by {result['rule'].removeprefix('ranked by ')}; evaluation figures are "
        "shown for reading, never used to rank.",
        "",
        "| # | setting | reader | CV AUROC (calibration) | accuracy (evaluation) "
        "| AUROC (evaluation) | model margin, calibrated (evaluation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(result["rows"], 1):
        cv = "n/a" if row["cv_auroc"] is None else f"{row['cv_auroc']:.3f}"
        lines.append(
            f"| {i} | {row['setting']} | {row['reader']} | {cv} | {_ci(row['accuracy'])} "
            f"| {_ci(row['auroc'])} | {_ci(row['model_margin_accuracy'])} |"
        )
    best = result.get("chosen")
    if best:
        lines += [
            "",
            f"Chosen on calibration CV: **{best['setting']} / {best['reader']}**, evaluation "
            f"accuracy {_ci(best['accuracy'])} beside the calibrated model margin's "
            f"{_ci(best['model_margin_accuracy'])}.",
        ]
    return "\n".join(lines)

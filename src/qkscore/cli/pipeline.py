"""Scan, calibrate, evaluate, transfer, report, probe and the end-to-end demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markdown import Markdown
from rich.table import Table

from qkscore.cli._shared import console as _console
from qkscore.cli._shared import fail as _fail
from qkscore.data.controls import controls_help
from qkscore.dtypes import SCAN_DTYPE, VERDICT_DTYPE
from qkscore.grid import DEFAULT_GRID, grid_help

CONTROL_HELP = f"Control scan (repeat for several): {controls_help()}."


def reader_choices() -> tuple[str, ...]:
    """``auto`` and every registered reader, read from the registry when a value is checked
    or completed, not when the CLI starts (the readers import scikit-learn)."""
    from qkscore.estimators.protocol import AUTO, reader_names

    return (AUTO, *reader_names())


def _reader_option(value: str) -> str:
    if value not in reader_choices():
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(reader_choices())}")
    return value


def _complete_reader(incomplete: str) -> list[str]:
    return [c for c in reader_choices() if c.startswith(incomplete)]


READER_HELP = (
    "auto (best cross-validated AUROC on the calibration split) or the name of a registered "
    "reader: `qkscore readers` lists them (qkscore.register_reader adds one)."
)
DEMO_DATA = "generated:depth=1-3&n=800&distractors=1&seed=0"
DEMO_MODEL = "smollm2-135m"


def scan(
    model: str = typer.Option(..., "--model", "-m", help="Alias, hub id, folder or .gguf file."),
    data: str = typer.Option(..., "--data", "-d", help="Data spec FORMAT:PATH?k=v."),
    template: str = typer.Option("answer-statement", "--template", "-t"),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (or resume)."),
    limit: int | None = typer.Option(None, min=1, help="Keep the first N items."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    rope: bool = typer.Option(False, help="Score rotated q/k (default: pre-rotary, as the paper)."),
    control: list[str] = typer.Option([], help=CONTROL_HELP),
    attention: bool = typer.Option(False, help="Also store the attention-score baseline."),
    dtype: str = typer.Option(SCAN_DTYPE, help="auto (bf16), float32, float16, bfloat16."),
    device_map: str | None = typer.Option(
        None, help="'auto': spread a model too big for one device over GPUs and CPU."
    ),
    chunk_size: int = typer.Option(64, min=1, help="Items per result chunk (the resume unit)."),
    share_prefix: bool = typer.Option(
        True, help="Run a context shared by several items once (pre-rotary scans)."
    ),
    hidden_layers: str = typer.Option(
        "auto",
        help="Residual-stream layers kept for the hidden-state probe: auto (8 evenly spaced), "
        "all, none, or numbers like 4,8,12.",
    ),
    chat_template: bool | None = typer.Option(
        None,
        "--chat-template/--no-chat-template",
        help="Wrap prompts in the tokenizer's chat template (default: the template's setting).",
    ),
    num_fewshot: int = typer.Option(
        0, min=0, help="Solved examples from the data shown before every item (not scored)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the run's metadata (run.json) as JSON; progress on stderr."
    ),
) -> None:
    """Score every head on every item into a resumable run folder."""
    console = _console(stderr=as_json)
    from qkscore.scanning import scan as run_scan

    run = run_scan(
        model,
        data,
        template,
        out,
        limit=limit,
        batch_size=batch_size,
        rope=rope,
        controls=control,
        attention_weights=attention,
        dtype=dtype,
        device_map=device_map,
        chunk_size=chunk_size,
        share_prefix=share_prefix,
        hidden_layers=hidden_layers,
        chat_template=chat_template,
        num_fewshot=num_fewshot,
        log=console.print,
    )
    meta = run.meta()
    if as_json:
        _echo_json({"run": str(run.path), **meta})
        return
    console.print(
        f"[green]{run.path}[/]: {meta['n_items']} items x {meta['n_layers']} layers x "
        f"{meta['n_heads']} heads; scans: {', '.join(run.scans())}"
    )


def calibrate(
    run: Path | None = typer.Argument(
        None,
        help="Run folder from `qkscore scan`; or a generation folder from `qkscore generate`, "
        "whose labelled steps make a step profile.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Profile JSON to write."),
    calib_size: int | None = typer.Option(
        None,
        min=1,
        help="A run folder: balanced calibration items (default 400). Steps: calibration "
        "problems (default half of a generation folder's, all of a steps file's).",
    ),
    steps: Path | None = typer.Option(
        None,
        "--steps",
        help="A labelled-steps JSONL file (docs/generation.md) to make a step profile from.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Steps: the model (default: the generation folder's).",
    ),
    template: str = typer.Option("answer-statement", "--template", "-t", help="Steps only."),
    chat_template: bool | None = typer.Option(
        None,
        "--chat-template/--no-chat-template",
        help="Steps only: wrap prompts in the tokenizer's chat template (default: the "
        "template's setting).",
    ),
    hidden_layers: str = typer.Option(
        "auto", help="Steps only: residual-stream layers for the hidden-state probe."
    ),
    dtype: str = typer.Option(
        VERDICT_DTYPE, help="Steps only: float32 (as the judge serves it), bfloat16, ..."
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Steps only."),
    seed: int = typer.Option(0),
    reader: str = typer.Option(
        "auto", parser=_reader_option, autocompletion=_complete_reader, help=READER_HELP
    ),
    metric: str = typer.Option(
        "auroc", help="Single-head ranking: auroc, accuracy, balanced_accuracy."
    ),
    cv: int = typer.Option(5, min=2, help="Folds for choosing the reader and its settings."),
    no_ensemble: bool = typer.Option(False, "--no-ensemble", help="Skip the top-k ensemble."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print what was chosen as JSON (the profile less its fitted estimators and item "
        "ids, which stay in the file; the ranking's top 10).",
    ),
) -> None:
    """Fit every reader and the fair baselines; pick one by cross-validation on calibration items.

    The calibration split is balanced, and the reader is chosen on it alone. On a generation
    folder (or --steps FILE) the readers are fitted on chain steps: a step profile for
    verify-chain, serve and rank."""
    console = _console(stderr=as_json)
    from qkscore.pipeline import calibrate as run_calibrate

    if steps is not None or (run is not None and _is_generation_folder(run)):
        profile = _calibrate_steps(
            run,
            steps,
            out,
            calib_size=calib_size,
            model=model,
            template=template,
            chat_template=chat_template,
            hidden_layers=hidden_layers,
            dtype=dtype,
            batch_size=batch_size,
            seed=seed,
            reader=reader,
            metric=metric,
            cv=cv,
            ensemble=not no_ensemble,
            log=console.print,
        )
    elif run is None:
        raise _fail("give a run folder, a generation folder, or --steps FILE.jsonl")
    else:
        profile = run_calibrate(
            run,
            400 if calib_size is None else calib_size,
            seed,
            out,
            metric,
            ensemble=not no_ensemble,
            reader=reader,
            cv=cv,
        )
    if as_json:
        _echo_json(_calibration_summary(profile, out))
        return
    if profile.unit == "step":
        _print_step_choice(console, profile, out)
        return
    cal = profile.data["calibration"]
    for note in cal["warnings"]:
        console.print(f"[yellow]warning:[/] {note}")
    choice = profile.data["reader_choice"]
    table = Table(title=f"Readers, {cv}-fold cross-validation on {cal['size']} calibration items")
    for col in ("reader", "CV AUROC", "CV accuracy", ""):
        table.add_column(col)
    for name, result in choice["cv"].items():
        if "skipped" in result:
            table.add_row(name, "-", "-", f"skipped: {result['skipped']}")
            continue
        mark = "chosen" if name == choice["chosen"] else ""
        table.add_row(name, f"{result['auroc']:.3f}", f"{result['accuracy']:.3f}", mark)
    console.print(table)
    table = Table(title="Top single heads (in-sample on the calibration items)")
    for col in ("head", "sign", "accuracy", "balanced acc.", "AUROC"):
        table.add_column(col)
    for row in profile.data["ranking"][:5]:
        table.add_row(
            row["name"],
            f"{row['sign']:+d}",
            f"{row['accuracy']:.3f}",
            f"{row['balanced_accuracy']:.3f}",
            "n/a" if row["auroc"] is None else f"{row['auroc']:.3f}",
        )
    console.print(table)
    console.print(
        f"[green]profile written to {out}[/] (reader {choice['chosen']}: {choice['rule']}; "
        f"best single head {profile.data['head']})"
    )


def _is_generation_folder(path: Path) -> bool:
    from qkscore.generation.folder import GenFolder

    return GenFolder(path).is_one()


def _calibrate_steps(run, steps, out, *, calib_size, model, **settings):
    """A step profile from a generation folder's labelled steps or a labelled-steps file."""
    from qkscore.generation.steps import read_steps_file, steps_from_generations
    from qkscore.step_calibration import calibrate_steps

    if steps is not None and run is not None:
        raise _fail("give a generation folder or --steps FILE.jsonl, not both")
    if steps is not None:
        step_set = read_steps_file(steps)
        if model is None:
            raise _fail("--steps needs --model: the model whose heads read the steps")
        if calib_size is None:  # a file is brought to calibrate on: all of it
            calib_size = len(step_set.problems())
    else:
        step_set = steps_from_generations(run)
        model = model or step_set.source.get("model")
        if model is None:
            raise _fail(f"{run} names no model (imported chains): give --model")
    return calibrate_steps(step_set, model, out, calib_size=calib_size, **settings)


def _print_step_choice(console, profile, out: Path) -> None:
    """The step profile's candidates: CV AUROC on all and on derived steps, by problem."""
    data = profile.data
    choice, cal = data["reader_choice"], data["calibration"]
    counts = data["steps"]["calibration"]
    for note in cal["warnings"]:
        console.print(f"[yellow]warning:[/] {note}")
    table = Table(
        title=f"Step readers, {cal['cv_folds']}-fold cross-validation grouped by problem on "
        f"{counts['steps']} steps ({counts['valid']} valid, {counts['invalid']} invalid) of "
        f"{counts['problems']} problems"
    )
    for col in ("candidate", "CV AUROC", "derived steps", "CV accuracy", ""):
        table.add_column(col)
    rows = [*choice["cv"].items(), *choice.get("baselines", {}).items()]
    for name, result in rows:
        if "skipped" in result:
            table.add_row(name, "-", "-", "-", f"skipped: {result['skipped']}")
            continue
        derived = (result.get("subsets") or {}).get("derived", {}).get("auroc")
        mark = "chosen" if name == choice["chosen"] else ""
        if name in choice.get("baselines", {}):
            mark = "baseline"
        table.add_row(
            name,
            _num(result.get("auroc")),
            _num(derived),
            _num(result.get("accuracy")),
            mark,
        )
    console.print(table)
    console.print(
        f"[green]step profile written to {out}[/] (reader {choice['chosen']}: {choice['rule']}; "
        f"calibrated on {len(cal['item_ids'])} problems, {len(data['evaluation_ids'])} left "
        "for rank)"
    )


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


#: Profile sections too bulky for a terminal: the fitted estimators and the item ids.
_BULKY = ("readers", "baselines", "selector", "ensemble", "evaluation_ids", "ranking")


def _calibration_summary(profile, out: Path) -> dict:
    data = profile.data
    summary = {k: v for k, v in data.items() if k not in _BULKY}
    from qkscore.pipeline import ITEM_LISTS

    summary["calibration"] = {k: v for k, v in data["calibration"].items() if k not in ITEM_LISTS}
    summary["ranking"] = data["ranking"][:10]
    return {"profile": str(out), **summary}


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def evaluate(
    run: Path = typer.Argument(..., help="Run folder to evaluate."),
    profile: Path = typer.Option(..., "--profile", "-p"),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Also write the JSON report, with predictions.jsonl (and .parquet) beside it.",
    ),
    n_boot: int = typer.Option(1000, min=1, help="Bootstrap resamples for the intervals."),
    by: list[str] = typer.Option(
        [],
        "--by",
        help="Also break every method's accuracy down by this item meta field (depth, rule, "
        "logic ...), with 95% intervals; repeat for several fields.",
    ),
) -> None:
    """Report the chosen reader beside the fair baselines and controls, on held-out items."""
    console = _console()
    from qkscore.pipeline import evaluate as run_evaluate
    from qkscore.report import summary_markdown

    report = run_evaluate(run, profile, n_boot=n_boot, out=out, by=by)
    if as_json:
        _echo_json(report)
    else:
        console.print(Markdown(summary_markdown(report)))


def transfer(
    runs: list[Path] = typer.Argument(..., help="Two or more run folders (same model/template)."),
    calib_size: int = typer.Option(400, min=2),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Calibrate on each run (row), test on each run (column)."""
    console = _console()
    from qkscore.pipeline import transfer as run_transfer

    result = run_transfer(runs, calib_size=calib_size, seed=seed)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for what, chosen, matrix in (
        ("Single head", result["heads"], result["accuracy"]),
        ("Chosen reader", result["readers"], result["reader_accuracy"]),
    ):
        table = Table(title=f"{what} accuracy: calibrated on row, tested on column")
        table.add_column("calibrated on")
        for name in result["runs"]:
            table.add_column(Path(name).name)
        for name, which, row in zip(result["runs"], chosen, matrix):
            cells = ("n/a" if v is None else f"{v:.3f}" for v in row)
            table.add_row(f"{Path(name).name} ({which})", *cells)
        console.print(table)


def sweep(
    model: str = typer.Option(..., "--model", "-m", help="Alias, hub id, folder or .gguf file."),
    data: str = typer.Option(..., "--data", "-d", help="Data spec FORMAT:PATH?k=v."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the settings' runs."),
    grid: str = typer.Option(DEFAULT_GRID, help=grid_help()),
    calib_size: int = typer.Option(400, min=2, help="Balanced calibration items per setting."),
    limit: int | None = typer.Option(None, min=1, help="Keep the first N items."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    dtype: str = typer.Option(SCAN_DTYPE, help="auto (bf16), float32, float16, bfloat16."),
    control: list[str] = typer.Option([], help=CONTROL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON."),
) -> None:
    """Scan every prompt setting of a grid and rank (setting, reader) pairs by calibration CV.

    Every reader is fitted in every cell; the ranking reads calibration cross-validation only,
    and the evaluation figure is shown for the pick."""
    console = _console()
    from qkscore.sweep import leaderboard_markdown
    from qkscore.sweep import sweep as run_sweep

    result = run_sweep(
        model,
        data,
        out,
        grid,
        calib_size=calib_size,
        limit=limit,
        batch_size=batch_size,
        dtype=dtype,
        controls=control,
        log=console.print,
    )
    from qkscore.report.leaderboard import write_leaderboard

    page = write_leaderboard(out)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        console.print(Markdown(leaderboard_markdown(result)))
        console.print(f"[green]wrote {page} (and leaderboard.md, .json, .csv beside it)[/]")


def report(
    run: Path = typer.Argument(..., help="A run folder, or a sweep's folder (leaderboard.json)."),
    profile: Path | None = typer.Option(
        None, "--profile", "-p", help="The profile to evaluate with (a run folder needs one)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Default: report.html; for a sweep, FOLDER/leaderboard.html."
    ),
) -> None:
    """Write one self-contained HTML report (plots embedded) and print the summary.

    Given a sweep's folder, write its leaderboard page again instead."""
    console = _console()
    if (run / "leaderboard.json").exists():
        from qkscore.report.leaderboard import write_leaderboard

        console.print(f"[green]leaderboard written to {write_leaderboard(run, out)}[/]")
        return
    if profile is None:
        raise _fail(f"{run} is a run folder: give the profile to evaluate it with (--profile)")
    from qkscore.pipeline import evaluate as run_evaluate
    from qkscore.report import summary_markdown
    from qkscore.report.html import write_report

    out = Path("report.html") if out is None else out
    result = run_evaluate(run, profile)
    write_report(run, profile, result, out)
    console.print(Markdown(summary_markdown(result)))
    console.print(f"[green]report written to {out}[/]")


def readers(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the readers --reader takes; auto picks among them by cross-validation."""
    from qkscore.estimators.protocol import AUTO, READERS

    rows = [
        {"name": e.name, "reads": e.help, "needs_model_answer": e.cls.needs_baseline}
        for e in READERS.values()
    ]
    if as_json:
        typer.echo(json.dumps({"auto": AUTO, "readers": rows}, indent=2))
        return
    table = Table(title=f"Readers ({AUTO}: the best cross-validated AUROC among them)")
    for col in ("name", "reads", "needs the model's answer"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["reads"], "yes" if row["needs_model_answer"] else "no")
    _console().print(table)


def heads(
    model: str = typer.Option(DEMO_MODEL, "--model", "-m"),
    context: str = typer.Option(
        "Every wumpus is a jompus. Every jompus is bitter. Max is a wumpus.", "--context", "-c"
    ),
    statement: str = typer.Option("Max is bitter.", "--statement", "-s"),
    template: str = typer.Option("answer-statement", "--template", "-t"),
    top: int = typer.Option(10, help="Heads to show."),
    rope: bool = typer.Option(False),
) -> None:
    """Score one item and show the heads with the widest True/False margin, before calibration.

    Which heads separate the options at all, on this one item."""
    console = _console()
    import numpy as np

    from qkscore.data import Item
    from qkscore.models import load_model
    from qkscore.prompts import get_template
    from qkscore.scoring import score_prompts

    lm = load_model(model)
    item = Item(id="heads", context=context, statement=statement, label="True")
    prompt = get_template(template).render(item, lm.tokenizer)
    result = score_prompts(lm, [prompt], rope=rope)
    scores, base = result.scores[0], result.baseline[0]
    margin = scores[..., 0] - scores[..., 1]
    order = np.argsort(-np.abs(margin), axis=None)[:top]
    table = Table(
        title=f"{lm.name}: QK-scores, widest True-False margins ({lm.n_layers} layers "
        f"x {lm.n_heads} heads)"
    )
    for col in ("head", "score True", "score False", "margin"):
        table.add_column(col)
    for flat in order:
        layer, head = np.unravel_index(flat, margin.shape)
        table.add_row(
            f"L{layer}H{head}",
            f"{scores[layer, head, 0]:.2f}",
            f"{scores[layer, head, 1]:.2f}",
            f"{margin[layer, head]:+.2f}",
        )
    console.print(table)
    probs = np.exp(base - base.max())
    probs /= probs.sum()
    console.print(
        f"model's own answer: True {probs[0]:.2f} / False {probs[1]:.2f} "
        "(uncalibrated heads say nothing yet: run `qkscore demo` or `calibrate`)"
    )


def demo(
    model: str = typer.Option(DEMO_MODEL, "--model", "-m"),
    data: str = typer.Option(DEMO_DATA, "--data", "-d"),
    template: str = typer.Option("answer-statement", "--template", "-t"),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    calib_size: int = typer.Option(400),
    limit: int | None = typer.Option(800, min=1, help="Items to scan (calibration + evaluation)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    controls: bool = typer.Option(True, help="Scan every control (qkscore scan --help)."),
) -> None:
    """The whole pipeline on the embedded default: scan, calibrate, evaluate, report."""
    console = _console()
    from qkscore.data.controls import control_names
    from qkscore.pipeline import calibrate as run_calibrate
    from qkscore.pipeline import evaluate as run_evaluate
    from qkscore.report import summary_markdown
    from qkscore.report.html import write_report
    from qkscore.scanning import scan as run_scan

    console.rule(f"qkscore demo: {model} on {data}")
    run = run_scan(
        model,
        data,
        template,
        out / "run",
        limit=limit,
        batch_size=batch_size,
        controls=control_names() if controls else (),
        attention_weights=True,
        log=console.print,
    )
    profile = run_calibrate(run.path, calib_size=calib_size, out=out / "profile.json")
    result = run_evaluate(run.path, profile, out=out / "evaluation.json")
    (out / "summary.md").write_text(summary_markdown(result) + "\n")
    write_report(run.path, profile, result, out / "report.html")
    console.print(Markdown(summary_markdown(result)))
    console.print(
        f"[green]wrote {out}/report.html, evaluation.json, predictions, summary.md, profile.json[/]"
    )

"""generate and rank: sample chains of thought, label them, and pick the best of N."""

from __future__ import annotations

from pathlib import Path

import typer

from qkscore.cli._shared import console as _console
from qkscore.cli._shared import fail as _fail
from qkscore.dtypes import VERDICT_DTYPE

BACKENDS = ("transformers", "vllm")


def _calibration_ids(profile: Path) -> list[str]:
    from qkscore.profile import Profile

    return [str(i) for i in Profile.load(profile).data["calibration"].get("item_ids", [])]


def generate(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Alias, hub id, folder or .gguf file."
    ),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Data spec FORMAT:PATH?k=v of True/False items."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Generation folder to write (or resume)."),
    from_file: Path | None = typer.Option(
        None, "--from", help="Import chains made elsewhere (JSONL, see docs/generation.md)."
    ),
    samples: int = typer.Option(4, "--samples", "-n", min=1, help="Chains per problem."),
    max_new_tokens: int = typer.Option(256, min=1, help="Most tokens one chain may take."),
    temperature: float = typer.Option(0.7, min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(0.95, min=0.0, max=1.0),
    seed: int = typer.Option(0, help="Each (problem, sample) draws from its own seed from it."),
    batch_size: int = typer.Option(
        8,
        "--batch-size",
        "-b",
        min=1,
        help="Chains decoded at once; a finished chain's place goes to the next one waiting.",
    ),
    chat_template: bool | None = typer.Option(
        None,
        "--chat-template/--no-chat-template",
        help="Wrap the prompt in the tokenizer's chat template (default: when it has one).",
    ),
    limit: int | None = typer.Option(None, min=1, help="Keep the first N problems."),
    exclude_ids_from: Path | None = typer.Option(
        None, help="A profile: leave out the items its reader was calibrated on."
    ),
    dtype: str = typer.Option(VERDICT_DTYPE, help="float32, bfloat16, float16 or auto."),
    backend: str = typer.Option("transformers", help="transformers (vllm: not available)."),
) -> None:
    """Sample chains of thought per problem into a resumable folder (or import them)."""
    from qkscore.generation import generate as run_generate

    if backend not in BACKENDS:
        raise _fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "vllm":
        raise _fail(
            "--backend vllm is not implemented yet; use the transformers backend, or generate "
            "with vLLM yourself and import the chains with --from FILE.jsonl"
        )
    exclude = _calibration_ids(exclude_ids_from) if exclude_ids_from else []
    if from_file is not None:
        from qkscore.generation.byo import import_chains

        if model is not None or data is not None:
            raise _fail("--from imports chains: give neither --model nor --data with it")
        folder = import_chains(from_file, out, exclude_ids=exclude, limit=limit)
    else:
        if model is None or data is None:
            raise _fail("give --model and --data (or --from FILE.jsonl to import chains)")
        folder = run_generate(
            model,
            data,
            out,
            samples=samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            chat_template=chat_template,
            limit=limit,
            exclude_ids=exclude,
            dtype=dtype,
        )
    meta = folder.meta()
    records = folder.records()
    answered = sum(r["answer"] is not None for r in records)
    correct = sum(r["correct"] for r in records)
    n = len(records)
    stats = meta.get("generation") or {}
    line = (
        f"{folder.path}: {meta['n_problems']} problems, {n} chains; final answer parsed in "
        f"{answered}/{n}, correct in {correct}/{n}"
    )
    if stats.get("tokens"):
        line += (
            f"; {stats['tokens']} tokens in {stats['wall_s']:.1f} s "
            f"({stats['tokens_per_s']} tokens/s)"
        )
    from qkscore.generation.label import parse_coverage

    cov = parse_coverage([lab for r in records for lab in r["labels"]])
    if cov["steps"]:
        line += (
            f"; steps: {cov['valid']} valid, {cov['invalid']} invalid, {cov['unparsed']} "
            f"unparsed (parse coverage {cov['coverage']:.1%})"
        )
    _console().print(line)


def rank(
    gen: Path = typer.Argument(..., help="Generation folder from `qkscore generate`."),
    profile: Path = typer.Option(
        ...,
        "--profile",
        "-p",
        help="Profile JSON from calibrate: a step profile (calibrate GEN), or an answer profile "
        "(its step verdicts are then flagged as calibrated on answers).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ranked.jsonl and summaries."),
    answer_profile: Path | None = typer.Option(
        None,
        "--answer-profile",
        help="An answer profile of the same model, measured on the same steps beside the step "
        "profile (answer_* scorers).",
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model to load instead of the profile's (same fingerprint)."
    ),
    folds: int = typer.Option(
        5, min=2, help="Folds (by problem) for the solution-level head and linear reader."
    ),
    include_calibration: bool = typer.Option(
        False,
        help="Keep problems an answer profile was calibrated on (excluded by default; refused "
        "for a step profile).",
    ),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1),
    dtype: str = typer.Option(VERDICT_DTYPE, help="float32 (verdicts reproduce), bfloat16, ..."),
    seed: int = typer.Option(0, help="Seed of the folds, the random pick and the bootstrap."),
) -> None:
    """Score every chain (step verdicts, solution QK, logit confidence) and pick the best of N."""
    from rich.markdown import Markdown

    from qkscore.generation.rank import rank as run_rank
    from qkscore.generation.rank import summary_markdown

    summary = run_rank(
        gen,
        profile,
        out,
        answer_profile=answer_profile,
        model=model,
        folds=folds,
        dtype=dtype,
        batch_size=batch_size,
        include_calibration=include_calibration,
        seed=seed,
    )
    _console().print(Markdown(summary_markdown(summary)))
    if summary.get("warning"):
        _console().print(f"[yellow]warning:[/] {summary['warning']}")
    _console().print(f"wrote {out}/ranked.jsonl, summary.json, summary.md")

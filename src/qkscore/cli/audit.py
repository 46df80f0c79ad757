"""check, verify-chain and serve: judge text with a calibrated profile."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qkscore.cli._shared import console as _console
from qkscore.cli._shared import fail as _fail

PROFILE_HELP = "Profile JSON from `qkscore calibrate`."
MODEL_HELP = "Model to load instead of the one the profile names (must have its fingerprint)."
FAST_HELP = (
    "Skip the model's own answer and stop the pass after the deepest layer the profile's "
    "reader reads (a hybrid reader always runs the whole pass)."
)
DTYPE_HELP = (
    "float32 (the default: verdicts reproduce), bfloat16, float16, or auto (bfloat16; faster, "
    "but batching can flip borderline verdicts)."
)


def _text(value: str | None, file: Path | None, what: str, required: bool) -> str:
    if value is not None and file is not None:
        raise _fail(f"give --{what} or --{what}-file, not both")
    if file is not None:
        return _read(file, f"--{what}-file")
    if value is None and required:
        raise _fail(f"give --{what} TEXT or --{what}-file FILE")
    return value or ""


def _read(file: Path, option: str) -> str:
    """A text file an option names; a file that is not UTF-8 is refused, naming the file."""
    from qkscore.data.textio import read_text_file

    try:
        return read_text_file(file)[0]
    except OSError as err:
        raise _fail(f"cannot read {option} {file}: {err.strerror}") from None


def _judge(profile: Path, model: str | None, dtype: str, model_answer: bool):
    from qkscore.audit import Judge

    return Judge(profile, model=model, dtype=dtype, model_answer=model_answer)


def _visible(text: str, what: str) -> None:
    """The service's rule: no judging text that is blank after Unicode normalisation."""
    from qkscore.audit.text import require_text

    try:
        require_text(text, what)
    except ValueError as err:
        raise _fail(str(err)) from None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _answer(v: Any) -> str:
    return "–" if v is None else ("True" if v else "False")


def check(
    profile: Path = typer.Option(..., "--profile", "-p", help=PROFILE_HELP),
    context: str | None = typer.Option(None, "--context", "-c", help="Premises."),
    statement: str | None = typer.Option(None, "--statement", "-s", help="Claim to judge."),
    context_file: Path | None = typer.Option(None, help="Read the context from a file."),
    statement_file: Path | None = typer.Option(None, help="Read the statement from a file."),
    json_out: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    dtype: str = typer.Option("float32", help=DTYPE_HELP),
) -> None:
    """Judge whether a statement follows from a context, with the profile's reader."""
    ctx = _text(context, context_file, "context", required=False)
    st = _text(statement, statement_file, "statement", required=True)
    _visible(st, "the statement")
    if ctx.strip():
        _visible(ctx, "the context")
    judge = _judge(profile, model, dtype, not fast)
    verdict = judge.check(ctx, st)
    if json_out:
        typer.echo(json.dumps(verdict.to_dict(), indent=2))
        return
    colour = "green" if verdict.valid else "red"
    out = _console()
    out.print(
        f"[bold {colour}]{verdict.verdict}[/]  (reader {verdict.reader}; best single head "
        f"{verdict.head})"
    )
    table = Table(show_header=False, box=None)
    table.add_row("P(valid)", _pct(verdict.probability))
    table.add_row(
        "margin",
        f"{verdict.margin:+.3f}  (score {verdict.score:.3f} vs threshold {verdict.threshold:.3f})",
    )
    if verdict.model_answer is not None:
        note = "  [yellow]disagrees with the reader[/]" if verdict.disagree else ""
        table.add_row(
            "model says",
            f"{_answer(verdict.model_answer)} (P(True) {_pct(verdict.model_probability)}){note}",
        )
    if verdict.ensemble_verdict is not None:
        table.add_row(
            "ensemble", f"{verdict.ensemble_verdict} ({_pct(verdict.ensemble_probability)})"
        )
    table.add_row("latency", f"{verdict.latency_ms:.0f} ms, {verdict.layers_run} layers")
    out.print(table)


def verify_chain(
    profile: Path = typer.Option(..., "--profile", "-p", help=PROFILE_HELP),
    chain: Path = typer.Option(
        ..., "--chain", help="JSON list of steps, or a text file split into sentences."
    ),
    context: str | None = typer.Option(None, "--context", "-c", help="Premises."),
    context_file: Path | None = typer.Option(None, help="Read the context from a file."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    dtype: str = typer.Option("float32", help=DTYPE_HELP),
) -> None:
    """Judge each step of a chain of thought against the context and the steps before it."""
    ctx = _text(context, context_file, "context", required=False)
    raw = _read(chain, "--chain")
    steps: list[str] | str = raw
    if raw.lstrip().startswith("["):
        try:
            steps = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _fail(f"{chain}:{err.lineno}: not a JSON list ({err.msg})") from None
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise _fail(f"{chain}: expected a JSON list of strings")
    from qkscore.audit.chain import split_steps

    for i, step in enumerate(split_steps(steps) if isinstance(steps, str) else steps):
        _visible(step, f"step {i} of {chain}")
    if ctx.strip():
        _visible(ctx, "the context")
    judge = _judge(profile, model, dtype, not fast)
    result = judge.verify_chain(ctx, steps)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    table = Table(title=f"Chain verified with reader {judge.reader_name} ({judge.unit} profile)")
    for col in ("#", "step", "verdict", "P(valid)", "margin"):
        table.add_column(col, justify="right" if col in ("#", "P(valid)", "margin") else "left")
    with_model = any(s.model_answer is not None for s in result.steps)
    if with_model:
        table.add_column("model says")
    for s in result.steps:
        colour = "green" if s.valid else "red"
        row = [
            str(s.index),
            s.statement,
            f"[{colour}]{s.verdict}[/]",
            _pct(s.probability),
            f"{s.margin:+.2f}",
        ]
        if with_model:
            row.append(_answer(s.model_answer) + (" [yellow]≠[/]" if s.disagree else ""))
        table.add_row(*row)
    out = _console()
    out.print(table)
    if result.warning:
        out.print(f"[yellow]warning:[/] {result.warning}")
    if result.first_failure is None:
        out.print("[green]every step follows[/]")
    else:
        out.print(f"[red]first failing step: {result.first_failure}[/]")
    out.print(f"{result.latency_ms:.0f} ms for {result.n_steps} steps")


def serve(
    profile: Path = typer.Option(..., "--profile", "-p", help=PROFILE_HELP),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on (1-65535)."),
    db: str = typer.Option(
        "qkscore-audit.db",
        "--db",
        help="Audit log: an SQLite file (WAL) or a postgresql://user@host/db URL.",
    ),
    no_store_text: bool = typer.Option(
        False, "--no-store-text", help="Log input hashes, scores and verdicts but not the texts."
    ),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP + " (per-request default)"),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    dtype: str = typer.Option("float32", help=DTYPE_HELP),
    threads: int = typer.Option(
        0, help="torch CPU threads (0: torch's default; 1 is faster on a busy small machine)."
    ),
    max_tokens_per_request: int = typer.Option(
        32_768,
        min=1,
        help="Compute budget of one request in tokens: context + statement for a check; for a "
        "chain, steps x context plus each step once per step it precedes or is. Over it: 413.",
    ),
    request_timeout: float = typer.Option(
        60.0, min=0.001, help="Seconds a request may wait for the model before a 503."
    ),
    max_queue: int = typer.Option(
        64, min=0, help="Requests that may wait for the model; the next gets 503 + Retry-After."
    ),
    workers: int = typer.Option(
        1,
        min=1,
        help="Worker processes (uvicorn), each with its own copy of the model (memory: model "
        "size x workers), all logging to the one --db; max_queue is per worker.",
    ),
) -> None:
    """Serve /v1/check, /v1/verify-chain, /v1/audit and the dashboard at /.

    Set QKSCORE_API_KEY to require that key (X-API-Key or Authorization: Bearer) on /v1 routes,
    and QKSCORE_AUDIT_HASH_KEY to key the logged input hashes (HMAC), so that with
    --no-store-text the texts cannot be guessed back from them.
    """
    try:
        from qkscore.audit.service import ServeLimits
        from qkscore.audit.service import serve as run_server
    except ImportError as err:
        raise _fail(f"serving needs the serve extra: pip install 'qkscore[serve]' ({err})") from (
            None
        )
    from qkscore.audit.store import AuditStore, AuditStoreError

    limits = ServeLimits(max_tokens_per_request, request_timeout, max_queue)
    hash_key = os.environ.get("QKSCORE_AUDIT_HASH_KEY", "").encode() or None
    # the log is opened (and checked: a folder, not SQLite, unwritable) before the model loads
    try:
        store = AuditStore(db, store_text=not no_store_text, hash_key=hash_key)
    except AuditStoreError as err:
        raise _fail(f"--db: {err}") from None
    if workers > 1:
        store.close()
        _serve_workers(profile, db, model, dtype, fast, no_store_text, threads, limits,
                       host, port, workers)  # fmt: skip
        return
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        judge = _judge(profile, model, dtype, not fast)
        load_s = time.perf_counter() - start
    except BaseException:
        store.close()
        raise
    api_key = os.environ.get("QKSCORE_API_KEY") or None
    out = _console()
    model_dtype = str(judge.lm.dtype).removeprefix("torch.")
    out.print(
        f"judging with reader {judge.reader_name} of {judge.profile.data['model'].get('name')} "
        f"({model_dtype}; profile {judge.profile.digest}); audit log {store.url}"
        f"{' without texts' if no_store_text else ''}; "
        f"{'API key required' if api_key else '[yellow]no API key[/] (QKSCORE_API_KEY unset)'}"
    )
    if no_store_text and not hash_key:
        out.print(
            "[yellow]input hashes are unkeyed[/]: short texts can be guessed back from them; "
            "set QKSCORE_AUDIT_HASH_KEY to a secret to key them"
        )
    if model_dtype != "float32":
        out.print(
            f"[yellow]{model_dtype}[/]: a borderline verdict can depend on what it is batched "
            "with; for audits that must reproduce, serve in float32 (the default)"
        )
    out.print(
        f"limits: {limits.max_tokens_per_request:,} tokens a request, {limits.max_queue} "
        f"queued, {limits.request_timeout:g} s wait"
    )
    out.print(f"dashboard: http://{host}:{port}/")
    run_server(
        judge,
        store,
        host=host,
        port=port,
        store_text=not no_store_text,
        api_key=api_key,
        hash_key=hash_key,
        limits=limits,
        model_load_seconds=load_s,
    )


def _serve_workers(profile, db, model, dtype, fast, no_store_text, threads, limits, host, port,
                   workers) -> None:  # fmt: skip
    """``serve --workers N``: the settings go to the workers as environment variables (uvicorn
    re-imports the app in each); the profile is checked here, the model loads in each worker."""
    from qkscore.audit.service import ENV, serve_workers
    from qkscore.profile import Profile

    try:
        Profile.load(profile)
    except OSError as err:
        raise _fail(f"cannot read --profile {profile}: {err.strerror}") from None
    values = {
        "profile": str(Path(profile).resolve()),
        "db": db,
        "model": model or "",
        "dtype": dtype,
        "fast": "1" if fast else "0",
        "store_text": "0" if no_store_text else "1",
        "threads": str(threads),
        "max_tokens_per_request": str(limits.max_tokens_per_request),
        "request_timeout": repr(limits.request_timeout),
        "max_queue": str(limits.max_queue),
    }
    for key, value in values.items():
        os.environ[ENV[key]] = value
    from qkscore.audit.store import _redact

    out = _console()
    out.print(
        f"{workers} workers, each loading its own copy of the model (memory: model size x "
        f"{workers}); audit log {_redact(db)}; "
        f"{'API key required' if os.environ.get('QKSCORE_API_KEY') else '[yellow]no API key[/]'}"
    )
    out.print(f"dashboard: http://{host}:{port}/")
    serve_workers(host=host, port=port, workers=workers)


# ---- qkscore audit verify | export -----------------------------------------------------------

DB_HELP = "The audit log: an SQLite file (WAL) or a postgresql:// URL."
audit_app = typer.Typer(
    help="Check and export the audit log that `qkscore serve` writes.", no_args_is_help=True
)


def _open_log(db: str):
    """The log, read-only: verifying and exporting never write (nor migrate an old log)."""
    from qkscore.audit.store import AuditStore, AuditStoreError

    if (
        not db.startswith(("postgresql://", "postgres://"))
        and not Path(db.removeprefix("sqlite://")).exists()
    ):
        raise _fail(f"--db: {db} does not exist")
    try:
        return AuditStore(db, read_only=True)
    except AuditStoreError as err:
        raise _fail(f"--db: {err}") from None


@audit_app.command("verify")
def audit_verify(db: str = typer.Option(..., "--db", help=DB_HELP)) -> None:
    """Walk the hash chain; name the first broken row (exit 2) or print the row count."""
    store = _open_log(db)
    try:
        report = store.verify()
    finally:
        store.close()
    if not report.ok:
        raise _fail(report.line())
    typer.echo(report.line())


@audit_app.command("export")
def audit_export(
    db: str = typer.Option(..., "--db", help=DB_HELP),
    since: str | None = typer.Option(None, help="Rows from this time: unix seconds or ISO 8601."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or parquet (needs pyarrow)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="File to write (jsonl default: standard output)."
    ),
) -> None:
    """Write the logged rows, oldest first, with their hashes, for reviewers."""
    from qkscore.audit.store import parse_time

    if fmt not in ("jsonl", "parquet"):
        raise _fail(f"--format must be jsonl or parquet, got {fmt!r}")
    try:
        parse_time(since)
    except ValueError as err:
        raise _fail(f"--since: {err}") from None
    if fmt == "parquet":
        if out is None:
            raise _fail("--format parquet needs --out FILE")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise _fail(
                "--format parquet needs pyarrow: pip install 'qkscore[data]' (or use jsonl)"
            ) from None
    store = _open_log(db)
    n = 0
    try:
        rows = store.iter_rows(since=since, raw=True)
        if fmt == "jsonl":
            handle = out.open("w", encoding="utf-8") if out else None
            try:
                for row in rows:
                    line = json.dumps(row, sort_keys=True)
                    if handle:
                        handle.write(line + "\n")
                    else:
                        typer.echo(line)
                    n += 1
            except BrokenPipeError:
                if handle:
                    raise
                raise _reader_left() from None
            finally:
                if handle:
                    handle.close()
        else:
            from qkscore.audit.store import arrow_schema

            table = pa.Table.from_pylist(list(rows), schema=arrow_schema(pa))
            n = table.num_rows
            pq.write_table(table, out)
    finally:
        store.close()
    if out is not None:
        _console().print(f"{n} rows written to {out}")


SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what `yes | head` reports for `yes`


def _reader_left() -> typer.Exit:
    """Standard output's reader has gone (``... | head``): stop without a message, with the
    status of a Unix tool that SIGPIPE ended. Standard output is pointed at /dev/null first,
    so that Python's flush at exit does not fail on the closed pipe again."""
    with contextlib.suppress(OSError, ValueError):  # no real file descriptor (tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return typer.Exit(SIGPIPE_STATUS)

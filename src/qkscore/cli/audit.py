"""check, verify-chain and serve: judge text with a calibrated profile."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qkscore.audit.settings import (  # pydantic only
    FAST_HELP,
    FLAGS,
    GPU_MAX_BATCH,
    ServeSettings,
    env_name,
)
from qkscore.cli._shared import console as _console
from qkscore.cli._shared import fail as _fail
from qkscore.dtypes import dtype_name

PROFILE_HELP = ServeSettings.model_fields["profile"].description
MODEL_HELP = ServeSettings.model_fields["model"].description
DTYPE_HELP = ServeSettings.model_fields["dtype"].description


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


def _serve_command(fn):
    """The ``serve`` command with one option per :class:`ServeSettings` field (flag, type,
    help, default and env variable all from the field: the settings are declared once). An
    option not given is None and leaves the field to its ``QKSCORE_SERVE_*`` variable or its
    default; ``fn`` gets the validated settings. A yes/no setting is a pair of flags
    (``--fast/--no-fast``, ``--store-text/--no-store-text``)."""
    params = []
    for name, field in ServeSettings.model_fields.items():
        flag = FLAGS[name]
        if field.annotation is bool:
            flag = "--{0}/--no-{0}".format(name.replace("_", "-"))
        short = {"profile": ("-p",), "model": ("-m",)}.get(name, ())
        default = "none" if field.default is None else field.default
        text = f"{field.description} (default {default}; env {env_name(name)})"
        # bounds click checks itself ("Invalid value for '--port'"); the rest pydantic does
        bounds = {}
        for m in field.metadata:
            bounds |= (
                {"min": m.ge} if hasattr(m, "ge") else {"max": m.le} if hasattr(m, "le") else {}
            )
        option = typer.Option(None, flag, *short, help=text, show_default=False, **bounds)
        annotation = field.annotation | None  # None: not given
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=annotation))  # fmt: skip

    @functools.wraps(fn)
    def command(**given: Any) -> None:
        from pydantic import ValidationError

        try:
            settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
        except ValidationError as err:
            raise _fail(f"serve: {_settings_problems(err)}") from None
        fn(settings)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer reads the signature above, not fn's
    return command


def _settings_problems(err: Any) -> str:
    """A settings ValidationError in one line, naming each option and its variable."""
    by_env = {env_name(name): name for name in FLAGS}
    parts = []
    for e in err.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        name = by_env.get(name, name)
        where = f"{FLAGS[name]} ({env_name(name)})" if name in FLAGS else name or "settings"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


@_serve_command
def serve(settings) -> None:
    """Serve /v1/check, /v1/verify-chain, /v1/audit and the dashboard at /.

    Every option is also a QKSCORE_SERVE_* variable (an option given wins). Set
    QKSCORE_API_KEY to require that key (X-API-Key or Authorization: Bearer) on /v1 routes,
    and QKSCORE_AUDIT_HASH_KEY to key the logged input hashes (HMAC), so that with
    --no-store-text the texts cannot be guessed back from them.
    """
    try:
        from qkscore.audit.service import serve as run_server
    except ImportError as err:
        raise _fail(f"serving needs the serve extra: pip install 'qkscore[serve]' ({err})") from (
            None
        )
    from qkscore.audit.store import AuditStore, AuditStoreError

    if settings.profile is None:
        raise _fail("give --profile PROFILE (or set QKSCORE_SERVE_PROFILE)")
    hash_key = os.environ.get("QKSCORE_AUDIT_HASH_KEY", "").encode() or None
    # the log is opened (and checked: a folder, not SQLite, unwritable) before the model loads
    try:
        store = AuditStore(settings.db, store_text=settings.store_text, hash_key=hash_key)
    except AuditStoreError as err:
        raise _fail(f"--db: {err}") from None
    if settings.workers > 1:
        store.close()
        _serve_workers(settings)
        return
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    try:
        start = time.perf_counter()
        judge = _judge(settings.profile, settings.model, settings.dtype, not settings.fast)
        load_s = time.perf_counter() - start
    except BaseException:
        store.close()
        raise
    api_key = os.environ.get("QKSCORE_API_KEY") or None
    out = _console()
    model_dtype = dtype_name(judge.lm.dtype)
    out.print(
        f"judging with reader {judge.reader_name} of {judge.profile.data['model'].get('name')} "
        f"({model_dtype}; profile {judge.profile.digest}); audit log {store.url}"
        f"{'' if settings.store_text else ' without texts'}; "
        f"{'API key required' if api_key else '[yellow]no API key[/] (QKSCORE_API_KEY unset)'}"
    )
    if not settings.store_text and not hash_key:
        out.print(
            "[yellow]input hashes are unkeyed[/]: short texts can be guessed back from them; "
            "set QKSCORE_AUDIT_HASH_KEY to a secret to key them"
        )
    if model_dtype != "float32":
        out.print(
            f"[yellow]{model_dtype}[/]: a borderline verdict can depend on what it is batched "
            "with; for audits that must reproduce, serve in float32 (the default)"
        )
    out.print(_limits_line(settings.for_device(getattr(judge.lm.device, "type", "cpu"))))
    out.print(f"dashboard: http://{settings.host}:{settings.port}/")
    run_server(
        judge,
        store,
        host=settings.host,
        port=settings.port,
        store_text=settings.store_text,
        api_key=api_key,
        hash_key=hash_key,
        limits=settings,
        model_load_seconds=load_s,
    )


def _limits_line(settings) -> str:
    if settings.max_batch is None:  # the workers resolve it on their model's device
        batching = f"one request at a time on a CPU, batches of up to {GPU_MAX_BATCH} on a GPU"
    elif settings.batching:
        batching = (
            f"batches of up to {settings.max_batch} requests and {settings.max_batch_tokens:,} "
            f"tokens, gathered for {settings.batch_window_ms:g} ms"
        )
    else:
        batching = "one request at a time"
    return (
        f"limits: {settings.max_tokens_per_request:,} tokens a request, {settings.max_queue} "
        f"queued, {settings.request_timeout:g} s wait; {batching}"
    )


def _serve_workers(settings) -> None:
    """``serve --workers N``: the settings go to the workers as environment variables (uvicorn
    re-imports the app in each); the profile is checked here, the model loads in each worker."""
    from qkscore.audit.service import serve_workers
    from qkscore.audit.store import _redact
    from qkscore.profile import Profile

    try:
        Profile.load(settings.profile)
    except OSError as err:
        raise _fail(f"cannot read --profile {settings.profile}: {err.strerror}") from None
    os.environ.update(settings.to_env())
    out = _console()
    out.print(
        f"{settings.workers} workers, each loading its own copy of the model (memory: model "
        f"size x {settings.workers}); audit log {_redact(settings.db)}; "
        f"{'API key required' if os.environ.get('QKSCORE_API_KEY') else '[yellow]no API key[/]'}"
    )
    out.print(_limits_line(settings))
    out.print(f"dashboard: http://{settings.host}:{settings.port}/")
    serve_workers(host=settings.host, port=settings.port, workers=settings.workers)


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
    """Walk the log's hash links; name the first broken row (exit 2) or print the row count."""
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

"""The ``qkscore`` command: a thin typer shell over the Python API.

Each command group lives in its own module and only parses arguments, calls the API and renders
the result; no logic lives here. Errors of every command take one path,
:class:`qkscore.cli._errors.ErrorHandlingGroup`: one ``error:`` line, exit status 2 for an
ordinary mistake, and the traceback only with ``qkscore --debug ...`` (or ``QKSCORE_DEBUG=1``).
"""

from __future__ import annotations

import typer

from qkscore.cli import audit as _audit
from qkscore.cli import data as _data
from qkscore.cli import generation as _generation
from qkscore.cli import lm_eval as _lm_eval
from qkscore.cli import models as _models
from qkscore.cli import pipeline as _pipeline
from qkscore.cli._errors import DEBUG_ENV, ErrorHandlingGroup
from qkscore.cli._shared import deprecated_alias, reflow_help

app = typer.Typer(
    name="qkscore",
    help="Read a model's own attention heads to judge whether its inferences are valid.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ErrorHandlingGroup,
)
app.add_typer(_data.app, name="data")
app.add_typer(_models.app, name="models")
app.add_typer(_audit.audit_app, name="audit")
for _command in (
    _pipeline.demo,
    _pipeline.scan,
    _pipeline.calibrate,
    _pipeline.evaluate,
    _pipeline.transfer,
    _pipeline.sweep,
    _pipeline.report,
    _pipeline.heads,
    _pipeline.readers,
    _audit.check,
    _audit.verify_chain,
    _audit.serve,
    _generation.generate,
    _generation.rank,
):
    app.command(_command.__name__.replace("_", "-"))(_command)
app.command("lm-eval", context_settings=_lm_eval.CONTEXT)(_lm_eval.lm_eval)
deprecated_alias(app, "qkscore probe", "qkscore heads", _pipeline.heads)
reflow_help(app)


@app.callback()
def _main(
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar=DEBUG_ENV,
        help="Print the full traceback of an error (default: one 'error:' line).",
    ),
) -> None:
    """qkscore: query-key alignment scores for logical consistency."""


def main() -> None:  # pragma: no cover - console entry point
    app()

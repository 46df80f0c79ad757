"""``qkscore lm-eval ...``: lm-evaluation-harness's own command line, with ``--model qkscore``.

lm-eval 0.4.13 has no plugin entry points, so this command registers the model and the
packaged tasks and passes every argument on unchanged (see
:mod:`qkscore.integrations.lm_eval`). It needs the ``lm-eval`` extra.
"""

from __future__ import annotations

import typer

from qkscore.cli._shared import fail

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def lm_eval(ctx: typer.Context) -> None:
    """Run lm-evaluation-harness with the `qkscore` model and qkscore's tasks (lm_eval --help)."""
    try:
        from qkscore.integrations.lm_eval import main
    except ImportError as err:
        raise fail(f"lm-eval is not installed ({err}): pip install 'qkscore[lm-eval]'") from err
    main(ctx.args)

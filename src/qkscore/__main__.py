"""``python -m qkscore`` (and ``accelerate launch -m qkscore scan ...``)."""

from qkscore.cli import app

app()

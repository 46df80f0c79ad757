"""The built-in data formats; importing this package registers every one of them."""

from qkscore.data.formats import helpers  # noqa: F401

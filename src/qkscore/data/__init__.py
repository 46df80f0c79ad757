"""Reasoning items, the formats for public sets, the generator and the shortcut check."""

from qkscore.data import formats  # noqa: F401  (registers the built-in formats)
from qkscore.data.items import TRUE_FALSE, TRUE_FALSE_UNKNOWN, DataError, Item, normalize_label
from qkscore.data.spec import DataSpec, available_formats, load_items, parse_spec, register_loader

__all__ = [
    "TRUE_FALSE",
    "TRUE_FALSE_UNKNOWN",
    "DataError",
    "DataSpec",
    "Item",
    "available_formats",
    "load_items",
    "normalize_label",
    "parse_spec",
    "register_loader",
]

"""The built-in data formats, one module each; importing this package registers every one.

A new format is one new module here that decorates its loader with
:func:`qkscore.data.formats.helpers.loader` (or :func:`qkscore.data.spec.register_loader`), plus
its name in the import below. :mod:`qkscore.data.spec` holds the registry and imports no format.
"""

from qkscore.data.formats import (  # noqa: F401  (imported to register the formats)
    folio,
    generated,
    hf,
    mapped,
    mmlu,
    multi_logieval,
    pararule,
    prontoqa,
    proofwriter,
)
from qkscore.data.formats.helpers import (
    LoadContext,
    LoadReport,
    MissingDependencyError,
    Record,
    get_last_load_report,
    iter_records,
    read_text,
)
from qkscore.data.formats.multi_logieval import multi_logieval_statement
from qkscore.data.formats.prontoqa import prontoqa_shots

__all__ = [
    "LoadContext",
    "LoadReport",
    "MissingDependencyError",
    "Record",
    "get_last_load_report",
    "iter_records",
    "multi_logieval_statement",
    "prontoqa_shots",
    "read_text",
]

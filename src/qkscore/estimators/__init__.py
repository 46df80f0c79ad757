"""Estimators over QK-scores: sklearn-style, numpy only, one module per reader.

``protocol`` defines what a reader is (:class:`~qkscore.estimators.protocol.Reader`) and holds
the one registry (``@register_reader``) that the CLI, the profile and the evaluation read.
``base`` holds the input checks and JSON helpers every estimator shares; ``heads`` the single
head and the ``L{layer}H{head}`` names, ``ensemble`` the top-k combination, ``linear`` the
logistic readout of every head, ``hybrid`` that readout stacked with the model's own margin;
``probe`` the hidden-state baseline, ``readers`` choosing among readers by cross-validation and
the fair baselines. The per-head AUROC kernels they share are statistics and live in
:mod:`qkscore.stats`.

Importing this package imports every module in it, so a reader module registers itself: a new
reader is one new module here (plus its test). The built-in readers come first, simplest first
(ties in the reader choice go to the earlier one).
"""

import importlib
import pkgutil

from qkscore.estimators import ensemble, heads, hybrid, linear  # noqa: F401 - registration

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

"""Estimators over QK-scores: sklearn-style, numpy only, one home for every reader.

``base`` holds the input checks and JSON helpers they share, ``heads`` the single-head selector
and the ``L{layer}H{head}`` names, ``ensemble`` the top-k combination, ``conditional_logit`` the
option-symmetric logistic combiner, ``readers`` the linear, hybrid and hidden-state readers and
the registry that picks among them. The per-head AUROC kernels they share are statistics and live
in :mod:`qkscore.stats`. A new reader is a new class registered in ``readers``.
"""

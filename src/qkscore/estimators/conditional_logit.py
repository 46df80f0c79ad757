"""The option-symmetric conditional logit that combines heads (and readers) into one choice.

Numpy/scipy only: one weight per feature shared by every option, per-option biases.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

__all__ = ["fit_conditional_logit"]


def fit_conditional_logit(
    feats: np.ndarray, y: np.ndarray, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-option logistic combination: P(o) = softmax_o(sum_h w_h feats[:, h, o] + b_o).

    One weight per head (shared by all options, so the model stays option-symmetric like the
    heads themselves) plus per-option biases with ``b_0 = 0``; L2 penalty ``1/(2C)`` on both so
    an option never gold in calibration keeps a finite bias.
    """
    n, k, n_options = feats.shape
    rows = np.arange(n)
    onehot = np.zeros((n, n_options))
    onehot[rows, y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        u = np.einsum("nko,k->no", feats, w)
        u[:, 1:] += b
        logp = log_softmax(u, axis=1)
        du = np.exp(logp) - onehot
        grad_w = np.einsum("no,nko->k", du, feats) + w / c
        grad_b = du[:, 1:].sum(axis=0) + b / c
        value = -logp[rows, y].sum() + (w @ w + b @ b) / (2 * c)
        return float(value), np.concatenate([grad_w, grad_b])

    res = minimize(objective, np.zeros(k + n_options - 1), jac=True, method="L-BFGS-B")
    return res.x[:k], np.concatenate([[0.0], res.x[k:]])

"""The option-symmetric conditional logit that combines heads (and readers) into one choice.

Numpy/scipy only: one weight per feature shared by every option, per-option biases.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

__all__ = ["fit_conditional_logit"]


def fit_conditional_logit(
    feats: np.ndarray, y: np.ndarray, c: float = 1.0, penalty: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-option logistic combination: P(o) = softmax_o(sum_h w_h feats[:, h, o] + b_o).

    One weight per head (shared by all options, so the model stays option-symmetric like the
    heads themselves) plus per-option biases with ``b_0 = 0``; penalty ``1/(2C)`` times the
    squared norm on both (``"l2"``), or ``1/C`` times the weights' absolute sum (``"l1"``, which
    keeps few heads; the biases keep their small L2 term so an option never gold in
    calibration keeps a finite bias). L1 is solved exactly by splitting each weight into
    non-negative parts, ``w = w+ - w-``, under L-BFGS-B's bounds: an unused head sits on the
    bound at exactly zero.
    """
    if penalty not in ("l1", "l2"):
        raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
    n, k, n_options = feats.shape
    rows = np.arange(n)
    onehot = np.zeros((n, n_options))
    onehot[rows, y] = 1.0

    def loss(w: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Negative log-likelihood with the biases' L2 term, and its gradients."""
        u = np.einsum("nko,k->no", feats, w)
        u[:, 1:] += b
        logp = log_softmax(u, axis=1)
        du = np.exp(logp) - onehot
        value = -logp[rows, y].sum() + (b @ b) / (2 * c)
        return value, np.einsum("no,nko->k", du, feats), du[:, 1:].sum(axis=0) + b / c

    if penalty == "l2":

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:k], theta[k:]
            value, grad_w, grad_b = loss(w, b)
            return float(value + (w @ w) / (2 * c)), np.concatenate([grad_w + w / c, grad_b])

        res = minimize(objective, np.zeros(k + n_options - 1), jac=True, method="L-BFGS-B")
        return res.x[:k], np.concatenate([[0.0], res.x[k:]])

    def objective_l1(theta: np.ndarray) -> tuple[float, np.ndarray]:
        plus, minus, b = theta[:k], theta[k : 2 * k], theta[2 * k :]
        value, grad_w, grad_b = loss(plus - minus, b)
        value += (plus.sum() + minus.sum()) / c
        return float(value), np.concatenate([grad_w + 1 / c, -grad_w + 1 / c, grad_b])

    bounds = [(0.0, None)] * (2 * k) + [(None, None)] * (n_options - 1)
    res = minimize(
        objective_l1, np.zeros(2 * k + n_options - 1), jac=True, method="L-BFGS-B", bounds=bounds
    )
    w = res.x[:k] - res.x[k : 2 * k]
    return w, np.concatenate([[0.0], res.x[2 * k :]])

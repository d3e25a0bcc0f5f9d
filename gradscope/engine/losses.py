"""Losses: value and gradient with respect to the network's output.

Both are means over the batch, so ``dL/dout`` carries a factor ``1/batch``.
"""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy for integer labels.

    Parameters
    ----------
    logits : (batch, classes)
    y : (batch,) integer class labels in ``[0, classes)``

    Returns
    -------
    loss : float, ``-mean(log softmax(logits)[i, y_i])``
    dlogits : (batch, classes), ``(softmax(logits) - onehot(y)) / batch``
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(sums[:, 0]) - shifted[rows, y]))
    grad = exp
    grad /= sums
    grad[rows, y] -= 1
    grad /= n
    return loss, grad


def mean_squared_error(out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over samples and outputs.

    Parameters
    ----------
    out : (batch, outputs)
    y : (batch, outputs) or (batch,) real targets

    Returns
    -------
    loss : float, ``mean((out - y)^2)``
    dout : (batch, outputs), ``2 (out - y) / out.size``
    """
    diff = out - y.reshape(out.shape)
    loss = float(np.mean(diff * diff))
    diff *= 2.0 / diff.size
    return loss, diff


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose arg-max logit is the label."""
    return float(np.mean(np.argmax(logits, axis=1) == y))


LOSSES = {"cross_entropy": softmax_cross_entropy, "mse": mean_squared_error}

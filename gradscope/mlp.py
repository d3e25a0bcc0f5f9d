"""A multilayer perceptron in numpy: parameters, forward pass (keeping caches), backward pass.

Conventions (docs/log-format.md relies on them):

- Parameters are a flat list ``[W_0, b_0, W_1, b_1, ...]``; ``W_l`` has shape
  ``(fan_in, fan_out)`` and ``b_l`` shape ``(fan_out,)``. Layer ``l = 0`` maps the
  input to the first hidden layer; ``l = depth`` (the last) is the linear output layer.
- Layer ``l`` computes ``z_l = a_l @ W_l + b_l``; hidden layers then ``a_{l+1} = phi(z_l)``.
- ``delta_l = dL/dz_l``, the back-propagated gradient at layer ``l``'s pre-activations.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .activations import Activation
from .initializers import INITIALIZERS

Params = list[np.ndarray]


class Cache(NamedTuple):
    """What the forward pass keeps for the backward pass and the probes.

    inputs : ``a_l`` for each layer, the array layer ``l`` multiplies (``inputs[0]`` is X).
    pre : ``z_l`` for each layer (``pre[-1]`` is the network's output).
    """

    inputs: list[np.ndarray]
    pre: list[np.ndarray]


class Gradients(NamedTuple):
    """What the backward pass hands back.

    grads : ``[dL/dW_0, dL/db_0, ...]``, the same layout as the parameters.
    deltas : ``delta_l = dL/dz_l`` for each layer, shape ``(batch, fan_out_l)``.
    dphi : ``phi'(z_l)`` for each hidden layer (one fewer than layers).
    """

    grads: Params
    deltas: list[np.ndarray]
    dphi: list[np.ndarray]


def layer_sizes(n_in: int, widths: list[int], n_out: int) -> list[int]:
    """Unit counts from input to output: ``[n_in, *widths, n_out]``."""
    return [int(n_in), *map(int, widths), int(n_out)]


def init_params(
    sizes: list[int],
    init: str,
    rng: np.random.Generator,
    gain: float = 1.0,
    dtype=np.float32,
) -> Params:
    """Weights from the named initialisation (``INITIALIZERS``), biases zero."""
    make = INITIALIZERS[init]
    params: Params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params.append(np.asarray(make(fan_in, fan_out, rng, gain), dtype=dtype))
        params.append(np.zeros(fan_out, dtype=dtype))
    return params


def n_layers(params: Params) -> int:
    return len(params) // 2


def forward(params: Params, X: np.ndarray, activation: Activation) -> tuple[np.ndarray, Cache]:
    """Run the network on ``X`` of shape ``(batch, n_in)``.

    Returns the output ``(batch, n_out)`` and the :class:`Cache`.
    """
    inputs, pre = [], []
    a = X
    last = n_layers(params) - 1
    for l in range(last + 1):
        W, b = params[2 * l], params[2 * l + 1]
        z = a @ W
        z += b
        inputs.append(a)
        pre.append(z)
        if l < last:
            a = activation.f(z)
    return pre[-1], Cache(inputs, pre)


def backward(
    params: Params, cache: Cache, dout: np.ndarray, activation: Activation
) -> Gradients:
    """Back-propagate ``dout = dL/d(output)`` through the cached forward pass."""
    L = n_layers(params)
    grads: Params = [None] * (2 * L)  # type: ignore[list-item]
    deltas: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    dphi: list[np.ndarray] = [None] * (L - 1)  # type: ignore[list-item]
    delta = dout
    for l in range(L - 1, -1, -1):
        deltas[l] = delta
        grads[2 * l] = cache.inputs[l].T @ delta
        grads[2 * l + 1] = delta.sum(axis=0)
        if l > 0:
            # delta_{l-1} = (delta_l W_l^T) * phi'(z_{l-1}); a_l = phi(z_{l-1})
            d = activation.df(cache.pre[l - 1], cache.inputs[l])
            dphi[l - 1] = d
            delta = delta @ params[2 * l].T
            delta *= d
    return Gradients(grads, deltas, dphi)


def predict(params: Params, X: np.ndarray, activation: Activation) -> np.ndarray:
    """Forward pass without keeping anything: the output only."""
    a = X
    last = n_layers(params) - 1
    for l in range(last + 1):
        a = a @ params[2 * l] + params[2 * l + 1]
        if l < last:
            a = activation.f(a)
    return a

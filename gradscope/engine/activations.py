"""Activation functions, each with its derivative beside it.

Every activation is an :class:`Activation` in the :data:`ACTIVATIONS` registry.
``f(z)`` maps pre-activations to activations; ``df(z, a)`` is the derivative
``phi'(z)``, given both ``z`` and ``a = f(z)`` so that it can reuse whichever is
cheaper (``a * (1 - a)`` for the logistic function).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

Array = np.ndarray

LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """An elementwise activation and its derivative.

    Attributes
    ----------
    name : registry key.
    f : ``f(z) -> a``.
    df : ``df(z, a) -> phi'(z)``.
    df_max : the maximum of ``phi'`` over the real line (a quarter for the logistic).
    relu_family : units can die (derivative exactly or nearly zero for ``z <= 0``).
    saturating : bounded, with flat regions at both ends (sigmoid, tanh).
    output_range : where the activations lie, for histograms.
    binary : ``phi'`` is exactly 0 or 1 everywhere (ReLU, the identity).
    f_out, df_out : ``f`` and ``df`` writing into a given array ``out`` (the same numbers),
        for passes that keep their arrays in preallocated buffers; None: computed by ``f``
        or ``df`` and copied (see :func:`apply_into`).
    """

    name: str
    f: Callable[[Array], Array]
    df: Callable[[Array, Array], Array]
    df_max: float
    relu_family: bool = False
    saturating: bool = False
    output_range: tuple[float, float] = (-5.0, 5.0)
    binary: bool = False
    f_out: Callable[[Array, Array], Array] | None = None
    df_out: Callable[[Array, Array, Array], Array] | None = None

    def __call__(self, z: Array) -> Array:
        return self.f(z)


def _sigmoid(z):
    return expit(z)


def _d_sigmoid(z, a):
    return a * (1 - a)


def _sigmoid_out(z, out):
    return expit(z, out=out)


def _d_sigmoid_out(z, a, out):
    np.subtract(1, a, out=out)  # a * (1 - a), the same operations as _d_sigmoid
    return np.multiply(a, out, out=out)


def _tanh(z):
    return np.tanh(z)


def _d_tanh(z, a):
    return 1 - a * a


def _tanh_out(z, out):
    return np.tanh(z, out=out)


def _d_tanh_out(z, a, out):
    np.multiply(a, a, out=out)  # 1 - a * a, the same operations as _d_tanh
    return np.subtract(1, out, out=out)


def _relu(z):
    return np.maximum(z, 0)


def _d_relu(z, a):
    return np.greater(z, 0, out=np.empty_like(z))  # 1.0 / 0.0 in one pass


def _relu_out(z, out):
    return np.maximum(z, 0, out=out)


def _d_relu_out(z, a, out):
    return np.greater(z, 0, out=out)


def _leaky_relu(z):
    return np.where(z > 0, z, z * LEAKY_SLOPE)


def _d_leaky_relu(z, a):
    return np.where(z > 0, 1, LEAKY_SLOPE).astype(z.dtype)


def _elu(z):
    # alpha = 1: z for z > 0, exp(z) - 1 otherwise
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def _d_elu(z, a):
    return np.where(z > 0, 1, a + 1).astype(z.dtype)


def _softplus(z):
    return np.logaddexp(0, z).astype(z.dtype, copy=False)


def _d_softplus(z, a):
    return expit(z)


def _linear(z):
    return z


def _d_linear(z, a):
    return np.ones_like(z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("sigmoid", _sigmoid, _d_sigmoid, 0.25, saturating=True, output_range=(0.0, 1.0),
                   f_out=_sigmoid_out, df_out=_d_sigmoid_out),
        Activation("tanh", _tanh, _d_tanh, 1.0, saturating=True, output_range=(-1.0, 1.0),
                   f_out=_tanh_out, df_out=_d_tanh_out),
        Activation("relu", _relu, _d_relu, 1.0, relu_family=True, output_range=(0.0, 5.0),
                   binary=True, f_out=_relu_out, df_out=_d_relu_out),
        Activation("leaky_relu", _leaky_relu, _d_leaky_relu, 1.0, relu_family=True),
        Activation("elu", _elu, _d_elu, 1.0, relu_family=True, output_range=(-1.0, 5.0)),
        Activation("softplus", _softplus, _d_softplus, 1.0, output_range=(0.0, 5.0)),
        Activation("linear", _linear, _d_linear, 1.0, binary=True),
    ]
}

ALIASES = {"logistic": "sigmoid"}


def apply_into(activation: Activation, z: Array, out: Array) -> Array:
    """``activation.f(z)`` written into ``out`` (same shape and dtype); returns ``out``."""
    if activation.f_out is not None:
        return activation.f_out(z, out)
    np.copyto(out, activation.f(z))
    return out


def derivative_into(activation: Activation, z: Array, a: Array, out: Array) -> Array:
    """``activation.df(z, a)`` written into ``out``; returns ``out``."""
    if activation.df_out is not None:
        return activation.df_out(z, a, out)
    np.copyto(out, activation.df(z, a))
    return out


def get_activation(name: str) -> Activation:
    """Look up an activation by name or alias; ``KeyError`` names what is accepted."""
    key = ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise KeyError(
            f"unknown activation {name!r}; accepted: {', '.join(activation_names())}"
        )
    return ACTIVATIONS[key]


def activation_names() -> list[str]:
    return list(ACTIVATIONS) + list(ALIASES)

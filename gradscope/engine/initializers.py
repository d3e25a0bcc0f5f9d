"""Weight initialisations. Every function returns ``W`` of shape ``(fan_in, fan_out)``.

``gain`` multiplies the scale (the bound of a uniform, the std of a normal, the
orthogonal matrix). Biases always start at zero. :func:`weight_variance` gives
the variance scale ``s_w^2 = fan_in * Var(W_ij)`` that mean-field theory uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Initializer = Callable[[int, int, np.random.Generator, float], np.ndarray]


def standard(fan_in: int, fan_out: int, rng: np.random.Generator, gain: float = 1.0):
    """Glorot & Bengio's "standard" init: U[-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = gain / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(fan_in, fan_out))


def xavier(fan_in: int, fan_out: int, rng: np.random.Generator, gain: float = 1.0):
    """Glorot & Bengio's normalised init: U[-sqrt(6/(fan_in+fan_out)), +sqrt(...)]."""
    bound = gain * np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=(fan_in, fan_out))


def he(fan_in: int, fan_out: int, rng: np.random.Generator, gain: float = 1.0):
    """He et al. (2015): N(0, 2/fan_in)."""
    return rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def lecun(fan_in: int, fan_out: int, rng: np.random.Generator, gain: float = 1.0):
    """LeCun et al. (1998): N(0, 1/fan_in)."""
    return rng.normal(0.0, gain * np.sqrt(1.0 / fan_in), size=(fan_in, fan_out))


def orthogonal(fan_in: int, fan_out: int, rng: np.random.Generator, gain: float = 1.0):
    """Saxe et al. (2014): orthonormal columns (or rows, if fan_in < fan_out), times gain."""
    a = rng.normal(size=(max(fan_in, fan_out), min(fan_in, fan_out)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # make the decomposition unique (uniform over O(n))
    if fan_in < fan_out:
        q = q.T
    return gain * q


INITIALIZERS: dict[str, Initializer] = {
    "standard": standard,
    "xavier": xavier,
    "he": he,
    "lecun": lecun,
    "orthogonal": orthogonal,
}


def weight_variance(name: str, fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """``s_w^2 = fan_in * Var(W_ij)`` implied by an initialisation.

    standard: g^2/3; xavier: 2 g^2 fan_in/(fan_in+fan_out); he: 2 g^2; lecun: g^2;
    orthogonal: g^2 min(fan_in, fan_out)/fan_out.
    """
    g2 = gain * gain
    if name == "standard":
        return g2 / 3.0
    if name == "xavier":
        return 2.0 * g2 * fan_in / (fan_in + fan_out)
    if name == "he":
        return 2.0 * g2
    if name == "lecun":
        return g2
    if name == "orthogonal":
        return g2 * min(fan_in, fan_out) / fan_out
    raise KeyError(f"unknown init {name!r}; accepted: {', '.join(INITIALIZERS)}")

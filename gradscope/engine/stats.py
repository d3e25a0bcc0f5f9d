"""Reductions of one array to the numbers the log records: norms, mean and spread, the
share of saturated units.

They are shared by the model's passes (:mod:`gradscope.engine.mlp` measures each layer while its
arrays are still in cache) and by :mod:`gradscope.record.probes`; definitions are in
docs/log-format.md.
"""

from __future__ import annotations

import math

import numpy as np

from .activations import Activation

#: a unit is saturated where phi'(u) is below this share of phi''s maximum
SATURATION = 0.05
_QUIET = {"over": "ignore", "under": "ignore", "invalid": "ignore", "divide": "ignore"}


def _quiet(f, *args):
    with np.errstate(**_QUIET):
        return f(*args)


def _call(f, *args):
    return f(*args)


def measurer():
    """How to call a measurement so that a diverging array measures NaN or inf and a
    vanishing one tiny numbers, without a warning: ``measurer()(f, *args)``. numpy's error
    state is set around each call only if the caller has not silenced it already (the
    training loop has; setting it costs about 12 us a call)."""
    err = np.geterr()
    return _call if all(err[k] == v for k, v in _QUIET.items()) else _quiet


def column_sums(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` of a ``(batch, n)`` array as one BLAS product with a vector of
    ones: three times faster than numpy's row-by-row reduction, and no less accurate (both
    accumulate in the array's precision)."""
    return np.ones(a.shape[0], dtype=a.dtype) @ a


def norm(x: np.ndarray) -> float:
    """Frobenius norm, via one BLAS dot product in ``x``'s precision.

    Recomputed in float64 when that sum of squares overflowed, or is so small that squares
    which underflowed (entries below about 1e-19 in float32) could have moved it by more
    than 1e-7 of itself: a vanishing gradient's norm is as accurate as a healthy one's.
    """
    v = x.ravel()
    s = float(np.dot(v, v))
    if math.isfinite(s) and (s > _tiny_sum(v) or not v.any()):
        return math.sqrt(s)
    return float(np.linalg.norm(v.astype(np.float64)))


def _tiny_sum(v: np.ndarray) -> float:
    # each square below the smallest normal number loses at most that much
    if v.dtype.kind != "f":
        return 0.0
    return v.size * float(np.finfo(v.dtype).tiny) * 1e7


def total_norm(arrays: list[np.ndarray]) -> float:
    """Global norm of a list of arrays (as torch.nn.utils.clip_grad_norm_ computes it)."""
    return math.sqrt(sum(norm(a) ** 2 for a in arrays))


def mean_std(a: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of all of ``a``, accurate in float32.

    The mean from the column sums of a 2-D array (one BLAS product, each column summed in
    ``a``'s precision) added in float64, or by pairwise summation for other shapes (three
    times slower); the variance as ``E[a^2] - mean^2`` from one BLAS dot
    product when the spread is at least a tenth of ``E[a^2]`` (the float32 dot's relative
    error, about 1e-7, then moves the variance by at most 1e-6), else as the squared norm
    of ``a - mean`` (two passes: no cancellation when the mean dwarfs the spread, as in a
    saturated layer).
    """
    n = a.size
    if n == 0:
        return math.nan, math.nan
    total = float(column_sums(a).sum(dtype=np.float64)) if a.ndim == 2 else float(a.sum())
    mean = total / n
    v = a.ravel()
    second = float(np.dot(v, v)) / n
    var = second - mean * mean
    if math.isfinite(second) and var >= 0.1 * second:
        return mean, math.sqrt(var)
    return mean, norm(a - np.asarray(mean, dtype=a.dtype)) / math.sqrt(n)


def saturated_fraction(dphi: np.ndarray, activation: Activation) -> float:
    """Share of the entries of ``dphi = phi'(u)`` below ``SATURATION`` times phi''s maximum."""
    if dphi.size == 0:
        return math.nan
    return np.count_nonzero(dphi < SATURATION * activation.df_max) / dphi.size

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
    return v.size * _TINY[v.dtype.char] * 1e7


_TINY = {c: float(np.finfo(c).tiny) for c in "efdg"}


def careful_threshold(size: int, dtype) -> float:
    """The sum of squares of ``size`` entries of ``dtype`` at or below which :func:`norm`
    retakes it in float64 (0 for integers)."""
    dtype = np.dtype(dtype)
    return size * _TINY[dtype.char] * 1e7 if dtype.kind == "f" else 0.0


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


# -- the same reductions for a stack of arrays (one per run of a stacked training) ----------
# One numpy call for the whole stack instead of one per run; the few runs whose values need
# the careful path of the single-array functions above (vanishing, overflowing or
# cancelling sums) take that path one by one, so every number is the one the single-array
# function gives, to rounding.


def stack_column_sums(a: np.ndarray) -> np.ndarray:
    """``column_sums(a[k])`` for each ``k`` of a ``(runs, batch, n)`` array: ``(runs, n)``,
    one batched BLAS product (as fast for 16 runs as numpy's reduction for one)."""
    ones = np.ones((a.shape[0], 1, a.shape[1]), dtype=a.dtype)
    return np.matmul(ones, a).reshape(a.shape[0], a.shape[2])


def _sums_of_squares(flat: np.ndarray) -> np.ndarray:
    # np.vecdot: a BLAS dot product per row, like norm()'s (einsum took 10 to 25 times longer)
    return np.vecdot(flat, flat).astype(np.float64)


def _careful(s: np.ndarray, tiny: float) -> np.ndarray:
    """Rows whose sum of squares needs norm()'s careful path (usually none: two compares)."""
    if s.size and float(s.min()) > tiny and float(s.max()) < math.inf:
        return np.empty(0, dtype=np.intp)
    return np.flatnonzero(~np.isfinite(s) | (s <= tiny))


def stack_norms(x: np.ndarray) -> np.ndarray:
    """``[norm(x[k]) for k in range(len(x))]`` as a float64 array of shape ``(len(x),)``."""
    flat = x.reshape(x.shape[0], -1)
    s = _sums_of_squares(flat)
    out = np.sqrt(s)
    for k in _careful(s, _tiny_sum(flat[0]) if flat.shape[1] else 0.0):
        out[k] = norm(flat[k])
    return out


def stack_mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mean_std(a[k])`` for each ``k``: two float64 arrays of shape ``(len(a),)``."""
    flat = a.reshape(a.shape[0], -1)
    n = flat.shape[1]
    if n == 0:
        nan = np.full(a.shape[0], math.nan)
        return nan, nan.copy()
    if a.ndim == 3:  # as mean_std: column sums in a's precision, added in float64
        mean = stack_column_sums(a).sum(axis=1, dtype=np.float64) / n
    else:
        mean = np.array([float(r.sum()) for r in flat]) / n
    second = _sums_of_squares(flat) / n
    var = second - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    ok = np.isfinite(second) & (var >= 0.1 * second)
    if not ok.all():
        for k in np.flatnonzero(~ok):
            std[k] = mean_std(flat[k] if a.ndim != 3 else a[k])[1]
    return mean, std


def stack_saturated_fraction(dphi: np.ndarray, activation: Activation) -> np.ndarray:
    """``saturated_fraction(dphi[k], activation)`` for each ``k`` (float64, ``(len(dphi),)``)."""
    flat = dphi.reshape(dphi.shape[0], -1)
    if flat.shape[1] == 0:
        return np.full(flat.shape[0], math.nan)
    below = flat < SATURATION * activation.df_max
    if below.shape[1] % 8 == 0 and below.flags.c_contiguous:
        # True is the byte 1: the set bits of each 8 bytes count them (numpy's reduction
        # along rows took ten times longer)
        counts = np.bitwise_count(below.view(np.uint64)).sum(axis=1)
    else:
        counts = np.count_nonzero(below, axis=1)
    return counts / flat.shape[1]


# -- many arrays' norms in few numpy calls ------------------------------------------------------


class FlatLayout:
    """Arrays of given shapes as views of one flat buffer, so that the norms of all of them
    take a few numpy calls instead of one or more per array (a training step's per-array
    calls cost more than their arithmetic on small nets).

    Each array starts a row of ``row`` elements and fills whole rows, its last one padded
    with zeros that nothing writes; ``copies`` sets of the arrays (e.g. the parameters and
    their updates) follow each other. The norms are one ``np.vecdot`` over the rows (a BLAS
    dot product each, in the arrays' precision, as :func:`norm` takes them) and the rows'
    sums added in float64 per array; an array whose sum needs :func:`norm`'s careful path
    (overflowed, or small enough for underflowed squares to matter) takes it, so every
    norm is :func:`norm`'s to rounding (the row sums make it, if anything, more accurate).
    """

    def __init__(self, shapes: list[tuple[int, ...]], dtype, copies: int = 1, row: int = 1024):
        self.shapes = [tuple(int(k) for k in s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dtype = np.dtype(dtype)
        self.copies = int(copies)
        rows = [max(1, -(-size // row)) for size in self.sizes]
        per_copy = sum(rows)
        self.row = int(row)
        self.n_rows = self.copies * per_copy
        self.size = self.n_rows * self.row
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.intp)
        self._starts = np.concatenate([starts + k * per_copy for k in range(self.copies)])
        self.offsets = self._starts.reshape(self.copies, -1) * self.row
        self._tiny = np.array([careful_threshold(size, self.dtype) for size in self.sizes]
                              * self.copies)

    def empty(self) -> np.ndarray:
        """A buffer for the arrays, its padding zero."""
        return np.zeros(self.size, dtype=self.dtype)

    def views(self, flat: np.ndarray, copy: int = 0) -> list[np.ndarray]:
        """Copy ``copy``'s arrays, in the order of ``shapes``, as views of ``flat``."""
        return [flat[o : o + size].reshape(s)
                for o, size, s in zip(self.offsets[copy].tolist(), self.sizes, self.shapes)]

    def whole(self, flat: np.ndarray, copy: int = 0) -> np.ndarray:
        """Copy ``copy``'s arrays as one contiguous 1-D view of ``flat``, padding included
        (for elementwise arithmetic over all of them in one call: the padding is zero
        wherever the arithmetic keeps zeros zero)."""
        per = self.n_rows // self.copies * self.row
        return flat[copy * per:(copy + 1) * per]

    def norms(self, flat: np.ndarray, copies: tuple[int, int] | None = None) -> np.ndarray:
        """``norm`` of every array of every copy (or of the copies ``first .. last - 1``
        given as ``copies=(first, last)``): float64, shape ``(copies, len(shapes))``."""
        a, b = (0, self.copies) if copies is None else copies
        per = self.n_rows // self.copies
        rows = flat.reshape(self.n_rows, self.row)[a * per:b * per]
        k0, k1 = a * len(self.shapes), b * len(self.shapes)
        s = np.add.reduceat(np.vecdot(rows, rows), self._starts[k0:k1] - a * per,
                            dtype=np.float64)
        out = np.sqrt(s)
        retake = ~((s > self._tiny[k0:k1]) & (s < math.inf))  # NaN too
        if retake.any():
            n = len(self.shapes)
            offsets = self.offsets[a:b]
            for j in np.flatnonzero(retake).tolist():
                o = int(offsets.flat[j])
                out[j] = norm(flat[o : o + self.sizes[j % n]])
        return out.reshape(b - a, -1)

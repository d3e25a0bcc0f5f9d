"""Per-layer statistics from one training step's arrays, and from the fixed probe set.

Nothing here recomputes the forward or backward pass of the training step: it reads
the :class:`~gradscope.mlp.Cache` and :class:`~gradscope.mlp.Gradients` the model
handed back. Metric definitions are in docs/log-format.md.
"""

from __future__ import annotations

import math

import numpy as np

from ._threads import pool
from .activations import Activation
from .mlp import Arch, Cache, Gradients, Params, forward

SATURATION = 0.05
STEP_METRICS = ("grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
                "update_ratio", "act_mean", "act_std", "saturated_frac")  # a unit is saturated where phi'(z) < 5% of max phi'


def norm(x: np.ndarray) -> float:
    """Frobenius norm, via one BLAS dot product (exact fallback on overflow)."""
    v = x.ravel()
    s = float(np.dot(v, v))
    if math.isfinite(s):
        return math.sqrt(s)
    return float(np.linalg.norm(v.astype(np.float64)))


def total_norm(arrays: list[np.ndarray]) -> float:
    """Global norm of a list of arrays (as torch.nn.utils.clip_grad_norm_ computes it)."""
    return math.sqrt(sum(norm(a) ** 2 for a in arrays))


def step_metrics(
    params: Params,
    cache: Cache,
    back: Gradients,
    updates: Params | None,
    activation: Activation,
    grad_norms: list[float] | None = None,
    *,
    weight_norms: list[float] | None = None,
    update_norms: list[float] | None = None,
) -> dict[str, np.ndarray]:
    """One value per layer for every column of the ``layers`` table but step and layer.

    ``updates`` is None when no update was applied (a diverged step): update norms are NaN.
    ``grad_norms``, ``weight_norms`` and ``update_norms`` are the norms of ``back.grads``,
    ``params`` and ``updates`` (same order) if the caller has them already (further
    entries, e.g. normalisation parameters, are ignored).
    Activation statistics describe the training batch's hidden activations
    ``phi(u_l)`` (``u_l = z_l``, or its normalisation with ``--norm``), before dropout and
    before a residual skip adds the layer's input; they are NaN for the linear output layer.
    """
    if grad_norms is None:
        grad_norms = [norm(g) for g in back.grads]
    L = len(params) // 2
    threshold = SATURATION * activation.df_max
    nan = float("nan")

    def layer(l: int) -> tuple:
        # numpy's error state is per thread: overflow here is a diverging run, reported as such
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return _layer(l)

    def _layer(l: int) -> tuple:
        w = norm(params[2 * l]) if weight_norms is None else weight_norms[2 * l]
        u = ratio = nan
        if updates is not None:
            u = norm(updates[2 * l]) if update_norms is None else update_norms[2 * l]
            ratio = u / w if w > 0 else math.inf
        mean = std = sat = nan
        if l < L - 1:
            a = cache.hidden(l)
            mean = float(a.sum()) / a.size  # pairwise summation: accurate in float32
            d = a - np.asarray(mean, dtype=a.dtype)  # two passes: no cancellation in float32
            std = norm(d) / math.sqrt(a.size)
            sat = float(np.count_nonzero(back.dphi[l] < threshold)) / a.size
        return (grad_norms[2 * l], grad_norms[2 * l + 1], norm(back.deltas[l]), w, u, ratio,
                mean, std, sat)

    workers = pool()
    rows = list(workers.map(layer, range(L))) if workers is not None else [layer(l) for l in range(L)]
    cols = np.array(rows, dtype=np.float64).T
    return dict(zip(STEP_METRICS, cols))


def probe_metrics(
    params: Params,
    X: np.ndarray,
    activation: Activation,
    hist_edges: np.ndarray,
    *,
    arch: Arch | None = None,
    norm_params: Params | None = None,
    state: Params | None = None,
) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Statistics of the hidden layers on the fixed probe set ``X``.

    The network runs in evaluation mode (:func:`gradscope.mlp.forward` with ``train=False``:
    no dropout, batch norm with the running statistics ``state``). Dead units and saturation
    are judged on the input of phi, ``u_l`` (``z_l``, or its normalisation with
    ``arch.norm``); the activation statistics and histograms describe ``phi(u_l)`` before a
    residual skip adds the layer's input.

    Returns
    -------
    metrics : one value per layer (NaN for the output layer) for ``dead_frac``
        (ReLU family only), ``probe_act_mean``, ``probe_act_std``, ``probe_saturated_frac``.
    dead : per hidden layer, uint8 flags ``(width,)``: input of phi <= 0 on every example.
    hist : per hidden layer, counts of activations in ``hist_edges`` bins (outside
        values counted in the end bins).
    """
    L = len(params) // 2
    metrics = {k: np.full(L, np.nan) for k in (
        "dead_frac", "probe_act_mean", "probe_act_std", "probe_saturated_frac")}
    dead, hist = [], []
    lo, hi = float(hist_edges[0]), float(hist_edges[-1])
    nb = len(hist_edges) - 1
    threshold = SATURATION * activation.df_max
    _, cache = forward(params, X, activation, arch=arch, norm_params=norm_params, state=state,
                       train=False)
    for l in range(L - 1):
        z = cache.phi_input(l)
        a = cache.hidden(l)
        d = (z <= 0).all(axis=0)
        dead.append(d.astype(np.uint8))
        if activation.relu_family:
            metrics["dead_frac"][l] = float(d.mean())
        metrics["probe_act_mean"][l] = float(a.mean(dtype=np.float64))
        metrics["probe_act_std"][l] = float(a.std(dtype=np.float64))
        metrics["probe_saturated_frac"][l] = float(np.mean(activation.df(z, a) < threshold))
        idx = ((a - lo) * (nb / (hi - lo))).astype(np.int64)
        np.clip(idx, 0, nb - 1, out=idx)
        hist.append(np.bincount(idx.ravel(), minlength=nb))
    return metrics, dead, hist


def histogram_edges(activation: Activation, bins: int = 50) -> np.ndarray:
    """Fixed bin edges over the activation's usual range (``Activation.output_range``)."""
    lo, hi = activation.output_range
    return np.linspace(lo, hi, bins + 1)

"""Per-layer statistics from one training step's arrays, and from the fixed probe set.

Nothing here recomputes the forward or backward pass of the training step: it reads
the :class:`~gradscope.engine.mlp.Cache` and :class:`~gradscope.engine.mlp.Gradients` the model
handed back. Metric definitions are in docs/log-format.md.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..engine.activations import Activation
from ..engine.mlp import Arch, Cache, Gradients, Params, forward
from ..engine.stats import mean_std, measurer, norm, saturated_fraction

STEP_METRICS = ("grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
                "update_ratio", "act_mean", "act_std", "saturated_frac")


def bin_counts(a: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts of ``a`` in ``bins`` equal bins over ``[lo, hi)``; values below (and NaN) go
    to the first bin, values above to the last. Bin ``k`` holds
    ``k <= (a - lo) * bins / (hi - lo) < k + 1``, computed in ``a``'s precision.

    Up to 256 bins, the bin numbers are bytes and ``np.bincount`` counts them two at a time
    (each pair of neighbouring bytes read as one 16-bit number, one counter per pair of
    bins, then the two margins added): half the elements to count, about a third faster.
    """
    scale = np.asarray(bins / (hi - lo), dtype=a.dtype)
    if lo == 0:  # a - 0 is a: one pass fewer
        t = np.multiply(a, scale)
    else:
        t = a - np.asarray(lo, dtype=a.dtype)
        t *= scale
    np.clip(t, 0, bins - 1, out=t)  # twice as fast as fmax and fmin, but keeps NaN:
    if t.size and math.isnan(t.max()):  # then fmax/fmin, which send NaN to the bound
        np.fmax(np.where(np.isnan(t), -np.inf, t), 0, out=t)
    if bins > 256:
        return np.bincount(t.astype(np.intp).ravel(), minlength=bins)
    k = t.astype(np.uint8).ravel()  # t >= 0: truncation is the floor
    odd = k.size % 2
    pairs = np.bincount(k[: k.size - odd].view(np.uint16), minlength=256 * bins)
    pairs = pairs.reshape(bins, 256)  # [one byte's bin, the other's]; both are < bins
    counts = pairs.sum(axis=0)[:bins] + pairs.sum(axis=1)
    if odd:
        counts[k[-1]] += 1
    return counts


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
    entries, e.g. normalisation parameters, are ignored); the deltas' norms, activation
    statistics and saturated shares are taken from ``back`` and ``cache`` when the passes
    measured them (``measure=True``), else computed here.
    Activation statistics describe the training batch's hidden activations
    ``phi(u_l)`` (``u_l = z_l``, or its normalisation with ``--norm``), before dropout and
    before a residual skip adds the layer's input; they are NaN for the linear output layer.
    """
    return dict(zip(STEP_METRICS, step_block(
        params, cache, back, updates, activation, grad_norms, weight_norms=weight_norms,
        update_norms=update_norms).T))


def step_block(
    params: Params,
    cache: Cache,
    back: Gradients,
    updates: Params | None,
    activation: Activation,
    grad_norms: list[float] | np.ndarray | None = None,
    *,
    weight_norms: list[float] | np.ndarray | None = None,
    update_norms: list[float] | np.ndarray | None = None,
) -> np.ndarray:
    """:func:`step_metrics` as one float64 array, a row per layer and a column per entry
    of ``STEP_METRICS`` (what :meth:`~gradscope.record.writer.LogWriter.append_block`
    takes). When every statistic was measured already (the norms given, the passes'
    :class:`~gradscope.engine.mlp.StepBuffers` measurements in ``back``) it is assembled
    with a few array operations for all layers at once."""
    measured = measurer()  # overflow here is a diverging run, reported as such
    L = len(params) // 2
    if (back.act_stats is not None and grad_norms is not None and weight_norms is not None
            and (updates is None or update_norms is not None)):
        return measured(_assemble, L, back, updates is not None, grad_norms, weight_norms,
                        update_norms)
    if grad_norms is None:
        grad_norms = [measured(norm, g) for g in back.grads]
    L = len(params) // 2
    nan = float("nan")

    def layer(l: int) -> tuple:
        w = norm(params[2 * l]) if weight_norms is None else weight_norms[2 * l]
        u = ratio = nan
        if updates is not None:
            u = norm(updates[2 * l]) if update_norms is None else update_norms[2 * l]
            ratio = u / w if w > 0 else math.inf
        d = norm(back.deltas[l]) if back.delta_norms is None else back.delta_norms[l]
        mean = std = sat = nan
        if l < L - 1:
            mean, std = (mean_std(cache.hidden(l)) if cache.act_stats is None
                         else cache.act_stats[l])
            sat = (saturated_fraction(back.dphi[l], activation) if back.saturated is None
                   else back.saturated[l])
        return grad_norms[2 * l], grad_norms[2 * l + 1], d, w, u, ratio, mean, std, sat

    # serial: on a batch's arrays (0.5 MB a layer) the work is shorter than handing it to
    # threads (1.15 against 1.7 ms for 8 x 512 units, batch 256; docs/performance.md)
    rows = [measured(layer, l) for l in range(L)]
    return np.array(rows, dtype=np.float64).reshape(L, len(STEP_METRICS))


def _assemble(L, back, updated, grad_norms, weight_norms, update_norms) -> np.ndarray:
    """The rows of :func:`step_block` from the measured arrays (same numbers as its
    per-layer path: a ratio is ``update / weight``, or inf where the weight norm is not
    positive)."""
    return step_rows(L, [StepStats.of(back, grad_norms, weight_norms,
                                      update_norms if updated else None)])


class StepStats(tuple):
    """What one recorded step's layer rows are made of, all measured already: the
    gradient, weight and update norms (``update_norms`` None: no update applied), the
    deltas' norms, the hidden activations' means and spreads and the saturated shares
    (``Gradients.delta_norms``, ``.act_stats``, ``.saturated`` of the passes'
    :class:`~gradscope.engine.mlp.StepBuffers` measurement). Kept per step so that the rows
    of several steps are assembled together (:func:`step_rows`)."""

    __slots__ = ()

    @classmethod
    def of(cls, back: Gradients, grad_norms, weight_norms, update_norms) -> StepStats:
        return cls((grad_norms, weight_norms, update_norms, back.delta_norms,
                    back.act_stats[0], back.act_stats[1], back.saturated))


def step_rows(L: int, steps: list[StepStats]) -> np.ndarray:
    """:func:`step_block` of each of ``steps`` (``L`` layers), one under the other: a
    ``(len(steps) * L, len(STEP_METRICS))`` float64 array, assembled with a few array
    operations for all of them (every value as :func:`step_block`'s per-layer path gives
    it: a ratio is ``update / weight`` in float64, or inf where the weight norm is not
    positive)."""
    K = len(steps)
    out = np.empty((K, L, len(STEP_METRICS)))
    g, w, u, d, mean, std, sat = zip(*steps)
    out[:, :, 0:2] = np.array([x[: 2 * L] for x in g], dtype=np.float64).reshape(K, L, 2)
    out[:, :, 2] = d
    weights = np.array([x[0 : 2 * L : 2] for x in w], dtype=np.float64)
    out[:, :, 3] = weights
    updated = [x is not None for x in u]
    if all(updated):
        upd = np.array([x[0 : 2 * L : 2] for x in u], dtype=np.float64)
        out[:, :, 4] = upd
        np.divide(upd, weights, out=out[:, :, 5])
        out[:, :, 5][~(weights > 0)] = math.inf
    else:  # a diverged step (no update): NaN; the others as above
        for k, x in enumerate(u):
            if x is None:
                out[k, :, 4:6] = math.nan
            else:
                out[k] = step_rows(L, [steps[k]])
    out[:, : L - 1, 6] = mean
    out[:, : L - 1, 7] = std
    out[:, : L - 1, 8] = sat
    out[:, L - 1, 6:] = math.nan
    return out.reshape(K * L, len(STEP_METRICS))


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

    The network runs in evaluation mode (:func:`gradscope.engine.mlp.forward` with ``train=False``:
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
    _, cache = forward(params, X, activation, arch=arch, norm_params=norm_params, state=state,
                       train=False, measure=True)
    for l in range(L - 1):
        z = cache.phi_input(l)
        a = cache.hidden(l)
        d = (z <= 0).all(axis=0)
        dead.append(d.astype(np.uint8))
        if activation.relu_family:
            metrics["dead_frac"][l] = float(d.mean())
        metrics["probe_act_mean"][l], metrics["probe_act_std"][l] = cache.act_stats[l]
        metrics["probe_saturated_frac"][l] = saturated_fraction(activation.df(z, a), activation)
        hist.append(bin_counts(a, lo, hi, nb))
    return metrics, dead, hist


class ProbeThread:
    """:func:`probe_metrics` on a worker thread, one probe pass at a time.

    The probe pass of a small net (a forward pass of the probe set: 4-15 ms, against a
    training step of about 1 ms) would stop the training thread for several steps; here it
    runs on a copy of the parameters while the next steps train. Its products and large
    ufunc loops release the GIL, so it runs on a second core in parallel. The numbers are
    those of :func:`probe_metrics` on the same parameters (the same calls on equal arrays).

    :meth:`submit` starts a pass; :meth:`ready` says whether it has finished; :meth:`take`
    waits for it and returns ``(step, (metrics, dead, hist))``, or raises what the pass
    raised. A pass must be taken before the next is submitted (rows in step order).
    """

    def __init__(self, errstate: dict | None = None):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gradscope-probe")
        self._errstate = dict(errstate or {})  # numpy's error state is per thread
        self._pending: tuple[int, Future] | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def submit(self, step: int, params: Params, X: np.ndarray, activation: Activation,
               hist_edges: np.ndarray, *, arch: Arch | None = None,
               norm_params: Params | None = None, state: Params | None = None) -> None:
        """Start the probe pass of ``step`` on copies of ``params``, ``norm_params`` and
        ``state`` (the training thread updates them in place meanwhile); ``X`` and
        ``hist_edges`` are read, never written."""
        if self._pending is not None:
            raise RuntimeError("the previous probe pass has not been taken")
        copies = ([p.copy() for p in params],
                  [p.copy() for p in norm_params] if norm_params is not None else None,
                  [s.copy() for s in state] if state is not None else None)
        fut = self._pool.submit(self._run, copies, X, activation, hist_edges, arch)
        self._pending = (step, fut)

    def _run(self, copies, X, activation, hist_edges, arch):
        params, norm_params, state = copies
        with np.errstate(**self._errstate):
            return probe_metrics(params, X, activation, hist_edges, arch=arch,
                                 norm_params=norm_params, state=state)

    def ready(self) -> bool:
        """Whether a submitted pass has finished (or failed)."""
        return self._pending is not None and self._pending[1].done()

    def take(self) -> tuple[int, tuple] | None:
        """Wait for the submitted pass: ``(step, probe_metrics' result)``, None when there
        is none. An exception of the pass is raised here."""
        if self._pending is None:
            return None
        step, fut = self._pending
        self._pending = None
        return step, fut.result()

    def close(self) -> None:
        """Wait for a pass still running (its result is dropped) and end the thread."""
        self._pending = None
        self._pool.shutdown(wait=True)


def histogram_edges(activation: Activation, bins: int = 50) -> np.ndarray:
    """Fixed bin edges over the activation's usual range (``Activation.output_range``)."""
    lo, hi = activation.output_range
    return np.linspace(lo, hi, bins + 1)

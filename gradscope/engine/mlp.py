"""A multilayer perceptron in numpy: parameters, forward pass (keeping caches), backward pass.

Conventions (docs/log-format.md relies on them):

- Parameters are a flat list ``[W_0, b_0, W_1, b_1, ...]``; ``W_l`` has shape
  ``(fan_in, fan_out)`` and ``b_l`` shape ``(fan_out,)``. Layer ``l = 0`` maps the
  input to the first hidden layer; ``l = depth`` (the last) is the linear output layer.
- Layer ``l`` computes ``z_l = a_l @ W_l + b_l``; hidden layers then ``a_{l+1} = phi(z_l)``.
- ``delta_l = dL/dz_l``, the back-propagated gradient at layer ``l``'s pre-activations.

The remedies of docs/remedies.md are switched on by an :class:`Arch` (all off by default,
and then the network is exactly the plain MLP above). Hidden layer ``l`` then computes::

    z_l = a_l @ W_l + b_l                          (the matmul output; delta_l = dL/dz_l)
    u_l = N_l(z_l)                                 (batch or layer norm; u_l = z_l without)
    h_l = phi(u_l)                                 (the activation)
    r_l = m_l * h_l                                (inverted dropout, training only)
    a_{l+1} = a_l + r_l   if skip_l   else   r_l   (residual where fan_in == fan_out)

Normalisation parameters ``gamma_l, beta_l`` live in a second flat list
``norm_params = [gamma_0, beta_0, gamma_1, beta_1, ...]`` (one pair per hidden layer), so
``params`` keeps its layout; batch norm's running statistics are model *state*
``[running_mean_0, running_var_0, ...]``, passed in and handed back (``Cache.state``),
never modified in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import numpy as np

from .activations import Activation, apply_into, derivative_into
from .initializers import INITIALIZERS
from .stats import (
    SATURATION,
    careful_threshold,
    column_sums,
    mean_std,
    measurer,
    norm,
    saturated_fraction,
)

Params = list[np.ndarray]

#: torch.nn.BatchNorm1d / torch.nn.LayerNorm defaults
NORM_EPS = 1e-5
BN_MOMENTUM = 0.1
NORMS = ("batch", "layer")


@dataclass(frozen=True)
class Arch:
    """The architecture options beyond the plain MLP (every one off by default).

    dropout : inverted dropout rate on hidden activations, training only (``0 <= p < 1``).
    residual : identity skip around every hidden layer whose fan_in equals its fan_out.
    norm : ``None``, ``"batch"`` (as torch.nn.BatchNorm1d) or ``"layer"`` (torch.nn.LayerNorm)
        applied to ``z_l`` before the activation of every hidden layer.
    """

    dropout: float = 0.0
    residual: bool = False
    norm: str | None = None

    def __post_init__(self):
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"dropout {self.dropout!r}; accepted: a number in [0, 1)")
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; accepted: {', '.join(NORMS)} or None")

    @property
    def active(self) -> bool:
        """Whether anything differs from the plain MLP."""
        return bool(self.dropout) or bool(self.residual) or self.norm is not None


def skip_layers(sizes_or_params, residual: bool = True) -> list[bool]:
    """Per hidden layer: whether it has an identity skip (``residual`` and fan_in == fan_out).

    Accepts the layer sizes ``[n_in, *widths, n_out]`` or the parameter list.
    """
    if sizes_or_params and isinstance(sizes_or_params[0], np.ndarray):
        fans = [(W.shape[0], W.shape[1]) for W in sizes_or_params[0::2]]
    else:
        s = [int(v) for v in sizes_or_params]
        fans = list(pairwise(s))
    return [bool(residual) and a == b for a, b in fans[:-1]]


class NormCache(NamedTuple):
    """What a normalisation keeps for the backward pass: ``u = gamma * xhat + beta``.

    kind : ``"batch"`` (training: batch statistics), ``"batch_eval"`` (running statistics,
        constants) or ``"layer"``.
    inv : ``1 / sqrt(var + eps)``, shape ``(width,)`` for batch norm, ``(batch, 1)`` for
        layer norm.
    """

    kind: str
    xhat: np.ndarray
    inv: np.ndarray
    gamma: np.ndarray


class Cache(NamedTuple):
    """What the forward pass keeps for the backward pass and the probes.

    inputs : ``a_l`` for each layer, the array layer ``l`` multiplies (``inputs[0]`` is X).
    pre : ``z_l`` for each layer (``pre[-1]`` is the network's output).

    The rest is None for the plain MLP:

    phi_in : per hidden layer, the input of phi (``u_l``, normalised); None: ``pre``.
    act : per hidden layer, ``phi(u_l)`` before dropout and skip; None: ``inputs[1:]``.
    masks : per hidden layer, the dropout multipliers (0 or ``1/(1-p)``) of a training pass.
    skips : per hidden layer, whether ``a_{l+1} = a_l + ...``.
    norm : per hidden layer, a :class:`NormCache`.
    state : batch norm's running statistics after this pass (updated by a training pass,
        unchanged by an evaluation pass).
    act_stats : per hidden layer, ``mean_std(phi(u_l))`` (:func:`gradscope.engine.stats.mean_std`)
        when the pass was asked to ``measure``, else None.
    """

    inputs: list[np.ndarray]
    pre: list[np.ndarray]
    phi_in: list[np.ndarray] | None = None
    act: list[np.ndarray] | None = None
    masks: list[np.ndarray] | None = None
    skips: list[bool] | None = None
    norm: list[NormCache] | None = None
    state: Params | None = None
    act_stats: list[tuple[float, float]] | None = None

    def phi_input(self, l: int) -> np.ndarray:
        """The input of hidden layer ``l``'s activation (``z_l``, or its normalisation)."""
        return self.pre[l] if self.phi_in is None else self.phi_in[l]

    def hidden(self, l: int) -> np.ndarray:
        """Hidden layer ``l``'s activation ``phi(u_l)`` (before dropout and skip)."""
        return self.inputs[l + 1] if self.act is None else self.act[l]


class Gradients(NamedTuple):
    """What the backward pass hands back.

    grads : ``[dL/dW_0, dL/db_0, ...]``, the same layout as the parameters.
    deltas : ``delta_l = dL/dz_l`` for each layer, shape ``(batch, fan_out_l)``.
    dphi : ``phi'(u_l)`` for each hidden layer (one fewer than layers).
    norm_grads : ``[dL/dgamma_0, dL/dbeta_0, ...]`` with normalisation, else None.
    delta_norms, saturated : when the pass was asked to ``measure``, ``norm(delta_l)`` for
        each layer and ``saturated_fraction(dphi_l)`` for each hidden layer
        (:mod:`gradscope.engine.stats`), else None.
    act_stats : with :class:`StepBuffers`, the hidden activations' ``mean_std`` as two
        arrays (means, stds), measured with the rest after the pass; else None (the forward
        pass measured them: ``Cache.act_stats``).
    """

    grads: Params
    deltas: list[np.ndarray]
    dphi: list[np.ndarray]
    norm_grads: Params | None = None
    delta_norms: list[float] | np.ndarray | None = None
    saturated: list[float] | np.ndarray | None = None
    act_stats: tuple[np.ndarray, np.ndarray] | None = None


class StepBuffers:
    """Preallocated arrays for a plain MLP's training passes, whose hidden layers all have
    one width: the hidden activations, the hidden layers' deltas and ``phi'`` of a batch of
    ``batch`` examples, each kind stacked over the layers in one array.

    The passes write into them (:func:`forward` and :func:`backward` with ``buffers=``; the
    same numbers as without), so that every layer's statistics of a recorded step come from
    a few numpy calls over the stacks (:meth:`measure`) instead of several per layer. The
    arrays are overwritten by the next pass: a pass's cache is valid until then.
    """

    def __init__(self, params: Params, batch: int, activation: Activation,
                 grads: Params | None = None):
        H = n_layers(params) - 1
        w = params[0].shape[1]
        dtype = params[0].dtype
        self.batch, self.n = int(batch), int(batch) * w
        # the activations, the deltas, and the saturated flags (1.0 where phi' is below
        # the threshold); where phi' is 0 or 1 (ReLU) it is its own complement of the
        # flags and takes their place: its sum of squares counts the units not saturated
        self.stats = np.empty((3, H, self.batch, w), dtype=dtype)
        self.binary = activation.binary
        self.dphi = self.stats[2] if self.binary else np.empty((H, self.batch, w), dtype=dtype)
        self.acts = list(self.stats[0])
        self.deltas = list(self.stats[1])
        self.dphis = list(self.dphi)
        self._flat = self.stats.reshape(3 * H, self.n)
        self._ones = np.ones((H, 1, self.batch), dtype=dtype)
        self._colsums = np.empty((H, 1, w), dtype=dtype)
        self._q = np.empty(3 * H, dtype=dtype)
        self._tiny = careful_threshold(self.n, dtype)
        # where the backward pass writes the gradients (arrays shaped as ``params``, e.g.
        # views of one flat buffer), or None for new arrays each pass
        self.grads = grads
        self.ones = np.ones(self.batch, dtype=dtype)  # column sums as one product

    @staticmethod
    def fit(params: Params, batch: int) -> bool:
        """Whether ``params`` describe a net these buffers serve: at least one hidden layer,
        all hidden layers of one width, a floating dtype, and saturated counts that a sum
        in that dtype keeps exact."""
        L = n_layers(params)
        if L < 2 or params[0].dtype.char not in "fd":
            return False
        w = params[0].shape[1]
        if any(W.shape[1] != w for W in params[0:2 * (L - 1):2]):
            return False
        return batch * w <= (1 << 24 if params[0].dtype.char == "f" else 1 << 53)

    def serves(self, cache: Cache) -> bool:
        """Whether ``cache`` is a forward pass written into these buffers."""
        return len(cache.inputs) > 1 and cache.inputs[1] is self.acts[0]

    def measure(self, dout: np.ndarray, activation: Activation):
        """The statistics of the pass in the buffers (``dout``: the output layer's delta):
        ``norm`` of every delta, then ``mean_std`` of every hidden activation and
        ``saturated_fraction`` of every ``phi'``, as float64 arrays, the same numbers as the
        single-array functions of :mod:`gradscope.engine.stats` (to rounding).

        One comparison, one ``np.vecdot`` over the three stacks (sums of squares of the
        activations and deltas; of the 0/1 flags, their count) and one batched product for
        the activations' column sums; the layers that need the careful paths of ``norm`` or
        ``mean_std`` take them one by one.
        """
        H, n = len(self.acts), self.n
        if not self.binary:
            np.less(self.dphi, SATURATION * activation.df_max, out=self.stats[2])
        np.vecdot(self._flat, self._flat, out=self._q)
        # as mean_std: column sums in the activations' precision, added in float64
        np.matmul(self._ones, self.stats[0], out=self._colsums)
        mean = self._colsums.reshape(H, -1).sum(axis=1, dtype=np.float64)
        mean /= n
        q = self._q.astype(np.float64)
        second = q[:H] / n
        var = second - mean * mean
        std = np.sqrt(var)
        # mean_std's test (finite, var >= second / 10) in one array: NaN fails it too
        retake = ~(var - 0.1 * second >= 0)
        if retake.any():
            for l in np.flatnonzero(retake).tolist():
                std[l] = mean_std(self.acts[l])[1]
        dnorms = np.empty(H + 1)
        dq = q[H : 2 * H]
        np.sqrt(dq, out=dnorms[:H])
        retake = ~((dq > self._tiny) & (dq < math.inf))  # norm's careful path: NaN too
        if retake.any():
            for l in np.flatnonzero(retake).tolist():
                dnorms[l] = norm(self.deltas[l])
        dnorms[H] = norm(dout)
        sat = q[2 * H :] / n if not self.binary else (n - q[2 * H :]) / n
        return dnorms, mean, std, sat


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
    for fan_in, fan_out in pairwise(sizes):
        params.append(np.asarray(make(fan_in, fan_out, rng, gain), dtype=dtype))
        params.append(np.zeros(fan_out, dtype=dtype))
    return params


def init_norm(widths: list[int], norm: str | None, dtype=np.float32
              ) -> tuple[Params, Params | None]:
    """Normalisation parameters and state for hidden ``widths`` (torch's initial values).

    Returns ``norm_params = [gamma_0 = 1, beta_0 = 0, ...]`` (empty without ``norm``) and,
    for batch norm, ``state = [running_mean_0 = 0, running_var_0 = 1, ...]`` (else None).
    """
    if norm is None:
        return [], None
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; accepted: {', '.join(NORMS)} or None")
    norm_params: Params = []
    for w in widths:
        norm_params += [np.ones(int(w), dtype=dtype), np.zeros(int(w), dtype=dtype)]
    if norm != "batch":
        return norm_params, None
    state: Params = []
    for w in widths:
        state += [np.zeros(int(w), dtype=dtype), np.ones(int(w), dtype=dtype)]
    return norm_params, state


def n_layers(params: Params) -> int:
    return len(params) // 2


def _norm_forward(kind, z, gamma, beta, mean=None, var=None):
    """Normalise ``z`` (batch, width); returns ``u``, the :class:`NormCache` and, for batch
    norm in training, the batch mean and biased variance."""
    if kind == "layer":
        mu = z.mean(axis=1, keepdims=True)
        c = z - mu
        v = np.mean(c * c, axis=1, keepdims=True)
        stats = None
    elif kind == "batch":
        if z.shape[0] < 2:
            raise ValueError("batch norm in training needs more than 1 example per batch "
                             f"(got {z.shape[0]}), as torch.nn.BatchNorm1d")
        mu = z.mean(axis=0)
        c = z - mu
        v = np.mean(c * c, axis=0)
        stats = (mu, v)
    else:  # batch_eval: the running statistics
        c = z - mean
        v = var
        stats = None
    inv = 1.0 / np.sqrt(v + np.asarray(NORM_EPS, dtype=z.dtype))
    xhat = c
    xhat *= inv
    u = xhat * gamma
    u += beta
    return u, NormCache(kind, xhat, inv.astype(z.dtype, copy=False), gamma), stats


def _norm_backward(du, nc: NormCache):
    """``dL/dz``, ``dL/dgamma``, ``dL/dbeta`` from ``du = dL/du``."""
    dgamma = (du * nc.xhat).sum(axis=0)
    dbeta = du.sum(axis=0)
    if nc.kind == "batch":
        n = du.shape[0]
        # dz = gamma * inv * (du - mean(du) - xhat * mean(du * xhat)), means over the batch
        dz = nc.xhat * (dgamma / n)
        np.subtract(du, dz, out=dz)
        dz -= dbeta / n
        dz *= nc.gamma * nc.inv
    elif nc.kind == "layer":
        # dxhat = du * gamma; dz = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
        # means over the features of each example
        dx = du * nc.gamma
        dz = nc.xhat * np.mean(dx * nc.xhat, axis=1, keepdims=True)
        np.subtract(dx, dz, out=dz)
        dz -= dx.mean(axis=1, keepdims=True)
        dz *= nc.inv
    else:  # batch_eval: an affine map per feature
        dz = du * (nc.gamma * nc.inv)
    return dz, dgamma, dbeta


def forward(
    params: Params,
    X: np.ndarray,
    activation: Activation,
    *,
    arch: Arch | None = None,
    norm_params: Params | None = None,
    state: Params | None = None,
    train: bool = True,
    rng: np.random.Generator | None = None,
    measure: bool = False,
    buffers: StepBuffers | None = None,
) -> tuple[np.ndarray, Cache]:
    """Run the network on ``X`` of shape ``(batch, n_in)``.

    Returns the output ``(batch, n_out)`` and the :class:`Cache`. Without ``arch`` (or with
    every option off) this is the plain MLP and the keywords are ignored.

    arch : the remedies (:class:`Arch`).
    norm_params : ``[gamma_0, beta_0, ...]`` when ``arch.norm`` is set.
    state : batch norm's running statistics ``[mean_0, var_0, ...]`` (None in training
        starts from torch's initial values); the updated ones are ``cache.state``.
    train : training mode (dropout on, batch statistics) or evaluation mode (no dropout,
        running statistics).
    rng : the generator of the dropout masks (training with dropout only).
    measure : also take each hidden activation's mean and std (``Cache.act_stats``) right
        after computing it, while it is in cache (on an 8 x 512 net, batch 256, that
        costs half as much as reading the arrays again after the step).
    buffers : a :class:`StepBuffers` of this batch size: the plain MLP writes its hidden
        activations there, and ``measure`` leaves them to :func:`backward` (which measures
        every layer at once, ``Gradients.act_stats``).
    """
    inputs, pre = [], []
    act_stats = [] if measure else None
    measured = measurer() if measure else None
    a = X
    last = n_layers(params) - 1
    if arch is None or not arch.active:
        if buffers is not None and X.shape[0] == buffers.batch:
            for l in range(last + 1):
                z = a @ params[2 * l]
                z += params[2 * l + 1]
                inputs.append(a)
                pre.append(z)
                if l < last:
                    a = apply_into(activation, z, buffers.acts[l])
            return pre[-1], Cache(inputs, pre)
        for l in range(last + 1):
            W, b = params[2 * l], params[2 * l + 1]
            z = a @ W
            z += b
            inputs.append(a)
            pre.append(z)
            if l < last:
                a = activation.f(z)
                if measure:
                    act_stats.append(measured(mean_std, a))
        return pre[-1], Cache(inputs, pre, act_stats=act_stats)

    skips = skip_layers(params, arch.residual)
    p = float(arch.dropout) if train else 0.0
    if p and rng is None:
        raise ValueError("dropout in training needs the rng that draws the masks")
    kind = arch.norm
    if kind is not None:
        if norm_params is None or len(norm_params) != 2 * last:
            raise ValueError(f"--norm {kind} needs norm_params [gamma_0, beta_0, ...] for "
                             f"{last} hidden layers")
        if kind == "batch":
            if state is None:
                if not train:
                    raise ValueError("batch norm in evaluation mode needs the running statistics")
                _, state = init_norm([W.shape[1] for W in params[0:2 * last:2]], "batch",
                                     X.dtype)
            if not train:
                kind = "batch_eval"
    keep_act = bool(p) or any(skips)
    phi_in = [] if kind is not None else None
    acts = [] if keep_act else None
    masks = [] if p else None
    norms = [] if kind is not None else None
    new_state = list(state) if state is not None else None
    for l in range(last + 1):
        W, b = params[2 * l], params[2 * l + 1]
        z = a @ W
        z += b
        inputs.append(a)
        pre.append(z)
        if l == last:
            break
        u = z
        if kind is not None:
            g, be = norm_params[2 * l], norm_params[2 * l + 1]
            if kind == "batch_eval":
                u, nc, _ = _norm_forward(kind, z, g, be, state[2 * l], state[2 * l + 1])
            else:
                u, nc, stats = _norm_forward(kind, z, g, be)
                if stats is not None:
                    mu, var = stats
                    n = z.shape[0]
                    m = BN_MOMENTUM
                    rm, rv = state[2 * l], state[2 * l + 1]
                    new_state[2 * l] = ((1 - m) * rm + m * mu).astype(rm.dtype, copy=False)
                    new_state[2 * l + 1] = ((1 - m) * rv + (m * n / (n - 1)) * var).astype(
                        rv.dtype, copy=False)
            phi_in.append(u)
            norms.append(nc)
        h = activation.f(u)
        if measure:
            act_stats.append(measured(mean_std, h))
        if keep_act:
            acts.append(h)
        r = h
        if p:
            mask = (rng.random(h.shape, dtype=np.float64) >= p).astype(h.dtype)
            mask *= np.asarray(1.0 / (1.0 - p), dtype=h.dtype)
            masks.append(mask)
            r = h * mask
        a = a + r if skips[l] else r
    cache = Cache(inputs, pre, phi_in, acts, masks, skips, norms, new_state, act_stats)
    return pre[-1], cache


def backward(
    params: Params, cache: Cache, dout: np.ndarray, activation: Activation,
    measure: bool = False, buffers: StepBuffers | None = None,
) -> Gradients:
    """Back-propagate ``dout = dL/d(output)`` through the cached forward pass.

    With the remedies (read from the cache), for hidden layer ``l`` (producing
    ``a_{l+1}``), writing ``g_{l+1} = dL/da_{l+1}``::

        g_{l+1} = delta_{l+1} W_{l+1}^T  (+ g_{l+2} if layer l+1 has a skip)
        dL/du_l = g_{l+1} * m_l * phi'(u_l)
        delta_l = dL/dz_l = N_l'^T (dL/du_l)       (the normalisation's backward)

    ``measure``: also take each ``delta_l``'s norm and each ``phi'``'s saturated share
    (``Gradients.delta_norms``, ``.saturated``) as they are computed, while in cache.
    ``buffers``: the :class:`StepBuffers` the forward pass wrote into; the deltas and
    ``phi'`` go there too, and ``measure`` takes every layer's statistics at the end, as
    arrays (``Gradients.delta_norms``, ``.saturated``, ``.act_stats``).
    """
    L = n_layers(params)
    grads: Params = [None] * (2 * L)  # type: ignore[list-item]
    deltas: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    dphi: list[np.ndarray] = [None] * (L - 1)  # type: ignore[list-item]
    delta_norms = [math.nan] * L if measure else None
    saturated = [math.nan] * (L - 1) if measure else None
    measured = measurer() if measure else None
    delta = dout
    if cache.skips is None and buffers is not None and buffers.serves(cache):
        into = buffers.grads
        for l in range(L - 1, -1, -1):
            deltas[l] = delta
            if into is None:
                grads[2 * l] = cache.inputs[l].T @ delta
                grads[2 * l + 1] = column_sums(delta)
            else:  # the same products, written where the optimizer reads them
                grads[2 * l] = np.matmul(cache.inputs[l].T, delta, out=into[2 * l])
                grads[2 * l + 1] = np.matmul(buffers.ones, delta, out=into[2 * l + 1])
            if l > 0:
                d = derivative_into(activation, cache.pre[l - 1], cache.inputs[l],
                                    buffers.dphis[l - 1])
                dphi[l - 1] = d
                delta = np.matmul(delta, params[2 * l].T, out=buffers.deltas[l - 1])
                delta *= d
        if not measure:
            return Gradients(grads, deltas, dphi)
        dn, mean, std, sat = measured(buffers.measure, dout, activation)
        return Gradients(grads, deltas, dphi, None, dn, sat, (mean, std))
    if cache.skips is None:  # the plain MLP
        for l in range(L - 1, -1, -1):
            deltas[l] = delta
            if measure:
                delta_norms[l] = measured(norm, delta)
            grads[2 * l] = cache.inputs[l].T @ delta
            grads[2 * l + 1] = column_sums(delta)
            if l > 0:
                # delta_{l-1} = (delta_l W_l^T) * phi'(z_{l-1}); a_l = phi(z_{l-1})
                d = activation.df(cache.pre[l - 1], cache.inputs[l])
                dphi[l - 1] = d
                if measure:
                    saturated[l - 1] = measured(saturated_fraction, d, activation)
                delta = delta @ params[2 * l].T
                delta *= d
        return Gradients(grads, deltas, dphi, None, delta_norms, saturated)

    skips = cache.skips or [False] * (L - 1)
    norm_grads = [None] * (2 * (L - 1)) if cache.norm is not None else None
    carry = None  # dL/da_l through the skip of hidden layer l (a_{l+1} = a_l + ...)
    for l in range(L - 1, -1, -1):
        deltas[l] = delta
        if measure:
            delta_norms[l] = measured(norm, delta)
        grads[2 * l] = cache.inputs[l].T @ delta
        grads[2 * l + 1] = column_sums(delta)
        if l == 0:
            break
        h = l - 1  # the hidden layer whose output a_l is this layer's input
        d = activation.df(cache.phi_input(h), cache.hidden(h))
        dphi[h] = d
        if measure:
            saturated[h] = measured(saturated_fraction, d, activation)
        g = delta @ params[2 * l].T  # dL/da_l through layer l's matmul
        if carry is not None:
            g += carry
        if skips[h]:  # g also flows on to a_{l-1} unchanged, so keep it
            carry, du = g, g * d
        else:
            carry, du = None, g
            du *= d
        if cache.masks is not None:
            du *= cache.masks[h]
        if cache.norm is not None:
            du, norm_grads[2 * h], norm_grads[2 * h + 1] = _norm_backward(du, cache.norm[h])
        delta = du
    return Gradients(grads, deltas, dphi, norm_grads, delta_norms, saturated)


def predict(
    params: Params,
    X: np.ndarray,
    activation: Activation,
    *,
    arch: Arch | None = None,
    norm_params: Params | None = None,
    state: Params | None = None,
) -> np.ndarray:
    """Forward pass in evaluation mode without keeping anything: the output only.

    With ``arch``: no dropout, batch norm with the running statistics ``state``.
    """
    if arch is not None and arch.active:
        return forward(params, X, activation, arch=arch, norm_params=norm_params,
                       state=state, train=False)[0]
    a = X
    last = n_layers(params) - 1
    for l in range(last + 1):
        a = a @ params[2 * l] + params[2 * l + 1]
        if l < last:
            a = activation.f(a)
    return a

"""First-order optimizers as pure ``(init, update)`` pairs, in the style of optax.

An :class:`Optimizer` bundles ``init(params) -> state`` and
``update(grads, state, params) -> (updates, new_state)``; the caller applies the
updates with :func:`apply_updates` (``params[i] + updates[i]``: updates already
carry the minus sign and the learning rate).  Parameters, gradients, updates and
state hold one array per parameter array, e.g. ``[W0, b0, W1, b1, ...]``.

The update rules and the default hyperparameters are those of ``torch.optim``
(PyTorch 2.13): each factory's docstring gives the algorithm as PyTorch documents
it and relates it to the textbook or paper form.  Weight decay is an L2 penalty
added to the gradient (``g <- g + lambda * theta``) except in AdamW, where it is
decoupled from the gradient (Loshchilov & Hutter).

Purity: ``update`` never writes into ``grads``, ``params`` or the old state, and
nothing it returns shares memory with them.  Every optimizer is written once, as
the in-place form ``update_inplace(grads, state, params, out) -> new_state``,
which writes the new state into the state's own arrays and the updates into
``out`` (a training loop that owns its state saves the allocations and keeps the
arrays in cache: see :class:`gradscope.training.parallel.GroupedStep`); ``update`` runs it on fresh copies of
the state.  Both keep the dtype of the inputs (every scalar coefficient is a
Python float, so float32 stays float32 under NumPy 2's promotion rules), and both
check their inputs before they write anything.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "OPTIMIZERS",
    "AdadeltaState",
    "AdagradState",
    "AdamState",
    "AdamaxState",
    "NadamState",
    "Optimizer",
    "OptimizerKeyError",
    "Params",
    "RMSpropState",
    "RpropState",
    "SGDState",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "amsgrad",
    "apply_updates",
    "make_optimizer",
    "momentum",
    "nadam",
    "nesterov",
    "optimizer_defaults",
    "rmsprop",
    "rprop",
    "sgd",
]

Params = list[np.ndarray]


class Optimizer(NamedTuple):
    """A named pair of pure functions plus the hyperparameters they close over.

    Attributes
    ----------
    name : registry name (``"adam"``, ``"nesterov"``, ...).
    init : ``init(params) -> state``.
    update : ``update(grads, state, params) -> (updates, new_state)``, pure.
    hyper : every hyperparameter in use, defaults included (JSON-serialisable).
    update_inplace : ``update_inplace(grads, state, params, out) -> new_state``: the same
        step written into the arrays of ``state`` (which the caller gives up) and the
        updates into ``out`` (one array like each gradient); ``grads`` and ``params`` are
        only read.  The returned state holds the same arrays with the counters advanced.
    """

    name: str
    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Params], tuple[Params, Any]]
    hyper: dict
    update_inplace: Callable[[Params, Any, Params, Params], Any] | None = None


class OptimizerKeyError(KeyError):
    """Unknown optimizer name or option.  ``str()`` gives the plain one-line message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- states


class SGDState(NamedTuple):
    count: int
    momentum_buffer: list  # [] when momentum == 0


class AdagradState(NamedTuple):
    count: int
    sum: list  # running sum of squared gradients


class AdadeltaState(NamedTuple):
    count: int
    square_avg: list  # E[g^2]
    acc_delta: list  # E[dx^2]


class RMSpropState(NamedTuple):
    count: int
    square_avg: list
    grad_avg: list  # [] unless centered
    momentum_buffer: list  # [] unless momentum > 0


class RpropState(NamedTuple):
    count: int
    prev: list  # previous (possibly zeroed) gradient
    step_size: list  # per-element step sizes eta


class AdamState(NamedTuple):
    count: int
    mu: list  # first moment m
    nu: list  # second moment v
    nu_max: list  # running max of v; [] unless amsgrad


class NadamState(NamedTuple):
    count: int
    mu_product: float  # prod_{i<=t} mu_i
    mu: list
    nu: list


class AdamaxState(NamedTuple):
    count: int
    mu: list
    inf_norm: list  # exponentially weighted infinity norm u


# --------------------------------------------------------------------------- helpers


def apply_updates(params: Params, updates: Params) -> Params:
    """Return ``[p + u for p, u in zip(params, updates)]`` (new arrays)."""
    if len(params) != len(updates):
        raise ValueError(f"{len(params)} parameter arrays but {len(updates)} updates")
    return [p + u for p, u in zip(params, updates)]


def _number(opt: str, key: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{opt}: {key} must be a number, got {value!r}")  # noqa: TRY004
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{opt}: {key} must be finite, got {value!r}")
    return value


def _flag(opt: str, key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{opt}: {key} must be True or False, got {value!r}")  # noqa: TRY004
    return bool(value)


def _at_least(opt: str, key: str, value: Any, low: float = 0.0) -> float:
    value = _number(opt, key, value)
    if not value >= low:
        raise ValueError(f"{opt}: invalid {key}={value!r}; accepted: {key} >= {low:g}")
    return value


def _between(opt: str, key: str, value: Any, low: float, high: float, upper_open: bool) -> float:
    value = _number(opt, key, value)
    ok = low <= value < high if upper_open else low <= value <= high
    if not ok:
        rel = "<" if upper_open else "<="
        raise ValueError(
            f"{opt}: invalid {key}={value!r}; accepted: {low:g} <= {key} {rel} {high:g}"
        )
    return value


def _pair(opt: str, key: str, value: Any) -> tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{opt}: {key} must be a pair of numbers, got {value!r}") from None
    return _number(opt, key, a), _number(opt, key, b)


def _check_lengths(name: str, grads: Params, state_list: list) -> None:
    if len(grads) != len(state_list):
        raise ValueError(
            f"{name}: got {len(grads)} gradient arrays but the state holds {len(state_list)}"
        )


def _need_params(name: str, params: Params | None, n: int) -> Params:
    if params is None or len(params) != n:
        got = "None" if params is None else f"{len(params)} arrays"
        raise ValueError(f"{name}: update needs the {n} current parameter arrays, got {got}")
    return params


def _zeros(params: Params) -> Params:
    return [np.zeros_like(p) for p in params]


def _inputs(name: str, grads: Params, state_list: list, params: Params | None,
            weight_decay: float) -> Params | None:
    """Check the gradients against the state; the parameters are needed for weight decay."""
    _check_lengths(name, grads, state_list)
    return _need_params(name, params, len(grads)) if weight_decay else params


def _with_decay(grads: Params, params: Params | None, weight_decay: float):
    """``(i, g_i + weight_decay * theta_i)`` for each array (L2 decay as torch adds it)."""
    for i, g in enumerate(grads):
        yield i, (_l2(g, params[i], weight_decay) if weight_decay else g)


def _l2(g: np.ndarray, p: np.ndarray, weight_decay: float) -> np.ndarray:
    """``g + weight_decay * p`` in one new array."""
    out = np.multiply(p, weight_decay)
    out += g
    return out


def _ema_(avg: np.ndarray, new: np.ndarray, decay: float, scratch: np.ndarray) -> None:
    """``avg <- decay * avg + (1 - decay) * new`` in place (``scratch`` may be ``new``).

    Written as ``avg + (1 - decay) * (new - avg)`` (torch's ``lerp_``).
    """
    np.subtract(new, avg, out=scratch)
    scratch *= 1.0 - decay
    avg += scratch


def _ema_sq_(avg: np.ndarray, g: np.ndarray, decay: float, scratch: np.ndarray) -> None:
    """``avg <- decay * avg + (1 - decay) * g**2`` in place, through ``scratch``."""
    np.multiply(g, g, out=scratch)
    _ema_(avg, scratch, decay, scratch)


def _pure(update_inplace: Callable) -> Callable:
    """The pure ``update`` of an in-place one: it runs on copies of the state's arrays."""

    def update(grads: Params, state, params: Params | None = None):
        fresh = type(state)(*[[np.array(a, copy=True) for a in f] if isinstance(f, list) else f
                              for f in state])
        out = [np.empty_like(g) for g in grads]
        return out, update_inplace(grads, fresh, params, out)

    update.__doc__ = ("``update(grads, state, params) -> (updates, new_state)``: the in-place "
                      "step on copies of the state; nothing given is written.")
    return update


def _optimizer(name: str, init: Callable, update_inplace: Callable, hyper: dict) -> Optimizer:
    return Optimizer(name, init, _pure(update_inplace), hyper, update_inplace)


# --------------------------------------------------------------------------- SGD


def _sgd(name: str, lr, momentum, dampening, weight_decay, nesterov) -> Optimizer:
    lr = _at_least(name, "lr", lr)
    mom = _at_least(name, "momentum", momentum)
    damp = _number(name, "dampening", dampening)
    wd = _at_least(name, "weight_decay", weight_decay)
    nest = _flag(name, "nesterov", nesterov)
    if nest and (mom <= 0.0 or damp != 0.0):
        raise ValueError(
            f"{name}: nesterov=True needs momentum > 0 and dampening == 0, "
            f"got momentum={mom!r}, dampening={damp!r}"
        )
    hyper = {
        "lr": lr,
        "momentum": mom,
        "dampening": damp,
        "weight_decay": wd,
        "nesterov": nest,
    }

    def init(params: Params) -> SGDState:
        return SGDState(0, _zeros(params) if mom else [])

    def update_inplace(grads: Params, state: SGDState, params: Params | None, out: Params):
        if mom:
            params = _inputs(name, grads, state.momentum_buffer, params, wd)
        elif wd:
            params = _need_params(name, params, len(grads))
        for i, g in _with_decay(grads, params, wd):
            u = out[i]
            if not mom:
                np.multiply(g, -lr, out=u)
                continue
            buf = state.momentum_buffer[i]
            if state.count == 0:
                np.copyto(buf, g)
            else:
                buf *= mom
                if damp:
                    np.multiply(g, 1.0 - damp, out=u)
                    buf += u
                else:
                    buf += g
            if nest:
                np.multiply(buf, mom, out=u)
                u += g
                u *= -lr
            else:
                np.multiply(buf, -lr, out=u)
        return SGDState(state.count + 1, state.momentum_buffer)

    return _optimizer(name, init, update_inplace, hyper)


_SGD_DOC = r"""

    PyTorch's ``torch.optim.SGD`` (lr ``gamma``, momentum ``mu``, dampening ``tau``,
    weight decay ``lambda``)::

        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        if mu != 0:
            b_t <- g_t                              if t == 1
                   mu * b_{t-1} + (1 - tau) * g_t   otherwise
            g_t <- g_t + mu * b_t   if nesterov   else   b_t
        theta_t <- theta_{t-1} - gamma * g_t

    Relation to the textbook form.  Classical momentum (Polyak 1964; Sutskever et
    al., "On the importance of initialization and momentum in deep learning", ICML
    2013, eq. 1-2; Goodfellow, Bengio & Courville, *Deep Learning*, alg. 8.2) is
    ``v <- gamma_m * v + alpha * grad J;  theta <- theta - v``.  With ``tau = 0``
    and ``v = lr * b`` this is exactly PyTorch's rule for a constant learning rate
    (they differ only when ``lr`` is changed during training: PyTorch rescales the
    whole accumulated velocity).  PyTorch starts the buffer at ``b_1 = g_1``, which
    equals ``b_0 = 0`` except that the first gradient is not dampened.

    Nesterov momentum: Sutskever et al. (eq. 3-4) evaluate the gradient at the
    look-ahead point ``theta + mu * v``.  Rewritten in terms of the look-ahead
    parameters (Bengio, Boulanger-Lewandowski & Pascanu, "Advances in optimizing
    recurrent networks", ICASSP 2013) it becomes
    ``theta_t = theta_{t-1} - lr * (mu^2 * b_{t-1} + (1 + mu) * g_t)``, which is
    PyTorch's ``theta - lr * (g_t + mu * b_t)`` with ``b_t = mu * b_{t-1} + g_t``.
    """


def sgd(*, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False) -> Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""
    return _sgd("sgd", lr, momentum, dampening, weight_decay, nesterov)


def momentum(
    *, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False
) -> Optimizer:
    """SGD with heavy-ball momentum: :func:`sgd` with ``momentum=0.9`` by default."""
    return _sgd("momentum", lr, momentum, dampening, weight_decay, nesterov)


def nesterov(*, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0) -> Optimizer:
    """SGD with Nesterov momentum: :func:`sgd` with ``nesterov=True, momentum=0.9``."""
    return _sgd("nesterov", lr, momentum, dampening, weight_decay, True)


for _f in (sgd, momentum, nesterov):
    _f.__doc__ = (_f.__doc__ or "") + _SGD_DOC


# --------------------------------------------------------------------------- Adagrad


def adagrad(*, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
            eps=1e-10) -> Optimizer:
    r"""Adagrad (Duchi, Hazan & Singer, JMLR 12, 2011).

    PyTorch's ``torch.optim.Adagrad`` (lr ``gamma``, lr decay ``eta``, initial
    accumulator ``tau``)::

        state_sum_0 <- tau
        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        gamma~ <- gamma / (1 + (t - 1) * eta)
        state_sum_t <- state_sum_{t-1} + g_t^2
        theta_t <- theta_{t-1} - gamma~ * g_t / (sqrt(state_sum_t) + eps)

    With ``eta = tau = 0`` this is the diagonal Adagrad of Duchi et al. and
    Goodfellow et al., *Deep Learning*, alg. 8.4
    (``r <- r + g*g;  theta <- theta - eps_lr / (delta + sqrt(r)) * g``), with
    PyTorch's ``eps`` as the ``delta`` added outside the square root.
    """
    name = "adagrad"
    lr = _at_least(name, "lr", lr)
    lr_decay = _at_least(name, "lr_decay", lr_decay)
    wd = _at_least(name, "weight_decay", weight_decay)
    acc0 = _at_least(name, "initial_accumulator_value", initial_accumulator_value)
    eps = _at_least(name, "eps", eps)
    hyper = {
        "lr": lr,
        "lr_decay": lr_decay,
        "weight_decay": wd,
        "initial_accumulator_value": acc0,
        "eps": eps,
    }

    def init(params: Params) -> AdagradState:
        return AdagradState(0, [np.full_like(p, acc0) for p in params])

    def update_inplace(grads: Params, state: AdagradState, params: Params | None, out: Params):
        params = _inputs(name, grads, state.sum, params, wd)
        t = state.count + 1
        clr = lr / (1.0 + (t - 1) * lr_decay)
        for i, g in _with_decay(grads, params, wd):
            s, u = state.sum[i], out[i]
            np.multiply(g, g, out=u)
            s += u
            np.sqrt(s, out=u)
            u += eps
            np.divide(g, u, out=u)
            u *= -clr
        return AdagradState(t, state.sum)

    return _optimizer(name, init, update_inplace, hyper)


# --------------------------------------------------------------------------- Adadelta


def adadelta(*, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0) -> Optimizer:
    r"""Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701).

    PyTorch's ``torch.optim.Adadelta``::

        v_0 <- 0,  u_0 <- 0
        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        v_t <- rho * v_{t-1} + (1 - rho) * g_t^2
        dx_t <- sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
        u_t <- rho * u_{t-1} + (1 - rho) * dx_t^2
        theta_t <- theta_{t-1} - gamma * dx_t

    This is Zeiler's algorithm 1 (``v = E[g^2]``, ``u = E[dx^2]``,
    ``RMS[y] = sqrt(E[y^2] + eps)``) with an extra factor ``gamma`` on the applied
    step; the default ``gamma = 1`` gives the paper's method.  ``u`` accumulates the
    unscaled ``dx``, not ``gamma * dx``.
    """
    name = "adadelta"
    lr = _at_least(name, "lr", lr)
    rho = _between(name, "rho", rho, 0.0, 1.0, upper_open=False)
    eps = _at_least(name, "eps", eps)
    wd = _at_least(name, "weight_decay", weight_decay)
    hyper = {
        "lr": lr,
        "rho": rho,
        "eps": eps,
        "weight_decay": wd,
    }

    def init(params: Params) -> AdadeltaState:
        return AdadeltaState(0, _zeros(params),
                             _zeros(params))

    def update_inplace(grads: Params, state: AdadeltaState, params: Params | None,
                       out: Params):
        params = _inputs(name, grads, state.square_avg, params, wd)
        for i, g in _with_decay(grads, params, wd):
            v, acc, u = state.square_avg[i], state.acc_delta[i], out[i]
            _ema_sq_(v, g, rho, u)
            np.add(v, eps, out=u)
            np.sqrt(u, out=u)                      # RMS[g]_t
            a = np.add(acc, eps)
            np.sqrt(a, out=a)                      # RMS[dx]_{t-1}
            np.divide(a, u, out=u)
            u *= g                                 # dx_t
            _ema_sq_(acc, u, rho, a)
            u *= -lr
        return AdadeltaState(state.count + 1, state.square_avg, state.acc_delta)

    return _optimizer(name, init, update_inplace, hyper)


# --------------------------------------------------------------------------- RMSprop


def rmsprop(*, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False) -> Optimizer:
    r"""RMSprop (Hinton, Coursera *Neural Networks for Machine Learning*, lecture 6e).

    PyTorch's ``torch.optim.RMSprop`` (smoothing ``alpha``, momentum ``mu``)::

        v_0 <- 0,  b_0 <- 0,  g^ave_0 <- 0
        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        v_t <- alpha * v_{t-1} + (1 - alpha) * g_t^2
        v~_t <- v_t
        if centered:
            g^ave_t <- alpha * g^ave_{t-1} + (1 - alpha) * g_t
            v~_t <- v~_t - (g^ave_t)^2
        if mu > 0:
            b_t <- mu * b_{t-1} + g_t / (sqrt(v~_t) + eps)
            theta_t <- theta_{t-1} - gamma * b_t
        else:
            theta_t <- theta_{t-1} - gamma * g_t / (sqrt(v~_t) + eps)

    Goodfellow et al., *Deep Learning*, alg. 8.5 writes
    ``r <- rho*r + (1-rho) g*g;  theta <- theta - eps_lr / sqrt(delta + r) * g``:
    PyTorch adds ``eps`` *after* the square root (as TensorFlow does not).  The
    centered variant is Graves, "Generating Sequences With Recurrent Neural
    Networks", arXiv:1308.0850, eq. 38-41 (there with momentum written on the
    update, ``Delta <- mu * Delta - lr * g / sqrt(v - gbar^2 + eps)``, i.e.
    ``Delta = -lr * b``).  Note that ``v~_t`` can round to a tiny negative number
    when the gradient is almost constant for many steps, giving NaN exactly as in
    PyTorch.
    """
    name = "rmsprop"
    lr = _at_least(name, "lr", lr)
    alpha = _between(name, "alpha", alpha, 0.0, 1.0, upper_open=False)
    eps = _at_least(name, "eps", eps)
    wd = _at_least(name, "weight_decay", weight_decay)
    mom = _at_least(name, "momentum", momentum)
    centered = _flag(name, "centered", centered)
    hyper = {
        "lr": lr,
        "alpha": alpha,
        "eps": eps,
        "weight_decay": wd,
        "momentum": mom,
        "centered": centered,
    }

    def init(params: Params) -> RMSpropState:
        def zeros(on: bool) -> list:
            return _zeros(params) if on else []

        return RMSpropState(0, zeros(True), zeros(centered), zeros(mom > 0.0))

    def update_inplace(grads: Params, state: RMSpropState, params: Params | None,
                       out: Params):
        params = _inputs(name, grads, state.square_avg, params, wd)
        for i, g in _with_decay(grads, params, wd):
            v, u = state.square_avg[i], out[i]
            _ema_sq_(v, g, alpha, u)
            if centered:
                ga = state.grad_avg[i]
                _ema_(ga, g, alpha, u)
                np.multiply(ga, ga, out=u)
                np.subtract(v, u, out=u)
                np.sqrt(u, out=u)
            else:
                np.sqrt(v, out=u)
            u += eps
            np.divide(g, u, out=u)
            if mom > 0.0:
                buf = state.momentum_buffer[i]
                buf *= mom
                buf += u
                np.multiply(buf, -lr, out=u)
            else:
                u *= -lr
        return RMSpropState(state.count + 1, state.square_avg, state.grad_avg,
                            state.momentum_buffer)

    return _optimizer(name, init, update_inplace, hyper)


# --------------------------------------------------------------------------- Rprop


def rprop(*, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)) -> Optimizer:
    r"""Resilient backpropagation (Riedmiller & Braun, ICNN 1993), as in PyTorch.

    PyTorch's ``torch.optim.Rprop`` (``etas = (eta-, eta+)``,
    ``step_sizes = (Gamma_min, Gamma_max)``), elementwise::

        g_prev <- 0,  eta_0 <- lr
        g_t <- grad f(theta_{t-1})
        if g_prev * g_t > 0:   eta_t <- min(eta_{t-1} * eta+, Gamma_max)
        elif g_prev * g_t < 0: eta_t <- max(eta_{t-1} * eta-, Gamma_min);  g_t <- 0
        else:                  eta_t <- eta_{t-1}
        theta_t <- theta_{t-1} - eta_t * sign(g_t)
        g_prev <- g_t

    Riedmiller & Braun's original rule also *undoes* the previous step after a sign
    change (weight backtracking).  PyTorch instead skips the step and forgets the
    gradient, which is the iRprop- variant of Igel & Huesken, "Improving the Rprop
    learning algorithm", NC 2000.  There is no weight decay.
    """
    name = "rprop"
    lr = _at_least(name, "lr", lr)
    eta_minus, eta_plus = _pair(name, "etas", etas)
    if not 0.0 < eta_minus < 1.0 < eta_plus:
        raise ValueError(
            f"{name}: invalid etas={etas!r}; accepted: (eta_minus, eta_plus) "
            "with 0 < eta_minus < 1 < eta_plus"
        )
    step_min, step_max = _pair(name, "step_sizes", step_sizes)
    if not 0.0 <= step_min <= step_max:
        raise ValueError(
            f"{name}: invalid step_sizes={step_sizes!r}; accepted: (min, max) "
            "with 0 <= min <= max"
        )
    hyper = {
        "lr": lr,
        "etas": (eta_minus, eta_plus),
        "step_sizes": (step_min, step_max),
    }

    def init(params: Params) -> RpropState:
        return RpropState(0, _zeros(params),
                          [np.full_like(p, lr) for p in params])

    def update_inplace(grads: Params, state: RpropState, params: Params | None, out: Params):
        _check_lengths(name, grads, state.prev)
        for i, g in enumerate(grads):
            prev, step, u = state.prev[i], state.step_size[i], out[i]
            np.multiply(g, prev, out=u)
            grow = u > 0.0
            shrink = u < 0.0
            np.multiply(step, eta_plus, out=step, where=grow)
            np.multiply(step, eta_minus, out=step, where=shrink)
            # PyTorch's implementation clamps every step size to [min, max], also
            # where the sign product is 0 (its docs clamp only the changed ones);
            # the two differ only if lr itself lies outside step_sizes.
            np.clip(step, step_min, step_max, out=step)
            np.copyto(prev, g)
            prev[shrink] = 0.0
            np.sign(prev, out=u)
            u *= step
            np.negative(u, out=u)
        return RpropState(state.count + 1, state.prev, state.step_size)

    return _optimizer(name, init, update_inplace, hyper)


# --------------------------------------------------------------------------- Adam family


def _adam(name: str, lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled: bool) -> Optimizer:
    lr = _at_least(name, "lr", lr)
    b1 = _between(name, "beta1", beta1, 0.0, 1.0, upper_open=True)
    b2 = _between(name, "beta2", beta2, 0.0, 1.0, upper_open=True)
    eps = _at_least(name, "eps", eps)
    wd = _at_least(name, "weight_decay", weight_decay)
    ams = _flag(name, "amsgrad", amsgrad)
    hyper = {
        "lr": lr,
        "beta1": b1,
        "beta2": b2,
        "eps": eps,
        "weight_decay": wd,
        "amsgrad": ams,
    }

    def init(params: Params) -> AdamState:
        zeros = _zeros(params)
        return AdamState(0, zeros, _zeros(params),
                         _zeros(params) if ams else [])

    def update_inplace(grads: Params, state: AdamState, params: Params | None, out: Params):
        params = _inputs(name, grads, state.mu, params, wd)
        t = state.count + 1
        # Kingma & Ba sec. 2: m^/(sqrt(v^) + eps) == alpha_t/lr * m/(sqrt(v) + eps_t)
        bc2_sqrt = math.sqrt(1.0 - b2**t)
        alpha_t = lr * bc2_sqrt / (1.0 - b1**t)
        eps_t = eps * bc2_sqrt
        decay = lr * wd
        for i, g in _with_decay(grads, params, 0.0 if decoupled else wd):
            m, v, u = state.mu[i], state.nu[i], out[i]
            _ema_(m, g, b1, u)
            _ema_sq_(v, g, b2, u)
            if ams:
                vmax = state.nu_max[i]
                np.maximum(vmax, v, out=vmax)
                np.sqrt(vmax, out=u)
            else:
                np.sqrt(v, out=u)
            u += eps_t
            np.divide(m, u, out=u)
            u *= -alpha_t
            if decoupled and wd:
                u -= np.multiply(params[i], decay)
        return AdamState(t, state.mu, state.nu, state.nu_max)

    return _optimizer(name, init, update_inplace, hyper)


_ADAM_DOC = r"""

    PyTorch's ``torch.optim.Adam`` (lr ``gamma``)::

        m_0 <- 0,  v_0 <- 0,  v_0^max <- 0
        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t <- beta2 * v_{t-1} + (1 - beta2) * g_t^2
        m^_t <- m_t / (1 - beta1^t)
        if amsgrad:
            v_t^max <- max(v_{t-1}^max, v_t)
            v^_t <- v_t^max / (1 - beta2^t)
        else:
            v^_t <- v_t / (1 - beta2^t)
        theta_t <- theta_{t-1} - gamma * m^_t / (sqrt(v^_t) + eps)

    Without amsgrad and weight decay this is algorithm 1 of Kingma & Ba, "Adam: A
    Method for Stochastic Optimization", ICLR 2015 (arXiv:1412.6980); the code uses
    the cheaper ordering of their sec. 2, ``alpha_t = lr sqrt(1-beta2^t)/(1-beta1^t)``
    and ``eps_t = eps sqrt(1-beta2^t)``, which is algebraically identical.  The L2
    term enters the moments (it is not AdamW's decoupled decay).  AMSGrad (Reddi,
    Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018, alg. 2)
    takes the running max of ``v`` and has no bias corrections; PyTorch keeps both
    bias corrections, applying the second to the max of the *uncorrected* ``v``.
    """


def adam(*, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         amsgrad=False) -> Optimizer:
    """Adam (Kingma & Ba 2015), with optional L2 weight decay and AMSGrad."""
    return _adam("adam", lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled=False)


def amsgrad(*, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0) -> Optimizer:
    """AMSGrad: :func:`adam` with ``amsgrad=True``."""
    return _adam("amsgrad", lr, beta1, beta2, eps, weight_decay, True, decoupled=False)


for _f in (adam, amsgrad):
    _f.__doc__ = (_f.__doc__ or "") + _ADAM_DOC
del _f


def adamw(*, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
          amsgrad=False) -> Optimizer:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019).

    PyTorch's ``torch.optim.AdamW``: as :func:`adam` but with no L2 term in
    ``g_t``; instead the parameters shrink before the Adam step::

        theta_t <- theta_{t-1} - gamma * lambda * theta_{t-1}
        m_t, v_t, m^_t, v^_t as in Adam (amsgrad optional)
        theta_t <- theta_t - gamma * m^_t / (sqrt(v^_t) + eps)

    Loshchilov & Hutter ("Decoupled Weight Decay Regularization",
    arXiv:1711.05101, alg. 2 line 12) write
    ``theta_t <- theta_{t-1} - eta_t (alpha m^_t / (sqrt(v^_t) + eps) + lambda theta_{t-1})``
    with a schedule multiplier ``eta_t`` and a separate ``alpha``; PyTorch ties the
    decay to the learning rate, i.e. ``eta_t * lambda_paper = gamma * lambda``.
    """
    return _adam("adamw", lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled=True)


def nadam(*, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3) -> Optimizer:
    r"""NAdam: Adam with Nesterov momentum (Dozat, "Incorporating Nesterov Momentum
    into Adam", ICLR 2016 workshop).

    PyTorch's ``torch.optim.NAdam`` (momentum decay ``psi``)::

        m_0 <- 0,  v_0 <- 0
        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        mu_t <- beta1 * (1 - 0.5 * 0.96^(t psi))
        mu_{t+1} <- beta1 * (1 - 0.5 * 0.96^((t+1) psi))
        m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t <- beta2 * v_{t-1} + (1 - beta2) * g_t^2
        m^_t <- mu_{t+1} m_t / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) g_t / (1 - prod_{i<=t} mu_i)
        v^_t <- v_t / (1 - beta2^t)
        theta_t <- theta_{t-1} - gamma * m^_t / (sqrt(v^_t) + eps)

    This is Dozat's Nesterov-accelerated Adam with the warming momentum schedule
    he suggests, ``mu_t = beta1 (1 - 0.5 * 0.96^(t / 250))``, i.e. ``psi = 0.004``:
    ``m^_t`` applies the *next* step's momentum ``mu_{t+1}`` to the moment and the
    current ``1 - mu_t`` to the fresh gradient, each with its own bias correction.
    The product ``prod mu_i`` is carried in the state as a Python float (torch
    keeps it in a scalar tensor of the default dtype, float32 unless changed).
    """
    name = "nadam"
    lr = _at_least(name, "lr", lr)
    b1 = _between(name, "beta1", beta1, 0.0, 1.0, upper_open=True)
    b2 = _between(name, "beta2", beta2, 0.0, 1.0, upper_open=True)
    eps = _at_least(name, "eps", eps)
    wd = _at_least(name, "weight_decay", weight_decay)
    psi = _at_least(name, "momentum_decay", momentum_decay)
    hyper = {
        "lr": lr,
        "beta1": b1,
        "beta2": b2,
        "eps": eps,
        "weight_decay": wd,
        "momentum_decay": psi,
    }

    def init(params: Params) -> NadamState:
        return NadamState(0, 1.0, _zeros(params),
                          _zeros(params))

    def update_inplace(grads: Params, state: NadamState, params: Params | None, out: Params):
        params = _inputs(name, grads, state.mu, params, wd)
        t = state.count + 1
        bc2_sqrt = math.sqrt(1.0 - b2**t)
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        mu_product = state.mu_product * mu_t
        # theta -= lr * (c_m m + c_g g) / (sqrt(v^) + eps), scaled as in Adam's code
        c_m = -lr * mu_next / (1.0 - mu_product * mu_next) * bc2_sqrt
        c_g = -lr * (1.0 - mu_t) / (1.0 - mu_product) * bc2_sqrt
        eps_t = eps * bc2_sqrt
        for i, g in _with_decay(grads, params, wd):
            m, v, u = state.mu[i], state.nu[i], out[i]
            _ema_(m, g, b1, u)
            _ema_sq_(v, g, b2, u)
            d = np.sqrt(v)
            d += eps_t
            np.divide(g, d, out=u)
            u *= c_g
            np.divide(m, d, out=d)
            d *= c_m
            u += d
        return NadamState(t, mu_product, state.mu, state.nu)

    return _optimizer(name, init, update_inplace, hyper)


def adamax(*, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0) -> Optimizer:
    r"""Adamax: Adam with the infinity norm (Kingma & Ba 2015, sec. 7.1, alg. 2).

    PyTorch's ``torch.optim.Adamax``::

        m_0 <- 0,  u_0 <- 0
        g_t <- grad f(theta_{t-1}) + lambda * theta_{t-1}
        m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
        u_t <- max(beta2 * u_{t-1}, |g_t| + eps)
        theta_t <- theta_{t-1} - gamma * m_t / ((1 - beta1^t) * u_t)

    Kingma & Ba's algorithm 2 has ``u_t = max(beta2 u_{t-1}, |g_t|)``; PyTorch adds
    ``eps`` inside the max so that ``u_t > 0``.
    """
    name = "adamax"
    lr = _at_least(name, "lr", lr)
    b1 = _between(name, "beta1", beta1, 0.0, 1.0, upper_open=True)
    b2 = _between(name, "beta2", beta2, 0.0, 1.0, upper_open=True)
    eps = _at_least(name, "eps", eps)
    wd = _at_least(name, "weight_decay", weight_decay)
    hyper = {
        "lr": lr,
        "beta1": b1,
        "beta2": b2,
        "eps": eps,
        "weight_decay": wd,
    }

    def init(params: Params) -> AdamaxState:
        return AdamaxState(0, _zeros(params),
                           _zeros(params))

    def update_inplace(grads: Params, state: AdamaxState, params: Params | None, out: Params):
        params = _inputs(name, grads, state.mu, params, wd)
        t = state.count + 1
        clr = lr / (1.0 - b1**t)
        for i, g in _with_decay(grads, params, wd):
            m, inf, u = state.mu[i], state.inf_norm[i], out[i]
            _ema_(m, g, b1, u)
            np.abs(g, out=u)
            u += eps
            inf *= b2
            np.maximum(inf, u, out=inf)
            np.divide(m, inf, out=u)
            u *= -clr
        return AdamaxState(t, state.mu, state.inf_norm)

    return _optimizer(name, init, update_inplace, hyper)


# --------------------------------------------------------------------------- registry

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "adadelta": adadelta,
    "rmsprop": rmsprop,
    "rprop": rprop,
    "adam": adam,
    "amsgrad": amsgrad,
    "nadam": nadam,
    "adamax": adamax,
    "adamw": adamw,
}


def _factory(name: str) -> Callable[..., Optimizer]:
    try:
        return OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise OptimizerKeyError(
            f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}"
        ) from None


def optimizer_defaults(name: str) -> dict:
    """The keyword defaults of the factory registered as ``name``."""
    params = inspect.signature(_factory(name)).parameters
    return {k: p.default for k, p in params.items()}


def make_optimizer(name: str, **overrides) -> Optimizer:
    """Build the optimizer ``name`` with some hyperparameters overridden.

    Overrides whose value is ``None`` are ignored (they mean "use the default"),
    so a command line can pass through flags that were not given.  Raises
    :class:`OptimizerKeyError` (a ``KeyError``) for an unknown name or an option
    that optimizer does not take, and ``ValueError`` for a bad value.
    """
    factory = _factory(name)
    accepted = list(inspect.signature(factory).parameters)
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:
        if key not in accepted:
            raise OptimizerKeyError(
                f"{name} does not take {key!r}; it takes: {', '.join(accepted)}"
            )
    return factory(**given)

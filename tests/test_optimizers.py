"""Tests for :mod:`gradscope.engine.optimizers`.

* Every optimizer, with default and non-default hyperparameters, is run for
  several steps next to a reference written here from the update equations in
  the ``torch.optim`` documentation, one scalar at a time in plain Python loops;
  parameters and optimizer state are compared after every step.
* If PyTorch is importable, the same gradients on the same parameters are fed to
  ``torch.optim`` in float64 and the trajectories compared to ~1e-10.
* Every optimizer converges on an ill-conditioned quadratic and reaches the
  minimum of Rosenbrock's function within a step budget (tables below).
* ``update`` is pure, keeps float32, and ``make_optimizer`` rejects bad input
  with one-line messages.
"""

from __future__ import annotations

import copy
import inspect
import json
import math

import numpy as np
import pytest

from gradscope.engine.optimizers import (
    OPTIMIZERS,
    Optimizer,
    OptimizerKeyError,
    apply_updates,
    make_optimizer,
    optimizer_defaults,
)

# --------------------------------------------------------------------------- cases

# (registry name, overrides); every registry name appears at least once, and the
# non-default rows switch on weight decay, dampening, Nesterov, lr decay, centred
# RMSprop, RMSprop momentum, clamped Rprop step sizes, AMSGrad, ...
CASES = [
    ("sgd", {}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.05, "momentum": 0.7, "nesterov": True}),
    ("momentum", {}),
    ("momentum", {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1, "nesterov": True}),
    ("nesterov", {}),
    ("nesterov", {"lr": 0.2, "momentum": 0.5, "weight_decay": 0.01}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1,
                 "initial_accumulator_value": 0.5, "eps": 1e-6}),
    ("adadelta", {}),
    ("adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"lr": 0.05, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1,
                 "momentum": 0.5, "centered": True}),
    ("rprop", {}),
    ("rprop", {"lr": 0.05, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2)}),
    ("adam", {}),
    ("adam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.9, "eps": 1e-3, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "beta2": 0.9, "weight_decay": 0.05, "amsgrad": True}),
    ("amsgrad", {}),
    ("amsgrad", {"lr": 0.01, "beta1": 0.5, "beta2": 0.9, "weight_decay": 0.1}),
    ("nadam", {}),
    ("nadam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.1,
               "momentum_decay": 0.05}),
    ("adamax", {}),
    ("adamax", {"lr": 0.01, "beta1": 0.8, "beta2": 0.9, "eps": 1e-3, "weight_decay": 0.1}),
    ("adamw", {}),
    ("adamw", {"lr": 0.01, "beta2": 0.9, "weight_decay": 0.3, "amsgrad": True}),
]


def _case_id(case) -> str:
    name, over = case
    return name + "".join(f"-{k}={v}" for k, v in over.items())


CASE_IDS = [_case_id(c) for c in CASES]

SHAPES = [(3, 4), (4,), (2, 3)]


def _params(seed: int, dtype=np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in SHAPES]


def _grad_sequence(steps: int, seed: int) -> list[list[np.ndarray]]:
    """Random gradients with some structure per element: a few keep their sign
    (Rprop step sizes grow to the cap), a few alternate (they shrink to the
    floor), a few shrink over time (the AMSGrad max matters), and one gradient
    is exactly zero (the sign-product-zero branch of Rprop)."""
    rng = np.random.default_rng(seed)
    kinds = [rng.integers(0, 4, size=s) for s in SHAPES]
    seq = []
    for t in range(steps):
        grads = []
        for kind in kinds:
            g = rng.normal(size=kind.shape)
            g = np.where(kind == 1, 0.3 * g + 2.0, g)
            g = np.where(kind == 2, (0.3 * g + 2.0) * (-1.0) ** t, g)
            g = np.where(kind == 3, g * (4.0 if t < 2 else 0.5), g)
            grads.append(g)
        if t == 3:
            grads[0].flat[0] = 0.0
        seq.append(grads)
    return seq


def test_cases_cover_every_optimizer():
    assert {name for name, _ in CASES} == set(OPTIMIZERS)


# --------------------------------------------------------------------------- scalar references
#
# Each reference maps the optimizer's hyperparameters to (init, step) acting on one
# scalar parameter: init(theta0) -> per-element state dict; step(theta, g, state, t)
# -> new theta (t = 1, 2, ...), updating the state dict.  They transcribe the
# pseudo-code of the torch.optim documentation literally (bias corrections written
# out, no reordering).


def _sign(x: float) -> float:
    return 0.0 if x == 0.0 else math.copysign(1.0, x)


def ref_sgd(name, h):
    lr, mu, tau, lam, nest = (h["lr"], h["momentum"], h["dampening"], h["weight_decay"],
                              h["nesterov"])

    def init(theta):
        return {"b": 0.0}

    def step(theta, g, s, t):
        if lam != 0:
            g = g + lam * theta
        if mu != 0:
            s["b"] = g if t == 1 else mu * s["b"] + (1 - tau) * g
            g = g + mu * s["b"] if nest else s["b"]
        return theta - lr * g

    return init, step


def ref_adagrad(name, h):
    lr, eta, lam, tau, eps = (h["lr"], h["lr_decay"], h["weight_decay"],
                              h["initial_accumulator_value"], h["eps"])

    def init(theta):
        return {"sum": tau}

    def step(theta, g, s, t):
        gamma = lr / (1 + (t - 1) * eta)
        if lam != 0:
            g = g + lam * theta
        s["sum"] = s["sum"] + g * g
        return theta - gamma * g / (math.sqrt(s["sum"]) + eps)

    return init, step


def ref_adadelta(name, h):
    lr, rho, eps, lam = h["lr"], h["rho"], h["eps"], h["weight_decay"]

    def init(theta):
        return {"v": 0.0, "u": 0.0}

    def step(theta, g, s, t):
        if lam != 0:
            g = g + lam * theta
        s["v"] = s["v"] * rho + g * g * (1 - rho)
        dx = math.sqrt(s["u"] + eps) / math.sqrt(s["v"] + eps) * g
        s["u"] = s["u"] * rho + dx * dx * (1 - rho)
        return theta - lr * dx

    return init, step


def ref_rmsprop(name, h):
    lr, alpha, eps, lam, mu, centered = (h["lr"], h["alpha"], h["eps"], h["weight_decay"],
                                         h["momentum"], h["centered"])

    def init(theta):
        return {"v": 0.0, "b": 0.0, "gave": 0.0}

    def step(theta, g, s, t):
        if lam != 0:
            g = g + lam * theta
        s["v"] = alpha * s["v"] + (1 - alpha) * g * g
        vt = s["v"]
        if centered:
            s["gave"] = s["gave"] * alpha + (1 - alpha) * g
            vt = vt - s["gave"] ** 2
        if mu > 0:
            s["b"] = mu * s["b"] + g / (math.sqrt(vt) + eps)
            return theta - lr * s["b"]
        return theta - lr * g / (math.sqrt(vt) + eps)

    return init, step


def ref_rprop(name, h):
    lr = h["lr"]
    eta_minus, eta_plus = h["etas"]
    step_min, step_max = h["step_sizes"]

    def init(theta):
        return {"prev": 0.0, "eta": lr}

    def step(theta, g, s, t):
        if s["prev"] * g > 0:
            s["eta"] = min(s["eta"] * eta_plus, step_max)
        elif s["prev"] * g < 0:
            s["eta"] = max(s["eta"] * eta_minus, step_min)
            g = 0.0
        theta = theta - s["eta"] * _sign(g)
        s["prev"] = g
        return theta

    return init, step


def ref_adam(name, h):
    """Adam / AMSGrad (torch.optim.Adam) and AdamW (torch.optim.AdamW)."""
    lr, b1, b2, eps, lam, ams = (h["lr"], h["beta1"], h["beta2"], h["eps"],
                                 h["weight_decay"], h["amsgrad"])
    decoupled = name == "adamw"

    def init(theta):
        return {"m": 0.0, "v": 0.0, "vmax": 0.0}

    def step(theta, g, s, t):
        if decoupled:
            theta = theta - lr * lam * theta
        elif lam != 0:
            g = g + lam * theta
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1**t)
        if ams:
            s["vmax"] = max(s["vmax"], s["v"])
            v_hat = s["vmax"] / (1 - b2**t)
        else:
            v_hat = s["v"] / (1 - b2**t)
        return theta - lr * m_hat / (math.sqrt(v_hat) + eps)

    return init, step


def ref_nadam(name, h):
    lr, b1, b2, eps, lam, psi = (h["lr"], h["beta1"], h["beta2"], h["eps"],
                                 h["weight_decay"], h["momentum_decay"])

    def mu(i):
        return b1 * (1 - 0.5 * 0.96 ** (i * psi))

    def init(theta):
        return {"m": 0.0, "v": 0.0, "mu_product": 1.0}

    def step(theta, g, s, t):
        if lam != 0:
            g = g + lam * theta
        s["mu_product"] = s["mu_product"] * mu(t)  # prod_{i=1}^{t} mu_i
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = (mu(t + 1) * s["m"] / (1 - s["mu_product"] * mu(t + 1))
                 + (1 - mu(t)) * g / (1 - s["mu_product"]))
        v_hat = s["v"] / (1 - b2**t)
        return theta - lr * m_hat / (math.sqrt(v_hat) + eps)

    return init, step


def ref_adamax(name, h):
    lr, b1, b2, eps, lam = h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]

    def init(theta):
        return {"m": 0.0, "u": 0.0}

    def step(theta, g, s, t):
        if lam != 0:
            g = g + lam * theta
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["u"] = max(b2 * s["u"], abs(g) + eps)
        return theta - lr * s["m"] / ((1 - b1**t) * s["u"])

    return init, step


REFERENCES = {
    "sgd": ref_sgd, "momentum": ref_sgd, "nesterov": ref_sgd,
    "adagrad": ref_adagrad, "adadelta": ref_adadelta, "rmsprop": ref_rmsprop,
    "rprop": ref_rprop, "adam": ref_adam, "amsgrad": ref_adam, "adamw": ref_adam,
    "nadam": ref_nadam, "adamax": ref_adamax,
}


def state_map(name: str, h: dict) -> dict[str, str]:
    """Reference state key -> field of the implementation's state NamedTuple."""
    if name in ("sgd", "momentum", "nesterov"):
        return {"b": "momentum_buffer"} if h["momentum"] else {}
    if name == "adagrad":
        return {"sum": "sum"}
    if name == "adadelta":
        return {"v": "square_avg", "u": "acc_delta"}
    if name == "rmsprop":
        out = {"v": "square_avg"}
        if h["centered"]:
            out["gave"] = "grad_avg"
        if h["momentum"] > 0:
            out["b"] = "momentum_buffer"
        return out
    if name == "rprop":
        return {"prev": "prev", "eta": "step_size"}
    if name in ("adam", "amsgrad", "adamw"):
        return {"m": "mu", "v": "nu", **({"vmax": "nu_max"} if h["amsgrad"] else {})}
    if name == "nadam":
        return {"m": "mu", "v": "nu", "mu_product": "mu_product"}
    if name == "adamax":
        return {"m": "mu", "u": "inf_norm"}
    raise AssertionError(name)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_matches_scalar_reference(name, overrides):
    steps = 6
    opt = make_optimizer(name, **overrides)
    params = _params(0)
    grad_seq = _grad_sequence(steps, seed=1)

    init, step = REFERENCES[name](name, opt.hyper)
    ref_theta = [[float(x) for x in p.ravel()] for p in params]
    ref_state = [[init(x) for x in arr] for arr in ref_theta]
    mapping = state_map(name, opt.hyper)

    state = opt.init(params)
    assert state.count == 0
    for t, grads in enumerate(grad_seq, start=1):
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
        for a, g in enumerate(grads):
            g_flat = [float(x) for x in g.ravel()]
            for j in range(len(ref_theta[a])):
                ref_theta[a][j] = step(ref_theta[a][j], g_flat[j], ref_state[a][j], t)

        assert state.count == t
        for a, p in enumerate(params):
            np.testing.assert_allclose(p.ravel(), ref_theta[a], rtol=1e-10, atol=1e-12,
                                       err_msg=f"params[{a}] after step {t}")
        for key, field in mapping.items():
            value = getattr(state, field)
            for a, shape in enumerate(SHAPES):
                want = [st[key] for st in ref_state[a]]
                got = np.full(len(want), value) if np.isscalar(value) else value[a].ravel()
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12,
                                           err_msg=f"state {field}[{a}] after step {t}")
        # state fields the configuration does not use stay empty
        for field in state._fields:
            if field not in ("count", *mapping.values()):
                assert getattr(state, field) == [], field


# --------------------------------------------------------------------------- PyTorch

TORCH_CLASS = {
    "sgd": "SGD", "momentum": "SGD", "nesterov": "SGD", "adagrad": "Adagrad",
    "adadelta": "Adadelta", "rmsprop": "RMSprop", "rprop": "Rprop", "adam": "Adam",
    "amsgrad": "Adam", "adamw": "AdamW", "nadam": "NAdam", "adamax": "Adamax",
}

# torch state key -> our state field
TORCH_STATE = {
    "momentum_buffer": "momentum_buffer", "sum": "sum", "square_avg": "square_avg",
    "acc_delta": "acc_delta", "grad_avg": "grad_avg", "prev": "prev",
    "step_size": "step_size", "exp_avg": "mu", "exp_avg_sq": "nu",
    "max_exp_avg_sq": "nu_max", "exp_inf": "inf_norm", "mu_product": "mu_product",
}


def _torch_kwargs(hyper: dict) -> dict:
    kw = dict(hyper)
    if "beta1" in kw:
        kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
    return kw


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_matches_torch(name, overrides):
    torch = pytest.importorskip("torch")
    steps = 12
    opt = make_optimizer(name, **overrides)
    params = _params(2)
    grad_seq = _grad_sequence(steps, seed=3)

    old_dtype = torch.get_default_dtype()
    # torch keeps scalar state (step, NAdam's mu_product) in the default dtype
    torch.set_default_dtype(torch.float64)
    try:
        tparams = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
        topt = getattr(torch.optim, TORCH_CLASS[name])(tparams, **_torch_kwargs(opt.hyper))
        state = opt.init(params)
        for t, grads in enumerate(grad_seq, start=1):
            updates, state = opt.update(grads, state, params)
            params = apply_updates(params, updates)
            for tp, g in zip(tparams, grads):
                tp.grad = torch.tensor(g, dtype=torch.float64)
            topt.step()
            for a, (p, tp) in enumerate(zip(params, tparams)):
                np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12,
                                           err_msg=f"params[{a}] after step {t}")
            for a, tp in enumerate(tparams):
                tstate = topt.state[tp]
                if "step" in tstate:
                    assert float(tstate["step"]) == state.count == t
                for key, field in TORCH_STATE.items():
                    if key not in tstate:
                        continue
                    ours = getattr(state, field)
                    ours = ours if np.isscalar(ours) else ours[a]
                    np.testing.assert_allclose(ours, tstate[key].detach().numpy(), rtol=1e-10,
                                               atol=1e-12, err_msg=f"{key} after step {t}")
    finally:
        torch.set_default_dtype(old_dtype)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    skip = {"params", "self", "maximize", "foreach", "capturable", "differentiable", "fused",
            "decoupled_weight_decay"}
    for name in OPTIMIZERS:
        cls = getattr(torch.optim, TORCH_CLASS[name])
        theirs = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                  if k not in skip}
        ours = _torch_kwargs(optimizer_defaults(name))
        for key, value in ours.items():
            if name in ("momentum", "nesterov") and key == "momentum":
                assert value == 0.9  # torch.optim.SGD's default is 0; 0.9 is ours
            else:
                assert value == theirs[key], (name, key, value, theirs[key])
        # every torch option except the implementation switches above is offered
        missing = set(theirs) - set(ours)
        expected = {"nesterov": {"nesterov"}, "amsgrad": {"amsgrad"}}.get(name, set())
        assert missing == expected, (name, missing)


# --------------------------------------------------------------------------- convergence


def _quadratic_grad(p):
    # f(x, y) = 0.5 * (x^2 + 10 y^2): condition number 10, minimum at (0, 0)
    return np.array([p[0], 10.0 * p[1]])


def _rosenbrock_grad(p):
    # f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, minimum at (1, 1)
    x, y = p
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


START = (-1.5, 2.0)

# Quadratic: run `steps` steps from START; over the last fifth of the run the
# iterate must stay within `tol` of the minimum (it has converged, not just
# passed by).  Most methods then sit at ~1e-30 or below; the exceptions are
# documented by their tolerance:
# * RMSprop: once sqrt(v) falls to the order of eps, the effective step lr/eps
#   is unstable, so it ends in an oscillation of amplitude ~lr (as torch does).
# * Rprop: cannot resolve below its minimum step size, 1e-6.
# * Adadelta: as v, u -> 0 it becomes gradient descent with step lr, which is
#   stable for lr < 2/10 on this quadratic.
QUADRATIC = {  # name: (overrides, steps, tol)
    "sgd": ({"lr": 0.1}, 300, 1e-8),
    "momentum": ({"lr": 0.02}, 600, 1e-8),
    "nesterov": ({"lr": 0.03}, 450, 1e-8),
    "adagrad": ({"lr": 0.5}, 200, 1e-8),
    "adadelta": ({"lr": 0.15}, 3500, 1e-8),
    "rmsprop": ({"lr": 1e-3}, 6500, 1e-3),
    "rprop": ({"lr": 0.1}, 150, 1e-5),
    "adam": ({"lr": 0.05}, 600, 1e-8),
    "amsgrad": ({"lr": 0.05}, 600, 1e-8),
    "nadam": ({"lr": 0.05}, 450, 1e-8),
    "adamax": ({"lr": 0.1}, 550, 1e-8),
    "adamw": ({"lr": 0.05}, 600, 1e-8),
}

# Rosenbrock: the iterate must come within ROSEN_TOL of (1, 1) within `steps` steps
# from START (budgets are about 1.5x the step at which it first does).  Notes:
# plain SGD needs lr < ~2e-3 for stability in the steep direction; Adagrad's
# shrinking steps make it slow; Adadelta only settles with a short memory
# (rho=0.5) and a small lr (its effective step RMS[dx]/RMS[g] grows as the
# gradient vanishes); RMSprop is run with momentum; AdamW's decoupled decay moves
# the fixed point away from (1, 1) by ~lr * weight_decay-scaled amounts, so its
# weight decay is reduced to 1e-4.
ROSEN_TOL = 1e-3
ROSENBROCK = {  # name: (overrides, steps)
    "sgd": ({"lr": 2e-3}, 8000),
    "momentum": ({"lr": 2e-3}, 1000),
    "nesterov": ({"lr": 1e-3}, 2500),
    "adagrad": ({"lr": 1.0}, 20000),
    "adadelta": ({"lr": 3e-3, "rho": 0.5, "eps": 1e-5}, 27000),
    "rmsprop": ({"lr": 1e-4, "momentum": 0.9}, 6500),
    "rprop": ({"lr": 1e-2}, 6500),
    "adam": ({"lr": 0.05}, 2500),
    "amsgrad": ({"lr": 0.1}, 2000),
    "nadam": ({"lr": 5e-3}, 8000),
    "adamax": ({"lr": 0.1}, 4000),
    "adamw": ({"lr": 0.05, "weight_decay": 1e-4}, 2500),
}


def test_convergence_tables_cover_every_optimizer():
    assert set(QUADRATIC) == set(OPTIMIZERS) == set(ROSENBROCK)


@pytest.mark.parametrize("name", list(QUADRATIC))
def test_converges_on_quadratic(name):
    overrides, steps, tol = QUADRATIC[name]
    opt = make_optimizer(name, **overrides)
    params = [np.array(START)]
    state = opt.init(params)
    worst_late = 0.0
    for k in range(steps):
        updates, state = opt.update([_quadratic_grad(params[0])], state, params)
        params = apply_updates(params, updates)
        if k >= steps - steps // 5:
            worst_late = max(worst_late, float(np.linalg.norm(params[0])))
    assert worst_late < tol, (worst_late, params[0])


@pytest.mark.parametrize("name", list(ROSENBROCK))
def test_reaches_rosenbrock_minimum(name):
    overrides, steps = ROSENBROCK[name]
    opt = make_optimizer(name, **overrides)
    params = [np.array(START)]
    state = opt.init(params)
    best = np.inf
    for _ in range(steps):
        updates, state = opt.update([_rosenbrock_grad(params[0])], state, params)
        params = apply_updates(params, updates)
        best = np.linalg.norm(params[0] - 1.0)
        if best < ROSEN_TOL:
            break
    assert best < ROSEN_TOL, (params[0], state.count)


# --------------------------------------------------------------------------- purity, dtype


def _arrays(tree) -> list[np.ndarray]:
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in _arrays(item)]
    return []


def _assert_tree_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_tree_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_update_is_pure(name, overrides):
    opt = make_optimizer(name, **overrides)
    params = _params(4)
    grad_seq = _grad_sequence(3, seed=5)
    state = opt.init(params)
    for grads in grad_seq[:2]:
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    grads = grad_seq[2]
    for arr in _arrays([params, grads, state]):
        arr.flags.writeable = False  # any in-place write raises
    saved = copy.deepcopy((params, grads, state))

    updates, new_state = opt.update(grads, state, params)
    again, again_state = opt.update(grads, state, params)

    _assert_tree_equal((params, grads, state), saved)
    _assert_tree_equal(updates, again)
    _assert_tree_equal(new_state, again_state)
    # nothing returned shares memory with the inputs or with anything else returned
    inputs = _arrays([params, grads, state])
    outputs = _arrays([updates, new_state])
    for i, out in enumerate(outputs):
        assert out.flags.writeable
        assert not any(np.shares_memory(out, x) for x in inputs)
        assert not any(np.shares_memory(out, y) for y in outputs[i + 1:])


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_float32_stays_float32(name, overrides):
    opt = make_optimizer(name, **overrides)
    p32 = _params(6, np.float32)
    p64 = [p.astype(np.float64) for p in p32]
    s32, s64 = opt.init(p32), opt.init(p64)
    for grads in _grad_sequence(4, seed=7):
        g32 = [g.astype(np.float32) for g in grads]
        u32, s32 = opt.update(g32, s32, p32)
        u64, s64 = opt.update([g.astype(np.float64) for g in g32], s64, p64)
        p32, p64 = apply_updates(p32, u32), apply_updates(p64, u64)
        for arr in _arrays([u32, s32, p32]):
            assert arr.dtype == np.float32
    for a, b in zip(p32, p64):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- registry, errors

SPEC_DEFAULTS = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
            "nesterov": False},
    "momentum": {"lr": 1e-3, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
                 "nesterov": False},
    "nesterov": {"lr": 1e-3, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0},
    "adagrad": {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0,
                "initial_accumulator_value": 0.0, "eps": 1e-10},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
    "rmsprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                "centered": False},
    "rprop": {"lr": 1e-2, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0)},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
             "amsgrad": False},
    "amsgrad": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "nadam": {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "momentum_decay": 4e-3},
    "adamax": {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2,
              "amsgrad": False},
}


def test_registry_and_defaults():
    assert list(OPTIMIZERS) == list(SPEC_DEFAULTS)
    for name, defaults in SPEC_DEFAULTS.items():
        assert optimizer_defaults(name) == defaults
        opt = make_optimizer(name)
        assert isinstance(opt, Optimizer) and opt.name == name
        # hyper reports every option with the value in use, and is JSON-serialisable
        assert {k: opt.hyper[k] for k in defaults} == defaults
        json.dumps(opt.hyper)
    assert make_optimizer("nesterov").hyper["nesterov"] is True
    assert make_optimizer("amsgrad").hyper["amsgrad"] is True


def test_make_optimizer_overrides_and_none():
    opt = make_optimizer("adam", lr=0.1, beta2=np.float32(0.5), amsgrad=True, rho=None)
    assert opt.hyper["lr"] == 0.1 and opt.hyper["amsgrad"] is True
    assert type(opt.hyper["beta2"]) is float
    assert make_optimizer("rmsprop", lr=None).hyper == make_optimizer("rmsprop").hyper
    assert make_optimizer("rprop", etas=[0.4, 1.1]).hyper["etas"] == (0.4, 1.1)


def test_unknown_name():
    with pytest.raises(KeyError) as info:
        make_optimizer("adamm")
    msg = str(info.value)
    assert msg.startswith("unknown optimizer 'adamm'; accepted: sgd, momentum, nesterov")
    assert "\n" not in msg
    with pytest.raises(OptimizerKeyError):
        optimizer_defaults("lbfgs")


def test_unknown_option():
    with pytest.raises(KeyError) as info:
        make_optimizer("adam", rho=0.9)
    assert str(info.value) == (
        "adam does not take 'rho'; it takes: lr, beta1, beta2, eps, weight_decay, amsgrad"
    )
    with pytest.raises(KeyError, match="rprop does not take 'weight_decay'"):
        make_optimizer("rprop", weight_decay=0.1)
    with pytest.raises(KeyError, match="nesterov does not take 'nesterov'"):
        make_optimizer("nesterov", nesterov=False)


@pytest.mark.parametrize(
    ("name", "overrides", "fragment"),
    [
        ("sgd", {"lr": -0.1}, "invalid lr=-0.1; accepted: lr >= 0"),
        ("sgd", {"momentum": 0.0, "nesterov": True}, "nesterov=True needs momentum > 0"),
        ("momentum", {"dampening": 0.1, "nesterov": True}, "dampening == 0"),
        ("adam", {"beta1": 1.0}, "invalid beta1=1.0; accepted: 0 <= beta1 < 1"),
        ("adam", {"lr": "fast"}, "lr must be a number, got 'fast'"),
        ("adam", {"amsgrad": "yes"}, "amsgrad must be True or False"),
        ("adam", {"eps": float("nan")}, "eps must be finite"),
        ("adadelta", {"rho": 1.5}, "invalid rho=1.5"),
        ("rmsprop", {"alpha": -0.5}, "invalid alpha=-0.5"),
        ("rmsprop", {"centered": 1}, "centered must be True or False"),
        ("rprop", {"etas": (1.2, 0.5)}, "invalid etas=(1.2, 0.5)"),
        ("rprop", {"step_sizes": (1.0, 0.1)}, "invalid step_sizes=(1.0, 0.1)"),
        ("rprop", {"etas": 0.5}, "etas must be a pair of numbers"),
        ("nadam", {"momentum_decay": -1}, "invalid momentum_decay=-1.0"),
        ("adamw", {"weight_decay": -0.01}, "invalid weight_decay=-0.01"),
    ],
)
def test_bad_values(name, overrides, fragment):
    with pytest.raises(ValueError) as info:
        make_optimizer(name, **overrides)
    msg = str(info.value)
    assert fragment in msg and msg.startswith(name) and "\n" not in msg


def test_mismatched_inputs():
    params = _params(8)
    opt = make_optimizer("adam", weight_decay=0.1)
    state = opt.init(params)
    with pytest.raises(ValueError, match="3 arrays|holds 3"):
        opt.update(params[:2], state, params)
    with pytest.raises(ValueError, match="needs the 3 current parameter arrays"):
        opt.update(params, state, None)
    with pytest.raises(ValueError, match="3 parameter arrays but 2 updates"):
        apply_updates(params, params[:2])
    # without weight decay the parameters are not needed (optax-style)
    updates, _ = make_optimizer("adam").update(params, state, None)
    assert len(updates) == 3


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_grouped_step_equals_update_then_apply(name):
    """The threaded GroupedStep gives bit-identical parameters, updates and state."""
    from gradscope.training.parallel import GroupedStep

    rng = np.random.default_rng(7)
    shapes = [(40, 30), (30,), (30, 30), (30,), (30, 5), (5,)]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    opt = make_optimizer(name, **({"weight_decay": 0.01} if name != "rprop" else {}))
    stepper = GroupedStep(opt, [p.size for p in params], threads=3)
    assert len(stepper.groups) == 3
    s1 = s2 = opt.init(params)
    p1 = p2 = params
    try:
        for _ in range(4):
            grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
            u1, s1 = opt.update(grads, s1, p1)
            p1 = apply_updates(p1, u1)
            p2, u2, s2 = stepper(grads, s2, p2)
            for a, b in zip(p1 + u1, p2 + u2):
                assert a.dtype == b.dtype and np.array_equal(a, b)
            for f1, f2 in zip(s1, s2):
                if isinstance(f1, list):
                    assert len(f1) == len(f2)
                    assert all(np.array_equal(x, y) for x, y in zip(f1, f2))
                else:
                    assert f1 == f2
    finally:
        stepper.close()


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("out_norms", [False, True])
def test_inplace_step_equals_pure_step_and_writes_into_its_arrays(name, overrides, threads,
                                                                    out_norms):
    """GroupedStep(inplace=True), as the training loop runs it, against the pure update
    followed by apply_updates: the same numbers bit for bit over several steps, written into
    the parameter and state arrays it was given, with the gradients left untouched; asked
    for them, the norms of the updates and new parameters (float64 references)."""
    from gradscope.engine.stats import norm
    from gradscope.training.parallel import GroupedStep

    opt = make_optimizer(name, **overrides)
    params = _params(3, np.float32)
    stepper = GroupedStep(opt, [p.size for p in params], threads=threads, measure=norm)
    s_pure = opt.init(params)
    p_pure = params
    p_in = [p.copy() for p in params]
    s_in = opt.init(p_in)
    ids_p = [id(p) for p in p_in]
    ids_s = [id(a) for a in _arrays(s_in)]
    try:
        for grads in _grad_sequence(5, seed=11):
            grads = [g.astype(np.float32) for g in grads]
            for g in grads:
                g.flags.writeable = False  # a write into a gradient raises
            u_pure, s_pure = opt.update(grads, s_pure, p_pure)
            p_pure = apply_updates(p_pure, u_pure)
            p_in, u_in, s_in, (_, un, pn) = stepper.step(grads, s_in, p_in, inplace=True,
                                                         out_norms=out_norms)
            if out_norms:
                for got, arrays in ((un, u_pure), (pn, p_pure)):
                    ref = [np.linalg.norm(a.astype(np.float64)) for a in arrays]
                    np.testing.assert_allclose(got, ref, rtol=1e-6)
            else:
                assert un is None and pn is None
            assert [id(p) for p in p_in] == ids_p
            assert [id(a) for a in _arrays(s_in)] == ids_s
            _assert_tree_equal(p_in, p_pure)
            _assert_tree_equal(u_in, u_pure)
            _assert_tree_equal(list(s_in), list(s_pure))
    finally:
        stepper.close()


def test_inplace_update_checks_its_inputs_before_writing():
    params = _params(8)
    opt = make_optimizer("adam", weight_decay=0.1)
    state = opt.init(params)
    for a in _arrays(state):
        a.flags.writeable = False  # a write before the error would raise something else
    out = [np.empty_like(p) for p in params]
    with pytest.raises(ValueError, match="holds 3"):
        opt.update_inplace(params[:2], state, params, out)
    with pytest.raises(ValueError, match="needs the 3 current parameter arrays"):
        opt.update_inplace(params, state, None, out)

"""Remedies for vanishing/exploding gradients (docs/remedies.md): dropout, residual skips,
batch and layer norm, gradient clipping -- gradients by finite differences, values by hand and
against torch, and their effect, logging and command line."""

import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import gradscope
from gradscope.analysis.diagnose import config_summary, diagnose
from gradscope.cli.main import main
from gradscope.engine.activations import ACTIVATIONS
from gradscope.engine.losses import mean_squared_error, softmax_cross_entropy
from gradscope.engine.mlp import (
    Arch,
    backward,
    forward,
    init_norm,
    init_params,
    predict,
    skip_layers,
)
from gradscope.engine.stats import total_norm
from gradscope.reading.readers import read_norm
from gradscope.record.probes import histogram_edges, probe_metrics
from gradscope.training.loop import ConfigError, TrainConfig, clip_gradients, prepare, train
from gradscope.training.sweep import expand_grid, option_kinds, parse_list, run_names

# -- finite-difference gradient checks ------------------------------------------------------


def _net(rng, sizes, arch, dtype=np.float64):
    params = init_params(sizes, "xavier", rng, gain=1.2, dtype=dtype)
    for b in params[1::2]:
        b[:] = rng.normal(0, 0.3, b.shape)  # biases off zero to exercise every branch
    norm_params, state = init_norm(sizes[1:-1], arch.norm, dtype)
    for g in norm_params[0::2]:
        g[:] = rng.uniform(0.5, 1.5, g.shape)
    for b in norm_params[1::2]:
        b[:] = rng.normal(0, 0.3, b.shape)
    if state is not None:
        for m in state[0::2]:
            m[:] = rng.normal(0, 0.2, m.shape)
        for v in state[1::2]:
            v[:] = rng.uniform(0.5, 2.0, v.shape)
    return params, norm_params, state


def _run(params, norm_params, state, X, arch, act, seed=7):
    # a fresh generator with the same seed: the same dropout masks on every evaluation
    return forward(params, X, act, arch=arch, norm_params=norm_params, state=state,
                   rng=np.random.default_rng(seed))


def _fd_check(params, norm_params, state, X, y, arch, act, loss_fn, rng, n_entries=5, h=1e-6):
    out, cache = _run(params, norm_params, state, X, arch, act)
    _, dout = loss_fn(out, y)
    back = backward(params, cache, dout, act)
    grads = back.grads + (back.norm_grads or [])
    arrays = params + norm_params
    assert len(grads) == len(arrays)
    assert all(g.shape == p.shape for g, p in zip(grads, arrays))

    def loss_and_signs():
        o, c = _run(params, norm_params, state, X, arch, act)
        return loss_fn(o, y)[0], [np.sign(c.phi_input(l)) for l in range(len(params) // 2 - 1)]

    checked = 0
    for i, p in enumerate(arrays):
        for _ in range(n_entries):
            idx = tuple(rng.integers(0, s) for s in p.shape)
            old = p[idx]
            p[idx] = old + h
            lp, sp = loss_and_signs()
            p[idx] = old - h
            lm, sm = loss_and_signs()
            p[idx] = old
            if any((a != b).any() for a, b in zip(sp, sm)):
                continue  # the step crosses a kink (u = 0) of relu-like functions
            checked += 1
            fd = (lp - lm) / (2 * h)
            assert grads[i][idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), (i, idx)
    assert checked >= 0.8 * n_entries * len(arrays)
    return cache, back


ARCHS = {
    "dropout": Arch(dropout=0.3),
    "residual": Arch(residual=True),
    "batchnorm": Arch(norm="batch"),
    "layernorm": Arch(norm="layer"),
    "res+bn": Arch(residual=True, norm="batch"),
    "res+ln+dropout": Arch(dropout=0.25, residual=True, norm="layer"),
    "res+bn+dropout": Arch(dropout=0.25, residual=True, norm="batch"),
    "bn+dropout": Arch(dropout=0.4, norm="batch"),
}
# first layer 5 -> 6 has no skip, the three 6 -> 6 layers have one; the second net has a
# skip on the input layer (6 -> 6) and on 8 -> 8 only
SIZES = ([5, 6, 6, 6, 6, 4], [6, 6, 8, 8, 5, 3])


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
@pytest.mark.parametrize("act_name", ["relu", "tanh", "sigmoid", "elu"])
def test_gradients_by_finite_differences(arch_name, act_name, rng):
    arch, act = ARCHS[arch_name], ACTIVATIONS[act_name]
    for sizes in SIZES:
        params, norm_params, _ = _net(rng, sizes, arch)
        X = rng.normal(size=(9, sizes[0]))
        y = rng.integers(0, sizes[-1], 9)
        cache, back = _fd_check(params, norm_params, None, X, y, arch, act,
                                softmax_cross_entropy, rng)
        if arch.norm is not None:
            assert len(back.norm_grads) == 2 * (len(sizes) - 2)
        if arch.residual:
            assert cache.skips == skip_layers(sizes)
        if arch.dropout:
            kept = np.concatenate([(m > 0).ravel() for m in cache.masks])
            assert 0.3 < kept.mean() < 0.95  # the masks really drop units


@pytest.mark.parametrize("arch_name", ["res+ln+dropout", "res+bn+dropout"])
def test_gradients_mse_all_activations(arch_name, rng):
    arch = ARCHS[arch_name]
    for act in ACTIVATIONS.values():
        params, norm_params, _ = _net(rng, [3, 5, 5, 5, 5, 2], arch)
        X = rng.normal(size=(8, 3))
        y = rng.normal(size=(8, 2))
        _fd_check(params, norm_params, None, X, y, arch, act, mean_squared_error, rng,
                  n_entries=3)


@pytest.mark.parametrize("arch_name", ["plain"] + sorted(ARCHS))
@pytest.mark.parametrize("act_name", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_measuring_passes_change_nothing_and_measure_their_arrays(arch_name, act_name, dtype,
                                                                   rng):
    arch = ARCHS.get(arch_name, Arch())
    act = ACTIVATIONS[act_name]
    params, norm_params, state = _net(rng, SIZES[0], arch, dtype)
    X = rng.normal(0, 1.5, (12, SIZES[0][0])).astype(dtype)
    y = rng.integers(0, SIZES[0][-1], 12)
    passes = []
    for measure in (False, True):
        out, cache = forward(params, X, act, arch=arch, norm_params=norm_params, state=state,
                             rng=np.random.default_rng(7), measure=measure)
        _, dout = softmax_cross_entropy(out, y)
        passes.append((out, cache, backward(params, cache, dout, act, measure=measure)))
    (out0, cache0, back0), (out1, cache1, back1) = passes
    # measuring leaves every number of the passes as it was, bit for bit
    np.testing.assert_array_equal(out0, out1)
    for a, b in zip(back0.grads + (back0.norm_grads or []), back1.grads + (back1.norm_grads or [])):
        np.testing.assert_array_equal(a, b)
    assert cache0.act_stats is back0.delta_norms is back0.saturated is None
    # and the measurements describe the pass's arrays (float64 references from numpy)
    L = len(params) // 2
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for l in range(L):
        d = back1.deltas[l].astype(np.float64)
        assert back1.delta_norms[l] == pytest.approx(np.linalg.norm(d), rel=tol)
    for l in range(L - 1):
        h = cache1.hidden(l).astype(np.float64)
        mean, std = cache1.act_stats[l]
        assert mean == pytest.approx(h.mean(), rel=tol, abs=tol * h.std())
        assert std == pytest.approx(h.std(), rel=10 * tol)
        assert back1.saturated[l] == np.mean(back1.dphi[l] < 0.05 * act.df_max)
    assert len(back1.delta_norms) == L and len(back1.saturated) == len(cache1.act_stats) == L - 1


def test_batchnorm_eval_mode_gradients(rng):
    """Backward through an evaluation-mode pass (running statistics are constants)."""
    arch = Arch(residual=True, norm="batch")
    params, norm_params, state = _net(rng, [4, 6, 6, 6, 3], arch)
    X = rng.normal(size=(5, 4))
    y = rng.integers(0, 3, 5)
    act = ACTIVATIONS["tanh"]

    def run(*_a, **_k):
        return forward(params, X, act, arch=arch, norm_params=norm_params, state=state,
                       train=False)

    out, cache = run()
    back = backward(params, cache, softmax_cross_entropy(out, y)[1], act)
    grads, arrays = back.grads + back.norm_grads, params + norm_params
    h = 1e-6
    for g, p in zip(grads, arrays):
        idx = tuple(rng.integers(0, s) for s in p.shape)
        old = p[idx]
        p[idx] = old + h
        lp = softmax_cross_entropy(run()[0], y)[0]
        p[idx] = old - h
        lm = softmax_cross_entropy(run()[0], y)[0]
        p[idx] = old
        assert g[idx] == pytest.approx((lp - lm) / (2 * h), rel=1e-5, abs=1e-9)
    assert cache.state is not state and all(a is b for a, b in zip(cache.state, state))


def test_deltas_are_gradients_wrt_matmul_outputs(rng):
    """delta_l = dL/dz_l (z_l = a_l W_l + b_l) with skips, dropout and layer norm: with one
    example dL/db_l = delta_l[0], and dL/db_l passes the finite-difference check."""
    arch = ARCHS["res+ln+dropout"]
    params, norm_params, _ = _net(rng, [4, 5, 5, 5, 3], arch)
    X = rng.normal(size=(1, 4))
    y = np.array([2])
    _, back = _fd_check(params, norm_params, None, X, y, arch, ACTIVATIONS["tanh"],
                        softmax_cross_entropy, rng, n_entries=4)
    for l, d in enumerate(back.deltas):
        np.testing.assert_allclose(d[0], back.grads[2 * l + 1], rtol=1e-12)
        assert d.shape == (1, params[2 * l].shape[1])


def test_residual_forward_and_backward_by_hand():
    """Two 1-unit hidden layers with skips, linear phi: a_1 = x + (x w0 + b0), etc."""
    act = ACTIVATIONS["linear"]
    params = [np.array([[2.0]]), np.array([1.0]), np.array([[3.0]]), np.array([0.0]),
              np.array([[1.0]]), np.array([0.0])]
    X = np.array([[1.0]])
    out, cache = forward(params, X, act, arch=Arch(residual=True))
    # a1 = 1 + (2 + 1) = 4; a2 = 4 + 12 = 16; out = 16
    assert out[0, 0] == 16.0
    back = backward(params, cache, np.array([[1.0]]), act)
    # dL/da2 = 1; delta_1 = 1 * W2 = 1; dL/da1 = 1 + delta_1 W1 = 4; delta_0 = 4
    assert [d[0, 0] for d in back.deltas] == [4.0, 1.0, 1.0]
    assert back.grads[0][0, 0] == 4.0  # x * delta_0


# -- batch norm and layer norm: by hand and against torch -------------------------------------


def test_batchnorm_by_hand():
    X = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    # W_0 = I, b_0 = 0: z_0 = X; a linear phi and a 1-unit output layer
    params = [np.eye(2), np.zeros(2), np.ones((2, 1)), np.zeros(1)]
    arch = Arch(norm="batch")
    norm_params, state = init_norm([2], "batch", np.float64)
    np.testing.assert_array_equal(norm_params[0], [1, 1])
    np.testing.assert_array_equal(norm_params[1], [0, 0])
    np.testing.assert_array_equal(state[0], [0, 0])
    np.testing.assert_array_equal(state[1], [1, 1])
    act = ACTIVATIONS["linear"]
    _, cache = forward(params, X, act, arch=arch, norm_params=norm_params, state=state)
    # mean [3, 6]; biased variance [8/3, 32/3] normalises; the unbiased [4, 16] is tracked
    expected = (X - [3.0, 6.0]) / np.sqrt(np.array([8 / 3, 32 / 3]) + 1e-5)
    np.testing.assert_allclose(cache.phi_input(0), expected, rtol=1e-14)
    mean, var = cache.state
    np.testing.assert_allclose(mean, [0.3, 0.6], rtol=1e-14)        # 0.9 * 0 + 0.1 * mean
    np.testing.assert_allclose(var, [1.3, 2.5], rtol=1e-14)          # 0.9 * 1 + 0.1 * [4, 16]
    np.testing.assert_array_equal(state[0], [0, 0])  # pure: the old state is untouched
    # evaluation uses the running statistics
    _, ev = forward(params, X, act, arch=arch, norm_params=norm_params, state=cache.state,
                    train=False)
    np.testing.assert_allclose(ev.phi_input(0), (X - [0.3, 0.6]) / np.sqrt([1.3 + 1e-5,
                                                                          2.5 + 1e-5]))
    assert ev.state[0] is cache.state[0]
    with pytest.raises(ValueError, match="more than 1 example"):
        forward(params, X[:1], act, arch=arch, norm_params=norm_params, state=state)


def test_layernorm_by_hand():
    X = np.array([[1.0, 2.0, 6.0]])
    params = [np.eye(3), np.zeros(3), np.ones((3, 1)), np.zeros(1)]
    norm_params = [np.array([2.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0])]
    _, cache = forward(params, X, ACTIVATIONS["linear"], arch=Arch(norm="layer"),
                       norm_params=norm_params, train=False)
    # mean 3, biased variance (4 + 1 + 9) / 3
    xhat = (X[0] - 3.0) / math.sqrt(14 / 3 + 1e-5)
    np.testing.assert_allclose(cache.phi_input(0)[0], xhat * [2, 1, 1] + [0, 0, 1], rtol=1e-14)
    assert cache.state is None


def _torch_net(torch, params, norm_params, sizes, arch, act_name):
    nn = torch.nn
    lin, norms = [], []
    for l in range(len(sizes) - 1):
        m = nn.Linear(sizes[l], sizes[l + 1]).double()
        m.weight.data = torch.tensor(params[2 * l].T.copy())
        m.bias.data = torch.tensor(params[2 * l + 1].copy())
        lin.append(m)
    for l, w in enumerate(sizes[1:-1]):
        m = nn.BatchNorm1d(w).double() if arch.norm == "batch" else nn.LayerNorm(w).double()
        m.weight.data = torch.tensor(norm_params[2 * l].copy())
        m.bias.data = torch.tensor(norm_params[2 * l + 1].copy())
        norms.append(m)
    phi = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[act_name]

    def run(x):
        a = x
        for l, m in enumerate(lin):
            z = m(a)
            if l == len(lin) - 1:
                return z
            h = phi(norms[l](z))
            a = a + h if arch.residual and sizes[l] == sizes[l + 1] else h

    return lin, norms, run


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("act_name", ["tanh", "relu"])
def test_norms_match_torch(norm, act_name, rng):
    torch = pytest.importorskip("torch")
    arch = Arch(residual=True, norm=norm)
    sizes = [5, 7, 7, 7, 3]
    params, norm_params, _ = _net(rng, sizes, arch)
    _, state = init_norm(sizes[1:-1], norm, np.float64)
    act = ACTIVATIONS[act_name]
    X = rng.normal(size=(11, 5))
    y = rng.integers(0, 3, 11)
    out, cache = forward(params, X, act, arch=arch, norm_params=norm_params, state=state)
    loss, dout = softmax_cross_entropy(out, y)
    back = backward(params, cache, dout, act)
    lin, norms, run = _torch_net(torch, params, norm_params, sizes, arch, act_name)
    t_out = run(torch.tensor(X))
    t_loss = torch.nn.functional.cross_entropy(t_out, torch.tensor(y))
    t_loss.backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for l, m in enumerate(lin):
        np.testing.assert_allclose(back.grads[2 * l], m.weight.grad.numpy().T, rtol=1e-8,
                                   atol=1e-12)
        np.testing.assert_allclose(back.grads[2 * l + 1], m.bias.grad.numpy(), rtol=1e-8,
                                   atol=1e-12)
    for l, m in enumerate(norms):
        np.testing.assert_allclose(back.norm_grads[2 * l], m.weight.grad.numpy(), rtol=1e-8,
                                   atol=1e-12)
        np.testing.assert_allclose(back.norm_grads[2 * l + 1], m.bias.grad.numpy(), rtol=1e-8,
                                   atol=1e-12)
    if norm == "batch":
        for l, m in enumerate(norms):
            np.testing.assert_allclose(cache.state[2 * l], m.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(cache.state[2 * l + 1], m.running_var.numpy(),
                                       rtol=1e-12)
    # evaluation mode: running statistics (batch norm); layer norm is the same either way
    for m in norms:
        m.eval()
    X2 = rng.normal(size=(4, 5))
    with torch.no_grad():
        t_ev = run(torch.tensor(X2)).numpy()
    ev = predict(params, X2, act, arch=arch, norm_params=norm_params, state=cache.state)
    np.testing.assert_allclose(ev, t_ev, rtol=1e-10, atol=1e-12)


def test_float32_batchnorm_keeps_dtype(rng):
    arch = ARCHS["res+bn+dropout"]
    params, norm_params, state = _net(rng, [4, 6, 6, 3], arch, dtype=np.float32)
    X = rng.normal(size=(8, 4)).astype(np.float32)
    out, cache = forward(params, X, ACTIVATIONS["relu"], arch=arch, norm_params=norm_params,
                         state=state, rng=np.random.default_rng(0))
    back = backward(params, cache, softmax_cross_entropy(out, rng.integers(0, 3, 8))[1],
                    ACTIVATIONS["relu"])
    assert out.dtype == np.float32
    assert all(a.dtype == np.float32 for a in [*cache.state, *back.grads, *back.norm_grads])


# -- the probe set: evaluation mode, judged on the input of phi -------------------------------


def test_probe_metrics_use_eval_mode_and_normalised_input(rng):
    arch = Arch(dropout=0.5, norm="batch")
    act = ACTIVATIONS["relu"]
    params, norm_params, state = _net(rng, [3, 6, 5, 2], arch)
    params[1][:] = 50.0  # z_0 > 0 everywhere ...
    norm_params[1][:] = -100.0  # ... but beta pushes the input of phi below 0: all dead
    X = rng.normal(size=(40, 3))
    edges = histogram_edges(act, 10)
    pm, dead, hist = probe_metrics(params, X, act, edges, arch=arch, norm_params=norm_params,
                                   state=state)
    assert pm["dead_frac"][0] == 1.0 and dead[0].all()
    # layer 1, by hand in evaluation mode (running statistics, no dropout)
    z0 = X @ params[0] + params[1]
    u0 = norm_params[0] * (z0 - state[0]) / np.sqrt(state[1] + 1e-5) + norm_params[1]
    a1 = np.maximum(u0, 0)
    z1 = a1 @ params[2] + params[3]
    u1 = norm_params[2] * (z1 - state[2]) / np.sqrt(state[3] + 1e-5) + norm_params[3]
    a = np.maximum(u1, 0)
    assert pm["probe_act_mean"][1] == pytest.approx(a.mean(), rel=1e-12, abs=1e-15)
    assert pm["probe_act_std"][1] == pytest.approx(a.std(), rel=1e-12, abs=1e-15)
    np.testing.assert_array_equal(dead[1], (u1 <= 0).all(axis=0))
    assert pm["probe_saturated_frac"][1] == np.mean(u1 <= 0)
    assert hist[1].sum() == 40 * 5
    # without state batch norm cannot evaluate
    with pytest.raises(ValueError, match="running statistics"):
        probe_metrics(params, X, act, edges, arch=arch, norm_params=norm_params)


# -- clipping ---------------------------------------------------------------------------------


def _arrays(rng, scale):
    return [rng.normal(0, scale, s) for s in [(4, 3), (3,), (3, 2), (2,)]]


def test_clip_norm_fires_and_not(rng):
    g = _arrays(rng, 5.0)
    total = total_norm(g)
    out, clipped = clip_gradients(g, total, clip_norm=1.0)
    assert clipped and total > 10
    assert total_norm(out) == pytest.approx(1.0, rel=1e-6)
    coef = 1.0 / (total + 1e-6)
    for a, b in zip(out, g):
        np.testing.assert_allclose(a, b * coef, rtol=1e-15)
    out2, clipped2 = clip_gradients(g, total, clip_norm=total * 2)
    assert not clipped2 and all(a is b for a, b in zip(out2, g))
    snapshot = [a.copy() for a in g]
    clip_gradients(g, total, clip_norm=0.1, clip_value=0.01)
    assert all(np.array_equal(a, b) for a, b in zip(g, snapshot))  # inputs untouched


def test_clip_value_bounds_every_element(rng):
    g = _arrays(rng, 1.0)
    out, clipped = clip_gradients(g, total_norm(g), clip_value=0.5)
    assert clipped
    for a, b in zip(out, g):
        assert np.abs(a).max() <= 0.5
        inside = np.abs(b) <= 0.5
        np.testing.assert_array_equal(a[inside], b[inside])
        np.testing.assert_array_equal(a[~inside], 0.5 * np.sign(b[~inside]))
    out, clipped = clip_gradients(g, total_norm(g), clip_value=100.0)
    assert not clipped


def test_clipping_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for scale, c in ((5.0, 1.0), (0.01, 1.0), (2.0, 3.0)):
        g = _arrays(rng, scale)
        ts = [torch.zeros(a.shape, dtype=torch.float64, requires_grad=True) for a in g]
        for t, a in zip(ts, g):
            t.grad = torch.tensor(a)
        t_total = float(torch.nn.utils.clip_grad_norm_(ts, max_norm=c))
        total = total_norm(g)
        assert total == pytest.approx(t_total, rel=1e-12)
        out, _ = clip_gradients(g, total, clip_norm=c)
        for a, t in zip(out, ts):
            np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-12)
        for t, a in zip(ts, g):
            t.grad = torch.tensor(a)
        torch.nn.utils.clip_grad_value_(ts, clip_value=0.3)
        out, _ = clip_gradients(g, total, clip_value=0.3)
        for a, t in zip(out, ts):
            np.testing.assert_array_equal(a, t.grad.numpy())


def _first_full_batch_grads(cfg):
    """Gradients of the first (full-batch) step, recomputed from the initial parameters."""
    prep = prepare(cfg)
    params = init_params(prep.resolved["sizes"], cfg.init,
                         np.random.default_rng([cfg.seed, 0]), cfg.init_gain, np.float64)
    norm_params, _ = init_norm(cfg.hidden_widths, cfg.norm, np.float64)
    act = ACTIVATIONS[cfg.activation]
    out, cache = forward(params, prep.X, act, arch=cfg.arch(), norm_params=norm_params)
    back = backward(params, cache, softmax_cross_entropy(out, prep.y)[1], act)
    return params, norm_params, back


@pytest.mark.parametrize("norm", [None, "layer"])
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_clip_norm_in_training_sgd_update(norm, clip, tmp_path):
    lr = 0.5
    cfg = TrainConfig(dataset="moons", depth=3, width=8, optimizer="sgd", lr=lr,
                      batch_size="full", steps=1, dtype="float64", clip_norm=clip, norm=norm,
                      residual=True)
    path = tmp_path / "run.h5"
    train(cfg, path)
    params, norm_params, back = _first_full_batch_grads(cfg)
    grads = back.grads + (back.norm_grads or [])
    total = total_norm(grads)
    steps = gradscope.read_steps(path)
    layers = gradscope.read_layers(path)
    # the log records the norm before clipping, all gradients (norm params included)
    assert steps.grad_norm_total[0] == pytest.approx(total, rel=1e-10)
    fires = clip < total
    assert steps.clipped[0] == int(fires)
    coef = clip / (total + 1e-6) if fires else 1.0
    # per-layer grad_norm is the raw (pre-clip) gradient
    for l in range(4):
        assert layers.grad_norm[l] == pytest.approx(np.linalg.norm(back.grads[2 * l]), rel=1e-10)
    final = [p for pair in gradscope.read_weights(path, "final") for p in pair]
    applied = [f - p for f, p in zip(final, params)]
    if norm is not None:
        nf = read_norm(path, "final")
        final_norm = [a for pair in zip(nf["gamma"], nf["beta"]) for a in pair]
        applied += [f - p for f, p in zip(final_norm, norm_params)]
    for u, g in zip(applied, grads):
        np.testing.assert_allclose(u, -lr * coef * g, rtol=1e-9, atol=1e-15)
    if fires:
        assert total_norm([u / -lr for u in applied]) == pytest.approx(clip, rel=1e-6)
    # the update norms in the log are those of the applied (clipped) update
    for l in range(4):
        assert layers.update_norm[l] == pytest.approx(np.linalg.norm(applied[2 * l]), rel=1e-9)


def test_clip_value_in_training(tmp_path):
    lr, v = 0.5, 1e-3
    cfg = TrainConfig(dataset="moons", depth=2, width=8, optimizer="sgd", lr=lr,
                      batch_size="full", steps=1, dtype="float64", clip_value=v)
    path = tmp_path / "run.h5"
    train(cfg, path)
    params, _, back = _first_full_batch_grads(cfg)
    final = [p for pair in gradscope.read_weights(path, "final") for p in pair]
    for f, p, g in zip(final, params, back.grads):
        np.testing.assert_allclose(f - p, -lr * np.clip(g, -v, v), rtol=1e-9, atol=1e-15)
        assert np.abs(f - p).max() <= lr * v * (1 + 1e-9)
    assert gradscope.read_steps(path).clipped[0] == 1


# -- residual skips against vanishing gradients -----------------------------------------------


def test_residual_cures_vanishing_deep_sigmoid(tmp_path):
    ratios, verdicts = {}, {}
    for residual in (False, True):
        cfg = TrainConfig(dataset="digits", depth=20, width=64, activation="sigmoid",
                          init="standard", optimizer="sgd", lr=0.1, steps=6,
                          residual=residual, probe_every=5)
        path = tmp_path / f"{cfg.name()}.h5"
        train(cfg, path)
        d = diagnose(path)
        verdicts[residual] = d["vanishing"].flagged
        layers = gradscope.read_layers(path)
        s0 = layers[layers.step == 0].set_index("layer").delta_norm
        ratios[residual] = s0[0] / s0[20]
        assert ("residual" in d.config_summary) == residual
    assert verdicts == {False: True, True: False}
    assert ratios[False] < 1e-10  # ~1e-17 measured
    assert ratios[True] > 1e-2    # ~0.15 measured
    # digits has 64 features: with width 64 every hidden layer has a skip, layer 0 included
    assert gradscope.read_config(path)["residual_layers"] == list(range(20))


def test_residual_without_equal_widths_changes_nothing(tmp_path):
    base = {"dataset": "digits", "widths": [32, 16], "steps": 12, "dtype": "float64",
            "probe_every": 5}
    paths = []
    for residual in (False, True):
        cfg = TrainConfig(**base, residual=residual)
        paths.append(tmp_path / f"{residual}.h5")
        train(cfg, paths[-1])
    assert gradscope.read_config(paths[1])["residual_layers"] == []
    _assert_same_run(*paths)


def _assert_same_run(p, q):
    for reader in (gradscope.read_layers, gradscope.read_epochs, gradscope.read_steps):
        a, b = reader(p).drop(columns="time", errors="ignore"), reader(q).drop(
            columns="time", errors="ignore")
        assert a.equals(b), reader.__name__
    for (w1, b1), (w2, b2) in zip(gradscope.read_weights(p, "final"),
                                  gradscope.read_weights(q, "final")):
        assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    assert gradscope.read_histograms(p).equals(gradscope.read_histograms(q))


# -- dropout: on in training, off at evaluation ------------------------------------------------


def test_dropout_zero_is_the_default_bit_for_bit(tmp_path, rng):
    base = {"dataset": "moons", "depth": 3, "width": 16, "steps": 30, "probe_every": 10,
            "snapshot_every": 10}
    train(TrainConfig(**base), tmp_path / "a.h5")
    train(TrainConfig(**base, dropout=0.0, residual=False, norm=None), tmp_path / "b.h5")
    _assert_same_run(tmp_path / "a.h5", tmp_path / "b.h5")
    assert "clipped" in gradscope.read_steps(tmp_path / "a.h5")
    # and the forward pass itself
    params = init_params([3, 5, 5, 2], "he", rng)
    X = rng.normal(size=(6, 3)).astype(np.float32)
    act = ACTIVATIONS["relu"]
    out, _ = forward(params, X, act)
    out2, cache2 = forward(params, X, act, arch=Arch(dropout=0.0), rng=rng)
    assert np.array_equal(out, out2) and cache2.masks is None


@pytest.mark.parametrize("norm", [None, "batch"])
def test_validation_runs_in_eval_mode(norm, tmp_path):
    cfg = TrainConfig(dataset="digits", depth=2, width=32, dropout=0.5, norm=norm, epochs=1,
                      dtype="float64", batch_size=30)
    path = tmp_path / "run.h5"
    train(cfg, path)
    prep = prepare(cfg)
    params = [p for pair in gradscope.read_weights(path, "final") for p in pair]
    nd = read_norm(path, "final")
    norm_params = [a for pair in zip(nd.get("gamma", []), nd.get("beta", [])) for a in pair]
    state = [a for pair in zip(nd.get("running_mean", []), nd.get("running_var", []))
             for a in pair] or None
    act = ACTIVATIONS["relu"]
    out = predict(params, prep.X_val, act, arch=cfg.arch(), norm_params=norm_params,
                  state=state)
    val_loss = softmax_cross_entropy(out, prep.y_val)[0]
    ep = gradscope.read_epochs(path)
    assert ep.val_loss[0] == pytest.approx(val_loss, rel=1e-12)
    # a pass in training mode (dropout, batch statistics) gives another loss
    out_tr, _ = forward(params, prep.X_val, act, arch=cfg.arch(), norm_params=norm_params,
                        state=state, rng=np.random.default_rng(0))
    assert abs(softmax_cross_entropy(out_tr, prep.y_val)[0] - val_loss) > 1e-3
    if norm == "batch":
        assert set(nd) == {"gamma", "beta", "running_mean", "running_var"}
        assert not np.allclose(nd["running_var"][0], 1.0)  # the statistics were tracked
    else:
        assert nd == {}


def test_dropout_masks_are_seeded(tmp_path):
    base = {"dataset": "moons", "depth": 2, "width": 16, "steps": 8, "dropout": 0.3}
    for name in ("a", "b"):
        train(TrainConfig(**base), tmp_path / f"{name}.h5")
    train(TrainConfig(**base, seed=1), tmp_path / "c.h5")
    la, lb, lc = (gradscope.read_steps(tmp_path / f"{n}.h5").loss for n in "abc")
    assert la.equals(lb) and not la.equals(lc)


# -- the log: norm parameters, running statistics, the clipped column -------------------------


def test_log_keeps_norm_arrays_and_snapshots_recompute_probes(tmp_path):
    cfg = TrainConfig(dataset="moons", depth=2, width=8, norm="batch", residual=True,
                      steps=11, log_every=1, probe_every=5, snapshot_every=5, dtype="float64",
                      hist_bins=10)
    path = tmp_path / "run.h5"
    train(cfg, path)
    init = read_norm(path, 0)
    np.testing.assert_array_equal(init["gamma"][1], np.ones(8))
    np.testing.assert_array_equal(init["running_var"][0], np.ones(8))
    final = read_norm(path, "final")
    assert len(final["beta"]) == 2 and not np.array_equal(final["beta"][0], init["beta"][0])
    prep = prepare(cfg)
    layers = gradscope.read_layers(path)
    act = ACTIVATIONS["relu"]
    for k in (5, 10):
        params = [p for pair in gradscope.read_weights(path, k) for p in pair]
        nd = read_norm(path, k)
        norm_params = [nd["gamma"][0], nd["beta"][0], nd["gamma"][1], nd["beta"][1]]
        state = [nd["running_mean"][0], nd["running_var"][0], nd["running_mean"][1],
                 nd["running_var"][1]]
        pm, _, _ = probe_metrics(params, prep.X, act, histogram_edges(act, 10),
                                 arch=cfg.arch(), norm_params=norm_params, state=state)
        for l in range(2):
            row = layers[(layers.step == k) & (layers.layer == l)].iloc[0]
            assert row.probe_act_mean == pytest.approx(pm["probe_act_mean"][l], rel=1e-12)
            assert row.dead_frac == pm["dead_frac"][l]
    with h5py.File(path, "r") as f:
        assert {"gamma_0", "beta_1", "running_mean_0", "running_var_1", "W_0"} <= set(
            f["params/final"])
    assert read_norm(path, "final").keys() == init.keys()


def test_logs_without_clipped_column_read_as_zero(tmp_path):
    # a version-1 log (tests/data/log_v1.h5, written by that format's writer) without the column
    path = tmp_path / "run.h5"
    shutil.copyfile(Path(__file__).parent / "data" / "log_v1.h5", path)
    with h5py.File(path, "a") as f:
        del f["steps/clipped"]
    steps = gradscope.read_steps(path)
    assert list(steps.clipped) == [0] * 40 and steps.clipped.dtype == np.int64


# -- configuration, names, summary, sweep and command line ------------------------------------


def test_config_name_summary_and_resolved(tmp_path):
    cfg = TrainConfig(dataset="moons", depth=3, width=8, residual=True, norm="layer",
                      dropout=0.2, clip_norm=1.0, clip_value=0.5)
    assert cfg.name() == ("moons-d3w8-relu-xavier-adam-lr0.001-bs32-res-ln-do0.2-clip1-clipv0.5"
                          "-s0")
    assert TrainConfig(dataset="moons", norm="batch").name().endswith("-bs32-bn-s0")
    res = prepare(cfg).resolved
    assert (res["dropout"], res["residual"], res["norm"], res["clip_norm"],
            res["clip_value"]) == (0.2, True, "layer", 1.0, 0.5)
    assert res["residual_layers"] == [1, 2] and res["norm_eps"] == 1e-5
    assert config_summary(res) == ("moons d3w8 relu xavier adam lr=0.001 bs=32 residual "
                                   "layernorm dropout=0.2 clip_norm=1 clip_value=0.5")
    plain = prepare(TrainConfig(dataset="moons")).resolved
    assert "residual_layers" not in plain and "norm_eps" not in plain
    assert config_summary(plain) == "moons d3w64 relu xavier adam lr=0.001 bs=32"


@pytest.mark.parametrize("kw, words", [
    ({"dropout": 1.0}, "--dropout"), ({"dropout": -0.1}, "--dropout"),
    ({"dropout": float("nan")}, "--dropout"), ({"norm": "group"}, "unknown norm"),
    ({"clip_norm": -1.0}, "--clip-norm"), ({"clip_norm": float("inf")}, "--clip-norm"),
    ({"clip_norm": 0.0}, "--clip-norm"), ({"clip_value": float("nan")}, "--clip-value"),
    ({"residual": "yes"}, "--residual"),
])
def test_bad_remedy_options_refused(kw, words):
    with pytest.raises(ConfigError, match=words) as e:
        TrainConfig(dataset="moons", **kw).check()
    assert "\n" not in str(e.value)


def test_batchnorm_needs_two_examples_per_batch():
    with pytest.raises(ConfigError, match="at least 2 examples"):
        prepare(TrainConfig(dataset="moons", norm="batch", batch_size=1))
    # moons: 800 training rows; 800 = 47 * 17 + 1
    with pytest.raises(ConfigError, match="last batch"):
        prepare(TrainConfig(dataset="moons", norm="batch", batch_size=17))
    prepare(TrainConfig(dataset="moons", norm="layer", batch_size=1))  # layer norm is fine


def test_sweep_offers_the_remedies():
    kinds = option_kinds()
    assert {"dropout", "residual", "norm", "clip_norm", "clip_value"} <= set(kinds)
    configs = expand_grid({"dataset": "moons", "steps": 3,
                           "residual": parse_list("false,true", "residual"),
                           "norm": parse_list("none,batch,layer", "norm")})
    assert len(configs) == 6
    names = run_names(configs)
    assert len(set(names)) == 6 and sum("-res" in n for n in names) == 3
    for c in configs:
        c.check()


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_options_in_config_and_name(runner, tmp_path):
    result = runner.invoke(main, ["train", "--dataset", "moons", "--depth", "3", "--width", "8",
                                  "--steps", "3", "--residual", "--norm", "batch",
                                  "--dropout", "0.2", "--clip-norm", "1", "--clip-value",
                                  "0.5"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "runs" / "moons-d3w8-relu-xavier-adam-lr0.001-bs32-res-bn-do0.2-clip1-clipv0.5-s0.h5"
    assert path.is_file()
    cfg = gradscope.read_config(path)
    assert (cfg["residual"], cfg["norm"], cfg["dropout"], cfg["clip_norm"],
            cfg["clip_value"]) == (True, "batch", 0.2, 1.0, 0.5)
    assert cfg["residual_layers"] == [1, 2] and cfg["norm_momentum"] == 0.1
    result = runner.invoke(main, ["train", "--dataset", "moons", "--depth", "1", "--width", "4",
                                  "--steps", "1", "--norm", "none"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "moons-d1w4-relu-xavier-adam-lr0.001-bs32-s0.h5").is_file()


def test_cli_sweep_help_lists_the_remedies(runner):
    result = runner.invoke(main, ["sweep", "--help"])
    assert result.exit_code == 0
    for opt in ("--dropout", "--residual", "--norm", "--clip-norm", "--clip-value"):
        assert opt in result.output


@pytest.mark.parametrize("args, name", [
    (["--dropout", "1"], "--dropout"), (["--dropout", "-0.5"], "--dropout"),
    (["--dropout", "nan"], "--dropout"), (["--norm", "group"], "norm"),
    (["--clip-norm", "-1"], "--clip-norm"), (["--clip-norm", "inf"], "--clip-norm"),
    (["--clip-value", "nan"], "--clip-value"), (["--clip-value", "0"], "--clip-value"),
    (["--norm", "batch", "--batch-size", "1"], "--norm batch"),
])
def test_cli_bad_values_one_line_no_file(runner, tmp_path, args, name):
    result = runner.invoke(main, ["train", "--dataset", "moons", "--steps", "2", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradscope: error: ") and name in lines[0]
    assert not any(tmp_path.rglob("*.h5")) and not (tmp_path / "runs").exists()

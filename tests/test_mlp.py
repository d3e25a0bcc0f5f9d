"""Gradients of the MLP and losses against central finite differences (float64)."""

import warnings

import numpy as np
import pytest

from gradscope.engine.activations import ACTIVATIONS
from gradscope.engine.losses import mean_squared_error, softmax_cross_entropy
from gradscope.engine.mlp import backward, forward, init_params, predict
from gradscope.record.probes import step_metrics


def _loss(params, X, y, act, loss_fn):
    out, _ = forward(params, X, act)
    return loss_fn(out, y)[0]


def _signs(params, X, act):
    return [np.sign(z) for z in forward(params, X, act)[1].pre]


def _fd_check(params, X, y, act, loss_fn, rng, n_entries=6, h=1e-6):
    out, cache = forward(params, X, act)
    _, dout = loss_fn(out, y)
    back = backward(params, cache, dout, act)
    checked = 0
    for i, p in enumerate(params):
        for _ in range(n_entries):
            idx = tuple(rng.integers(0, s) for s in p.shape)
            old = p[idx]
            p[idx] = old + h
            lp = _loss(params, X, y, act, loss_fn)
            sp = _signs(params, X, act)
            p[idx] = old - h
            lm = _loss(params, X, y, act, loss_fn)
            sm = _signs(params, X, act)
            p[idx] = old
            if any((a != b).any() for a, b in zip(sp, sm)):
                continue  # the step crosses a kink (z = 0) of relu-like functions
            checked += 1
            fd = (lp - lm) / (2 * h)
            an = back.grads[i][idx]
            assert an == pytest.approx(fd, rel=1e-5, abs=1e-9), (i, idx)
    assert checked >= 0.8 * n_entries * len(params)
    return back


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_gradients_cross_entropy_deep(name, rng):
    act = ACTIVATIONS[name]
    params = init_params([5, 7, 6, 6, 7, 6, 4], "xavier", rng, gain=1.3, dtype=np.float64)
    for b in params[1::2]:
        b[:] = rng.normal(0, 0.3, b.shape)  # biases off zero to exercise every branch
    X = rng.normal(size=(9, 5))
    y = rng.integers(0, 4, 9)
    _fd_check(params, X, y, act, softmax_cross_entropy, rng)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_gradients_mse_deep(name, rng):
    act = ACTIVATIONS[name]
    params = init_params([3, 6, 6, 6, 6, 2], "he", rng, dtype=np.float64)
    for b in params[1::2]:
        b[:] = rng.normal(0, 0.3, b.shape)  # zero biases put whole dead rows exactly at z = 0
    X = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 2))
    _fd_check(params, X, y, act, mean_squared_error, rng)


def test_deltas_are_gradients_wrt_preactivations(rng):
    """delta_l = dL/dz_l: perturb z_l through its bias on one example and compare."""
    act = ACTIVATIONS["tanh"]
    params = init_params([4, 5, 5, 3], "xavier", rng, dtype=np.float64)
    X = rng.normal(size=(1, 4))  # one example: dL/db_l == delta_l[0]
    y = np.array([2])
    out, cache = forward(params, X, act)
    back = backward(params, cache, softmax_cross_entropy(out, y)[1], act)
    for l, d in enumerate(back.deltas):
        np.testing.assert_allclose(d[0], back.grads[2 * l + 1], rtol=1e-12)
        assert d.shape == (1, params[2 * l].shape[1])


def test_activation_derivatives_by_finite_differences(rng):
    z = rng.normal(0, 2, 200)
    z = z[np.abs(z) > 1e-3]  # keep away from the kinks of relu-like functions
    for act in ACTIVATIONS.values():
        a = act.f(z)
        fd = (act.f(z + 1e-6) - act.f(z - 1e-6)) / 2e-6
        np.testing.assert_allclose(act.df(z, a), fd, rtol=1e-5, atol=1e-8, err_msg=act.name)
        grid = np.linspace(-20, 20, 40001)
        assert np.max(act.df(grid, act.f(grid))) == pytest.approx(act.df_max, rel=1e-6)


def test_losses_by_hand():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([2, 0])
    loss, grad = softmax_cross_entropy(logits.copy(), y)
    p0 = np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()
    expected = (-np.log(p0[2]) + np.log(3)) / 2
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad[0], (p0 - [0, 0, 1]) / 2)
    np.testing.assert_allclose(grad[1], (np.full(3, 1 / 3) - [1, 0, 0]) / 2)
    out = np.array([[1.0, 2.0], [3.0, 5.0]])
    t = np.array([[0.0, 2.0], [1.0, 1.0]])
    loss, grad = mean_squared_error(out.copy(), t)
    assert loss == pytest.approx((1 + 0 + 4 + 16) / 4)
    np.testing.assert_allclose(grad, 2 * (out - t) / 4)


def test_shapes_and_predict(rng):
    params = init_params([10, 32, 16, 3], "he", rng)
    assert [p.shape for p in params] == [(10, 32), (32,), (32, 16), (16,), (16, 3), (3,)]
    assert all(p.dtype == np.float32 for p in params)
    X = rng.normal(size=(7, 10)).astype(np.float32)
    out, _ = forward(params, X, ACTIVATIONS["relu"])
    assert out.dtype == np.float32 and out.shape == (7, 3)
    np.testing.assert_allclose(predict(params, X, ACTIVATIONS["relu"]), out, rtol=1e-6)


def test_forward_matches_torch(rng):
    torch = pytest.importorskip("torch")
    act = ACTIVATIONS["tanh"]
    params = init_params([6, 8, 8, 3], "xavier", rng, dtype=np.float64)
    X = rng.normal(size=(5, 6))
    y = rng.integers(0, 3, 5)
    out, cache = forward(params, X, act)
    loss, dout = softmax_cross_entropy(out, y)
    back = backward(params, cache, dout, act)
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    a = torch.tensor(X)
    for l in range(3):
        a = a @ tp[2 * l] + tp[2 * l + 1]
        if l < 2:
            a = torch.tanh(a)
    tl = torch.nn.functional.cross_entropy(a, torch.tensor(y))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    for g, t in zip(back.grads, tp):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_column_sums_against_float64_and_relu_derivative_values():
    from gradscope.engine.activations import get_activation
    from gradscope.engine.stats import column_sums

    rng = np.random.default_rng(3)
    a = rng.normal(size=(256, 40)).astype(np.float32)
    s = column_sums(a)
    assert s.dtype == np.float32 and s.shape == (40,)
    exact = a.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(s, exact, rtol=0, atol=256 * 2e-7 * np.abs(a).max())
    assert column_sums(np.ones((1, 3))).tolist() == [1.0, 1.0, 1.0]
    z = np.array([[-1.0, 0.0, 2.5, np.nan]], dtype=np.float32)
    d = get_activation("relu").df(z, np.maximum(z, 0))
    assert d.dtype == np.float32 and d.tolist() == [[0.0, 0.0, 1.0, 0.0]]


@pytest.mark.parametrize("errors", ["warn", "raise", "ignore"])
def test_measuring_a_diverging_pass_adds_no_warning(errors):
    # an activation near float32's largest value: the pass itself sets no floating-point
    # flag, but the square in its spread overflows
    act = ACTIVATIONS["relu"]
    params = [np.ones((1, 1), np.float32), np.zeros(1, np.float32),
              np.full((1, 1), 1e-30, np.float32), np.zeros(1, np.float32)]
    X = np.array([[3e38]], np.float32)
    for measure in (False, True):
        with warnings.catch_warnings(), np.errstate(all=errors):
            warnings.simplefilter("error")
            out, cache = forward(params, X, act, measure=measure)
            back = backward(params, cache, np.ones_like(out), act, measure=measure)
            # the same measurements taken afterwards, from the arrays
            m = step_metrics(params, cache, back, None, act)
            assert np.geterr()["over"] == errors  # the caller's state is left as it was
            assert m["act_mean"][0] == pytest.approx(3e38, rel=1e-7) and m["act_std"][0] == 0
    mean, std = cache.act_stats[0]
    assert mean == pytest.approx(3e38, rel=1e-7) and std == 0.0
    assert back.delta_norms == [pytest.approx(1e-30, rel=1e-6), 1.0] and back.saturated == [0.0]

"""Per-layer statistics (probes.py) against hand-worked numbers and an independent numpy
re-implementation of the forward and backward pass (no gradscope code in the reference)."""

import math

import numpy as np
import pytest

import gradscope
from gradscope.engine.activations import ACTIVATIONS
from gradscope.engine.mlp import backward, forward, init_params
from gradscope.engine.stats import SATURATION, mean_std, norm, total_norm
from gradscope.record.probes import bin_counts, histogram_edges, probe_metrics, step_metrics
from gradscope.training.loop import TrainConfig, prepare, train

# -- an independent reference: float64 numpy, written from the definitions in docs ---------


def ref_phi(name, z):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    raise KeyError(name)


def ref_dphi(name, z):
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "tanh":
        return 1.0 / np.cosh(z) ** 2
    if name == "sigmoid":
        e = np.exp(-z)
        return e / (1.0 + e) ** 2
    raise KeyError(name)


def ref_pass(params, X, y, name):
    """Forward + backward of the mean softmax cross-entropy, from the definitions."""
    Ws = [np.asarray(p, np.float64) for p in params[0::2]]
    bs = [np.asarray(p, np.float64) for p in params[1::2]]
    L = len(Ws)
    a = [np.asarray(X, np.float64)]
    zs = []
    for l in range(L):
        z = a[l] @ Ws[l] + bs[l]
        zs.append(z)
        if l < L - 1:
            a.append(ref_phi(name, z))
    logits = zs[-1]
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1, keepdims=True)) + m
    loss = float(np.mean(lse[:, 0] - logits[np.arange(n), y]))
    onehot = np.zeros_like(logits)
    onehot[np.arange(n), y] = 1.0
    delta = (np.exp(logits - lse) - onehot) / n
    deltas, gW, gb = [None] * L, [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
        deltas[l] = delta
        gW[l] = a[l].T @ delta
        gb[l] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ Ws[l].T) * ref_dphi(name, zs[l - 1])
    acc = float(np.mean(logits.argmax(axis=1) == y))
    return {"loss": loss, "acc": acc, "zs": zs, "acts": a[1:], "deltas": deltas, "gW": gW,
            "gb": gb}


def fro(x):
    return float(np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)))


def _gradscope_step(params, X, y, act, measure=False):
    from gradscope.engine.losses import softmax_cross_entropy

    out, cache = forward(params, X, act, measure=measure)
    _, dout = softmax_cross_entropy(out, y)
    return cache, backward(params, cache, dout, act, measure=measure)


# -- step_metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("measure", [False, True])  # computed afterwards, or by the passes
@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_step_metrics_match_reference(name, measure, rng):
    act = ACTIVATIONS[name]
    params = init_params([3, 6, 5, 4], "xavier", rng, gain=2.5, dtype=np.float64)
    for b in params[1::2]:
        b[:] = rng.normal(0, 0.5, b.shape)
    X = rng.normal(0, 2.0, (9, 3))
    y = rng.integers(0, 4, 9)
    cache, back = _gradscope_step(params, X, y, act, measure)
    assert (cache.act_stats is not None) == measure
    assert (back.delta_norms is not None) == (back.saturated is not None) == measure
    lr = 0.3
    updates = [-lr * g for g in back.grads]
    m = step_metrics(params, cache, back, updates, act)
    ref = ref_pass(params, X, y, name)
    L = 3
    assert set(m) == {"grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
                      "update_ratio", "act_mean", "act_std", "saturated_frac"}
    for l in range(L):
        W = params[2 * l]
        assert m["grad_norm"][l] == pytest.approx(fro(ref["gW"][l]), rel=1e-12)
        assert m["bias_grad_norm"][l] == pytest.approx(fro(ref["gb"][l]), rel=1e-12)
        # delta carries the 1/batch of the mean loss: (batch x fan_out)
        assert ref["deltas"][l].shape == (9, W.shape[1])
        assert m["delta_norm"][l] == pytest.approx(fro(ref["deltas"][l]), rel=1e-12)
        assert m["weight_norm"][l] == pytest.approx(fro(W), rel=1e-12)
        assert m["update_norm"][l] == pytest.approx(lr * fro(ref["gW"][l]), rel=1e-12)
        assert m["update_ratio"][l] == pytest.approx(lr * fro(ref["gW"][l]) / fro(W), rel=1e-12)
    for l in range(L - 1):
        a = ref["acts"][l]
        assert m["act_mean"][l] == pytest.approx(a.mean(), rel=1e-10, abs=1e-14)
        assert m["act_std"][l] == pytest.approx(a.std(), rel=1e-8)
        d = ref_dphi(name, ref["zs"][l])
        max_d = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25}[name]
        expected = np.mean(d < SATURATION * max_d)
        assert m["saturated_frac"][l] == expected
    # the test must exercise both sides of the threshold
    assert any(0 < m["saturated_frac"][l] < 1 for l in range(L - 1))
    # the output layer is linear: no activation statistics
    for k in ("act_mean", "act_std", "saturated_frac"):
        assert math.isnan(m[k][L - 1])


@pytest.mark.parametrize("name, sat, mean, std", [
    # z = [[0, 2, 5, -6], [0, -2, -5, 6]]
    # sigmoid' = .25, .105, .0066, .0025 : < 0.0125 at |z| = 5, 6 -> 4 of 8
    ("sigmoid", 4 / 8, None, None),
    # tanh' = 1, .0707, 1.8e-4, 2.5e-5 : < 0.05 at |z| = 5, 6 -> 4 of 8
    ("tanh", 4 / 8, 0.0, None),
    # relu' = 0 where z <= 0: (0, -6) and (0, -2, -5) -> 5 of 8;
    # a = [[0, 2, 5, 0], [0, 0, 0, 6]]: mean 13/8, var 65/8 - (13/8)^2 = 351/64
    ("relu", 5 / 8, 13 / 8, math.sqrt(351) / 8),
])
def test_step_metrics_hand_worked(name, sat, mean, std):
    act = ACTIVATIONS[name]
    W0 = np.array([[0.0, 2.0, 5.0, -6.0]])
    W1 = np.full((4, 2), 0.1)
    params = [W0, np.zeros(4), W1, np.zeros(2)]
    X = np.array([[1.0], [-1.0]])
    y = np.array([0, 1])
    cache, back = _gradscope_step(params, X, y, act)
    m = step_metrics(params, cache, back, None, act)
    assert m["saturated_frac"][0] == sat
    if mean is not None:
        assert m["act_mean"][0] == pytest.approx(mean, abs=1e-15)
    if std is not None:
        assert m["act_std"][0] == pytest.approx(std, rel=1e-12)
    assert m["weight_norm"][0] == pytest.approx(math.sqrt(65.0), rel=1e-15)
    assert m["weight_norm"][1] == pytest.approx(math.sqrt(0.08), rel=1e-15)
    # no update applied (a diverged step): update columns are NaN
    assert np.isnan(m["update_norm"]).all() and np.isnan(m["update_ratio"]).all()


def test_step_metrics_float32_inputs_are_reported_in_float64(rng):
    act = ACTIVATIONS["tanh"]
    params = init_params([4, 5, 3], "he", rng, dtype=np.float32)
    X = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    cache, back = _gradscope_step(params, X, y, act)
    m = step_metrics(params, cache, back, None, act)
    ref = ref_pass(params, X, y, "tanh")
    assert all(v.dtype == np.float64 for v in m.values())
    for l in range(2):
        assert m["grad_norm"][l] == pytest.approx(fro(ref["gW"][l]), rel=1e-5)


def test_act_std_of_saturated_float32_activations(rng):
    # sigmoid units near 0.98 with a spread of ~4e-4: the regime a saturation diagnosis is for
    act = ACTIVATIONS["sigmoid"]
    params = [rng.normal(0, 0.01, (4, 64)).astype(np.float32), np.full(64, 4.0, np.float32),
              rng.normal(size=(64, 3)).astype(np.float32), np.zeros(3, np.float32)]
    X = rng.normal(size=(256, 4)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    cache, back = _gradscope_step(params, X, y, act)
    m = step_metrics(params, cache, back, None, act)
    a = ref_phi("sigmoid", X.astype(np.float64) @ params[0] + params[1])
    assert m["act_mean"][0] == pytest.approx(a.mean(), rel=1e-5)
    assert m["act_std"][0] == pytest.approx(a.std(), rel=1e-2)


# -- probe_metrics: dead units, statistics and histograms ------------------------------------


def _net_with_dead_units(rng, name="relu"):
    """A [4, 6, 5, 3] net; forced dead: layer 0 units 1, 4 (bias -1e3) and 5 (W column 0,
    bias 0: pre-activation exactly 0 on every example); layer 1 units 0, 2, 3 (bias -1e3)."""
    params = init_params([4, 6, 5, 3], "he", rng, dtype=np.float64)
    params[1][:] = rng.uniform(0.1, 0.5, 6)
    params[1][[1, 4]] = -1e3
    params[0][:, 5] = 0.0
    params[1][5] = 0.0
    params[3][:] = rng.uniform(0.1, 0.5, 5)
    params[3][[0, 2, 3]] = -1e3
    X = rng.normal(size=(200, 4))
    return params, X


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu"])
def test_dead_units_forced_by_negative_bias(name, rng):
    act = ACTIVATIONS[name]
    params, X = _net_with_dead_units(rng, name)
    edges = histogram_edges(act, 20)
    pm, dead, _hist = probe_metrics(params, X, act, edges)
    assert [d.dtype for d in dead] == [np.uint8, np.uint8]
    np.testing.assert_array_equal(dead[0], [0, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(dead[1], [1, 0, 1, 1, 0])
    assert pm["dead_frac"][0] == 3 / 6
    assert pm["dead_frac"][1] == 3 / 5
    assert math.isnan(pm["dead_frac"][2])
    # independent check that exactly these units are dead (z <= 0 on every example)
    z0 = X @ params[0] + params[1]
    np.testing.assert_array_equal((z0 <= 0).all(axis=0), dead[0].astype(bool))


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_dead_frac_only_for_relu_family(name, rng):
    act = ACTIVATIONS[name]
    params, X = _net_with_dead_units(rng)
    pm, dead, _ = probe_metrics(params, X, act, histogram_edges(act, 10))
    assert np.isnan(pm["dead_frac"]).all()
    # the per-unit flags are still the definition (pre-activation <= 0 everywhere)
    np.testing.assert_array_equal(dead[0], [0, 1, 0, 0, 1, 1])


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_probe_statistics_and_histograms(name, rng):
    act = ACTIVATIONS[name]
    params = init_params([3, 7, 6, 2], "xavier", rng, gain=3.0, dtype=np.float64)
    for b in params[1::2]:
        b[:] = rng.normal(0, 1.0, b.shape)
    X = rng.normal(0, 2.0, (150, 3))
    bins = 13
    edges = histogram_edges(act, bins)
    lo, hi = {"relu": (0.0, 5.0), "tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}[name]
    np.testing.assert_allclose(edges, np.linspace(lo, hi, bins + 1))
    pm, dead, hist = probe_metrics(params, X, act, edges)
    ref = ref_pass(params, X, np.zeros(150, dtype=int), name)
    max_d = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25}[name]
    for l, width in enumerate([7, 6]):
        a, z = ref["acts"][l], ref["zs"][l]
        assert pm["probe_act_mean"][l] == pytest.approx(a.mean(), rel=1e-10)
        assert pm["probe_act_std"][l] == pytest.approx(a.std(), rel=1e-10)
        assert pm["probe_saturated_frac"][l] == np.mean(ref_dphi(name, z) < SATURATION * max_d)
        np.testing.assert_array_equal(dead[l], (z <= 0).all(axis=0))
        assert hist[l].shape == (bins,)
        # every activation counted once: probe examples x units
        assert hist[l].sum() == 150 * width
        # out-of-range values fall in the end bins
        expected, _ = np.histogram(np.clip(a, lo, hi), bins=edges)
        np.testing.assert_array_equal(hist[l], expected)
    for k in pm:
        assert math.isnan(pm[k][2])


def test_histogram_end_bins_take_out_of_range_values():
    act = ACTIVATIONS["linear"]  # output range (-5, 5)
    params = [np.eye(3), np.zeros(3), np.ones((3, 1)), np.zeros(1)]
    X = np.array([[-100.0, -5.0, -4.99], [0.0, 4.99, 5.0], [7.0, 1e9, 2.5]])
    edges = histogram_edges(act, 10)  # bins of width 1 from -5 to 5
    _, _, hist = probe_metrics(params, X, act, edges)
    # -100, -5, -4.99 -> bin 0; 0 -> bin 5; 2.5 -> bin 7; 4.99, 5, 7, 1e9 -> bin 9
    np.testing.assert_array_equal(hist[0], [3, 0, 0, 0, 0, 1, 0, 1, 0, 4])


def test_bin_counts_nan_and_infinities_go_to_the_end_bins():
    a = np.array([np.nan, -np.inf, np.inf, 0.5, 9.99, 10.0, -0.01], dtype=np.float32)
    # bins of width 1 over [0, 10): NaN, -inf, -0.01 -> 0; 0.5 -> 0; 9.99, 10, inf -> 9
    np.testing.assert_array_equal(bin_counts(a, 0.0, 10.0, 10), [4, 0, 0, 0, 0, 0, 0, 0, 0, 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, bins", [((300, 40), 28), ((7, 13), 28), ((1,), 5), ((5, 3, 3), 1),
                                         ((301, 7), 256), ((64, 9), 257)])
def test_bin_counts_match_numpy_histogram(rng, dtype, shape, bins):
    # even and odd sizes (bin numbers counted in pairs), one bin, the most bins counted in
    # pairs (256) and the first beyond (257)
    a = rng.uniform(-1.5, 6.5, size=shape).astype(dtype)
    expected, _ = np.histogram(np.clip(a, -1.0, 6.0), bins=bins, range=(-1.0, 6.0))
    got = bin_counts(a, -1.0, 6.0, bins)
    assert got.shape == (bins,)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), (0.5, 0.2), (-3.0, 2.0), (1e3, 1e3)])
def test_mean_std_float32_against_float64(rng, loc, scale):
    a = rng.normal(loc, scale, size=(256, 512)).astype(np.float32)
    ref = a.astype(np.float64)
    mean, std = mean_std(a)
    assert mean == pytest.approx(ref.mean(), rel=1e-6, abs=1e-6 * scale)
    assert std == pytest.approx(ref.std(), rel=1e-5)


def test_mean_std_of_a_saturated_float32_layer(rng):
    # a mean that dwarfs the spread: E[a^2] - mean^2 would cancel to noise in float32
    a = (1.0 - 1e-4 * rng.random((256, 512))).astype(np.float32)
    ref = a.astype(np.float64)
    mean, std = mean_std(a)
    assert mean == pytest.approx(ref.mean(), rel=1e-6)
    assert std == pytest.approx(ref.std(), rel=1e-3)
    assert all(math.isnan(v) for v in mean_std(np.zeros((0, 3), np.float32)))


# -- norms -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_norm_exact_and_overflow_fallback():
    assert norm(np.array([[3.0, 4.0], [0.0, 12.0]])) == 13.0
    big = np.full(4, 1e20, dtype=np.float32)  # the float32 dot product overflows
    assert norm(big) == pytest.approx(2e20, rel=1e-6)
    assert total_norm([np.array([3.0]), np.array([[4.0]]), np.zeros(2)]) == 5.0


def test_total_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    arrays = [rng.normal(size=s) for s in [(3, 4), (4,), (4, 2), (2,)]]
    ts = [torch.tensor(a) for a in arrays]
    for t in ts:
        t.grad = t.clone()
    expected = float(torch.nn.utils.clip_grad_norm_(ts, max_norm=1e9))
    assert total_norm(arrays) == pytest.approx(expected, rel=1e-12)


# -- probes in a real run, recomputed from the stored snapshots ------------------------------


def test_logged_probes_recomputed_from_snapshots(tmp_path):
    cfg = TrainConfig(dataset="moons", depth=2, width=8, activation="relu", init="he",
                      optimizer="sgd", lr=0.5, batch_size=50, steps=11, log_every=1,
                      probe_every=5, snapshot_every=5, hist_bins=10, dtype="float64")
    prep = prepare(cfg)
    X = prep.X  # the probe set is the whole training set (800 < 1024) in its order
    assert prep.resolved["probe_size"] == X.shape[0] == 800
    out = tmp_path / "run.h5"
    train(cfg, out)
    layers = gradscope.read_layers(out)
    probe_steps, dead = gradscope.read_dead_units(out)
    hist = gradscope.read_histograms(out)
    np.testing.assert_array_equal(probe_steps, [0, 5, 10])
    edges = np.linspace(0.0, 5.0, 11)
    for i, k in enumerate(probe_steps):
        wb = gradscope.read_weights(out, step=int(k))
        params = [p for pair in wb for p in pair]
        ref = ref_pass(params, X, prep.y, "relu")
        for l in range(2):
            row = layers[(layers.step == k) & (layers.layer == l)].iloc[0]
            a, z = ref["acts"][l], ref["zs"][l]
            assert row.probe_act_mean == pytest.approx(a.mean(), rel=1e-10)
            assert row.probe_act_std == pytest.approx(a.std(), rel=1e-10)
            assert row.probe_saturated_frac == np.mean(z <= 0)
            flags = (z <= 0).all(axis=0)
            np.testing.assert_array_equal(dead[l][i], flags)
            assert row.dead_frac == flags.mean()
            h = hist[(hist.step == k) & (hist.layer == l)].sort_values("bin_left")
            assert h["count"].sum() == 800 * 8
            np.testing.assert_array_equal(h["count"], np.histogram(np.clip(a, 0, 5), edges)[0])
            np.testing.assert_allclose(h["density"], h["count"] / (800 * 8) / 0.5)
        row = layers[(layers.step == k) & (layers.layer == 2)].iloc[0]
        assert math.isnan(row.dead_frac) and math.isnan(row.probe_act_mean)
    # probe columns are NaN at the other logged steps
    other = layers[~layers.step.isin(probe_steps)]
    assert len(other) == 8 * 3 and other["probe_act_mean"].isna().all()


@pytest.mark.parametrize("shape", [(131072,), (64, 32, 64), (1, 4096), (4096, 1)])
def test_mean_std_of_other_shapes_against_float64(rng, shape):
    a = rng.normal(0.3, 2.0, size=shape).astype(np.float32)
    ref = a.astype(np.float64)
    mean, std = mean_std(a)
    assert mean == pytest.approx(ref.mean(), rel=1e-6, abs=2e-6)
    assert std == pytest.approx(ref.std(), rel=1e-5)

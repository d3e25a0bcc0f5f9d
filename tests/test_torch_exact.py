"""gradscope.torch against the numpy engine: the same MLP, the same initial weights, the same
full-batch steps in float64 give the same log, number for number, and the same verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import gradscope
import gradscope.torch as gst
from gradscope.training.loop import TrainConfig, prepare, train

STEPS = 4
ACTS = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP's second thread only waits
    yield
    torch.set_num_threads(n)


def _torch_run(engine_log, config, out, optimizer, background=None):
    prep = prepare(config)
    weights = gradscope.read_weights(engine_log, step=0)
    layers = []
    for i, (W, b) in enumerate(weights):
        lin = torch.nn.Linear(W.shape[0], W.shape[1], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(ACTS[config.activation]())
    model = torch.nn.Sequential(*layers)
    X, y = torch.from_numpy(prep.X), torch.from_numpy(prep.y).long()
    n = X.shape[0]
    # the engine's probe set: min(n, 1024) training rows drawn once, in order
    rng = np.random.default_rng([config.seed, 3])
    X_probe = torch.from_numpy(prep.X[np.sort(rng.choice(n, min(n, 1024), replace=False))])
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    with gst.watch(model, out, optimizer=opt, probe=X_probe, probe_every=100,
                   background=background) as run:
        for _ in range(config.steps):
            opt.zero_grad()
            logits = model(X)
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            run.log(loss=loss, accuracy=(logits.argmax(1) == y).double().mean())
    return model


def _close(a, b, rtol=1e-6, atol=1e-12):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("activation,init,optimizer,lr", [
    ("sigmoid", "xavier", "momentum", 0.5),
    ("tanh", "xavier", "adam", 0.01),
    ("relu", "he", "adam", 0.01),
    ("relu", "he", "momentum", 0.1),
])
@pytest.mark.parametrize("background", [True, False], ids=["background", "one-thread"])
def test_torch_log_equals_engine_log(tmp_path, activation, init, optimizer, lr, background):
    cfg = TrainConfig(dataset="digits", depth=4, width=24, activation=activation, init=init,
                      optimizer=optimizer, lr=lr, batch_size="full", steps=STEPS,
                      dtype="float64", seed=3)
    eng, tor = tmp_path / "engine.h5", tmp_path / "torch.h5"
    train(cfg, eng)
    _torch_run(eng, cfg, tor, optimizer, background)

    le, lt = gradscope.read_layers(eng), gradscope.read_layers(tor)
    assert len(lt) == len(le) == STEPS * 5
    for col in ("grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
                "update_ratio", "act_mean", "act_std", "saturated_frac"):
        _close(lt[col], le[col])
    # probe statistics of step 0 (the engine also probes its last step; torch cannot know it)
    pe, pt = le[le.step == 0], lt[lt.step == 0]
    for col in ("dead_frac", "probe_act_mean", "probe_act_std", "probe_saturated_frac"):
        _close(pt[col], pe[col])
    se, st = gradscope.read_steps(eng), gradscope.read_steps(tor)
    for col in ("step", "loss", "accuracy", "lr", "grad_norm_total"):
        _close(st[col], se[col])
    _, dead_e = gradscope.read_dead_units(eng)
    _, dead_t = gradscope.read_dead_units(tor)
    for de, dt in zip(dead_e, dead_t):
        np.testing.assert_array_equal(dt[0], de[0])
    he, ht = gradscope.read_histograms(eng), gradscope.read_histograms(tor)
    key = ["step", "layer", "bin_left"]
    merged = pd.merge(he[he.step == 0], ht[ht.step == 0], on=key, suffixes=("_e", "_t"))
    assert len(merged) == len(he[he.step == 0]) > 0
    np.testing.assert_array_equal(merged["count_t"], merged["count_e"])
    # the same parameters after the steps
    for (We, be), (Wt, bt) in zip(gradscope.read_weights(eng, "final"),
                                  gradscope.read_weights(tor, "final")):
        _close(Wt, We, rtol=1e-9, atol=1e-12)
        _close(bt, be, rtol=1e-9, atol=1e-12)
    # the same verdicts and mean-field comparison
    de, dt = gradscope.diagnose(eng), gradscope.diagnose(tor)
    assert dt.verdict == de.verdict and dt.cause_names == de.cause_names
    assert dt.flags == de.flags
    assert dt.theory is not None
    assert dt.theory.init == init
    _close(dt.theory.predicted_ratio, de.theory.predicted_ratio, rtol=0.05)
    _close(dt.theory.measured_ratio, de.theory.measured_ratio)

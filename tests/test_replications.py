"""Quick versions of the replications in benchmarks/replicate/ (docs/replications.md).

Each checks the direction of a published claim on a small net, so that an engine change
that would break a replication fails here. The full scripts run the same code at the
sizes the docs report.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "replicate"


def load(name):
    sys.path.insert(0, str(HERE))
    try:
        spec = importlib.util.spec_from_file_location(f"replicate_{name}", HERE / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(HERE))


@pytest.fixture(scope="module")
def glorot():
    return load("glorot")


def test_glorot_standard_init_shrinks_backprop_gradients(glorot, tmp_path):
    g = glorot.gradients_at_init(tmp_path, quick=True)
    std, xav = g["standard"], g["xavier"]
    # Eq. 14: n Var[W] = 1/3 per layer for standard init (times E[tanh'^2] <= 1)
    assert 0.2 < std["variance_factor_per_layer"] < 1 / 3 + 0.02
    assert std["measured"][0] < 0.1
    assert xav["measured"][0] > 0.5
    # and the mean-field prediction drawn in the figure is the measured profile
    for init in ("standard", "xavier"):
        np.testing.assert_allclose(g[init]["measured"], g[init]["theory"], rtol=0.25)


def test_glorot_normalised_init_trains_faster(glorot, tmp_path):
    sp = glorot.training_speed(tmp_path, quick=True)
    std, xav = np.array(sp["standard"]["mean"]), np.array(sp["xavier"]["mean"])
    assert np.all(xav < std - 0.2)


def test_glorot_sigmoid_top_layer_falls_below_the_others(glorot, tmp_path):
    sat = glorot.saturation(tmp_path, quick=True)
    lo, hi = sat["lower_range"]
    assert 0.4 < lo and hi < 0.6  # the lower layers stay near 0.5
    assert sat["top_final"] < lo - 0.03  # the top layer moves down, away from them


def test_he_init_keeps_the_relu_signal_xavier_halves_it():
    he = load("he")
    sig = he.signal_at_init(30, 64, 4)
    per_layer = {k: v[-1] ** (1 / (len(v) - 1)) for k, v in sig.items()}
    assert per_layer["xavier"] == pytest.approx(0.5, abs=0.05)
    assert per_layer["he"] == pytest.approx(1.0, abs=0.1)


def test_he_30_layers_train_with_he_init_not_xavier(tmp_path):
    import gradscope

    err = {}
    for init in ("xavier", "he"):
        cfg = gradscope.TrainConfig(dataset="digits", depth=30, width=32, activation="relu",
                                    init=init, optimizer="momentum", lr=0.01, batch_size=32,
                                    epochs=3, log_every=50, seed=0)
        run = gradscope.train(cfg, tmp_path / f"{init}.h5")
        err[init] = 1 - gradscope.read_epochs(run.path)["val_accuracy"].iloc[-1]
    assert err["xavier"] > 0.85  # stalled at chance (0.9)
    assert err["he"] < err["xavier"] - 0.1


def test_schoenholz_ordered_phase_trains_only_to_about_6_xi_c():
    sch = load("schoenholz")
    import gradscope

    xi_c = gradscope.mean_field("tanh", 1.0, sch.BIAS_VAR)["xi_c"]  # 3.6: 6 xi_c = 22 layers
    inside = sch.train_one(1.0, 10, 32, 200)
    beyond = sch.train_one(1.0, 60, 32, 200)
    assert 10 < 6 * xi_c < 60
    assert inside["train_accuracy"] > 0.5
    assert beyond["train_accuracy"] < 0.2  # chance is 0.1


def test_lu_born_dead_grows_with_depth_below_the_single_input_bound(tmp_path):
    lu = load("lu")
    X = lu.training_rows(0)
    n = 200
    frac = {(w, L): np.mean([lu.born_dead(X, L, w, s) for s in range(n)])
            for w in (2, 4) for L in (2, 20)}
    assert frac[2, 20] > frac[2, 2] + 0.5 and frac[4, 20] > frac[4, 2] + 0.3
    assert frac[2, 20] > frac[4, 20]  # narrower dies sooner
    for (w, L), p in frac.items():
        assert p <= lu.bound(L, w) + 3 * math.sqrt(0.25 / n)
    # the engine's count is what gradscope's dead-unit probe records, run by run
    c = lu.cross_check(tmp_path, 10, 2, range(3))
    assert c["agree"] == 3

"""The training loop (train.py): what it logs, checked against numbers recomputed
independently in numpy from the stored weights, and the run's bookkeeping."""

import math
import os
import signal
import time

import h5py
import numpy as np
import pandas as pd
import pytest

import gradscope
from gradscope.reading.readers import open_log, read_columns
from gradscope.record.schema import LogError
from gradscope.training.loop import ConfigError, TrainConfig, prepare, train

SMALL = {"dataset": "moons", "depth": 2, "width": 8}  # moons: 1000 rows, 800 train / 200 val


# -- independent reference (float64 numpy, from the documented definitions) ---------------


def ref_pass(params, X, y, act="tanh"):
    phi = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}[act]
    dphi = {"tanh": lambda z: 1.0 / np.cosh(z) ** 2, "relu": lambda z: (z > 0) * 1.0}[act]
    Ws = [np.asarray(p, np.float64) for p in params[0::2]]
    bs = [np.asarray(p, np.float64) for p in params[1::2]]
    L = len(Ws)
    a, zs = [np.asarray(X, np.float64)], []
    for l in range(L):
        zs.append(a[l] @ Ws[l] + bs[l])
        if l < L - 1:
            a.append(phi(zs[l]))
    logits, n = zs[-1], X.shape[0]
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1, keepdims=True)) + m
    loss = float(np.mean(lse[:, 0] - logits[np.arange(n), y]))
    delta = np.exp(logits - lse)
    delta[np.arange(n), y] -= 1.0
    delta /= n
    gW, gb, deltas = [None] * L, [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
        deltas[l] = delta
        gW[l], gb[l] = a[l].T @ delta, delta.sum(axis=0)
        if l > 0:
            delta = (delta @ Ws[l].T) * dphi(zs[l - 1])
    acc = float(np.mean(logits.argmax(axis=1) == y))
    return {"loss": loss, "acc": acc, "gW": gW, "gb": gb, "deltas": deltas, "acts": a[1:],
            "zs": zs}


def fro(x):
    return float(np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)))


def flat(weights):
    return [p for pair in weights for p in pair]


def _no_time(df):
    return df.drop(columns=["time"])


# -- reproducibility -------------------------------------------------------------------------


def test_same_seed_is_bit_for_bit_reproducible_and_seed_matters(tmp_path):
    cfg = dict(SMALL, steps=30, probe_every=10, seed=3)
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.h5"
        r = train(TrainConfig(**dict(cfg, seed=seed)), out)
        assert r.status == "completed"
        runs.append(out)
    a, b, c = runs
    pd.testing.assert_frame_equal(_no_time(gradscope.read_steps(a)),
                                  _no_time(gradscope.read_steps(b)), check_exact=True)
    pd.testing.assert_frame_equal(gradscope.read_layers(a), gradscope.read_layers(b),
                                  check_exact=True)
    pd.testing.assert_frame_equal(_no_time(gradscope.read_epochs(a)),
                                  _no_time(gradscope.read_epochs(b)), check_exact=True)
    pd.testing.assert_frame_equal(gradscope.read_histograms(a), gradscope.read_histograms(b),
                                  check_exact=True)
    for wa, wb in zip(flat(gradscope.read_weights(a, "final")),
                      flat(gradscope.read_weights(b, "final"))):
        np.testing.assert_array_equal(wa, wb)
    # another seed: other initial weights, other batches, other losses
    assert not np.array_equal(gradscope.read_weights(a)[0][0], gradscope.read_weights(c)[0][0])
    assert not np.array_equal(gradscope.read_steps(a)["loss"], gradscope.read_steps(c)["loss"])


# -- what a logged row describes ----------------------------------------------------------------


def test_single_full_batch_sgd_step_recomputed(tmp_path):
    lr = 0.7
    cfg = TrainConfig(**SMALL, activation="tanh", optimizer="sgd", lr=lr, batch_size="full",
                      steps=1, dtype="float64")
    prep = prepare(cfg)
    X, y = prep.X, prep.y
    assert prep.resolved["batch_size_resolved"] == X.shape[0] == 800
    out = tmp_path / "one.h5"
    r = train(cfg, out)
    assert (r.status, r.steps) == ("completed", 1)
    init = flat(gradscope.read_weights(out, step=0))
    final = flat(gradscope.read_weights(out, step="final"))
    ref = ref_pass(init, X, y, "tanh")
    steps = gradscope.read_steps(out)
    layers = gradscope.read_layers(out).sort_values("layer")
    assert list(steps["step"]) == [0] and list(layers["layer"]) == [0, 1, 2]
    row = steps.iloc[0]
    assert row.loss == pytest.approx(ref["loss"], rel=1e-12)
    assert row.accuracy == pytest.approx(ref["acc"], abs=1e-15)
    assert row.lr == lr
    all_grads = [g for pair in zip(ref["gW"], ref["gb"]) for g in pair]
    assert row.grad_norm_total == pytest.approx(math.sqrt(sum(fro(g) ** 2 for g in all_grads)),
                                                rel=1e-10)
    for l in range(3):
        lr_row = layers.iloc[l]
        W0, W1 = init[2 * l], final[2 * l]
        assert lr_row.grad_norm == pytest.approx(fro(ref["gW"][l]), rel=1e-10)
        assert lr_row.bias_grad_norm == pytest.approx(fro(ref["gb"][l]), rel=1e-10)
        assert lr_row.delta_norm == pytest.approx(fro(ref["deltas"][l]), rel=1e-10)
        assert lr_row.weight_norm == pytest.approx(fro(W0), rel=1e-12)
        # plain SGD: W_final = W_init - lr * dL/dW, and the logged update is that change
        np.testing.assert_allclose(W1, W0 - lr * ref["gW"][l], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(final[2 * l + 1], init[2 * l + 1] - lr * ref["gb"][l],
                                   rtol=1e-10, atol=1e-13)
        assert lr_row.update_norm == pytest.approx(fro(W1 - W0), rel=1e-10)
        assert lr_row.update_ratio == pytest.approx(fro(W1 - W0) / fro(W0), rel=1e-10)
        if l < 2:
            a = ref["acts"][l]
            assert lr_row.act_mean == pytest.approx(a.mean(), rel=1e-9, abs=1e-15)
            assert lr_row.act_std == pytest.approx(a.std(), rel=1e-9)
            assert lr_row.saturated_frac == np.mean(1.0 / np.cosh(ref["zs"][l]) ** 2 < 0.05)
    # the one epoch: train loss is the step's loss; validation uses the updated weights
    ep = gradscope.read_epochs(out)
    assert list(ep["epoch"]) == [0] and list(ep["step"]) == [1]
    assert ep["train_loss"].iloc[0] == pytest.approx(ref["loss"], rel=1e-12)
    val = ref_pass(final, prep.X_val, prep.y_val, "tanh")
    assert ep["val_loss"].iloc[0] == pytest.approx(val["loss"], rel=1e-10)
    assert ep["val_accuracy"].iloc[0] == pytest.approx(val["acc"], abs=1e-15)


def test_every_logged_row_describes_params_before_its_update(tmp_path):
    lr = 0.5
    cfg = TrainConfig(**SMALL, activation="relu", init="he", optimizer="sgd", lr=lr,
                      batch_size="full", steps=4, snapshot_every=1, dtype="float64")
    prep = prepare(cfg)
    out = tmp_path / "run.h5"
    train(cfg, out)
    steps = gradscope.read_steps(out)
    layers = gradscope.read_layers(out)
    assert list(steps["step"]) == [0, 1, 2, 3]
    snaps = [flat(gradscope.read_weights(out, step=t)) for t in range(4)]
    snaps.append(flat(gradscope.read_weights(out, step="final")))
    # the stored snapshot at step 0 is the initial parameters
    with open_log(out) as f:
        snap = read_columns(f, "snapshots")
        assert list(snap["step"]) == [0, 1, 2, 3]
        for l, (W, b) in enumerate(gradscope.read_weights(out, step="initial")):
            np.testing.assert_array_equal(snap[f"W_{l}"][0], W)
            np.testing.assert_array_equal(snap[f"b_{l}"][0], b)
    losses = []
    for t in range(4):
        ref = ref_pass(snaps[t], prep.X, prep.y, "relu")
        losses.append(ref["loss"])
        assert steps.loss[t] == pytest.approx(ref["loss"], rel=1e-12)
        for l in range(3):
            row = layers[(layers.step == t) & (layers.layer == l)].iloc[0]
            assert row.grad_norm == pytest.approx(fro(ref["gW"][l]), rel=1e-9)
            assert row.weight_norm == pytest.approx(fro(snaps[t][2 * l]), rel=1e-12)
            np.testing.assert_allclose(snaps[t + 1][2 * l], snaps[t][2 * l] - lr * ref["gW"][l],
                                       rtol=1e-9, atol=1e-12)
            assert row.update_norm == pytest.approx(fro(snaps[t + 1][2 * l] - snaps[t][2 * l]),
                                                    rel=1e-9)
    # the row's loss is before the update: it differs from the loss after it
    assert len(set(losses)) == 4


def test_snapshots_equal_params_at_that_step(tmp_path):
    long_run, short_run = tmp_path / "long.h5", tmp_path / "short.h5"
    train(TrainConfig(**SMALL, steps=12, snapshot_every=4, seed=1), long_run)
    train(TrainConfig(**SMALL, steps=8, seed=1), short_run)
    # parameters before update 8 of the long run = after the 8 updates of the short run
    for a, b in zip(flat(gradscope.read_weights(long_run, step=8)),
                    flat(gradscope.read_weights(short_run, step="final"))):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    for a, b in zip(flat(gradscope.read_weights(long_run, step=0)),
                    flat(gradscope.read_weights(short_run, step=0))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(LogError, match="no snapshot at step 5.*0, 4, 8"):
        gradscope.read_weights(long_run, step=5)
    with pytest.raises(LogError, match="no snapshots"):
        gradscope.read_weights(short_run, step=4)


# -- divergence, interruption ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_learning_rate_diverges_and_logs_the_bad_step(tmp_path):
    out = tmp_path / "div.h5"
    r = train(TrainConfig(**SMALL, optimizer="sgd", lr=1e6, steps=50, log_every=5), out)
    assert r.status == "diverged"
    st = gradscope.read_status(out)
    assert st["status"] == "diverged"
    steps = gradscope.read_steps(out)
    last = steps.iloc[-1]
    bad = int(last.step)
    assert 0 < bad < 49 and bad % 5 != 0  # logged although not a multiple of log_every
    assert not (math.isfinite(last.loss) and math.isfinite(last.grad_norm_total))
    assert np.isfinite(steps["loss"].iloc[:-1]).all()
    assert st["message"] == r.message and f"at step {bad} " in st["message"]
    assert "became" in st["message"] and "\n" not in st["message"]
    assert r.steps == bad
    layers = gradscope.read_layers(out)
    bad_rows = layers[layers.step == bad]
    assert len(bad_rows) == 3 and bad_rows["update_norm"].isna().all()
    assert bad_rows["probe_act_mean"].iloc[:2].notna().all()  # probed at the diverged step
    probe_steps, _ = gradscope.read_dead_units(out)
    assert probe_steps[-1] == bad
    # no update was applied at the diverged step: the final weights are those it saw
    final = gradscope.read_weights(out, "final")
    for l, (W, _) in enumerate(final):
        assert np.isfinite(W).all()
        assert bad_rows[bad_rows.layer == l].weight_norm.iloc[0] == pytest.approx(fro(W),
                                                                                  rel=1e-6)
    assert len(gradscope.read_epochs(out)) == 0  # the diverged epoch is not summarised


def test_keyboard_interrupt_from_progress_ends_interrupted(tmp_path):
    calls = []

    def progress(step, total, loss):
        calls.append((step, total))
        if step == 5:
            raise KeyboardInterrupt

    out = tmp_path / "int.h5"
    r = train(TrainConfig(**SMALL, steps=1000, seed=2), out, progress=progress)
    assert calls == [(s, 1000) for s in range(1, 6)]
    assert (r.status, r.steps) == ("interrupted", 5)
    st = gradscope.read_status(out)
    assert st["status"] == "interrupted" and "step 5" in st["message"]
    assert list(gradscope.read_steps(out)["step"]) == [0, 1, 2, 3, 4]
    assert len(gradscope.read_layers(out)) == 5 * 3
    # the final parameters are those after the 5 updates: the same as a 5-step run
    ref = tmp_path / "five.h5"
    train(TrainConfig(**SMALL, steps=5, seed=2), ref)
    for a, b in zip(flat(gradscope.read_weights(out, "final")),
                    flat(gradscope.read_weights(ref, "final"))):
        np.testing.assert_array_equal(a, b)


def test_sigterm_handler_restored_after_training(tmp_path):
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    train(TrainConfig(**SMALL, steps=2), tmp_path / "x.h5")
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_run_between_two_steps(tmp_path, signum):
    # the handler only asks the loop to stop: the step running when the signal arrives is
    # completed, logged and applied, and the run ends before the next one
    seen = []

    def progress(step, total, loss):
        seen.append(step)
        if step == 7:
            os.kill(os.getpid(), signum)
            time.sleep(0.2)  # the handler has run by now ...
            seen.append("returned")  # ... and raised nothing here

    out = tmp_path / "sig.h5"
    r = train(TrainConfig(**SMALL, steps=1000, seed=4), out, progress=progress)
    assert seen == [*range(1, 8), "returned"]
    assert (r.status, r.steps) == ("interrupted", 7)
    assert gradscope.read_status(out)["message"] == "interrupted at step 7 (epoch 0)"
    assert list(gradscope.read_steps(out)["step"]) == list(range(7))
    ref = tmp_path / "seven.h5"
    train(TrainConfig(**SMALL, steps=7, seed=4), ref)
    for a, b in zip(flat(gradscope.read_weights(out, "final")),
                    flat(gradscope.read_weights(ref, "final"))):
        np.testing.assert_array_equal(a, b)


def test_second_signal_raises_at_once():
    from gradscope.training._signals import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM  # the first only sets the flag
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs before this returns
        with pytest.raises(KeyboardInterrupt):
            stop.check()


def test_an_ignored_signal_stays_ignored(tmp_path):
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def progress(step, total, loss):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

        r = train(TrainConfig(**SMALL, steps=6), tmp_path / "ign.h5", progress=progress)
        assert (r.status, r.steps) == ("completed", 6)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


# -- counts: splits, epochs, steps, logging cadence ----------------------------------------------


def test_validation_split_sizes(tmp_path):
    prep = prepare(TrainConfig(**SMALL, val_fraction=0.25))
    assert (prep.X.shape[0], prep.X_val.shape[0]) == (750, 250)
    assert (prep.resolved["n_train"], prep.resolved["n_val"]) == (750, 250)
    # the split is a partition of the data set
    X, _ = gradscope.load_dataset("moons")
    together = np.concatenate([prep.X, prep.X_val])  # float32, the default dtype
    np.testing.assert_array_equal(np.sort(together, axis=0),
                                  np.sort(X.astype(np.float32), axis=0))
    out = tmp_path / "noval.h5"
    train(TrainConfig(**SMALL, val_fraction=0.0, epochs=1, batch_size=500), out)
    cfg = gradscope.read_config(out)
    assert (cfg["n_train"], cfg["n_val"], cfg["steps_per_epoch"]) == (1000, 0, 2)
    ep = gradscope.read_epochs(out)
    assert len(ep) == 1 and ep["val_loss"].isna().all() and ep["val_accuracy"].isna().all()


def test_epochs_and_steps_counts(tmp_path):
    # 800 training rows in batches of 300: 300, 300, 200 -> 3 steps per epoch
    out = tmp_path / "ep.h5"
    train(TrainConfig(**SMALL, epochs=2, batch_size=300), out)
    steps, ep = gradscope.read_steps(out), gradscope.read_epochs(out)
    assert list(steps["step"]) == list(range(6))
    assert list(steps["epoch"]) == [0, 0, 0, 1, 1, 1]
    assert list(ep["epoch"]) == [0, 1] and list(ep["step"]) == [3, 6]
    for e in range(2):
        losses = steps["loss"].to_numpy()[3 * e: 3 * e + 3]
        accs = steps["accuracy"].to_numpy()[3 * e: 3 * e + 3]
        w = np.array([300, 300, 200])
        assert ep["train_loss"][e] == pytest.approx(np.dot(losses, w) / 800, rel=1e-12)
        assert ep["train_accuracy"][e] == pytest.approx(np.dot(accs, w) / 800, rel=1e-12)
    # --steps stopping mid-epoch: the partial epoch is logged too
    out2 = tmp_path / "st.h5"
    r = train(TrainConfig(**SMALL, steps=7, batch_size=300), out2)
    assert r.steps == 7
    ep2 = gradscope.read_epochs(out2)
    assert list(ep2["step"]) == [3, 6, 7]
    assert ep2["train_loss"].iloc[2] == gradscope.read_steps(out2)["loss"].iloc[6]
    # defaults: 20 epochs of ceil(800 / 32) = 25 steps
    res = prepare(TrainConfig(**SMALL)).resolved
    assert (res["steps_per_epoch"], res["total_steps"]) == (25, 500)
    with pytest.raises(ConfigError, match="--epochs or --steps"):
        prepare(TrainConfig(**SMALL, epochs=2, steps=5))


def test_log_every_and_probe_every(tmp_path):
    out = tmp_path / "cad.h5"
    train(TrainConfig(**SMALL, steps=20, log_every=3, probe_every=6), out)
    steps = gradscope.read_steps(out)
    assert list(steps["step"]) == [0, 3, 6, 9, 12, 15, 18, 19]  # and the last step
    probe_steps, dead = gradscope.read_dead_units(out)
    assert list(probe_steps) == [0, 6, 12, 18, 19]
    assert [d.shape for d in dead] == [(5, 8), (5, 8)]
    layers = gradscope.read_layers(out)
    probed = layers[layers.layer == 0].set_index("step")["probe_act_mean"].notna()
    assert list(probed[probed].index) == [0, 6, 12, 18, 19]
    assert sorted(gradscope.read_histograms(out)["step"].unique()) == [0, 6, 12, 18, 19]
    # the default: the multiple of log_every nearest 100
    assert prepare(TrainConfig(**SMALL, log_every=7)).resolved["probe_every"] == 98
    assert prepare(TrainConfig(**SMALL)).resolved["probe_every"] == 100
    with pytest.raises(ConfigError, match="--probe-every 5"):
        prepare(TrainConfig(**SMALL, log_every=3, probe_every=5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype(tmp_path, dtype):
    out = tmp_path / "d.h5"
    train(TrainConfig(**SMALL, steps=3, dtype=dtype), out)
    assert gradscope.read_config(out)["dtype"] == dtype
    for which in (0, "final"):
        for W, b in gradscope.read_weights(out, which):
            assert W.dtype == np.dtype(dtype) and b.dtype == np.dtype(dtype)
            assert np.isfinite(W).all()


def test_regression_on_teacher(tmp_path):
    out = tmp_path / "reg.h5"
    r = train(TrainConfig(dataset="teacher", depth=2, width=16, activation="tanh", lr=0.01,
                          steps=150, batch_size=64), out)
    assert r.status == "completed"
    cfg = gradscope.read_config(out)
    assert (cfg["task"], cfg["loss"], cfg["n_outputs"]) == ("regression", "mse", 1)
    steps = gradscope.read_steps(out)
    assert steps["accuracy"].isna().all()
    ep = gradscope.read_epochs(out)
    assert ep["train_accuracy"].isna().all() and ep["val_accuracy"].isna().all()
    assert np.isfinite(ep["val_loss"]).all()
    loss = steps["loss"].to_numpy()
    assert loss[-20:].mean() < 0.6 * loss[:20].mean()
    # the logged loss is the mean squared error of the batch: recompute step 0 on a full batch
    out2 = tmp_path / "reg1.h5"
    cfg1 = TrainConfig(dataset="teacher", depth=1, width=4, activation="tanh", steps=1,
                       batch_size="full", dtype="float64")
    prep = prepare(cfg1)
    train(cfg1, out2)
    (W0, b0), (W1, b1) = gradscope.read_weights(out2, 0)
    pred = (np.tanh(prep.X @ W0 + b0) @ W1 + b1)[:, 0]
    assert gradscope.read_steps(out2)["loss"][0] == pytest.approx(np.mean((pred - prep.y) ** 2),
                                                                  rel=1e-12)


@pytest.mark.parametrize("log_every", [1, 3])
def test_weight_and_update_norms_match_snapshots(tmp_path, log_every):
    """weight_norm and update_norm (taken in the optimizer's threads) against the snapshots."""
    from gradscope import read_layers, read_weights
    from gradscope.training.loop import TrainConfig
    from gradscope.training.loop import train as run_train

    out = tmp_path / "n.h5"
    run_train(TrainConfig(dataset="moons", depth=3, width=16, optimizer="adam", steps=10,
                          log_every=log_every, snapshot_every=1, val_fraction=0.0), out)
    layers = read_layers(out)
    for step in sorted(layers.step.unique()):
        before = read_weights(out, step=int(step))
        after = read_weights(out, step=int(step) + 1) if step < 9 else read_weights(out, "final")
        rows = layers[layers.step == step].set_index("layer")
        for l, ((W0, _), (W1, _)) in enumerate(zip(before, after)):
            assert rows.loc[l, "weight_norm"] == pytest.approx(
                np.linalg.norm(W0.astype(np.float64)), rel=1e-5)
            assert rows.loc[l, "update_norm"] == pytest.approx(
                np.linalg.norm(W1.astype(np.float64) - W0), rel=1e-3)

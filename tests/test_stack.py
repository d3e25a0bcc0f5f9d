"""Stacked training (gradscope.training.stack) against separate runs of train()."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.engine.optimizers import OPTIMIZERS
from gradscope.reading.readers import (
    read_dead_units,
    read_epochs,
    read_histograms,
    read_layers,
    read_status,
    read_steps,
    read_weights,
)
from gradscope.training.loop import TrainConfig, train
from gradscope.training.stack import stack_key, stacks_of, train_stack


def _cfg(**kw) -> TrainConfig:
    base = dict(dataset="digits", depth=3, width=12, dtype="float64", steps=16,
                log_every=1, probe_every=10, probe_size=64, batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def _same_logs(a, b, rtol=1e-6):
    assert read_status(a)["status"] == read_status(b)["status"]
    assert read_status(a)["message"] == read_status(b)["message"]
    for read in (read_steps, read_layers, read_epochs):
        x, y = read(a), read(b)
        assert list(x.columns) == list(y.columns)
        assert len(x) == len(y) and (len(x) > 0 or read is read_epochs)
        for c in x.columns:
            if c == "time":
                continue
            np.testing.assert_allclose(x[c].to_numpy(float), y[c].to_numpy(float),
                                       rtol=rtol, atol=0, err_msg=f"{read.__name__}: {c}")
    sa, da = read_dead_units(a)
    sb, db = read_dead_units(b)
    np.testing.assert_array_equal(sa, sb)
    for u, v in zip(da, db, strict=True):
        np.testing.assert_array_equal(u, v)
    ha, hb = read_histograms(a), read_histograms(b)
    np.testing.assert_array_equal(ha["count"].to_numpy(), hb["count"].to_numpy())
    for which in (0, "final"):
        for (wa, ba), (wb, bb) in zip(read_weights(a, which), read_weights(b, which),
                                      strict=True):
            np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-12)
            np.testing.assert_allclose(ba, bb, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_stack_logs_what_separate_runs_log(tmp_path, optimizer):
    # seeds, init gains and two learning rates (two optimizer groups) in one stack
    configs = [_cfg(optimizer=optimizer, seed=s, init_gain=g, lr=lr)
               for s, g, lr in ((0, 1.0, None), (1, 0.5, None), (0, 1.5, 0.03), (2, 1.0, 0.03))]
    stacked = [tmp_path / f"stack{i}.h5" for i in range(len(configs))]
    results = train_stack(configs, stacked)
    assert [r.status for r in results] == ["completed"] * len(configs)
    for i, c in enumerate(configs):
        alone = tmp_path / f"alone{i}.h5"
        res = train(c, alone)
        assert results[i].steps == res.steps
        _same_logs(stacked[i], alone)


def test_stack_mixes_optimizers_and_inits(tmp_path):
    configs = [_cfg(optimizer="sgd", lr=0.1, init="he"), _cfg(optimizer="adam", seed=3),
               _cfg(optimizer="rprop", init="orthogonal", seed=1),
               _cfg(optimizer="adam", seed=4, beta1=0.8)]
    assert len(stacks_of(configs)) == 1
    stacked = [tmp_path / f"stack{i}.h5" for i in range(len(configs))]
    train_stack(configs, stacked)
    for i, c in enumerate(configs):
        train(c, tmp_path / f"alone{i}.h5")
        _same_logs(stacked[i], tmp_path / f"alone{i}.h5")


def test_a_diverging_run_leaves_the_stack_as_a_separate_run_ends(tmp_path):
    # a linear net with a large init and step diverges within a few steps (the loss becomes
    # NaN); the others, in its optimizer group and in another one, go on
    lin = dict(activation="linear", optimizer="sgd")
    configs = [_cfg(lr=0.01, seed=0, **lin), _cfg(lr=1.0, init_gain=3.0, seed=1, **lin),
               _cfg(lr=0.01, seed=2, init_gain=0.5, **lin),
               _cfg(lr=1.0, init_gain=0.05, seed=3, **lin)]
    stacked = [tmp_path / f"stack{i}.h5" for i in range(len(configs))]
    results = train_stack(configs, stacked)
    alone = [train(c, tmp_path / f"alone{i}.h5") for i, c in enumerate(configs)]
    assert [r.status for r in results] == [r.status for r in alone]
    assert results[1].status == "diverged" and results[0].status == "completed"
    assert [r.steps for r in results] == [r.steps for r in alone]
    for i in range(len(configs)):
        _same_logs(stacked[i], tmp_path / f"alone{i}.h5")


def test_float32_stack_agrees_with_separate_runs(tmp_path):
    configs = [_cfg(dtype="float32", seed=s) for s in (0, 1)]
    stacked = [tmp_path / f"stack{i}.h5" for i in range(2)]
    train_stack(configs, stacked)
    for i, c in enumerate(configs):
        train(c, tmp_path / f"alone{i}.h5")
        a, b = read_layers(stacked[i]), read_layers(tmp_path / f"alone{i}.h5")
        for col in ("grad_norm", "weight_norm", "update_norm", "act_std"):
            np.testing.assert_allclose(a[col], b[col], rtol=2e-3, err_msg=col)


def test_stack_key_groups_only_runs_of_one_shape():
    a, b = _cfg(seed=0), _cfg(seed=1, init_gain=2.0, optimizer="sgd", lr=0.1)
    assert stack_key(a) == stack_key(b)
    assert stack_key(a) != stack_key(_cfg(width=13))
    assert stack_key(a) != stack_key(_cfg(steps=17))
    assert stack_key(_cfg(dropout=0.1)) is None
    assert stack_key(_cfg(clip_norm=1.0)) is None
    assert stacks_of([a, _cfg(width=13), b, _cfg(residual=True)]) == [[0, 2], [1], [3]]


def test_train_stack_refuses_runs_of_different_shapes(tmp_path):
    with pytest.raises(ValueError, match="may differ only in"):
        train_stack([_cfg(), _cfg(width=13)], [tmp_path / "a.h5", tmp_path / "b.h5"])
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(5, 16, 24), (3, 7, 5), (4, 1, 3)])
def test_stack_reductions_equal_the_single_array_ones(dtype, shape):
    from gradscope.engine.activations import get_activation
    from gradscope.engine.stats import (
        column_sums,
        mean_std,
        norm,
        saturated_fraction,
        stack_column_sums,
        stack_mean_std,
        stack_norms,
        stack_saturated_fraction,
    )

    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape).astype(dtype)
    a[1] += 40.0          # a mean that dwarfs the spread: the two-pass variance
    a[-1] *= 1e-24        # vanishing entries: norm()'s float64 path in float32
    act = get_activation("tanh")
    d = act.df(a, act.f(a))
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(stack_norms(a), [norm(x) for x in a], rtol=rtol)
    m, s = stack_mean_std(a)
    ref = np.array([mean_std(x) for x in a])
    np.testing.assert_allclose(m, ref[:, 0], rtol=rtol, atol=0)
    np.testing.assert_allclose(s, ref[:, 1], rtol=1e-4 if dtype == "float32" else 1e-9)
    np.testing.assert_allclose(stack_column_sums(a), [column_sums(x) for x in a], rtol=rtol)
    np.testing.assert_array_equal(stack_saturated_fraction(d, act),
                                  [saturated_fraction(x, act) for x in d])
    assert not np.isfinite(stack_norms(np.full((2, 3), np.inf, dtype=dtype))).any()


def test_sweep_stacks_runs_by_default_with_the_logs_of_separate_runs(tmp_path, monkeypatch):
    import gradscope.training.sweep as sweep_mod
    from gradscope.training.sweep import run_names, run_sweep

    calls = []
    real = sweep_mod.train_stack

    def counting(configs, outs, *a, **k):
        calls.append(len(configs))
        return real(configs, outs, *a, **k)

    monkeypatch.setattr(sweep_mod, "train_stack", counting)
    configs = [_cfg(seed=0), _cfg(seed=1, init_gain=2.0), _cfg(dropout=0.2)]
    stacked = run_sweep(configs, tmp_path / "stacked", jobs=1)
    assert calls == [2]  # the run with a remedy trained on its own
    alone = run_sweep(configs, tmp_path / "alone", jobs=1, stack=False)
    assert calls == [2]
    assert list(stacked["status"]) == list(alone["status"]) == ["completed"] * 3
    for name in run_names(configs):
        _same_logs(tmp_path / "stacked" / f"{name}.h5", tmp_path / "alone" / f"{name}.h5")


def test_regression_stack_logs_what_separate_runs_log(tmp_path):
    # the teacher set is a regression task: the mean squared error and no accuracy
    configs = [_cfg(dataset="teacher", seed=s, activation="tanh", optimizer="momentum",
                    lr=0.01) for s in (0, 1)]
    stacked = [tmp_path / f"stack{i}.h5" for i in range(2)]
    train_stack(configs, stacked)
    for i, c in enumerate(configs):
        train(c, tmp_path / f"alone{i}.h5")
        _same_logs(stacked[i], tmp_path / f"alone{i}.h5")


def test_an_error_fails_every_open_run_of_the_stack_as_it_fails_a_separate_run(tmp_path):
    def progress(step, total, *_):
        if step == 3:
            raise ZeroDivisionError("my callback")

    configs = [_cfg(seed=0), _cfg(seed=1)]
    stacked = [tmp_path / f"stack{i}.h5" for i in range(2)]
    with pytest.raises(ZeroDivisionError, match="my callback"):
        train_stack(configs, stacked, progress=progress)
    with pytest.raises(ZeroDivisionError, match="my callback"):
        train(configs[0], tmp_path / "alone.h5", progress=progress)
    alone = read_status(tmp_path / "alone.h5")
    for p in stacked:
        st = read_status(p)
        assert st["status"] == "failed" == alone["status"]
        assert st["message"] == alone["message"]   # "ZeroDivisionError: my callback at step 3 ..."
        assert list(read_steps(p)["step"]) == list(read_steps(tmp_path / "alone.h5")["step"])
        # a failed run's final parameters are not claimed
        assert all(np.isnan(W).all() for W, _ in read_weights(p, "final"))


def test_rows_given_to_the_logs_in_batches_are_those_of_separate_runs(tmp_path, monkeypatch):
    """The stack gives the logs its rows every few logged steps, at every epoch's end and
    before a run leaves: with batches of 3 logged steps, many epochs, sparse logging,
    snapshots and a run that diverges, every table equals a separate run's; a stack
    stopped in mid-run keeps every finished step, as a separate run does."""
    import gradscope.training.stack as stack_mod

    monkeypatch.setattr(stack_mod, "HAND_OVER_STEPS", 3)
    lin = dict(activation="linear", optimizer="sgd", steps=50, batch_size=64, log_every=2,
               probe_every=6, snapshot_every=5, val_fraction=0.95)  # 2 steps an epoch
    configs = [_cfg(lr=0.01, seed=0, **lin), _cfg(lr=1.0, init_gain=3.0, seed=1, **lin),
               _cfg(lr=0.01, seed=2, init_gain=0.5, **lin)]
    stacked = [tmp_path / f"stack{i}.h5" for i in range(len(configs))]
    results = train_stack(configs, stacked)
    assert results[1].status == "diverged" and results[0].status == "completed"
    for i, c in enumerate(configs):
        train(c, tmp_path / f"alone{i}.h5")
        _same_logs(stacked[i], tmp_path / f"alone{i}.h5")
        assert len(read_epochs(stacked[i])) == len(read_epochs(tmp_path / f"alone{i}.h5"))

    def stop(step, total, *_):
        if step == 20:
            raise KeyboardInterrupt

    cut = [tmp_path / f"cut{i}.h5" for i in range(2)]
    res = train_stack([configs[0], configs[2]], cut, progress=stop)
    alone = train(configs[0], tmp_path / "cut_alone.h5", progress=stop)
    assert [r.status for r in res] == ["interrupted", "interrupted"] == [alone.status] * 2
    for p in cut:
        assert list(read_steps(p)["step"]) == list(range(0, 20, 2))
        assert list(read_steps(p)["step"]) == list(read_steps(alone.path)["step"])

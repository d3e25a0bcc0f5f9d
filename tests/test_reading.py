"""The reading layer: selections read without the rest, one-open run loading, bounded reads
of long logs, and the fallbacks for logs written before the config held what views need."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import gradscope
from gradscope import TrainConfig, train
from gradscope.reading import readers, run


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("reading") / "relu.h5"
    train(TrainConfig(dataset="moons", depth=3, width=8, steps=300, probe_every=10), path)
    return path


@pytest.fixture(scope="module")
def diverged(log, tmp_path_factory):
    """The log with a few non-finite losses and gradient norms written into its rows."""
    from logtools import rewrite

    def edit(t):
        t["steps"].loc[17, "loss"] = np.nan
        t["steps"].loc[233, "grad_norm_total"] = np.inf

    return rewrite(log, tmp_path_factory.mktemp("reading") / "bad.h5", edit)


def _where(full, steps):
    return full[full["step"].isin(steps)].reset_index(drop=True)


@pytest.mark.parametrize("long_range", [False, True])
def test_layer_selections_equal_the_filtered_table(log, monkeypatch, long_range):
    if long_range:  # the path of a long log: positions from the writer's order
        monkeypatch.setattr(readers, "STEP_COLUMN_ROWS", 10)
    full = gradscope.read_layers(log)
    steps = np.unique(full["step"])
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=(50, 120)),
                                  _where(full, steps[(steps >= 50) & (steps <= 120)]))
    pd.testing.assert_frame_equal(gradscope.read_layers(log, every=7), _where(full, steps[::7]))
    inner = steps[(steps >= 10) & (steps <= 200)]
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=(10, 200), every=3),
                                  _where(full, inner[::3]))
    got = gradscope.read_layers(log, steps=[3, 10, 299, 5000], columns=["delta_norm", "dead_frac"])
    pd.testing.assert_frame_equal(
        got, _where(full, [3, 10, 299])[["step", "layer", "delta_norm", "dead_frac"]])


def test_bad_selections_name_what_is_accepted(log):
    with pytest.raises(ValueError, match="unknown column 'nope'; accepted: step, layer"):
        gradscope.read_layers(log, columns=["nope"])
    with pytest.raises(ValueError, match="every=0; accepted: a whole number >= 1"):
        gradscope.read_layers(log, every=0)


def test_read_run_of_a_short_log_holds_the_readers_tables(log):
    r = run.read_run(log)
    pd.testing.assert_frame_equal(r.steps, gradscope.read_steps(log))
    pd.testing.assert_frame_equal(r.epochs, gradscope.read_epochs(log))
    pd.testing.assert_frame_equal(r.diagnosis_layers, gradscope.read_layers(log))
    assert r.config == gradscope.read_config(log) and r.status == gradscope.read_status(log)
    assert r.relu_family and r.layer_rows == len(gradscope.read_layers(log))
    # histograms at the first and the last probe step, as read_histograms has them
    h = gradscope.read_histograms(log)
    first, last = h["step"].min(), h["step"].max()
    pd.testing.assert_frame_equal(
        r.hist.reset_index(drop=True),
        h[h["step"].isin([first, last])].sort_values(["layer", "step"], kind="stable")
        .reset_index(drop=True), check_dtype=False)


def test_long_tables_are_read_as_windows_that_keep_every_non_finite_step(diverged, monkeypatch):
    monkeypatch.setattr(run, "FULL_TABLE_ROWS", 40)
    monkeypatch.setattr(run, "_WINDOWS", 4)
    full = gradscope.read_steps(diverged)
    assert len(full) > 40
    r = run.read_run(diverged)
    bad = full[~np.isfinite(full["loss"]) | ~np.isfinite(full["grad_norm_total"])]
    assert len(bad) and set(bad["step"]) <= set(r.steps["step"])
    assert r.steps["step"].iloc[-1] == full["step"].iloc[-1]
    assert len(r.steps) < len(full) and r.logged_steps == len(full)
    # every row read is the log's row for that step
    pd.testing.assert_frame_equal(r.steps.reset_index(drop=True),
                                  _where(full, r.steps["step"]))


def test_long_probe_table_windows_hold_whole_steps(log, monkeypatch):
    monkeypatch.setattr(run, "FULL_TABLE_ROWS", 40)
    monkeypatch.setattr(run, "_WINDOWS", 3)
    r = run.read_run(log)
    per_step = r.probes.groupby("step").size()
    assert len(per_step) > 1 and (per_step == 4).all()  # 3 hidden layers + output


def test_views_fall_back_by_name_for_logs_without_the_new_config_keys():
    assert run.is_relu_family({"activation": "leaky_relu"})
    assert not run.is_relu_family({"activation": "tanh"})
    assert not run.is_relu_family({"activation": "relu", "relu_family": False})
    old = run.train_options({"activation": "relu"})
    from gradscope.training.loop import TRAIN_OPTIONS

    assert old == TRAIN_OPTIONS  # the options of a format-1 log are today's
    assert run.train_options({"train_options": ["depth"]}) == ["depth"]

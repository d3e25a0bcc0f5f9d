"""Tests for gradscope.analysis.diagnose: the verdict (is the run learning?) and each cause it
can name, each on a real run built to show it, plus runs where they do not hold, threshold
overrides, the theory line, the frames= path and logs with little in them.

Runs are small (digits, width 32, tens to a few hundred steps) and trained once per module.
Where a test relies on a property of the run (a ratio below 1e-3, units dead, a loss that does
not fall), that property is checked first from the log itself, independently of diagnose.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from gradscope import (
    TrainConfig,
    load_dataset,
    read_config,
    read_dead_units,
    read_epochs,
    read_layers,
    read_status,
    read_steps,
    train,
)
from gradscope.analysis import theory
from gradscope.analysis.diagnose import (
    CAUSES,
    CHECKS,
    DEFAULT_THRESHOLDS,
    FAILING,
    VERDICT_SEVERITY,
    VERDICTS,
    WARNING,
    Diagnosis,
    Finding,
    config_summary,
    delta_ratios,
    diagnose,
    diagnose_table,
    evaluate,
    format_diagnosis,
    load_frames,
    resolve_thresholds,
)
from gradscope.record.schema import LAYER_COLUMNS, PROBE_COLUMNS, STEP_COLUMNS

RUNS = {
    # Glorot & Bengio's setting: sigmoid, standard init, deep: chi1 ~ 0.02 per layer
    "vanishing": {"activation": "sigmoid", "init": "standard", "depth": 10, "width": 32,
                  "optimizer": "sgd", "lr": 0.01, "steps": 20, "probe_every": 10},
    "healthy": {"activation": "relu", "init": "he", "depth": 4, "width": 32,
                "optimizer": "adam", "steps": 300, "log_every": 5, "probe_every": 50},
    # he with gain 3: chi1 = 9, the gradient grows 3x per layer towards the input
    "exploding": {"activation": "relu", "init": "he", "init_gain": 3, "depth": 10, "width": 32,
                  "optimizer": "adam", "lr": 1e-5, "steps": 20, "probe_every": 10},
    "diverged": {"activation": "relu", "init": "he", "depth": 3, "width": 32,
                 "optimizer": "sgd", "lr": 1e3, "steps": 50},
    # a huge SGD step kills most ReLUs within the first 25 steps (checked below)
    "dead": {"activation": "relu", "init": "he", "depth": 3, "width": 32, "optimizer": "sgd",
             "lr": 2.0, "steps": 100, "log_every": 5, "probe_every": 25, "seed": 0},
    # lr 5: the units die within five steps, and the gradient below them with them
    "dead_fast": {"activation": "relu", "init": "he", "depth": 3, "width": 32, "optimizer": "sgd",
                  "lr": 5.0, "steps": 100, "log_every": 5, "probe_every": 25, "seed": 0},
    "saturated": {"activation": "tanh", "init": "standard", "init_gain": 10, "depth": 4,
                  "width": 32, "optimizer": "sgd", "lr": 0.01, "steps": 20, "probe_every": 10},
    "tanh_healthy": {"activation": "tanh", "init": "xavier", "depth": 3, "width": 32,
                     "optimizer": "adam", "steps": 200, "log_every": 5, "probe_every": 50},
    "tanh_standard": {"activation": "tanh", "init": "standard", "depth": 20, "width": 32,
                      "optimizer": "sgd", "lr": 0.01, "steps": 5},
    # starts below 1e-3 (chi1^7 ~ 5e-4), Adam rescues it within a few steps and it learns
    "recovers": {"activation": "tanh", "init": "standard", "depth": 14, "width": 32,
                 "optimizer": "adam", "steps": 200, "log_every": 2},
    # the run: tanh/standard, depth 16, Adam: 1e-4 at init, hidden by Adam within a
    # few steps, and the run does not learn in three epochs; its forward signal collapses too
    "hidden_by_adam": {"activation": "tanh", "init": "standard", "depth": 16, "width": 32,
                       "optimizer": "adam", "epochs": 3, "log_every": 2},
    # SGD at torch's default lr 1e-3 on a net that trains well under Adam: updates stall
    "stalled": {"activation": "relu", "init": "he", "depth": 2, "width": 32, "optimizer": "sgd",
                "epochs": 2, "log_every": 2},
    # lr 3 on tanh: the loss swings and climbs back up without ever becoming NaN
    "unstable": {"activation": "tanh", "init": "xavier", "depth": 2, "width": 32,
                 "optimizer": "sgd", "lr": 3.0, "epochs": 2, "log_every": 2},
    # a regression task (the teacher network's targets) that learns
    "regression": {"dataset": "teacher", "activation": "relu", "init": "lecun", "depth": 2,
                   "width": 32, "optimizer": "adam", "epochs": 10},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("diagnose")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the diverged run overflows
        for name, kw in RUNS.items():
            paths[name] = d / f"{name}.h5"
            train(TrainConfig(**kw), paths[name])
    return paths


@pytest.fixture(scope="module")
def diag(runs):
    return {name: diagnose(p) for name, p in runs.items()}


def ratio_at_first_step(path):
    layers = read_layers(path)
    first = layers[layers["step"] == layers["step"].min()].set_index("layer")["delta_norm"]
    return first.loc[0] / first.loc[first.index.max()]


def rms_ratio_at_first_step(path):
    """RMS activation of the last hidden layer over the first's at the first logged step."""
    layers = read_layers(path)
    first = layers[layers["step"] == layers["step"].min()].set_index("layer")
    hidden = first.loc[: first.index.max() - 1]
    rms = np.sqrt(hidden["act_mean"] ** 2 + hidden["act_std"] ** 2)
    return rms.iloc[-1] / rms.iloc[0]


def final_val_accuracy(path):
    return float(read_epochs(path)["val_accuracy"].iloc[-1])


# -- the shape of the result ---------------------------------------------------------------------
def test_result_is_typed_and_complete(diag, runs):
    d = diag["vanishing"]
    assert isinstance(d, Diagnosis)
    assert d.run == str(runs["vanishing"])
    assert d.status == "completed"
    assert d.thresholds == DEFAULT_THRESHOLDS
    assert d.config_summary == "digits d10w32 sigmoid standard sgd lr=0.01 bs=32"
    for name, result in diag.items():
        assert result.verdict in VERDICTS, name
        assert result.severity == VERDICT_SEVERITY[result.verdict]
        assert list(result.findings) == list(CHECKS)
        for check in CHECKS:
            f = result[check]
            assert isinstance(f, Finding) and f.name == check
            assert all(isinstance(x, int) for x in f.layers + f.steps)
            assert isinstance(f.value, float)
            assert isinstance(f.message, str) and "\n" not in f.message and f.message
            assert f.rule.endswith(".")
            # a flag's severity follows the verdict: failing on a failed run, else a warning
            if f.flagged:
                assert f.severity == (FAILING if result.failing else WARNING), (name, check)
            else:
                assert f.severity is None
        # causes only for a failure, named from the cause checks
        assert all(c.name in CAUSES for c in result.causes)
        assert result.causes == [] or result.failing
        json.loads(json.dumps(result.to_dict()))  # plain data all the way down
        text = format_diagnosis(result)
        assert result.headline in text.splitlines()[0]


def test_verdict_names_live_in_one_place():
    assert VERDICTS == ("healthy", "warning", "not_learning", "diverged", "failed", "no_data")
    assert set(CAUSES) < set(CHECKS) and "not_learning" not in CAUSES
    assert set(DEFAULT_THRESHOLDS) - {"not_learning_loss"} == set(CHECKS) - {"diverged"}


def test_config_summary_with_gain():
    cfg = {"dataset": "runs/data.csv", "widths": [64, 32], "activation": "tanh",
           "init": "xavier", "init_gain": 8.0, "optimizer": "adam", "lr": None,
           "optimizer_hyper": {"lr": 0.001}, "batch_size": "full"}
    assert config_summary(cfg) == "data w64-32 tanh xavier gain=8 adam lr=0.001 bs=full"


# -- the verdict: learning or not -----------------------------------------------------------------
def test_healthy_run_learns_with_no_flag(diag, runs):
    assert final_val_accuracy(runs["healthy"]) > 0.8   # the log says so, without diagnose
    d = diag["healthy"]
    assert d.verdict == "healthy" and d.severity is None
    assert d.flags == [] and d.causes == []
    prog = d["not_learning"].numbers
    assert prog["chance_loss"] == pytest.approx(math.log(10))
    assert prog["chance_accuracy"] == pytest.approx(0.1)
    assert prog["accuracy"] == pytest.approx(final_val_accuracy(runs["healthy"]))
    assert prog["accuracy_split"] == "validation"
    steps = read_steps(runs["healthy"])
    assert prog["loss_start"] == pytest.approx(steps["loss"].iloc[0])
    tail = steps["loss"].to_numpy()[-math.ceil(0.1 * len(steps)):]
    assert prog["loss_end"] == pytest.approx(np.median(tail))
    assert d["not_learning"].message.startswith("learning: training loss ")
    assert d["vanishing"].message.startswith("no vanishing:")
    assert d["saturated"].applicable is False


def test_a_run_that_does_not_learn_is_failing_whatever_its_gradients(diag, runs):
    # every run here whose accuracy stays near chance gets a failing verdict
    for name in ("vanishing", "exploding", "dead", "saturated", "tanh_standard", "stalled",
                 "hidden_by_adam", "unstable"):
        acc = read_steps(runs[name])["accuracy"].to_numpy()
        ep = read_epochs(runs[name])
        final = ep["val_accuracy"].iloc[-1] if len(ep) else np.median(acc[-3:])
        assert final < 0.3, name                         # the log says it failed
        assert diag[name].verdict == "not_learning", (name, diag[name].headline)
        assert diag[name].failing


def test_warning_is_a_run_that_learns_with_a_flag(diag, runs):
    # tanh/standard depth 14: 1e-4-ish at step 0, Adam recovers and the run learns
    assert ratio_at_first_step(runs["recovers"]) < 1e-3
    d = diag["recovers"]
    assert d.verdict == "warning" and not d.failing
    assert d["vanishing"].flagged and d["vanishing"].severity == WARNING
    ev = d["vanishing"].numbers
    assert ev["at_init"] is True and ev["ratio_early"] > 1e-3
    assert ev["recovered_step"] is not None and ev["recovered_step"] > 0
    assert d.causes == []
    assert d.headline.startswith("warning: ") and "vanishing" in d.headline


def test_live_run_is_judged_so_far(runs):
    f = load_frames(runs["stalled"])
    half = int(f["steps"]["step"].max()) // 2
    f["steps"] = f["steps"][f["steps"]["step"] <= half]
    f["layers"] = f["layers"][f["layers"]["step"] <= half]
    f["epochs"] = f["epochs"].iloc[0:0]
    f["status"] = {"status": "running", "message": "", "last_step": half}
    d = diagnose(frames=f)
    assert d.live and d.verdict == "not_learning"
    assert "so far (step" in d["not_learning"].message
    assert d["not_learning"].numbers["so_far"] is True
    assert d["not_learning"].numbers["accuracy_split"] == "training batches"


def test_regression_is_judged_against_the_target_variance(diag, runs):
    cfg = read_config(runs["regression"])
    _, y = load_dataset("teacher")
    # the training split's variance: close to the whole set's
    assert cfg["target_variance"] == pytest.approx(np.var(y), rel=0.2)
    d = diag["regression"]
    prog = d["not_learning"].numbers
    assert prog["chance_loss"] == cfg["target_variance"]
    assert math.isnan(prog["accuracy"])
    assert d.verdict == "healthy", d["not_learning"].message
    assert "the target's variance" in d["not_learning"].message
    # the same run judged before it learned anything: its loss is not below chance
    f = load_frames(runs["regression"])
    f["steps"] = f["steps"].iloc[:2]
    assert diagnose(frames=f)["not_learning"].flagged


def test_no_cause_found_is_said_plainly():
    # a run whose loss stays at its start and nothing else looks wrong
    f = _frames(2, [0, 100], "dead_frac", [[0.0, 0.0], [0.0, 0.0]])
    f["config"].update(task="classification", n_outputs=10)
    f["layers"]["update_ratio"] = 1e-3
    f["layers"]["act_mean"], f["layers"]["act_std"] = 0.3, 0.5
    d = diagnose(frames=f)
    assert d.verdict == "not_learning" and d.causes == []
    assert d.headline == "not_learning: no cause found"
    assert "no cause found" in format_diagnosis(d).splitlines()[0]


# -- causes: vanishing -----------------------------------------------------------------------------
def test_vanishing_is_the_cause_on_deep_sigmoid_standard(diag, runs):
    assert ratio_at_first_step(runs["vanishing"]) < 1e-3  # the log says so, without diagnose
    d = diag["vanishing"]
    assert d["vanishing"].flagged
    assert d.cause_names[0] == "vanishing"
    ev = d["vanishing"]
    assert 0 in ev.layers
    assert ev.value < 1e-3
    assert ev.threshold == 1e-3
    assert ev.steps[0] == 0
    assert ev.numbers["ratio_first"] < 1e-3
    assert ev.numbers["grad_ratio_first"] < 1e-3
    assert ev.message.startswith("vanishing: back-propagated gradient at layer 0 is ")
    assert "at step 0 (threshold 1e-03)" in ev.message
    assert not d["exploding"].flagged
    assert d.causes[0].message.startswith("vanishing gradients: ")


def test_vanishing_at_init_hidden_by_adam_is_named(diag, runs):
    path = runs["hidden_by_adam"]
    r = delta_ratios(read_layers(path))[0]
    assert r.iloc[0] < 1e-3                       # vanishing at initialisation ...
    early = r[r.index <= r.index[0] + (r.index[-1] - r.index[0]) / 2]
    assert np.median(early) > 1e-3                # ... hidden by Adam over the first half
    assert final_val_accuracy(path) < 0.3
    d = diag["hidden_by_adam"]
    assert d.verdict == "not_learning"
    assert d.cause_names[0] == "vanishing"
    assert d["vanishing"].numbers["at_init"] is True
    assert "collapsed_signal" in d.cause_names


# -- causes: forward signal ------------------------------------------------------------------------
def test_collapsed_forward_signal_with_its_mean_field_prediction(diag, runs):
    measured = rms_ratio_at_first_step(runs["hidden_by_adam"])
    assert measured < 1e-2
    f = diag["hidden_by_adam"]["collapsed_signal"]
    assert f.flagged and f.value == pytest.approx(measured)
    pred = f.numbers["predicted_signal_ratio"]
    # tanh/standard: s_w^2 = 1/3, the variance shrinks about threefold per layer
    # within a factor 2 (measured 1.5x here): the mean field is for infinite width, the net
    # has 64 units, and the ratio has fallen over 100-fold, so the factor still discriminates
    assert 1 / 2 < pred / measured < 2
    # the prediction itself, worked independently: the recursion by quadrature from the
    # measured first layer (q_1 = s_w^2 rms_0^2, rms_l^2 = E[tanh(sqrt(q_l) z)^2],
    # q_{l+1} = s_w^2 rms_l^2, no biases at init), 16 hidden layers
    from scipy.integrate import quad

    first = read_layers(runs["hidden_by_adam"])
    first = first[first["step"] == first["step"].min()].set_index("layer")
    rms0 = math.hypot(first.loc[0, "act_mean"], first.loc[0, "act_std"])
    gauss = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    rms = rms0
    for _ in range(15):
        q = rms * rms / 3
        rms = math.sqrt(quad(lambda z: math.tanh(math.sqrt(q) * z) ** 2 * gauss(z),
                             -12, 12, epsabs=0, epsrel=1e-12)[0])
    assert pred == pytest.approx(rms / rms0, rel=1e-4)
    assert 15 in f.layers and 0 not in f.layers
    assert "mean-field theory predicts" in f.message
    assert not diag["healthy"]["collapsed_signal"].flagged


def test_exploding_forward_signal_on_relu_gain3(diag, runs):
    measured = rms_ratio_at_first_step(runs["exploding"])
    assert measured > 1e2
    f = diag["exploding"]["exploding_signal"]
    assert f.flagged and f.value == pytest.approx(measured)
    # relu with s_w^2 = 2 * 9: the second moment grows 9x per layer, 3x in RMS over 9 layers
    assert f.numbers["predicted_signal_ratio"] == pytest.approx(3.0 ** 9, rel=1e-6)
    # within 25% (0.87 here) of a ratio grown 3**9 = 19683-fold
    assert f.numbers["predicted_signal_ratio"] == pytest.approx(measured, rel=0.25)
    assert "exploding_signal" in diag["exploding"].cause_names


# -- causes: stalled updates and unstable loss ----------------------------------------------------
def test_stalled_updates_under_sgd_default_lr(diag, runs):
    lay = read_layers(runs["stalled"])
    per_layer = lay.pivot(index="step", columns="layer", values="update_ratio").median()
    assert per_layer.max() < 1e-3        # every layer moves below the customary 1e-3
    d = diag["stalled"]
    assert d.cause_names == ["stalled_updates"]
    f = d["stalled_updates"]
    # nothing vanishes here: every layer counts, the median of their medians
    assert f.value == pytest.approx(per_layer.median())
    assert f.value < DEFAULT_THRESHOLDS["stalled_updates"]
    assert "with sgd at lr 0.001" in f.message
    # the same net under Adam moves at the customary rate
    assert diag["healthy"]["stalled_updates"].value > 1e-3


def test_oscillating_loss_under_a_too_large_lr(diag, runs):
    loss = read_steps(runs["unstable"])["loss"].to_numpy()
    assert np.isfinite(loss).all()                          # never diverged
    assert loss[len(loss) // 2:].mean() > 2 * loss.min()    # climbed back up from its best
    d = diag["unstable"]
    assert "unstable_loss" in d.cause_names
    f = d["unstable_loss"]
    assert f.flagged and f.numbers["climb"] > 0.5
    assert not diag["healthy"]["unstable_loss"].flagged


# -- causes: exploding and diverged ---------------------------------------------------------------
def test_exploding_true_on_relu_gain3(diag, runs):
    assert ratio_at_first_step(runs["exploding"]) > 1e3
    d = diag["exploding"]
    assert d["exploding"].flagged and not d["diverged"].flagged
    ev = d["exploding"]
    assert ev.value > 1e3 and 0 in ev.layers and 0 in ev.steps
    assert ev.message.startswith("exploding:")
    assert not d["vanishing"].flagged
    assert d.cause_names[0] == "exploding"


def test_diverged_run_is_exploding_and_diverged(diag, runs):
    status = read_status(runs["diverged"])
    assert status["status"] == "diverged"
    d = diag["diverged"]
    assert d.verdict == "diverged" and d.failing
    assert d["diverged"].flagged and d["exploding"].flagged
    ev = d["diverged"]
    assert ev.steps == [status["last_step"]]
    assert status["message"] in ev.message
    assert ev.threshold is None and math.isnan(ev.value)
    xev = d["exploding"]
    assert xev.numbers["diverged"] is True
    assert status["last_step"] in xev.steps
    assert status["message"] in xev.message
    assert d.cause_names[0] == "exploding"
    assert "total gradient norm grew from" in d.causes[0].message
    # the probe at the diverged step describes broken weights: it is left out
    assert status["last_step"] in d["dead_units"].numbers["excluded_probe_steps"]
    assert d["dead_units"].numbers["step"] < status["last_step"]


def test_non_finite_loss_without_status_is_diverged(runs):
    f = load_frames(runs["diverged"])
    f["status"] = None  # only the steps table tells
    d = diagnose(frames=f)
    assert d["diverged"].flagged and d["exploding"].flagged
    assert d.status == "unknown" and d.verdict == "diverged"


# -- causes: dead units -----------------------------------------------------------------------------
def test_dead_units_true_on_killed_relu(diag, runs):
    steps, dead = read_dead_units(runs["dead"])
    fractions = [float(d[-1].mean()) for d in dead]
    assert max(fractions) >= 0.5  # the log says so, without diagnose
    d = diag["dead"]
    assert d["dead_units"].flagged
    assert d.cause_names[0] == "dead_units"
    ev = d["dead_units"]
    assert ev.layers == [l for l, f in enumerate(fractions) if f >= 0.5]
    assert ev.numbers["step"] == int(steps[-1])
    assert ev.value == pytest.approx(max(fractions))
    for l in ev.layers:
        assert ev.numbers["since"][l] in ev.steps
        assert ev.numbers["by_layer"][l] == pytest.approx(fractions[l])
    assert ev.message.startswith("dead_units: ")
    # the dead layers block the gradient on most later steps: said, though the early
    # median (judged for vanishing) is from before they died
    vev = d["vanishing"]
    assert vev.steps and vev.numbers["since_step"] is not None
    assert f"at every one since step {vev.numbers['since_step']}" in vev.message
    # units that stopped receiving a gradient are not "stalled updates" (lr 2 is huge)
    assert "stalled_updates" not in d.cause_names


def test_units_dead_early_make_the_gradient_vanish(diag, runs):
    layers = read_layers(runs["dead_fast"])
    early = layers[(layers["step"] <= 45) & (layers["step"] > 0)]
    assert (early[early["layer"] == 0]["delta_norm"] == 0).mean() > 0.5
    d = diag["dead_fast"]
    assert d["dead_units"].flagged and d["vanishing"].flagged
    # the gradient vanished after initialisation, because the units died: dead units first
    assert d.cause_names[:2] == ["dead_units", "vanishing"]
    msg = d["vanishing"].message
    assert "pass no gradient" in msg and "mean-field" not in msg
    assert d["vanishing"].numbers["onset_step"] > 0


def test_dead_units_false_on_healthy_and_not_applicable_to_tanh(diag):
    ev = diag["healthy"]["dead_units"]
    assert not ev.flagged and ev.applicable is True
    assert ev.value < 0.5 and ev.layers == []
    assert not diag["saturated"]["dead_units"].flagged
    assert diag["saturated"]["dead_units"].applicable is False


def _frames(depth, probe_steps, column, values, activation="relu", last_step=None):
    """Hand-made tables: ``values[i][l]`` is ``column`` of hidden layer l at probe_steps[i]."""
    last_step = probe_steps[-1] if last_step is None else last_step
    all_steps = sorted(set(range(0, last_step + 1, 10)) | set(probe_steps))
    rows = []
    for s in all_steps:
        for l in range(depth + 1):
            row = {c: np.nan for c in LAYER_COLUMNS}
            row.update({c: np.nan for c in PROBE_COLUMNS})
            row.update(step=s, layer=l, delta_norm=1.0, grad_norm=1.0, weight_norm=1.0)
            if l < depth and s in probe_steps:
                row.update(probe_act_mean=0.1, probe_act_std=0.1)
                row[column] = values[probe_steps.index(s)][l]
            rows.append(row)
    steps = pd.DataFrame({"step": all_steps, "epoch": 0, "loss": 1.0, "accuracy": 0.5,
                          "lr": 0.1, "grad_norm_total": 1.0, "time": 0.0})
    cfg = {"activation": activation, "depth": depth, "width": 8, "init": "he"}
    return {"steps": steps, "layers": pd.DataFrame(rows), "config": cfg,
            "status": {"status": "completed", "message": "", "last_step": last_step}}


def test_dead_units_from_frames():
    f = _frames(3, [0, 100, 200], "dead_frac",
                [[0.0, 0.1, 0.0], [0.6, 0.2, 0.0], [0.7, 0.4, 0.55]])
    d = diagnose(frames=f)
    ev = d["dead_units"]
    assert ev.flagged and d.run is None
    assert ev.layers == [0, 2]
    assert ev.numbers["since"] == {0: 100, 2: 200}
    assert ev.steps == [100, 200]
    assert ev.value == pytest.approx(0.7)
    # the loss of these tables never falls: not learning, the dead units named
    assert d.verdict == "not_learning" and d.cause_names == ["dead_units"]
    # a layer that died and came back is not dead now
    f = _frames(2, [0, 100, 200], "dead_frac", [[0.0, 0.0], [0.9, 0.0], [0.2, 0.1]])
    d = diagnose(frames=f)
    assert not d["dead_units"].flagged
    assert d["dead_units"].steps == [100]
    assert "were at or above it" in d["dead_units"].message


# -- causes: saturated ----------------------------------------------------------------------------
def test_saturated_true_on_tanh_gain10(diag, runs):
    layers = read_layers(runs["saturated"])
    last = layers[layers["step"] == layers["step"].max()]
    assert last["probe_saturated_frac"].max() >= 0.5
    d = diag["saturated"]
    assert d["saturated"].flagged
    ev = d["saturated"]
    expected = last[last["probe_saturated_frac"] >= 0.5]["layer"].tolist()
    assert ev.layers == expected
    assert ev.numbers["source"] == "probe_saturated_frac"
    assert ev.message.startswith("saturated: ")
    assert d.cause_names[0] == "saturated"


def test_saturated_false_on_tanh_xavier_adam(diag):
    d = diag["tanh_healthy"]
    assert not d["saturated"].flagged and d["saturated"].applicable is True
    assert d.verdict == "healthy"


def test_saturated_falls_back_to_training_batch_share():
    f = _frames(2, [0], "probe_saturated_frac", [[np.nan, np.nan]], activation="sigmoid",
                last_step=100)
    lay = f["layers"].drop(columns=["probe_saturated_frac", "probe_act_mean", "probe_act_std",
                                    "dead_frac"])
    lay["saturated_frac"] = np.where(lay["layer"] == 1, 0.8, 0.1)
    lay.loc[lay["layer"] == 2, "saturated_frac"] = np.nan
    f["layers"] = lay
    d = diagnose(frames=f)
    assert d["saturated"].flagged
    ev = d["saturated"]
    assert ev.numbers["source"] == "saturated_frac" and ev.layers == [1]


# -- thresholds -----------------------------------------------------------------------------------
def test_thresholds_override_flips_findings(runs, diag):
    v = diag["vanishing"]["vanishing"].numbers["ratio_first"]
    d = diagnose(runs["vanishing"], vanishing=v / 10)
    assert not d["vanishing"].flagged and d.thresholds["vanishing"] == v / 10
    # still not learning: below the looser cause bound the vanishing gradient stays a cause
    assert d.verdict == "not_learning" and d.cause_names[0] == "vanishing"

    h = diag["healthy"]
    r = h["exploding"].value
    assert diagnose(runs["healthy"], exploding=r / 2)["exploding"].flagged
    assert diagnose(runs["healthy"], vanishing=r * 2)["vanishing"].flagged
    assert diagnose(runs["healthy"], vanishing=r * 2).verdict == "warning"
    dead = h["dead_units"].value
    assert diagnose(runs["healthy"], dead_units=dead / 2)["dead_units"].flagged
    acc = h["not_learning"].numbers["accuracy_gain"]
    assert diagnose(runs["healthy"], not_learning=min(1.0, acc + 0.01)).verdict == "not_learning"

    s = diag["saturated"]["saturated"].value
    assert not diagnose(runs["saturated"], saturated=min(1.0, s + 0.01))["saturated"].flagged
    assert not diagnose(runs["exploding"], exploding=1e6)["exploding"].flagged
    u = diag["stalled"]["stalled_updates"].value
    assert not diagnose(runs["stalled"], stalled_updates=u / 2)["stalled_updates"].flagged


@pytest.mark.parametrize("bad", [{"vanish": 1e-3}, {"vanishing": 0}, {"exploding": -1},
                                 {"dead_units": 1.5}, {"saturated": "x"},
                                 {"vanishing": float("nan")}, {"not_learning": 2}])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError):
        resolve_thresholds(**bad)


# -- theory ---------------------------------------------------------------------------------------
def test_theory_message_for_tanh_standard(diag, runs):
    t = diag["tanh_standard"].theory
    assert t is not None
    assert t.chi1 == pytest.approx(1 / 3, rel=1e-6)
    assert t.depth == 20
    assert t.predicted_ratio == pytest.approx((1 / 3) ** 10, rel=1e-6)
    assert t.measured_ratio == pytest.approx(ratio_at_first_step(runs["tanh_standard"]))
    assert t.measured_step == 0
    assert t.explains is True
    assert t.message.startswith("tanh with standard init: chi1 = 0.33 (ordered), predicted ")
    assert "over 20 layers, measured " in t.message
    assert len(t.predicted_profile) == len(t.measured_profile) == 21
    # the vanishing message cites the prediction it agrees with
    assert "mean-field theory predicts" in diag["tanh_standard"]["vanishing"].message
    # and none is cited where the theory does not explain the alarm (dead units, lr)
    assert "mean-field" not in diag["diverged"]["exploding"].message


def test_signal_prediction_follows_the_variance_map():
    # sigmoid/xavier: q_1 = s_w^2 rms_0^2, then q_l = s_w^2 E[phi^2]; by hand over 3 layers
    cfg = {"activation": "sigmoid", "init": "xavier", "depth": 4, "width": 32}
    from gradscope.analysis.diagnose import predicted_signal_ratio

    sw2 = theory.weight_var_from_config(cfg)
    q = sw2 * 0.6 ** 2
    for _ in range(2):
        q = sw2 * theory.gaussian_moments("sigmoid", q)[0]
    expected = math.sqrt(theory.gaussian_moments("sigmoid", q)[0]) / 0.6
    assert predicted_signal_ratio(cfg, 0.6, 4) == pytest.approx(expected, rel=1e-9)
    assert math.isnan(predicted_signal_ratio({**cfg, "norm": "batch"}, 0.6, 4))


# -- frames, sweeps, little data ------------------------------------------------------------------
def test_frames_path_matches_file_path(runs, diag):
    d = diagnose(frames=load_frames(runs["dead"]))
    expected = dict(diag["dead"].to_dict(), run=None)
    assert json.dumps(d.to_dict(), sort_keys=True) == json.dumps(expected, sort_keys=True)
    f = load_frames(runs["dead"])
    e = evaluate(f["steps"], f["layers"], f["config"], f["status"], epochs=f["epochs"], run="x")
    assert e.run == "x" and e.verdict == d.verdict and e.headline == d.headline


def test_delta_ratios_table(runs):
    r = delta_ratios(read_layers(runs["healthy"]))
    assert list(r.columns) == [0, 1, 2, 3, 4]
    assert np.allclose(r[4], 1.0)
    assert r.index[0] == 0


def test_diagnose_table_is_the_run_table(runs, diag, tmp_path):
    from gradscope.analysis.runs import RUN_COLUMNS

    bad = tmp_path / "not-a-log.h5"
    bad.write_text("hello")
    t = diagnose_table([runs["vanishing"], runs["healthy"], bad])
    assert list(t.columns) == list(RUN_COLUMNS)
    assert list(t["verdict"][:2]) == ["not_learning", "healthy"]
    assert t["causes"].iloc[0] == ",".join(diag["vanishing"].cause_names)
    assert t["vanishing"].tolist()[:2] == [True, False]
    assert t["error"].iloc[2] and t["verdict"].iloc[2] == ""
    assert t["chi1"].iloc[1] == pytest.approx(1.0)
    assert t["ratio_early"].iloc[0] == pytest.approx(diag["vanishing"]["vanishing"].value)
    assert t["accuracy"].iloc[1] == pytest.approx(final_val_accuracy(runs["healthy"]))


def test_empty_log_says_no_data():
    cols = list(LAYER_COLUMNS) + [c for c in PROBE_COLUMNS if c not in ("step", "layer")]
    d = diagnose(frames={"layers": pd.DataFrame(columns=cols),
                         "steps": pd.DataFrame(columns=list(STEP_COLUMNS)),
                         "config": {"activation": "relu", "depth": 3, "width": 8},
                         "status": {"status": "running", "message": "", "last_step": None}})
    assert d.verdict == "no_data"
    assert d.flags == []
    assert all("not judged" in d[v].message for v in ("vanishing", "dead_units", "not_learning"))


def test_diagnose_needs_path_or_frames():
    with pytest.raises(ValueError):
        diagnose()
    with pytest.raises(ValueError):
        diagnose(frames={"steps": pd.DataFrame()})

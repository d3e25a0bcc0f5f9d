"""Tests for gradscope.analysis.diagnose: each verdict on a real run where it holds and one where it does
not, threshold overrides, the theory line, the frames= path and logs with little in them.

Runs are small (digits, width 32, tens to a few hundred steps) and trained once per module.
Where a test relies on a property of the run (a ratio below 1e-3, units dead), that property is
checked first from the log itself, independently of diagnose.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from gradscope import TrainConfig, read_dead_units, read_layers, read_status, train
from gradscope.analysis.diagnose import (
    DEFAULT_THRESHOLDS,
    VERDICTS,
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

EVIDENCE_KEYS = {"layers", "steps", "value", "threshold", "rule", "message", "applicable"}

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
    # starts below 1e-3 (chi1^7 ~ 5e-4), Adam rescues it within a few steps
    "recovers": {"activation": "tanh", "init": "standard", "depth": 14, "width": 32,
                 "optimizer": "adam", "steps": 200, "log_every": 2},
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


# -- the shape of the result ---------------------------------------------------------------------
def test_result_has_every_field(diag, runs):
    d = diag["vanishing"]
    for key in ("run", "status", "config_summary", "thresholds", "verdict", "theory", *VERDICTS):
        assert key in d
    assert d["run"] == str(runs["vanishing"])
    assert d["status"] == "completed"
    assert d["thresholds"] == DEFAULT_THRESHOLDS
    assert d["config_summary"] == "digits d10w32 sigmoid standard sgd lr=0.01 bs=32"
    for name, result in diag.items():
        for v in VERDICTS:
            assert isinstance(result[v], bool), (name, v)
            ev = result[f"{v}_evidence"]
            assert EVIDENCE_KEYS <= set(ev), (name, v)
            assert all(isinstance(x, int) for x in ev["layers"] + ev["steps"])
            assert isinstance(ev["value"], float)
            assert isinstance(ev["message"], str) and "\n" not in ev["message"]
            assert ev["message"]
            assert ev["rule"].endswith(".")
        json.dumps(result)  # plain data all the way down
        text = format_diagnosis(result)
        assert result["verdict"] in text.splitlines()[0]


def test_config_summary_with_gain():
    cfg = {"dataset": "runs/data.csv", "widths": [64, 32], "activation": "tanh",
           "init": "xavier", "init_gain": 8.0, "optimizer": "adam", "lr": None,
           "optimizer_hyper": {"lr": 0.001}, "batch_size": "full"}
    assert config_summary(cfg) == "data w64-32 tanh xavier gain=8 adam lr=0.001 bs=full"


# -- vanishing ------------------------------------------------------------------------------------
def test_vanishing_true_on_deep_sigmoid_standard(diag, runs):
    assert ratio_at_first_step(runs["vanishing"]) < 1e-3  # the log says so, without diagnose
    d = diag["vanishing"]
    assert d["vanishing"] is True
    ev = d["vanishing_evidence"]
    assert 0 in ev["layers"]
    assert ev["value"] < 1e-3
    assert ev["threshold"] == 1e-3
    assert ev["steps"][0] == 0
    assert ev["ratio_first"] < 1e-3
    assert ev["grad_ratio_first"] < 1e-3
    assert ev["message"].startswith("vanishing: back-propagated gradient at layer 0 is ")
    assert "at step 0 (threshold 1e-03)" in ev["message"]
    assert d["verdict"] == "vanishing"
    assert d["exploding"] is False


def test_healthy_relu_he_adam_gets_no_alarm(diag):
    d = diag["healthy"]
    for v in VERDICTS:
        assert d[v] is False, d[f"{v}_evidence"]["message"]
    assert d["verdict"] == "healthy"
    ev = d["vanishing_evidence"]
    assert ev["layers"] == [] and ev["steps"] == []
    assert 1e-3 < ev["value"] < 1e3
    assert ev["message"].startswith("no vanishing:")
    assert d["saturated_evidence"]["applicable"] is False


def test_relu_saturated_frac_does_not_raise_saturation(runs, diag):
    layers = read_layers(runs["healthy"])
    assert layers["probe_saturated_frac"].max() >= 0.5  # phi' = 0 for z <= 0
    assert diag["healthy"]["saturated"] is False


def test_vanishing_that_recovers_is_reported_but_not_alarmed(diag, runs):
    assert ratio_at_first_step(runs["recovers"]) < 1e-3
    d = diag["recovers"]
    assert d["vanishing"] is False
    ev = d["vanishing_evidence"]
    assert ev["ratio_first"] < 1e-3
    assert ev["recovered_step"] is not None and ev["recovered_step"] > 0
    assert 0 in ev["steps"]
    assert "started below the threshold" in ev["message"]


# -- exploding and diverged -----------------------------------------------------------------------
def test_exploding_true_on_relu_gain3(diag, runs):
    assert ratio_at_first_step(runs["exploding"]) > 1e3
    d = diag["exploding"]
    assert d["exploding"] is True
    assert d["diverged"] is False
    ev = d["exploding_evidence"]
    assert ev["value"] > 1e3 and 0 in ev["layers"] and 0 in ev["steps"]
    assert ev["message"].startswith("exploding:")
    assert d["vanishing"] is False
    assert d["verdict"] == "exploding"


def test_diverged_run_is_exploding_and_diverged(diag, runs):
    status = read_status(runs["diverged"])
    assert status["status"] == "diverged"
    d = diag["diverged"]
    assert d["diverged"] is True and d["exploding"] is True
    ev = d["diverged_evidence"]
    assert ev["steps"] == [status["last_step"]]
    assert status["message"] in ev["message"]
    assert ev["threshold"] is None and math.isnan(ev["value"])
    xev = d["exploding_evidence"]
    assert xev["diverged"] is True
    assert status["last_step"] in xev["steps"]
    assert status["message"] in xev["message"]
    assert d["verdict"] == "exploding, diverged"
    # the probe at the diverged step describes broken weights: it is left out
    assert status["last_step"] in d["dead_units_evidence"]["excluded_probe_steps"]
    assert d["dead_units_evidence"]["step"] < status["last_step"]


def test_non_finite_loss_without_status_is_diverged(runs):
    f = load_frames(runs["diverged"])
    f["status"] = None  # only the steps table tells
    d = diagnose(frames=f)
    assert d["diverged"] and d["exploding"]
    assert d["status"] == "unknown"


# -- dead units -----------------------------------------------------------------------------------
def test_dead_units_true_on_killed_relu(diag, runs):
    steps, dead = read_dead_units(runs["dead"])
    fractions = [float(d[-1].mean()) for d in dead]
    assert max(fractions) >= 0.5  # the log says so, without diagnose
    d = diag["dead"]
    assert d["dead_units"] is True
    ev = d["dead_units_evidence"]
    assert ev["layers"] == [l for l, f in enumerate(fractions) if f >= 0.5]
    assert ev["step"] == int(steps[-1])
    assert ev["value"] == pytest.approx(max(fractions))
    for l in ev["layers"]:
        assert ev["since"][l] in ev["steps"]
        assert ev["by_layer"][l] == pytest.approx(fractions[l])
    assert ev["message"].startswith("dead_units: ")
    # the dead layers block the gradient on most later steps: said, though the early
    # median (judged for vanishing) is from before they died
    vev = d["vanishing_evidence"]
    assert vev["steps"] and vev["since_step"] is not None
    assert f"at every one since step {vev['since_step']}" in vev["message"]


def test_units_dead_early_make_the_gradient_vanish(diag, runs):
    layers = read_layers(runs["dead_fast"])
    early = layers[(layers["step"] <= 45) & (layers["step"] > 0)]
    assert (early[early["layer"] == 0]["delta_norm"] == 0).mean() > 0.5
    d = diag["dead_fast"]
    assert d["dead_units"] and d["vanishing"]
    assert d["verdict"] == "vanishing, dead_units"
    msg = d["vanishing_evidence"]["message"]
    assert "pass no gradient" in msg and "mean-field" not in msg
    assert d["vanishing_evidence"]["onset_step"] > 0


def test_dead_units_false_on_healthy_and_not_applicable_to_tanh(diag):
    ev = diag["healthy"]["dead_units_evidence"]
    assert diag["healthy"]["dead_units"] is False and ev["applicable"] is True
    assert ev["value"] < 0.5 and ev["layers"] == []
    assert diag["saturated"]["dead_units"] is False
    assert diag["saturated"]["dead_units_evidence"]["applicable"] is False


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
    ev = d["dead_units_evidence"]
    assert d["dead_units"] is True and d["run"] is None
    assert ev["layers"] == [0, 2]
    assert ev["since"] == {0: 100, 2: 200}
    assert ev["steps"] == [100, 200]
    assert ev["value"] == pytest.approx(0.7)
    assert d["verdict"] == "dead_units"
    # a layer that died and came back is not dead now
    f = _frames(2, [0, 100, 200], "dead_frac", [[0.0, 0.0], [0.9, 0.0], [0.2, 0.1]])
    d = diagnose(frames=f)
    assert d["dead_units"] is False
    assert d["dead_units_evidence"]["steps"] == [100]
    assert "were at or above it" in d["dead_units_evidence"]["message"]


# -- saturated ------------------------------------------------------------------------------------
def test_saturated_true_on_tanh_gain10(diag, runs):
    layers = read_layers(runs["saturated"])
    last = layers[layers["step"] == layers["step"].max()]
    assert last["probe_saturated_frac"].max() >= 0.5
    d = diag["saturated"]
    assert d["saturated"] is True
    ev = d["saturated_evidence"]
    expected = last[last["probe_saturated_frac"] >= 0.5]["layer"].tolist()
    assert ev["layers"] == expected
    assert ev["source"] == "probe_saturated_frac"
    assert ev["message"].startswith("saturated: ")
    assert d["verdict"] == "saturated"


def test_saturated_false_on_tanh_xavier_adam(diag):
    d = diag["tanh_healthy"]
    assert d["saturated"] is False and d["saturated_evidence"]["applicable"] is True
    assert d["verdict"] == "healthy"


def test_saturated_falls_back_to_training_batch_share():
    f = _frames(2, [0], "probe_saturated_frac", [[np.nan, np.nan]], activation="sigmoid",
                last_step=100)
    lay = f["layers"].drop(columns=["probe_saturated_frac", "probe_act_mean", "probe_act_std",
                                    "dead_frac"])
    lay["saturated_frac"] = np.where(lay["layer"] == 1, 0.8, 0.1)
    lay.loc[lay["layer"] == 2, "saturated_frac"] = np.nan
    f["layers"] = lay
    d = diagnose(frames=f)
    assert d["saturated"] is True
    ev = d["saturated_evidence"]
    assert ev["source"] == "saturated_frac" and ev["layers"] == [1]


# -- thresholds -----------------------------------------------------------------------------------
def test_thresholds_override_flips_verdicts(runs, diag):
    v = diag["vanishing"]["vanishing_evidence"]["value"]
    d = diagnose(runs["vanishing"], vanishing=v / 10)
    assert d["vanishing"] is False and d["thresholds"]["vanishing"] == v / 10
    assert d["verdict"] == "healthy"

    h = diag["healthy"]
    r = h["exploding_evidence"]["value"]
    assert diagnose(runs["healthy"], exploding=r / 2)["exploding"] is True
    assert diagnose(runs["healthy"], vanishing=r * 2)["vanishing"] is True
    dead = h["dead_units_evidence"]["value"]
    assert diagnose(runs["healthy"], dead_units=dead / 2)["dead_units"] is True

    s = diag["saturated"]["saturated_evidence"]["value"]
    assert diagnose(runs["saturated"], saturated=min(1.0, s + 0.01))["saturated"] is False
    assert diagnose(runs["exploding"], exploding=1e6)["exploding"] is False


@pytest.mark.parametrize("bad", [{"vanish": 1e-3}, {"vanishing": 0}, {"exploding": -1},
                                 {"dead_units": 1.5}, {"saturated": "x"},
                                 {"vanishing": float("nan")}])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError):
        resolve_thresholds(**bad)


# -- theory ---------------------------------------------------------------------------------------
def test_theory_message_for_tanh_standard(diag, runs):
    t = diag["tanh_standard"]["theory"]
    assert t is not None
    assert t["chi1"] == pytest.approx(1 / 3, rel=1e-6)
    assert t["depth"] == 20
    assert t["predicted_ratio"] == pytest.approx((1 / 3) ** 10, rel=1e-6)
    assert t["measured_ratio"] == pytest.approx(ratio_at_first_step(runs["tanh_standard"]))
    assert t["measured_step"] == 0
    assert t["explains"] is True
    assert t["message"].startswith("tanh with standard init: chi1 = 0.33 (ordered), predicted ")
    assert "over 20 layers, measured " in t["message"]
    assert len(t["predicted_profile"]) == len(t["measured_profile"]) == 21
    # the vanishing message cites the prediction it agrees with
    assert "mean-field theory predicts" in diag["tanh_standard"]["vanishing_evidence"]["message"]
    # and none is cited where the theory does not explain the alarm (dead units, lr)
    assert "mean-field" not in diag["diverged"]["exploding_evidence"]["message"]


# -- frames, sweeps, little data ------------------------------------------------------------------
def test_frames_path_matches_file_path(runs, diag):
    d = diagnose(frames=load_frames(runs["dead"]))
    expected = dict(diag["dead"], run=None)
    assert json.dumps(d, sort_keys=True) == json.dumps(expected, sort_keys=True)
    f = load_frames(runs["dead"])
    e = evaluate(f["steps"], f["layers"], f["config"], f["status"], run="x")
    assert e["run"] == "x" and e["verdict"] == d["verdict"]


def test_delta_ratios_table(runs):
    r = delta_ratios(read_layers(runs["healthy"]))
    assert list(r.columns) == [0, 1, 2, 3, 4]
    assert np.allclose(r[4], 1.0)
    assert r.index[0] == 0


def test_diagnose_table(runs, tmp_path):
    bad = tmp_path / "not-a-log.h5"
    bad.write_text("hello")
    t = diagnose_table([runs["vanishing"], runs["healthy"], bad])
    assert list(t["verdict"][:2]) == ["vanishing", "healthy"]
    assert t["vanishing"].tolist()[:2] == [True, False]
    assert t["error"].iloc[2] and pd.isna(t["verdict"].iloc[2])
    assert t["theory_chi1"].iloc[1] == pytest.approx(1.0)


def test_empty_log_says_no_data():
    cols = list(LAYER_COLUMNS) + [c for c in PROBE_COLUMNS if c not in ("step", "layer")]
    d = diagnose(frames={"layers": pd.DataFrame(columns=cols),
                         "steps": pd.DataFrame(columns=list(STEP_COLUMNS)),
                         "config": {"activation": "relu", "depth": 3, "width": 8},
                         "status": {"status": "running", "message": "", "last_step": None}})
    assert d["verdict"] == "no data"
    assert not any(d[v] for v in VERDICTS)
    assert all("not judged" in d[f"{v}_evidence"]["message"] for v in ("vanishing", "dead_units"))


def test_diagnose_needs_path_or_frames():
    with pytest.raises(ValueError):
        diagnose()
    with pytest.raises(ValueError):
        diagnose(frames={"steps": pd.DataFrame()})

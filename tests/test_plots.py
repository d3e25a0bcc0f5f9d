"""gradscope.views.plots on small hand-made tables: what each figure draws."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.collections import QuadMesh

from gradscope.views import plots


def layer_table(n_steps=10, n_layers=3, run=None):
    """grad_norm = 10**layer * (step + 1); other metrics derived from it."""
    steps = np.repeat(np.arange(n_steps), n_layers)
    layers = np.tile(np.arange(n_layers), n_steps)
    g = 10.0 ** layers * (steps + 1)
    df = pd.DataFrame({
        "step": steps, "layer": layers, "grad_norm": g, "delta_norm": g / 2,
        "update_ratio": 1e-3 * (layers + 1) * np.ones_like(g),
        "act_mean": 0.1 * layers, "act_std": 0.05 + 0 * g,
        "dead_frac": np.where(steps % 5 == 0, 0.1 * layers, np.nan),
    })
    # the output layer has no activation or dead units
    out = layers == n_layers - 1
    df.loc[out, ["act_mean", "act_std", "dead_frac"]] = np.nan
    if run is not None:
        df["run"] = run
    return df


# -- downsample -----------------------------------------------------------------------------
def test_downsample_bounds_keeps_ends_and_takes_bin_medians():
    df = layer_table(n_steps=1000, n_layers=2)
    out = plots.downsample(df, 50)
    steps = np.sort(out["step"].unique())
    assert len(steps) <= 50
    assert steps[0] == 0 and steps[-1] == 999
    assert len(out) == 2 * len(steps)
    # the first and last logged steps are bins of their own, unchanged
    first = out[out["step"] == 0].sort_values("layer")
    assert first["grad_norm"].tolist() == [1.0, 10.0]
    assert out["step_lo"].min() == 0 and out["step_hi"].max() == 999
    # every middle bin: the median of its logged steps
    row = out[(out["layer"] == 0) & (out["step"] > 0) & (out["step"] < 999)].iloc[3]
    lo, hi = int(row["step_lo"]), int(row["step_hi"])
    assert lo <= row["step"] <= hi
    assert row["grad_norm"] == pytest.approx(np.median(np.arange(lo, hi + 1) + 1.0))
    # bins tile the steps: no gap, no overlap
    b = out[out["layer"] == 0].sort_values("step")
    assert (b["step_lo"].to_numpy()[1:] == b["step_hi"].to_numpy()[:-1] + 1).all()


def test_downsample_short_table_unchanged_and_per_run():
    df = layer_table(n_steps=20)
    out = plots.downsample(df, 400)
    assert len(out) == len(df)
    assert (out["step_lo"] == out["step"]).all()
    two = pd.concat([layer_table(300, run="a"), layer_table(100, run="b")])
    out = plots.downsample(two, 30)
    assert set(out["run"]) == {"a", "b"}
    for run, n_last in (("a", 299), ("b", 99)):
        s = out[out["run"] == run]["step"]
        assert s.nunique() <= 30 and s.min() == 0 and s.max() == n_last
    # binning twice keeps the bin extents
    again = plots.downsample(out[out["run"] == "a"], 10)
    assert again["step_lo"].min() == 0 and again["step_hi"].max() == 299
    with pytest.raises(ValueError):
        plots.downsample(df, 2)


def test_downsample_ignores_nan_in_medians():
    df = pd.DataFrame({"step": np.arange(10), "v": [1.0, 2, np.nan, 4, 5, 6, 7, 8, 9, 10]})
    out = plots.downsample(df, 4, by=[])
    assert out["step"].tolist()[0] == 0 and out["step"].tolist()[-1] == 9
    # middle steps 1..8 in two bins: values (2, nan, 4, 5) -> 4; (6, 7, 8, 9) -> 7.5
    assert out["v"].tolist() == [1.0, 4.0, 7.5, 10.0]


# -- gradient heatmap -----------------------------------------------------------------------
def test_gradient_heatmap_array_is_log10_of_bin_medians():
    df = layer_table(n_steps=10, n_layers=3)
    ax = plots.gradient_heatmap(data=df, max_steps=4)
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1
    Z = np.asarray(meshes[0].get_array()).reshape(3, -1)
    # bins: [0], [1..4], [5..8], [9]
    assert Z.shape == (3, 4)
    # layer 1, second bin: median of 10 * (step + 1) over steps 1..4 = 10 * 3.5
    assert Z[1, 1] == pytest.approx(math.log10(35.0))
    assert Z[2, 0] == pytest.approx(2.0)            # layer 2, step 0: 100
    assert Z[0, 3] == pytest.approx(1.0)            # layer 0, step 9: 10
    assert "layer (0 = input side)" in ax.get_ylabel()
    assert ax.get_xlabel() == "step"
    cbar_ax = ax.figure.axes[-1]
    assert cbar_ax.get_ylabel() == "log10 ||dL/dW_l||"
    assert meshes[0].get_cmap().name == "viridis"


def test_gradient_heatmap_bin_edges_follow_steps():
    df = layer_table(n_steps=10, n_layers=2)
    _Z, layers, steps, edges = plots.heatmap_matrix(df, "grad_norm", 4)
    assert list(layers) == [0, 1]
    assert steps[0] == 0 and steps[-1] == 9
    assert edges[0] == -0.5 and edges[-1] == 9.5
    assert list(edges[1:-1]) == [0.5, 4.5, 8.5]


def test_gradient_heatmap_non_finite_values_are_blank():
    df = layer_table(n_steps=6, n_layers=2)
    df.loc[df["step"] == 5, "grad_norm"] = np.inf
    df.loc[(df["step"] == 4) & (df["layer"] == 0), "grad_norm"] = np.nan
    df.loc[(df["step"] == 3) & (df["layer"] == 1), "grad_norm"] = 0.0
    ax = plots.gradient_heatmap(data=df)
    Z = np.ma.masked_invalid(
        next(c for c in ax.collections if isinstance(c, QuadMesh)).get_array()).reshape(2, -1)
    assert Z.shape == (2, 6)
    assert Z.mask[:, 5].all() and Z.mask[0, 4] and Z.mask[1, 3]
    assert not Z.mask[:, 0].any()


def test_gradient_heatmap_several_runs_is_a_facetgrid():
    df = pd.concat([layer_table(run="a"), layer_table(run="b")])
    g = plots.gradient_heatmap(data=df, value="delta_norm")
    assert isinstance(g, sns.FacetGrid)
    assert len(g.axes.flat) == 2
    with pytest.raises(ValueError):
        _, ax = plt.subplots()
        plots.gradient_heatmap(data=df, ax=ax)


# -- profile --------------------------------------------------------------------------------
def test_gradient_profile_one_line_per_moment_log_scale_and_prediction():
    df = layer_table(n_steps=9, n_layers=4)
    ax = plots.gradient_profile(data=df, value="grad_norm")
    assert len(ax.get_lines()) == 4
    assert ax.get_yscale() == "log"
    labels = [l.get_label() for l in ax.get_lines()]
    assert labels[0].startswith("start (step 0)") and labels[-1].startswith("end (step 8)")
    # the half moment is step 4: values 10**layer * 5
    half = ax.get_lines()[2]
    assert list(half.get_ydata()) == [5.0, 50.0, 500.0, 5000.0]

    _, ax = plt.subplots()
    plots.gradient_profile(data=df, ax=ax, predicted=[1e-3, 1e-2, 1e-1, 1.0])
    lines = ax.get_lines()
    assert len(lines) == 5
    assert lines[-1].get_linestyle() == "--"
    assert list(lines[-1].get_xdata()) == [0, 1, 2, 3]


def test_gradient_profile_end_of_diverged_run_is_last_finite_step():
    df = layer_table(n_steps=5, n_layers=3)
    df.loc[df["step"] == 4, "delta_norm"] = np.nan
    ax = plots.gradient_profile(data=df, moments=("start", "end"))
    assert ax.get_lines()[-1].get_label() == "end (step 3)"


def test_moment_steps():
    assert plots.moment_steps([0, 10, 20, 30, 40]) == {
        "start": 0, "quarter": 10, "half": 20, "end": 40}
    assert plots.moment_steps([0, 10, 20], (0.5, 20)) == {"50%": 10, "step 20": 20}
    with pytest.raises(ValueError):
        plots.moment_steps([0, 1], ("later",))


# -- dead units -----------------------------------------------------------------------------
def test_dead_units_lines_per_hidden_layer_and_threshold():
    df = layer_table(n_steps=12, n_layers=4)
    ax = plots.dead_units(data=df, threshold=0.5)
    data_lines = [l for l in ax.get_lines() if l.get_gid() != "dead-threshold"]
    assert len(data_lines) == 3          # hidden layers 0..2; the output layer has none
    assert list(data_lines[1].get_xdata()) == [0, 5, 10]
    assert [l for l in ax.get_lines() if l.get_gid() == "dead-threshold"]
    assert ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1


def test_dead_unit_map_image_units_by_steps():
    steps = np.array([0, 100, 200, 300])
    dead = [np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 1]], bool),
            np.zeros((4, 5), bool)]
    ax = plots.dead_unit_map(steps=steps, dead=dead)
    img = ax.collections[0] if ax.collections else ax.images[0]
    arr = np.ma.masked_invalid(img.get_array())
    n_rows = arr.shape[0] if arr.ndim == 2 else None
    # 3 + 5 units and a gap row between the layers
    assert n_rows == 3 + 5 + 1
    # sorted: the unit dead since step 100 first, then the one dead since 200, then alive
    assert list(arr[:3, 3]) == [1, 1, 0]
    assert list(arr[:3, 1]) == [1, 0, 0]
    ax2 = plots.dead_unit_map(steps=steps, dead=dead, layer=0, sort=False)
    assert "units" in ax2.get_ylabel()


# -- activations ----------------------------------------------------------------------------
def hist_table():
    edges = np.linspace(0, 1, 11)
    rows = []
    for step in (0, 100, 200):
        for layer in range(3):
            counts = np.arange(10) + layer + step / 100
            rows.append(pd.DataFrame({
                "step": step, "layer": layer, "bin_left": edges[:-1], "bin_right": edges[1:],
                "count": counts, "density": counts / counts.sum() / 0.1}))
    return pd.concat(rows, ignore_index=True)


def test_activation_distributions_start_and_end():
    h = hist_table()
    _fig, axes = plt.subplots(1, 2)
    plots.activation_distributions(hist=h, ax=axes)
    assert [len(a.get_lines()) for a in axes] == [3, 3]
    assert "start (step 0)" in axes[0].get_title()
    assert "end (step 200)" in axes[1].get_title()
    x = axes[0].get_lines()[0].get_xdata()
    assert x[0] == pytest.approx(0.05)           # bin centres
    _, ax = plt.subplots()
    plots.activation_distributions(hist=h, ax=ax)  # both steps on one Axes
    assert len(ax.get_lines()) == 6
    g = plots.activation_distributions(hist=pd.concat([h.assign(run="a"), h.assign(run="b")]))
    assert isinstance(g, sns.FacetGrid)
    assert np.atleast_2d(g.axes).shape == (2, 2)


def test_activation_summary_errorbars_per_moment():
    df = layer_table(n_steps=9, n_layers=4)
    ax = plots.activation_summary(data=df)
    assert len(ax.containers) == 3               # start, half, end
    assert ax.get_xlabel() == "layer (0 = input side)"


# -- update ratio ---------------------------------------------------------------------------
def test_update_ratio_log_scale_and_guide():
    df = layer_table(n_steps=30, n_layers=3)
    df.loc[df["step"] == 29, "update_ratio"] = np.nan    # a diverged step
    ax = plots.update_ratio(data=df)
    assert ax.get_yscale() == "log"
    guides = [l for l in ax.get_lines() if l.get_gid() == "update-guide"]
    assert len(guides) == 1
    assert list(guides[0].get_ydata()) == [1e-3, 1e-3]
    assert guides[0].get_linestyle() == "--"
    texts = [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_legend().texts]
    assert any("0.001" in t for t in texts)
    data_lines = [l for l in ax.get_lines() if l.get_gid() != "update-guide"]
    assert len(data_lines) == 3
    assert all(np.isfinite(l.get_ydata()).all() for l in data_lines)


# -- learning curves ------------------------------------------------------------------------
def steps_epochs(run=None, scale=1.0):
    n = 200
    steps = pd.DataFrame({"step": np.arange(n), "loss": scale * 10.0 ** (-3 * np.arange(n) / n),
                          "accuracy": np.linspace(0.1, 0.9, n)})
    epochs = pd.DataFrame({"epoch": np.arange(4), "step": [50, 100, 150, 200],
                           "val_loss": [0.5, 0.1, 0.05, 0.01],
                           "val_accuracy": [0.5, 0.6, 0.7, 0.8]})
    if run:
        steps["run"], epochs["run"] = run, run
    return steps, epochs


def test_learning_curves_facets_log_loss_and_validation():
    s, e = steps_epochs()
    g = plots.learning_curves(steps=s, epochs=e)
    assert isinstance(g, sns.FacetGrid)
    loss_ax, acc_ax = g.axes.flat
    assert loss_ax.get_yscale() == "log"
    assert acc_ax.get_yscale() == "linear"
    assert len(loss_ax.get_lines()) == 2          # train (smoothed) + validation
    val = next(l for l in loss_ax.get_lines() if l.get_linestyle() == "--")
    assert list(val.get_xdata()) == [50, 100, 150, 200]


def test_learning_curves_several_runs_and_non_finite_loss():
    s1, e1 = steps_epochs("a")
    s2, e2 = steps_epochs("b", scale=2)
    s2.loc[150:, "loss"] = np.nan
    s2.loc[149, "loss"] = np.inf
    _fig, axes = plt.subplots(1, 2)
    plots.learning_curves(steps=pd.concat([s1, s2]), epochs=pd.concat([e1, e2]), ax=axes)
    lines = [l for l in axes[0].get_lines() if l.get_linestyle() in ("-", "--")]
    assert len(lines) == 4                        # 2 runs x (train, validation)
    for l in lines:
        assert np.isfinite(np.asarray(l.get_ydata(), float)).all()
    # the diverged run is marked where its loss stops being finite
    marks = [l for l in axes[0].get_lines() if l.get_linestyle() == ":"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 149
    legend = [t.get_text() for t in axes[1].get_legend().texts]
    assert "a" in legend and "b" in legend


def test_learning_curves_linear_when_loss_spans_little():
    s, e = steps_epochs()
    s["loss"] = np.linspace(2.3, 2.0, len(s))
    e["val_loss"] = 2.1
    _, ax = plt.subplots()
    plots.learning_curves(steps=s, epochs=e, ax=ax)
    assert ax.get_yscale() == "linear"


# -- run comparison -------------------------------------------------------------------------
def test_run_comparison_log_axis_groups_and_missing():
    summary = pd.DataFrame({
        "run": ["sigmoid run", "relu run", "broken run"], "ratio": [1e-7, 0.8, np.nan],
        "activation": ["sigmoid", "relu", "relu"]})
    ax = plots.run_comparison(summary=summary, hue="activation")
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sigmoid run", "relu run",
                                                            "broken run"]
    offsets = ax.collections[0].get_offsets()
    assert len(offsets) == 2                        # the NaN row is not drawn ...
    assert any("n/a" in t.get_text() for t in ax.texts)   # ... but named
    ys = sorted(offsets[:, 1])
    assert ys == pytest.approx([1e-7, 0.8])
    _, ax2 = plt.subplots()
    plots.run_comparison(summary=summary, x="ratio", y="run", ax=ax2)
    assert ax2.get_xscale() == "log"
    lo, hi = ax2.get_xlim()
    assert lo <= 1e-7 and hi >= 1e3              # the guides stay in view


# -- sweeps: one row per run ----------------------------------------------------------------
def sweep_table(seeds=(0, 1), optimizers=("sgd", "adam")):
    """ratio = c**depth per activation / init; seeds scale it by (1 + seed)."""
    rates = {("sigmoid", "standard"): 0.1, ("sigmoid", "he"): 0.3, ("relu", "standard"): 0.5,
             ("relu", "he"): 1.0}
    rows = []
    for opt in optimizers:
        for (act, init), c in rates.items():
            for depth in (2, 4, 8):
                for seed in seeds:
                    rows.append({
                        "optimizer": opt, "activation": act, "init": init, "depth": depth,
                        "seed": seed, "ratio_early": c ** depth * (1 + seed),
                        "ratio_first": c ** depth, "predicted_ratio": c ** depth / 2,
                        "dead_frac": 0.01 * depth * (1 + seed) if act == "relu" else np.nan,
                        "accuracy": 0.5 + 0.01 * depth + 0.1 * (act == "relu") + 0.01 * seed
                                    + 0.05 * (opt == "adam")})
    return pd.DataFrame(rows)


def measured(ax):
    return [l for l in ax.get_lines() if l.get_gid() == "measured"]


def test_phase_diagram_lines_per_activation_and_init_log_scale_and_guides():
    t = sweep_table()
    g = plots.phase_diagram(summary=t)
    assert isinstance(g, sns.FacetGrid)
    axes = list(g.axes.flat)
    assert [a.get_title() for a in axes] == ["optimizer = adam", "optimizer = sgd"]
    for ax in axes:
        assert ax.get_yscale() == "log"
        lines = measured(ax)
        assert len(lines) == 4                          # activation x init
        # the median over the seeds: c**depth * 1.5
        ys = sorted(tuple(np.round(np.log10(l.get_ydata()), 6)) for l in lines)
        want = sorted(tuple(np.round(np.log10(c ** np.array([2, 4, 8]) * 1.5), 6))
                      for c in (0.1, 0.3, 0.5, 1.0))
        assert ys == want
        for l in lines:
            assert list(l.get_xdata()) == [2, 4, 8]
        # the prediction: dashed, in the colour of its measured line
        pred = [l for l in ax.get_lines() if l.get_gid() == "predicted"]
        assert len(pred) == 4 and all(l.get_linestyle() == "--" for l in pred)
        assert {l.get_color() for l in pred} == {l.get_color() for l in lines}
        # seeds: a min-max band per line; the first step: one cross per run
        assert len(ax.collections) == 4
        firsts = [l for l in ax.get_lines() if l.get_gid() == "first-step"]
        assert sum(len(l.get_xdata()) for l in firsts) == 4 * 3 * 2
        guides = {l.get_gid(): l.get_ydata()[0] for l in ax.get_lines()
                  if l.get_gid() in ("vanishing-guide", "exploding-guide")}
        assert guides == {"vanishing-guide": 1e-3, "exploding-guide": 1e3}
        lo, hi = ax.get_ylim()
        assert lo <= 0.1 ** 8 and hi >= 1e3
    # colours: one per activation, the same in both panels; markers: one per init
    legend = [t.get_text() for t in g.legend.texts]
    for word in ("activation", "sigmoid", "relu", "init", "standard", "he",
                 "mean-field prediction\nat init (plain MLP)"):
        assert word in legend


def test_phase_diagram_on_given_axes_missing_values():
    t = sweep_table(seeds=(0,), optimizers=("sgd",))
    t.loc[0, "ratio_early"] = 0.0                      # underflow: not on a log axis
    t = t.drop(columns="predicted_ratio")
    _, ax = plt.subplots()
    axes = plots.phase_diagram(summary=t, ax=ax, guides=(1e-4, 1e4))
    assert axes.shape == (1, 1) and axes[0, 0] is ax
    assert len(measured(ax)) == 4
    assert not [l for l in ax.get_lines() if l.get_gid() == "predicted"]
    assert any("1 run without a finite positive value" in x.get_text() for x in ax.texts)
    assert "first half" in ax.get_ylabel()
    assert ax.get_legend() is not None
    with pytest.raises(ValueError, match="panels"):
        _, two = plt.subplots(1, 2)
        plots.phase_diagram(summary=sweep_table(), ax=two[:1])
    with pytest.raises(ValueError, match="no column"):
        plots.phase_diagram(summary=t.drop(columns="ratio_early"))


def test_depth_dead_units_relu_rows_only_linear_scale():
    t = sweep_table()
    g = plots.depth_dead_units(summary=t, threshold=0.5)
    ax = g.axes.flat[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    lines = measured(ax)
    assert len(lines) == 2                              # relu x (standard, he)
    for l in lines:
        assert list(l.get_ydata()) == pytest.approx([0.03, 0.06, 0.12])
    assert [l for l in ax.get_lines() if l.get_gid() == "dead-threshold"]


def test_grid_heatmap_cells_are_the_accuracies():
    t = sweep_table(seeds=(0,))
    t = t[~((t["activation"] == "relu") & (t["init"] == "he") & (t["depth"] == 8))]  # a hole
    g = plots.grid_heatmap(summary=t)
    assert isinstance(g, sns.FacetGrid)
    for ax, opt in zip(g.axes.flat, ["adam", "sgd"]):
        mesh = next(c for c in ax.collections if c.get_gid() == "grid-heatmap")
        assert mesh.get_cmap().name == "viridis"
        Z = np.ma.filled(mesh.get_array(), np.nan)
        rows = [t.get_text() for t in g.axes.flat[0].get_yticklabels()]
        assert rows == ["relu / he", "relu / standard", "sigmoid / he", "sigmoid / standard"]
        sub = t[t["optimizer"] == opt]
        for i, row in enumerate(rows):
            act, init = row.split(" / ")
            for j, depth in enumerate((2, 4, 8)):
                cell = sub[(sub["activation"] == act) & (sub["init"] == init)
                           & (sub["depth"] == depth)]["accuracy"]
                if len(cell):
                    assert Z[i, j] == pytest.approx(cell.iloc[0])
                else:
                    assert np.isnan(Z[i, j])
        texts = [x.get_text() for x in ax.texts]
        assert "no run" in texts
        assert f"{100 * sub['accuracy'].iloc[0]:.0f}%" in texts
    cbar = g.figure.axes[-1]
    assert "accuracy" in cbar.get_ylabel()


def test_grid_heatmap_median_over_seeds_on_given_axes():
    t = sweep_table(seeds=(0, 1, 2), optimizers=("sgd",))
    t = t.drop(index=t.index[-1])    # cells of 6 runs (2 inits x 3 seeds), one of 5: n shown
    _, ax = plt.subplots()
    plots.grid_heatmap(summary=t, ax=ax, y="activation", agg="median")
    mesh = next(c for c in ax.collections if c.get_gid() == "grid-heatmap")
    Z = np.ma.filled(mesh.get_array(), np.nan)
    assert Z.shape == (2, 3)
    want = t[(t["activation"] == "relu") & (t["depth"] == 2)]["accuracy"].median()
    assert Z[0, 0] == pytest.approx(want)
    texts = [x.get_text() for x in ax.texts]
    assert sum("(n=5)" in x for x in texts) == 1 and sum("(n=6)" in x for x in texts) == 5
    with pytest.raises(ValueError, match="agg"):
        plots.grid_heatmap(summary=t, agg="mode")


def test_profile_comparison_shares_one_log_scale():
    a = layer_table(n_steps=5, n_layers=4, run="plain")
    b = layer_table(n_steps=5, n_layers=4, run="residual")
    b["delta_norm"] = b["delta_norm"] * 1e-4
    g = plots.profile_comparison(data=pd.concat([a, b]), titles={"plain": "off: vanishing"})
    ax1, ax2 = g.axes.flat
    assert ax1.get_yscale() == ax2.get_yscale() == "log"
    assert ax1.get_ylim() == ax2.get_ylim()
    assert ax1.get_title(loc="left") == "off: vanishing"
    assert ax2.get_title(loc="left") == "residual"
    # start and end
    assert len([l for l in ax1.get_lines() if l.get_label().startswith(("start", "end"))]) == 2


@pytest.mark.parametrize("fn", [plots.gradient_profile, plots.dead_units,
                                plots.activation_summary, plots.update_ratio])
def test_one_run_draws_on_the_axes_several_make_a_grid(fn):
    one = layer_table(run="a")
    _, ax = plt.subplots()
    assert fn(data=one, ax=ax) is ax
    assert ax.lines or ax.collections
    two = pd.concat([one, layer_table(run="b")])
    g = fn(data=two)
    assert isinstance(g, sns.FacetGrid) and len(g.axes.flat) == 2
    with pytest.raises(ValueError, match="holds 2 runs; one Axes draws one run"):
        fn(data=two, ax=ax)
    plt.close("all")

"""The report's figures read right at a glance: shared colour scales and y axes where panels
are compared, coinciding lines said so, histogram mass past the range said so, layer and
optimizer colours that differ, underflowed ratios printed as such, epochs counted from 1."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from gradscope import TrainConfig, train
from gradscope.views import plots, report


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("look")
    out = []
    for act, init in (("relu", "he"), ("sigmoid", "standard")):
        p = d / f"{act}.h5"
        train(TrainConfig(dataset="moons", depth=4, width=16, activation=act, init=init,
                          optimizer="sgd", lr=0.05, epochs=3, probe_every=10), p)
        out.append(report.load_run(p))
    return out


def test_heatmaps_share_one_colour_scale_per_quantity(two_runs):
    page = report._flow_pages(two_runs)[0]
    fig = Figure(figsize=report.PAGE_SIZE)
    page.draw(fig)
    from matplotlib.collections import QuadMesh
    meshes = [c for ax in fig.axes if ax.get_ylabel().startswith("layer")   # not colour bars
              for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 4
    left, right = meshes[0::2], meshes[1::2]        # grad_norm, delta_norm columns
    for col, value in ((left, "grad_norm"), (right, "delta_norm")):
        assert len({m.get_clim() for m in col}) == 1
        lo, hi = col[0].get_clim()
        logs = np.log10(np.concatenate([r.layers[value].to_numpy(float) for r in two_runs]))
        assert lo == pytest.approx(np.nanmin(logs)) and hi == pytest.approx(np.nanmax(logs))


def test_profile_panels_share_the_y_axis(two_runs):
    page = report._profile_pages(two_runs)[0]
    fig = Figure(figsize=report.PAGE_SIZE)
    page.draw(fig)
    lims = {ax.get_ylim() for ax in fig.axes if ax.get_lines()}
    assert len(lims) == 1


def _layers(profiles: dict) -> pd.DataFrame:
    rows = [{"step": s, "layer": l, "delta_norm": v}
            for s, prof in profiles.items() for l, v in enumerate(prof)]
    return pd.DataFrame(rows)


def test_coinciding_profile_lines_are_said_to_lie_on_one_line():
    prof = 10.0 ** -np.arange(6)[::-1]
    ax = plots.gradient_profile(data=_layers({0: prof, 10: prof * 1.01, 20: prof, 30: prof}))
    assert any("lie on one line" in t.get_text() for t in ax.texts)
    ax = plots.gradient_profile(data=_layers({0: prof, 10: prof * 3, 20: prof, 30: prof}))
    assert not any("lie on one line" in t.get_text() for t in ax.texts)


def test_histogram_mass_past_the_range_is_not_a_spike_and_is_counted():
    edges = np.linspace(0, 5, 11)
    counts = np.array([50, 20, 10, 5, 5, 2, 2, 1, 1, 30])   # last bin: the values above 5
    hist = pd.DataFrame({"step": 0, "layer": 0, "bin_left": edges[:-1],
                         "bin_right": edges[1:], "count": counts,
                         "density": counts / counts.sum() / 0.5})
    fig = Figure()
    a1, a2 = fig.subplots(1, 2)
    plots.activation_distributions(hist=hist, ax=[a1, a2], open_ends=(False, True))
    (line,) = a1.get_lines()
    assert line.get_xdata().max() < 4.5                  # the last bin is not drawn
    note = " ".join(t.get_text() for t in a1.texts)
    assert f"{100 * 30 / counts.sum():.0f}% of values at or above 5" in note
    fig = Figure()
    ax = fig.subplots()
    plots.activation_distributions(hist=hist, ax=[ax, fig.add_subplot(2, 2, 4)])
    assert ax.get_lines()[0].get_xdata().max() > 4.5    # a bounded activation: drawn


def test_twenty_layer_colours_differ():
    pal = [np.array(to_rgb(c)) for c in plots._layer_palette(20)]
    dist = min(np.linalg.norm(a - b) for a, b in itertools.combinations(pal, 2))
    assert dist > 0.06
    # neighbours beyond ten layers also differ in line style
    assert plots._layer_style(0, 20) != plots._layer_style(1, 20)


def test_optimizer_colours_differ_in_the_adam_family():
    from gradscope.teaching import _COLORS, _STYLES
    fam = ["adam", "amsgrad", "adamw", "nadam", "adamax"]
    cols = [np.array(to_rgb(_COLORS[n])) for n in fam]
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(cols, 2)) > 0.3
    assert len({str(_STYLES[n]) for n in fam}) == len(fam)


def test_underflowed_ratio_is_printed_as_such():
    assert report._fmt(0.0, ratio=True) == "< 1e-308 (underflow)"
    assert report._fmt(0.0) == "0"
    fig = Figure()
    axes = fig.subplots(1, 2)
    s = pd.DataFrame({"run": ["deep", "ok"], "ratio": [0.0, 0.5], "dead": [np.nan, 0.1],
                      "saturated": [0.9, np.nan], "alarm": ["failing", ""]})
    plots.run_overview(summary=s, ax=axes)
    assert any("< 1e-308 (underflow)" in t.get_text() for t in axes[0].texts)


def test_final_line_counts_epochs_from_one(two_runs):
    assert "after epoch 3 of 3 " in report._final_line(two_runs[0])


def test_summary_starts_with_the_overview_and_names_remedies(two_runs):
    pages = report._summary_pages(two_runs, [r.diagnosis for r in two_runs])
    fig = Figure(figsize=report.PAGE_SIZE)
    pages[0].draw(fig, 0.9)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    overview = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert overview and overview[0].get_position().y1 > 0.8     # at the top of the page
    if two_runs[1].diagnosis.verdict != "healthy":
        assert any(t.strip().startswith("gradscope train") for t in texts)

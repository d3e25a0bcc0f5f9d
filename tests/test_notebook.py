"""gradscope.Run / gradscope.Runs: the notebook display of runs, and their figures."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest

import gradscope

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    cfgs = {
        "sigmoid": dict(depth=6, activation="sigmoid", init="standard", optimizer="sgd"),
        "relu": dict(depth=3, activation="relu", init="he", optimizer="adam"),
    }
    for name, c in cfgs.items():
        gradscope.train(gradscope.TrainConfig(dataset="digits", steps=150, probe_every=50, **c),
                        d / f"{name}.h5")
    return d


def test_run_is_loaded_lazily_from_the_package():
    code = ("import sys, gradscope; a = 'gradscope.views.notebook' in sys.modules; "
            "R = gradscope.Run; print(a, 'gradscope.views.notebook' in sys.modules, "
            "R.__module__, 'Run' in dir(gradscope))")
    env = {"PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.split() == ["False", "True", "gradscope.views.notebook", "True"], r.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gradscope.Nope  # noqa: B018


def test_run_html_summary(logs):
    run = gradscope.Run(logs / "sigmoid.h5")
    html = run._repr_html_()
    d = gradscope.diagnose(logs / "sigmoid.h5")
    assert run.verdict == d["verdict"] == "vanishing"
    assert "digits d6w64 sigmoid standard sgd" in html
    assert "completed, 150 steps" in html
    assert "verdict: <b" in html and ">vanishing</b>" in html
    # the evidence line of the alarm, escaped
    assert d["vanishing_evidence"]["message"].replace("'", "&#x27;") in html
    # the inline figure is a PNG
    b64 = html.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert repr(run) == f"Run({str(logs / 'sigmoid.h5')!r}: completed, vanishing)"


def test_profile_plots_the_logged_gradients(logs):
    run = gradscope.Run(logs / "sigmoid.h5")
    ax = run.plot.profile()
    assert isinstance(ax, matplotlib.axes.Axes) and ax.get_yscale() == "log"
    lay = gradscope.read_layers(logs / "sigmoid.h5")
    first = lay[lay["step"] == 0].sort_values("layer")["delta_norm"].to_numpy()
    start = next(l for l in ax.get_lines() if l.get_label().startswith("start"))
    np.testing.assert_allclose(start.get_ydata(), first, rtol=1e-6)


@pytest.mark.parametrize("name", ["flow", "dead", "activations", "updates", "learning"])
def test_every_figure_method_returns_axes(logs, name):
    run = gradscope.Run(logs / "relu.h5")
    out = getattr(run.plot, name)()
    axes = out if isinstance(out, list) else [out]
    assert axes and all(isinstance(a, matplotlib.axes.Axes) for a in axes)
    assert all(a.has_data() for a in axes)


def test_runs_table_and_profiles(logs):
    runs = gradscope.Runs(logs)
    assert [r.label for r in runs] == ["relu", "sigmoid"]
    t = runs.table()
    assert list(t["run"]) == ["relu", "sigmoid"]
    assert list(t["verdict"]) == [gradscope.diagnose(logs / f"{n}.h5")["verdict"]
                                  for n in ("relu", "sigmoid")]
    html = runs._repr_html_()
    assert "<table" in html and html.count("<tbody>") == 1
    assert html.split("<tbody>")[1].count("<tr>") == 2   # one row a run
    axes = runs.plot.profile()
    assert len(axes) == 2 and axes[0].get_ylim() == axes[1].get_ylim()
    buf = io.BytesIO()
    axes[0].figure.savefig(buf, format="png")


def test_run_of_a_missing_file_says_so(tmp_path):
    run = gradscope.Run(tmp_path / "nope.h5")
    with pytest.raises(gradscope.views.report.LogError, match="does not exist"):
        run.verdict  # noqa: B018

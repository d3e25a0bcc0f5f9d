"""Tests for :mod:`gradscope.teaching` and the ``gradscope plot`` commands.

* Every surface's gradient is its analytic derivative, and its learning-rate table
  covers every registered optimizer.
* With the table's learning rate, every optimizer ends within ``Surface.tol`` (0.05)
  of the minimum of the ravine, Rosenbrock's and Beale's function after the surface's
  step budget (``Surface.steps``), from the figure's start point, without leaving the
  figure's frame.
* ``optimize_path`` is the training code path: it equals a hand-written
  ``make_optimizer`` / ``update`` / ``apply_updates`` loop bit for bit.
* The activation figure has one panel per activation, marks the sigmoid derivative's
  maximum at (0, 0.25) and says "max phi' = 0.25".
* The CLI writes PNG / PDF / SVG files and refuses bad input with a non-zero exit and
  no file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from gradscope import teaching
from gradscope.cli.plot import SURFACE_NAMES, plot
from gradscope.engine.activations import ACTIVATIONS
from gradscope.engine.optimizers import OPTIMIZERS, apply_updates, make_optimizer
from gradscope.teaching import (
    SURFACES,
    SurfaceKeyError,
    optimize_path,
    path_summary,
    plot_activations,
    plot_optimizer_paths,
)

PNG = b"\x89PNG\r\n\x1a\n"
WITH_MINIMUM = [name for name, s in SURFACES.items() if s.minimum is not None]

# --------------------------------------------------------------------------- surfaces


def test_surface_names_agree_with_the_cli():
    assert tuple(SURFACES) == SURFACE_NAMES
    assert {"beale", "rosenbrock", "saddle", "ravine"} == set(SURFACES)


@pytest.mark.parametrize("name", list(SURFACES))
def test_table_covers_every_optimizer(name):
    s = SURFACES[name]
    assert set(s.lrs) == set(OPTIMIZERS)
    assert all(lr > 0 for lr in s.lrs.values())
    assert s.steps > 0 and s.tol > 0
    x0, x1 = s.xlim
    y0, y1 = s.ylim
    assert x0 < s.start[0] < x1 and y0 < s.start[1] < y1
    if s.minimum is not None:
        assert x0 < s.minimum[0] < x1 and y0 < s.minimum[1] < y1


@pytest.mark.parametrize("name", list(SURFACES))
def test_gradient_is_the_derivative(name, rng):
    s = SURFACES[name]
    h = 1e-6
    for _ in range(20):
        x = rng.uniform(*s.xlim)
        y = rng.uniform(*s.ylim)
        fd = np.array([(s.f(x + h, y) - s.f(x - h, y)) / (2 * h),
                       (s.f(x, y + h) - s.f(x, y - h)) / (2 * h)])
        g = s.grad(x, y)
        assert g.shape == (2,)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-5 * (1 + abs(fd).max()))


def test_minima_and_saddle():
    for name in WITH_MINIMUM:
        s = SURFACES[name]
        assert s.f(*s.minimum) == pytest.approx(0.0, abs=1e-12)
        np.testing.assert_allclose(s.grad(*s.minimum), 0.0, atol=1e-12)
    assert SURFACES["beale"].minimum == (3.0, 0.5)
    assert SURFACES["rosenbrock"].minimum == (1.0, 1.0)
    saddle = SURFACES["saddle"]
    assert saddle.minimum is None
    np.testing.assert_allclose(saddle.grad(0.0, 0.0), 0.0)
    # off the axis, but only just
    assert 0 < abs(saddle.start[1]) < 0.01


def test_f_and_grad_work_on_grids():
    gx, gy = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    for s in SURFACES.values():
        assert s.f(gx, gy).shape == (4, 5)
        assert s.grad(gx, gy).shape == (2, 4, 5)


# --------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("surface", WITH_MINIMUM)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_table_reaches_the_minimum(surface, opt):
    """The documented lr and step budget bring every optimizer to the minimum."""
    s = SURFACES[surface]
    path = optimize_path(s, opt)
    assert path.shape == (s.steps + 1, 2)
    assert np.isfinite(path).all()
    dist = np.linalg.norm(path[-1] - np.asarray(s.minimum))
    assert dist < s.tol, (surface, opt, path[-1])
    summary = path_summary(path, s)
    assert summary["reached"] is not None and summary["reached"] <= s.steps
    assert summary["final_dist"] == pytest.approx(dist)
    # the figure shows the whole path
    assert teaching._in_frame(path, s).all(), (surface, opt)


def test_sgd_stalls_at_the_saddle_and_adam_escapes():
    s = SURFACES["saddle"]
    sgd = path_summary(optimize_path(s, "sgd"), s)
    adam = path_summary(optimize_path(s, "adam"), s)
    assert sgd["escaped"] is None and sgd["final_dist_saddle"] < 0.5
    assert adam["escaped"] is not None and adam["escaped"] < s.steps


# --------------------------------------------------------------------------- optimize_path


def _manual(surface, name, lr, steps, noise=0.0, seed=0):
    s = SURFACES[surface]
    opt = make_optimizer(name, lr=lr)
    params = [np.array(s.start, dtype=float)]
    state = opt.init(params)
    rng = np.random.default_rng(seed)
    out = [params[0].copy()]
    for _ in range(steps):
        g = s.grad(*params[0])
        if noise:
            g = g + noise * rng.standard_normal(2)
        updates, state = opt.update([g], state, params)
        params = apply_updates(params, updates)
        out.append(params[0].copy())
    return np.array(out)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_optimize_path_is_the_training_code_path(opt, noise):
    for surface in ("beale", "saddle"):
        lr = SURFACES[surface].lrs[opt]
        got = optimize_path(surface, opt, steps=60, noise=noise, seed=3)
        np.testing.assert_array_equal(got, _manual(surface, opt, lr, 60, noise, seed=3))


def test_optimize_path_options():
    s = SURFACES["ravine"]
    p = optimize_path("ravine", "sgd", steps=0)
    assert p.shape == (1, 2) and tuple(p[0]) == s.start
    # lr override, an Optimizer instance
    a = optimize_path("ravine", "adam", lr=0.01, steps=20)
    b = optimize_path("ravine", make_optimizer("adam", lr=0.01), steps=20)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, optimize_path("ravine", "adam", steps=20))
    # hyperparameters pass through to make_optimizer
    c = optimize_path("ravine", "momentum", steps=20, momentum=0.5)
    assert not np.array_equal(c, optimize_path("ravine", "momentum", steps=20))
    # noise is seeded
    n1 = optimize_path("ravine", "sgd", steps=30, noise=1.0, seed=1)
    np.testing.assert_array_equal(n1, optimize_path("ravine", "sgd", steps=30, noise=1.0,
                                                    seed=1))
    assert not np.array_equal(n1, optimize_path("ravine", "sgd", steps=30, noise=1.0, seed=2))
    assert not np.array_equal(n1, optimize_path("ravine", "sgd", steps=30))


def test_optimize_path_bad_input():
    with pytest.raises(SurfaceKeyError, match="unknown surface 'bowl'; accepted: beale"):
        optimize_path("bowl", "sgd")
    with pytest.raises(KeyError, match="unknown optimizer"):
        optimize_path("ravine", "sgdd")
    for steps in (-1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            optimize_path("ravine", "sgd", steps=steps)
    for noise in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise"):
            optimize_path("ravine", "sgd", noise=noise)
    with pytest.raises(ValueError, match="lr"):
        optimize_path("ravine", make_optimizer("sgd"), lr=0.1)


def test_divergence_gives_nan_rows_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = optimize_path("rosenbrock", "sgd", lr=0.05, steps=200)
        summary = path_summary(p, "rosenbrock")
    assert summary["diverged"] is not None
    k = summary["diverged"]
    assert np.isnan(p[k:]).all() and np.isfinite(p[:k]).all()


# --------------------------------------------------------------------------- activation figure


def _panel(fig, name):
    (ax,) = [ax for ax in fig.axes if ax.get_title().split()[0] == name]
    return ax


def test_activation_figure_has_one_panel_per_activation():
    fig = plot_activations()
    assert len(fig.axes) == len(ACTIVATIONS)
    assert sorted(ax.get_title().split()[0] for ax in fig.axes) == sorted(ACTIVATIONS)
    for name, act in ACTIVATIONS.items():
        ax = _panel(fig, name)
        solid, dashed = ax.lines[2], ax.lines[3]
        z = solid.get_xdata()
        assert z.min() == -6 and z.max() == 6
        np.testing.assert_allclose(solid.get_ydata(), act.f(z))
        np.testing.assert_allclose(dashed.get_ydata(), act.df(z, act.f(z)))
        assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
        texts = [t.get_text() for t in ax.texts if t.get_gid() == "dfmax-text"]
        assert len(texts) == 1 and f"\u03c6' = {act.df_max:g}" in texts[0]
        assert ax.get_xlabel() or not ax.get_subplotspec().is_last_row()


def test_sigmoid_panel_marks_a_quarter_at_zero():
    fig = plot_activations()
    ax = _panel(fig, "sigmoid")
    texts = [t.get_text() for t in ax.texts]
    assert any("max \u03c6' = 0.25" in t for t in texts), texts
    (mark,) = [ln for ln in ax.lines if ln.get_gid() == "dfmax"]
    assert tuple(mark.get_xdata()) == (0.0,)
    assert tuple(mark.get_ydata()) == (0.25,)
    # and tanh's at (0, 1)
    (mark,) = [ln for ln in _panel(fig, "tanh").lines if ln.get_gid() == "dfmax"]
    assert (mark.get_xdata()[0], mark.get_ydata()[0]) == (0.0, 1.0)
    title = fig.get_suptitle()
    assert "each sigmoid layer multiplies the back-propagated gradient by at most 0.25" in title


def test_activation_figure_options():
    fig = plot_activations(names=["logistic", "relu"])
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["sigmoid", "relu"]
    with pytest.raises(KeyError, match="unknown activation"):
        plot_activations(names=["swish2"])
    with pytest.raises(ValueError):
        plot_activations(names=[])


# --------------------------------------------------------------------------- optimizer figure


def test_optimizer_figure():
    names = ["sgd", "momentum", "adam"]
    fig = plot_optimizer_paths(surface="rosenbrock", optimizers=names, steps=300)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "y"
    assert ax.get_xlim() == SURFACES["rosenbrock"].xlim
    paths = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
    assert [ln.get_label().split()[0] for ln in paths] == names
    for ln, name in zip(paths, names):
        assert f"lr {SURFACES['rosenbrock'].lrs[name]:g}" in ln.get_label()
    (star,) = [ln for ln in ax.lines if ln.get_gid() == "minimum"]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (1.0, 1.0)
    legend = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    assert any(t.startswith("adam") for t in legend)
    assert any("minimum (1, 1)" in t for t in legend)
    assert "rosenbrock" in fig.get_suptitle()


def test_optimizer_figure_into_given_axes_with_noise():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    fig = plot_optimizer_paths(surface="saddle", optimizers=["sgd"], steps=50, noise=0.1,
                               lrs={"sgd": 0.05}, ax=ax)
    assert fig is ax.figure
    (line,) = [ln for ln in ax.lines if ln.get_label().startswith("sgd")]
    assert "lr 0.05" in line.get_label()
    assert "\u03c3 = 0.1" in ax.get_title()
    with pytest.raises(ValueError):
        plot_optimizer_paths(surface="saddle", optimizers=[])
    with pytest.raises(KeyError):
        plot_optimizer_paths(surface="bowl")


# --------------------------------------------------------------------------- CLI


def test_cli_writes_png_pdf_svg(tmp_path):
    runner = CliRunner()
    out = tmp_path / "act.png"
    r = runner.invoke(plot, ["activations", "--out", str(out), "--dpi", "40"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == PNG
    for suffix, magic in ((".png", PNG), (".pdf", b"%PDF"), (".svg", b"<?xml")):
        out = tmp_path / "sub" / f"paths{suffix}"
        r = runner.invoke(plot, ["optimizers", "--surface", "beale", "--optimizer", "sgd,adam",
                                 "--steps", "40", "--noise", "0.1", "--seed", "2",
                                 "--lr", "sgd=0.005", "--out", str(out), "--dpi", "40"])
        assert r.exit_code == 0, r.output
        assert out.read_bytes()[:len(magic)] == magic
        assert str(out) in r.output
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "paths.pdf", "paths.png", "paths.svg"]  # no temporary files left


def test_cli_default_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(plot, ["optimizers", "--surface", "saddle", "--optimizer", "sgd",
                                  "--steps", "5", "--dpi", "30"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "reports" / "optimizer-paths-saddle.png"
    assert out.read_bytes()[:8] == PNG
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not left private by mkstemp


@pytest.mark.parametrize("args", [
    ["optimizers", "--surface", "bowl"],
    ["optimizers", "--optimizer", "sgd,adamm"],
    ["optimizers", "--optimizer", "sgd,,adam"],
    ["optimizers", "--steps", "-1"],
    ["optimizers", "--steps", "ten"],
    ["optimizers", "--noise", "-0.5"],
    ["optimizers", "--noise", "nan"],
    ["optimizers", "--lr", "sgd=-1"],
    ["optimizers", "--lr", "sgdd=0.1"],
    ["optimizers", "--lr", "sgd"],
    ["optimizers", "--dpi", "0"],
    ["optimizers", "--out", "{tmp}/paths.jpg"],
    ["optimizers", "--out", "{tmp}/paths"],
    ["activations", "--out", "{tmp}/act.gif"],
    ["optimizers", "--out", "{tmp}/blocker/paths.png"],
    ["activations", "--out", "{tmp}/blocker/deeper/act.png"],
    ["activations", "--out", "{tmp}/adir"],
])
def test_cli_refuses_bad_input(tmp_path, args):
    (tmp_path / "blocker").write_text("a file where a folder is expected")
    (tmp_path / "adir").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.png")]
    args += ["--steps", "3"] if args[0] == "optimizers" and "--steps" not in args else []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(plot, args)
    assert r.exit_code != 0
    assert isinstance(r.exception, SystemExit)  # a click error, not a traceback
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, r.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_cli_help_and_lazy_import():
    r = CliRunner().invoke(plot, ["optimizers", "--help"])
    assert r.exit_code == 0 and "--noise" in r.output and "rosenbrock" in r.output
    code = ("import sys, gradscope.cli.plot; "
            "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"

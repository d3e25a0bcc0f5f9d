"""Teaching figures: activations and their derivatives, optimizer paths on 2-D surfaces.

:func:`plot_activations` draws every registered activation ``phi`` and its derivative
``phi'`` side by side and marks the largest value of ``phi'``: back-propagation
multiplies the gradient by ``phi'(z)`` at every layer, so a sigmoid layer (``phi' <=
1/4``) shrinks it by at least a factor of four before the weights act.

:func:`plot_optimizer_paths` runs the optimizers of :mod:`gradscope.engine.optimizers` --
the very ``make_optimizer`` / ``update`` / ``apply_updates`` code that trains the
MLPs, on a one-array parameter list ``[np.array([x, y])]`` -- on a 2-D test surface
from :data:`SURFACES` and draws their paths over its contours.  Every surface carries
a table of per-optimizer learning rates (``Surface.lrs``) and a step budget
(``Surface.steps``) within which every optimizer in the table ends within
``Surface.tol`` of the minimum (tested in ``tests/test_teaching.py``); the torch
defaults (``sgd`` at ``lr=1e-3``) would barely move on most of them.  Only the
learning rate differs from the torch defaults; every other hyperparameter is the
optimizer's own default.

The figure functions return a :class:`matplotlib.figure.Figure` built without
``pyplot`` (nothing is registered with a GUI backend); save it with ``fig.savefig``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .engine.activations import ACTIVATIONS, get_activation
from .engine.optimizers import OPTIMIZERS, Optimizer, apply_updates, make_optimizer

__all__ = [
    "SURFACES",
    "Surface",
    "SurfaceKeyError",
    "get_surface",
    "optimize_path",
    "path_summary",
    "plot_activations",
    "plot_optimizer_paths",
]

Array = np.ndarray

# =========================================================================== activations

Z_RANGE = (-6.0, 6.0)
_ACT_Y = (-1.25, 2.0)  # shared y range: phi' (<= 1) stays readable; relu's phi(z) is cut at 2


def _max_marker(z: Array, d: Array, df_max: float) -> tuple[str, tuple[float, float] | None,
                                                          tuple[float, float] | None]:
    """Where ``phi'`` is largest on the grid, and how to say it.

    Returns ``(text, point, span)``: ``point`` is the single maximiser ``(z*, phi'(z*))``
    (sigmoid, tanh), ``span`` the z-interval of a plateau at the maximum (ReLU: z > 0),
    and ``text`` the annotation.  If ``df_max`` is a supremum that is only approached
    towards an end of the range (softplus), both are ``None``.
    """
    top = float(d.max())
    at = np.flatnonzero(np.abs(d - top) <= 1e-9 * max(1.0, abs(top)))
    val = f"{df_max:g}"
    if df_max - top > 1e-3 * max(1.0, abs(df_max)):  # approached, not attained
        sign = "\u221e" if at[0] == len(z) - 1 else "\u2212\u221e"
        return f"sup \u03c6' = {val}\n(as z \u2192 {sign})", None, None
    if len(at) == 1 or z[at[-1]] - z[at[0]] < 1e-6:
        i = int(at[len(at) // 2])
        return f"max \u03c6' = {val}\nat z = {z[i]:g}", (float(z[i]), float(d[i])), None
    lo, hi = float(z[at[0]]), float(z[at[-1]])
    if at[0] == 0 and at[-1] == len(z) - 1:
        where = "for all z"
    elif at[-1] == len(z) - 1:
        where = "for z > 0" if abs(lo) < 0.05 else f"for z \u2265 {lo:.2g}"
    else:
        where = f"on [{lo:.2g}, {hi:.2g}]"
    return f"max \u03c6' = {val}\n{where}", None, (lo, hi)


def plot_activations(*, names: Sequence[str] | None = None, fig: Figure | None = None,
                     z_range: tuple[float, float] = Z_RANGE, ncols: int = 4) -> Figure:
    """Every activation ``phi`` (solid) and its derivative ``phi'`` (dashed), one panel each.

    Parameters
    ----------
    names : activations to draw (registry names or aliases); default: all of
        :data:`gradscope.engine.activations.ACTIVATIONS`, in registry order.
    fig : an empty figure to draw into; default: a new 13 x 6.6 inch figure.
    z_range : the pre-activation range shared by all panels.
    ncols : panels per row.

    The maximum of ``phi'`` is marked in every panel: a dot with the annotation
    ``max phi' = 0.25`` for the logistic function (the dot's artist has
    ``gid="dfmax"``; its text has ``gid="dfmax-text"``), a thick bar over the interval
    where a ReLU-like derivative sits at its maximum, and a dotted line at the
    supremum for softplus, whose ``phi'`` only tends to 1.
    """
    names = list(ACTIVATIONS) if names is None else list(names)
    if not names:
        raise ValueError("no activations to plot")
    acts = [get_activation(n) for n in names]  # KeyError names what is accepted
    lo, hi = float(z_range[0]), float(z_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"z_range must be (low, high) with low < high, got {z_range!r}")
    n = len(acts)
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    if fig is None:
        fig = Figure(figsize=(3.25 * ncols + 0.3, 3.0 * nrows + 0.8), layout="constrained")
    elif fig.axes:
        raise ValueError("fig must be empty")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[n:]:
        fig.delaxes(ax)

    # z = 0, where the sigmoid's and tanh's phi' peak, must be on the grid
    z = np.linspace(lo, hi, 2401)
    if lo < 0 < hi:
        z = np.unique(np.concatenate([z, [0.0]]))
    for ax, act in zip(axes, acts):
        a = act.f(z)
        d = act.df(z, a)
        ax.axhline(0, color="0.75", lw=0.8, zorder=0)
        ax.axvline(0, color="0.75", lw=0.8, zorder=0)
        ax.plot(z, a, color="C0", lw=2, label="\u03c6(z)")
        ax.plot(z, d, color="C3", lw=2, ls="--", label="\u03c6'(z)")
        ax.axhline(act.df_max, color="C3", lw=0.8, ls=":", alpha=0.8)
        text, point, span = _max_marker(z, d, act.df_max)
        box = {"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85}
        if point is not None:
            # an isolated maximum (sigmoid, tanh): dot, and the text in the empty upper
            # left with an arrow to it
            ax.plot([point[0]], [point[1]], "o", color="C3", ms=7, mec="k", mew=0.8,
                    zorder=5, gid="dfmax", label="_max")
            ax.annotate(text, xy=point, xytext=(0.04, 0.95), textcoords="axes fraction",
                        ha="left", va="top", fontsize=10, color="C3", gid="dfmax-text",
                        fontweight="bold" if act.df_max < 1 else "normal", bbox=box,
                        arrowprops={"arrowstyle": "->", "color": "C3", "lw": 1.0,
                                    "shrinkB": 5})
        else:
            if span is not None:
                ax.plot(list(span), [act.df_max] * 2, color="C3", lw=6, alpha=0.3,
                        solid_capstyle="butt", gid="dfmax-span", label="_max")
            # plateaus (rising functions) leave the lower right empty; the supremum case
            # (softplus) the upper left
            upper_left = span is None
            ax.text(*((0.04, 0.95) if upper_left else (0.96, 0.05)), text,
                    transform=ax.transAxes, ha="left" if upper_left else "right",
                    va="top" if upper_left else "bottom", fontsize=10, color="C3",
                    gid="dfmax-text", bbox=box)
        kind = ("saturating" if act.saturating else
                "ReLU family" if act.relu_family else "")
        ax.set_title(act.name + (f"  ({kind})" if kind else ""), fontsize=11)
        ax.set_xlim(lo, hi)
        ax.set_ylim(*_ACT_Y)
        ax.grid(True, alpha=0.25)
    for ax in axes[:n]:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("\u03c6(z),  \u03c6'(z)")
    # the lowest panel of every column (not always in the last row) gets the x axis
    for ax in axes[max(0, n - ncols):n]:
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("pre-activation z")

    handles = [Line2D([], [], color="C0", lw=2, label="\u03c6(z)"),
               Line2D([], [], color="C3", lw=2, ls="--", label="\u03c6'(z), the factor applied "
                      "to the gradient at each layer"),
               Line2D([], [], color="C3", marker="o", ls="", mec="k", label="maximum of \u03c6'"),
               Line2D([], [], color="C3", lw=6, alpha=0.3, label="\u03c6' at its maximum")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    why = ("Activations \u03c6(z) and their derivatives \u03c6'(z): back-propagation "
           "multiplies the gradient by \u03c6'(z) at every layer")
    sigmoid = ("each sigmoid layer multiplies the back-propagated gradient by at most 0.25: "
               "ten layers scale it by \u2264 0.25\u00b9\u2070 \u2248 10\u207b\u2076 "
               "(before the weights)")
    width = int(11 * fig.get_figwidth())  # characters per title line at 12 pt
    fig.suptitle(f"{textwrap.fill(why, width)}\n{textwrap.fill(sigmoid, width)}", fontsize=12)
    return fig


# =========================================================================== surfaces


@dataclass(frozen=True)
class Surface:
    """A 2-D test function with its analytic gradient and a learning-rate table.

    Attributes
    ----------
    name : registry key.
    f : ``f(x, y)``, elementwise over arrays.
    grad : ``grad(x, y) -> np.array([df/dx, df/dy])`` (stacked over arrays).
    start : the figure's start point, the same for every optimizer.
    minimum : the global minimiser, or ``None`` (the saddle has none).
    xlim, ylim : the figure's frame.
    lrs : learning rate per optimizer name (see the module docstring).
    steps : the figure's step budget; with ``lrs``, every optimizer in the table ends
        within ``tol`` of ``minimum`` after ``steps`` steps without noise.
    tol : distance to ``minimum`` that counts as having reached it.
    formula : the function, for titles.
    levels : contour levels (log-spaced where ``f`` spans decades); ``None``: 25 linear.
    note : a line for the title.
    """

    name: str
    f: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    start: tuple[float, float]
    minimum: tuple[float, float] | None
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    lrs: Mapping[str, float]
    steps: int
    tol: float = 0.05
    formula: str = ""
    levels: tuple[float, ...] | None = None
    note: str = ""


class SurfaceKeyError(KeyError):
    """Unknown surface name.  ``str()`` gives the plain one-line message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _beale_grad(x, y):
    a1 = 1.5 - x + x * y
    a2 = 2.25 - x + x * y**2
    a3 = 2.625 - x + x * y**3
    return np.array([
        2 * a1 * (y - 1) + 2 * a2 * (y**2 - 1) + 2 * a3 * (y**3 - 1),
        2 * x * (a1 + 2 * a2 * y + 3 * a3 * y**2),
    ])


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _rosenbrock_grad(x, y):
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def _saddle(x, y):
    return x * x - y * y


def _saddle_grad(x, y):
    return np.array([2 * x, -2 * y])


RAVINE_K = 50.0  # condition number of the ravine


def _ravine(x, y):
    return 0.5 * (x * x + RAVINE_K * y * y)


def _ravine_grad(x, y):
    return np.array([x, RAVINE_K * y])


def _geom(lo: float, hi: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.geomspace(lo, hi, n))


# Learning rates: for each optimizer about the best lr of a 1-2-3-5 grid for reaching
# the minimum, backed off where the next grid value diverges or stalls, so that the
# paths survive --noise.  The full tables with the step at which each path first
# comes within `tol` are in docs/teaching.md.
SURFACES: dict[str, Surface] = {
    s.name: s
    for s in [
        Surface(
            "beale", _beale, _beale_grad,
            start=(1.0, 1.5), minimum=(3.0, 0.5), xlim=(-1.0, 4.5), ylim=(-1.5, 2.5),
            lrs={"sgd": 0.01, "momentum": 0.002, "nesterov": 0.002, "adagrad": 1.0,
                 "adadelta": 0.1, "rmsprop": 0.01, "rprop": 0.01, "adam": 0.02,
                 "amsgrad": 0.05, "nadam": 0.01, "adamax": 0.1, "adamw": 0.02},
            steps=5000, tol=0.05,
            formula="(1.5 \u2212 x + xy)\u00b2 + (2.25 \u2212 x + xy\u00b2)\u00b2 + "
                    "(2.625 \u2212 x + xy\u00b3)\u00b2",
            levels=_geom(1e-2, 1e4, 25),
            note="flat plateau, steep walls",
        ),
        Surface(
            "rosenbrock", _rosenbrock, _rosenbrock_grad,
            start=(-1.2, 1.0), minimum=(1.0, 1.0), xlim=(-2.0, 2.0), ylim=(-1.0, 3.0),
            lrs={"sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 0.3,
                 "adadelta": 0.1, "rmsprop": 5e-3, "rprop": 0.01, "adam": 0.05,
                 "amsgrad": 0.1, "nadam": 0.02, "adamax": 0.1, "adamw": 0.03},
            steps=10000, tol=0.05,
            formula="(1 \u2212 x)\u00b2 + 100 (y \u2212 x\u00b2)\u00b2",
            levels=_geom(1e-1, 3e3, 22),
            note="a curved, flat-bottomed valley",
        ),
        Surface(
            "saddle", _saddle, _saddle_grad,
            start=(-1.5, 1e-3), minimum=None, xlim=(-2.0, 2.0), ylim=(-2.0, 2.0),
            lrs={"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.1,
                 "adadelta": 1.0, "rmsprop": 0.01, "rprop": 0.01, "adam": 0.02,
                 "amsgrad": 0.02, "nadam": 0.02, "adamax": 0.02, "adamw": 0.02},
            steps=300, tol=0.05,
            formula="x\u00b2 \u2212 y\u00b2",
            levels=None,
            note="no minimum: start beside the saddle point, 0.001 off the axis",
        ),
        Surface(
            "ravine", _ravine, _ravine_grad,
            start=(-8.0, 1.0), minimum=(0.0, 0.0), xlim=(-9.0, 2.0), ylim=(-1.5, 1.5),
            lrs={"sgd": 0.035, "momentum": 0.005, "nesterov": 0.005, "adagrad": 1.0,
                 "adadelta": 1.0, "rmsprop": 0.01, "rprop": 0.01, "adam": 0.1,
                 "amsgrad": 0.1, "nadam": 0.1, "adamax": 0.2, "adamw": 0.1},
            steps=2000, tol=0.05,
            formula=f"\u00bd (x\u00b2 + {RAVINE_K:g} y\u00b2)",
            levels=_geom(1e-2, 1e3, 21),
            note=f"an ill-conditioned quadratic (condition number {RAVINE_K:g})",
        ),
    ]
}


def get_surface(surface: str | Surface) -> Surface:
    """A :class:`Surface` by name (or the surface itself); :class:`SurfaceKeyError` if unknown."""
    if isinstance(surface, Surface):
        return surface
    try:
        return SURFACES[surface]
    except (KeyError, TypeError):
        raise SurfaceKeyError(
            f"unknown surface {surface!r}; accepted: {', '.join(SURFACES)}"
        ) from None


def _check_steps_noise(steps, noise) -> tuple[int, float]:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be a number >= 0, got {noise!r}") from None
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return int(steps), noise


def optimize_path(surface: str | Surface, optimizer: str | Optimizer, lr: float | None = None,
                  steps: int | None = None, noise: float = 0.0, seed: int = 0,
                  **hyper) -> Array:
    """The iterates of one optimizer on a surface, start point included.

    Runs the training code path exactly: ``opt = make_optimizer(optimizer, lr=lr, **hyper)``,
    ``params = [np.array(start)]``, ``state = opt.init(params)``, then ``steps`` times
    ``updates, state = opt.update([g], state, params)`` and
    ``params = apply_updates(params, updates)`` with ``g = surface.grad(x, y)``, plus
    ``noise * N(0, I)`` from ``np.random.default_rng(seed)`` if ``noise > 0`` (the
    stochastic-gradient variant; the same seed gives every optimizer the same draws).

    ``lr`` defaults to ``surface.lrs[optimizer]`` (the optimizer's own default if the
    table has no entry) and ``steps`` to ``surface.steps``.  ``optimizer`` may also be
    a ready-made :class:`~gradscope.engine.optimizers.Optimizer`, in which case ``lr`` and
    ``hyper`` must not be given.

    Returns a float64 array of shape ``(steps + 1, 2)``; if an iterate stops being
    finite (divergence), it and every later row are NaN.
    """
    surf = get_surface(surface)
    steps, noise = _check_steps_noise(surf.steps if steps is None else steps, noise)
    if isinstance(optimizer, Optimizer):
        if lr is not None or hyper:
            raise ValueError("pass lr and hyperparameters to make_optimizer, not with an "
                             "Optimizer instance")
        opt = optimizer
    else:
        if lr is None:
            lr = surf.lrs.get(optimizer)
        opt = make_optimizer(optimizer, lr=lr, **hyper)
    rng = np.random.default_rng(seed) if noise > 0 else None
    out = np.full((steps + 1, 2), np.nan)
    params = [np.array(surf.start, dtype=np.float64)]
    out[0] = params[0]
    state = opt.init(params)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, steps + 1):
            g = np.asarray(surf.grad(params[0][0], params[0][1]), dtype=np.float64)
            if rng is not None:
                g = g + noise * rng.standard_normal(2)
            updates, state = opt.update([g], state, params)
            params = apply_updates(params, updates)
            if not np.all(np.isfinite(params[0])):
                break
            out[k] = params[0]
    return out


def _in_frame(path: Array, surf: Surface, margin: float = 0.0) -> Array:
    (x0, x1), (y0, y1) = surf.xlim, surf.ylim
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    with np.errstate(invalid="ignore"):
        return ((path[:, 0] >= x0 - mx) & (path[:, 0] <= x1 + mx)
                & (path[:, 1] >= y0 - my) & (path[:, 1] <= y1 + my))


def path_summary(path: Array, surface: str | Surface) -> dict:
    """What happened along a path: a dict with

    ``reached`` (first step within ``tol`` of the minimum, or ``None``), ``final_dist``
    (distance of the last iterate to the minimum; ``nan`` without a minimum),
    ``final_f``, ``diverged`` (first non-finite step or ``None``) and ``escaped`` (first
    step outside the frame after which the path never returns, or ``None``); without a
    minimum also ``final_dist_saddle``, the last finite iterate's distance to (0, 0).
    """
    surf = get_surface(surface)
    finite = np.all(np.isfinite(path), axis=1)
    diverged = None if finite.all() else int(np.argmin(finite))
    last = path[finite][-1]
    with np.errstate(over="ignore", invalid="ignore"):
        final_f = float(surf.f(last[0], last[1]))
    out = {"reached": None, "final_dist": math.nan, "diverged": diverged,
           "final_f": final_f, "escaped": None}
    if surf.minimum is None:
        out["final_dist_saddle"] = float(np.linalg.norm(last))
    if surf.minimum is not None:
        with np.errstate(invalid="ignore"):
            dist = np.linalg.norm(path - np.asarray(surf.minimum), axis=1)
        hit = np.flatnonzero(dist < surf.tol)
        out["reached"] = int(hit[0]) if hit.size else None
        out["final_dist"] = float(dist[-1]) if diverged is None else math.inf
    inside = _in_frame(path, surf)
    if not inside[-1]:
        out["escaped"] = int(np.flatnonzero(inside)[-1]) + 1 if inside.any() else 0
    return out


# =========================================================================== optimizer paths

# one fixed colour, line style and marker per optimizer, so the same optimizer looks the
# same on every surface; the adam family shares no colour, and paths that run together
# along a valley floor still differ by dash pattern and markers
_COLORS = {
    "sgd": "#000000", "momentum": "#1f77b4", "nesterov": "#17becf", "adagrad": "#bcbd22",
    "adadelta": "#8c564b", "rmsprop": "#9467bd", "rprop": "#e377c2", "adam": "#d62728",
    "amsgrad": "#ff7f0e", "nadam": "#2ca02c", "adamax": "#393b79", "adamw": "#7f7f7f",
}
_STYLES = {
    "sgd": "-", "momentum": "-", "nesterov": "--", "adagrad": "-", "adadelta": "--",
    "rmsprop": "-", "rprop": "--", "adam": "-", "amsgrad": "--", "nadam": "-.",
    "adamax": ":", "adamw": (0, (6, 2, 1, 2)),
}
_PATH_MARKERS = {
    "sgd": "o", "momentum": "s", "nesterov": "D", "adagrad": "^", "adadelta": "v",
    "rmsprop": "<", "rprop": ">", "adam": "P", "amsgrad": "X", "nadam": "*", "adamax": "h",
    "adamw": "d",
}


def _color(name: str, i: int) -> str:
    return _COLORS.get(name, f"C{i % 10}")


def _label(name: str, lr: float, summary: dict, surf: Surface, steps: int) -> str:
    if summary["diverged"] is not None:
        what = f"diverged at step {summary['diverged']}"
    elif surf.minimum is not None:
        if summary["reached"] is not None:
            what = f"within {surf.tol:g} at step {summary['reached']}"
        else:
            what = f"still {summary['final_dist']:.2g} away"
    elif summary["escaped"] is not None:
        what = f"escaped at step {summary['escaped']}"
    elif summary["final_dist_saddle"] < 0.5:
        what = f"still near the saddle: f = {summary['final_f']:.2g}"
    else:
        what = f"in the frame at the end: f = {summary['final_f']:.2g}"
    return f"{name:<9} lr {lr:<7g} {what}"


def _decades(lo: float, hi: float) -> list[float]:
    return [10.0**k for k in range(math.ceil(math.log10(lo) - 1e-9),
                                   math.floor(math.log10(hi) + 1e-9) + 1)]


def _draw_contours(ax: Axes, surf: Surface):
    (x0, x1), (y0, y1) = surf.xlim, surf.ylim
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    fz = surf.f(gx, gy)
    if surf.levels is not None:  # log-spaced
        levels = np.asarray(surf.levels)
        fill = ax.contourf(gx, gy, np.clip(fz, levels[0], levels[-1]), levels=levels,
                           cmap="Blues_r", norm=LogNorm(levels[0], levels[-1]), alpha=0.5)
        ax.contour(gx, gy, fz, levels=levels, colors="0.4", linewidths=0.5, alpha=0.6)
        return fill, _decades(levels[0], levels[-1]), "f(x, y), log-spaced contour levels"
    levels = np.linspace(fz.min(), fz.max(), 25)
    fill = ax.contourf(gx, gy, fz, levels=levels, cmap="RdBu_r", alpha=0.35)
    ax.contour(gx, gy, fz, levels=levels, colors="0.4", linewidths=0.5, alpha=0.6)
    ax.contour(gx, gy, fz, levels=[0.0], colors="0.2", linewidths=1.0, linestyles="--")
    return fill, None, "f(x, y)"


def _draw_paths(ax: Axes, surf: Surface, runs: list) -> list:
    """Paths, start, minimum; returns the legend handles."""
    handles = []
    for name, lr, path, summary, color in runs:
        ok = np.isfinite(path).all(axis=1)
        # draw up to the last iterate inside a 25 % margin around the frame, plus one,
        # so that an escaping path visibly runs off the edge (matplotlib clips it there)
        inside = _in_frame(path, surf, margin=0.25) & ok
        stop = int(np.flatnonzero(inside)[-1]) + 2 if inside.any() else 1
        shown = path[:min(stop, int(ok.sum()))]
        (line,) = ax.plot(shown[:, 0], shown[:, 1], color=color, lw=1.6, alpha=0.9,
                          ls=_STYLES.get(name, "-"), marker=_PATH_MARKERS.get(name, "o"),
                          markevery=max(1, len(shown) // 8), ms=5, mfc="white", mew=1.2,
                          label=_label(name, lr, summary, surf, len(path) - 1), zorder=3)
        end = shown[-1]
        if _in_frame(end[None], surf)[0]:
            ax.plot([end[0]], [end[1]], "o", color=color, ms=5, mec="white", mew=0.6,
                    zorder=4)
        handles.append(line)
    ax.plot([surf.start[0]], [surf.start[1]], "o", ms=10, mfc="white", mec="k", mew=1.8,
            zorder=6)
    handles.append(Line2D([], [], marker="o", ls="", ms=9, mfc="white", mec="k", mew=1.8,
                          label=f"start ({surf.start[0]:g}, {surf.start[1]:g})"))
    if surf.minimum is not None:
        ax.plot([surf.minimum[0]], [surf.minimum[1]], "*", ms=18, color="gold", mec="k",
                mew=1.2, zorder=7, gid="minimum")
        handles.append(Line2D([], [], marker="*", ls="", ms=14, color="gold", mec="k",
                              label=f"minimum ({surf.minimum[0]:g}, {surf.minimum[1]:g})"))
    else:
        ax.plot([0], [0], "X", ms=12, color="white", mec="k", mew=1.2, zorder=7,
                gid="saddle")
        handles.append(Line2D([], [], marker="X", ls="", ms=10, color="white", mec="k",
                              label="saddle point (0, 0): no minimum"))
    ax.set_xlim(*surf.xlim)
    ax.set_ylim(*surf.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return handles


def _draw_convergence(ax: Axes, surf: Surface, runs: list, steps: int) -> None:
    """Distance to the minimum (to the saddle point) against the step, log y."""
    target = np.asarray(surf.minimum if surf.minimum is not None else (0.0, 0.0))
    floor = 1e-8
    for name, _lr, path, _summary, color in runs:
        with np.errstate(invalid="ignore", over="ignore"):
            dist = np.linalg.norm(path - target, axis=1)
        ax.plot(np.arange(len(dist)), np.clip(dist, floor, None), color=color, lw=1.4,
                alpha=0.9)
    ax.set_yscale("log")
    ax.set_xlim(0, max(steps, 1))
    if surf.minimum is not None:
        ax.axhline(surf.tol, color="k", ls=":", lw=1)
        ax.text(0.99, surf.tol * 0.8, f"tol {surf.tol:g}", fontsize=8, va="top", ha="right",
                transform=ax.get_yaxis_transform(), zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                      "alpha": 0.8})
        ax.set_ylim(floor / 2, None)
        ax.set_ylabel(f"distance to the minimum (floor {floor:g})")
    else:
        half = max(abs(v) for v in (*surf.xlim, *surf.ylim))
        ax.axhline(half, color="k", ls=":", lw=1)
        ax.text(0.99, half * 0.9, "half-width of the frame", fontsize=8, va="top", ha="right",
                transform=ax.get_yaxis_transform())
        ax.set_ylim(None, 10 * half)
        ax.set_ylabel("distance to the saddle point")
    ax.set_xlabel("step")
    ax.grid(True, which="major", alpha=0.3)


def plot_optimizer_paths(*, surface: str | Surface, optimizers: Sequence[str] | None = None,
                         steps: int | None = None, noise: float = 0.0, seed: int = 0,
                         lrs: Mapping[str, float] | None = None,
                         ax: Axes | None = None) -> Figure:
    """The paths of several optimizers from one start point, over the surface's contours.

    Parameters
    ----------
    surface : a :data:`SURFACES` name or a :class:`Surface`.
    optimizers : registry names; default: every registered optimizer.
    steps : default ``surface.steps``.
    noise, seed : Gaussian gradient noise, as in :func:`optimize_path` (every optimizer
        gets the same draws).
    lrs : learning rates overriding ``surface.lrs``.
    ax : axes to draw the paths into (legend to its right); default: a new figure with
        the paths, a panel of the distance to the minimum (to the saddle point)
        against the step, a colour bar and the legend.

    The legend gives each optimizer's learning rate and the first step at which it came
    within ``surface.tol`` of the minimum (on the saddle: when it left the frame for good).
    """
    surf = get_surface(surface)
    names = list(OPTIMIZERS) if optimizers is None else list(optimizers)
    if not names:
        raise ValueError("no optimizers to plot")
    steps, noise = _check_steps_noise(surf.steps if steps is None else steps, noise)
    table = dict(surf.lrs)
    table.update(lrs or {})
    runs = []
    for i, name in enumerate(names):
        lr = table.get(name)
        path = optimize_path(surf, name, lr=lr, steps=steps, noise=noise, seed=seed)
        if lr is None:
            lr = make_optimizer(name).hyper["lr"]
        runs.append((name, lr, path, path_summary(path, surf), _color(name, i)))

    noise_txt = (f", gradient noise \u03c3 = {noise:g} (seed {seed})" if noise > 0
                 else ", exact gradients")
    title = (f"{surf.name}: f = {surf.formula}   ({surf.note})\n"
             f"{len(runs)} optimizer{'s' if len(runs) != 1 else ''}, {steps} steps from "
             f"({surf.start[0]:g}, {surf.start[1]:g}){noise_txt}")
    legend_kw = {"prop": {"family": "monospace", "size": 8.5}, "frameon": False,
                 "title": "optimizer, learning rate, outcome",
                 "title_fontsize": 9, "alignment": "left"}

    if ax is not None:
        fig = ax.figure
        _draw_contours(ax, surf)
        handles = _draw_paths(ax, surf, runs)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, **legend_kw)
        ax.set_title(title, fontsize=10)
        return fig

    fig = Figure(figsize=(14.0, 7.2), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[1.45, 1.0], height_ratios=[1.0, 1.0])
    ax = fig.add_subplot(gs[:, 0])
    conv = fig.add_subplot(gs[0, 1])
    key = fig.add_subplot(gs[1, 1])
    key.axis("off")
    fill, ticks, cb_label = _draw_contours(ax, surf)
    cb = fig.colorbar(fill, ax=ax, location="bottom", shrink=0.6, pad=0.01, aspect=40)
    cb.set_label(cb_label)
    if ticks is not None:
        cb.set_ticks(ticks)
    handles = _draw_paths(ax, surf, runs)
    _draw_convergence(conv, surf, runs, steps)
    key.legend(handles=handles, loc="upper left", borderaxespad=0.0, **legend_kw)
    fig.suptitle(title, fontsize=12)
    return fig

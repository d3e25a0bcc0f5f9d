"""Figures of a run's gradient diagnostics, seaborn style.

Every public function takes keyword-only arguments and a tidy long-form DataFrame: what
:func:`~gradscope.reading.readers.read_layers`, :func:`~gradscope.reading.readers.read_steps`,
:func:`~gradscope.reading.readers.read_epochs` or :func:`~gradscope.reading.readers.read_histograms` return, with an
added ``run`` column when several runs are combined. Each returns what it drew on:

- given ``ax``, that Axes (for several runs in one Axes, e.g. :func:`learning_curves`), or
  the sequence of Axes when a figure needs several panels and ``ax`` is a sequence;
- with ``ax=None``, a new figure: an Axes for one run, a seaborn ``FacetGrid`` (one panel
  per run, ``col="run"``) when ``data`` holds several runs or the figure has several panels.

Conventions: layer ``l = 0`` is the weight matrix nearest the input, ``l = depth`` the
output layer; the layer axis says so ("layer (0 = input side)"). Quantities that span
decades are drawn on log scales, after dropping values that are not finite or not positive
(a diverged run logs NaN and inf). Colour maps are perceptually uniform and readable in
greyscale (viridis, cubehelix); categories also differ by marker or line style.

Long runs are binned in time by :func:`downsample` (bin medians; at most ``max_steps`` bins),
so a figure of a million logged steps costs no more to draw than one of a few hundred.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..reading.binned import downsample

__all__ = [
    "CBAR_LABELS", "LABELS", "MOMENTS", "SWEEP_LABELS", "activation_distributions",
    "activation_summary", "dead_unit_map", "dead_units", "depth_dead_units", "downsample",
    "gradient_heatmap", "gradient_profile", "grid_heatmap", "heatmap_matrix",
    "learning_curves", "moment_steps", "phase_diagram", "profile_comparison",
    "run_comparison", "run_overview", "step_formatter", "update_ratio",
]

#: Axis labels of the layer metrics, with their scale.
LABELS = {
    "grad_norm": r"$\|\partial L/\partial W_l\|$",
    "bias_grad_norm": r"$\|\partial L/\partial b_l\|$",
    "delta_norm": r"$\|\delta_l\| = \|\partial L/\partial z_l\|$",
    "weight_norm": r"$\|W_l\|$",
    "update_norm": r"$\|\Delta W_l\|$",
    "update_ratio": r"$\|\Delta W_l\| \,/\, \|W_l\|$",
    "act_mean": "mean activation",
    "act_std": "activation std",
    "saturated_frac": "saturated units (share)",
    "dead_frac": "dead units (share of layer)",
}
#: Colour-bar labels (plain text, no mathtext) of :func:`gradient_heatmap`.
CBAR_LABELS = {
    "grad_norm": "log10 ||dL/dW_l||",
    "delta_norm": "log10 ||delta_l|| = ||dL/dz_l||",
    "update_ratio": "log10 ||dW_l|| / ||W_l||",
    "weight_norm": "log10 ||W_l||",
}
#: Named moments of training, as a share of the logged span of steps.
MOMENTS = {"start": 0.0, "quarter": 0.25, "half": 0.5, "three_quarters": 0.75, "end": 1.0}
LAYER_LABEL = "layer (0 = input side)"
STEP_LABEL = "step"
UPDATE_GUIDE = 1e-3
#: Most layers overlaid in one activation-distribution panel (an even spread beyond).
HIST_LAYERS = 10
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


# -- binning --------------------------------------------------------------------------------
def _finite_positive(df: pd.DataFrame, value: str) -> pd.DataFrame:
    v = pd.to_numeric(df[value], errors="coerce").to_numpy(float)
    return df[np.isfinite(v) & (v > 0)]


def _finite(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    ok = np.ones(len(df), bool)
    for c in cols:
        ok &= np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(float))
    return df[ok]


def moment_steps(steps, moments=("start", "quarter", "half", "end")) -> dict:
    """The logged step nearest each moment: ``{label: step}``.

    ``moments`` are names of :data:`MOMENTS`, shares of the span in [0, 1] (floats), or
    explicit steps (ints). The first moment of a share is the first logged step, ``end`` the
    last. Labels are the names (``"start"``), ``"25%"`` for shares, ``"step 40"`` for ints.
    """
    steps = np.unique(np.asarray(steps))
    out = {}
    if not len(steps):
        return out
    lo, hi = float(steps[0]), float(steps[-1])
    for m in moments:
        if isinstance(m, str):
            if m not in MOMENTS:
                raise ValueError(f"moment {m!r}; accepted: {', '.join(MOMENTS)}, a share or a step")
            label, target = m, lo + MOMENTS[m] * (hi - lo)
        elif isinstance(m, (float, np.floating)):
            label, target = f"{100 * m:g}%", lo + float(m) * (hi - lo)
        else:
            label, target = f"step {int(m)}", float(m)
        out[label] = int(steps[int(np.argmin(np.abs(steps - target)))])
    return out


# -- small helpers --------------------------------------------------------------------------
def _human(x: float) -> str:
    if x == 0:
        return "0"
    ax = abs(x)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if ax >= 10 * div if suf == "k" else ax >= div:
            v = x / div
            return f"{v:.0f}{suf}" if v == int(v) else f"{v:.3g}{suf}"
    return f"{x:g}"


def step_formatter() -> FuncFormatter:
    """Tick labels for a step axis: ``900``, ``20k``, ``1.5M``."""
    return FuncFormatter(lambda x, pos: _human(x))


def _step_axis(ax: Axes) -> None:
    """Whole-number step ticks with short labels (20k, 1.5M)."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=1))
    ax.xaxis.set_major_formatter(step_formatter())


def _runs(df: pd.DataFrame) -> list:
    if "run" not in df.columns:
        return []
    return list(pd.unique(df["run"]))


def _new_ax(ax, figsize=(7, 4.5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _check_one_axes(runs, ax) -> None:
    if ax is not None:
        raise ValueError(f"data holds {len(runs)} runs; one Axes draws one run")


def _one_or_facet(data: pd.DataFrame, ax, draw: Callable, **kw):
    """``draw(ax, data, **kw)`` on ``ax`` (or a new Axes) for one run; for several runs, a
    grid of panels (one a run) from :func:`_facet`, which refuses a single ``ax``."""
    runs = _runs(data)
    if len(runs) > 1:
        _check_one_axes(runs, ax)
        return _facet(data, draw, **kw)
    ax = _new_ax(ax)
    draw(ax, data, **kw)
    return ax


def _facet(data: pd.DataFrame, drawer, *, col_wrap=None, height=3.6, aspect=1.35,
           sharey=False, sharex=False, **kw) -> sns.FacetGrid:
    """One panel per run; ``drawer(ax, run_data, legend_loc="in", **kw)`` draws each.

    The panels are drawn directly (not by ``map_dataframe``, which would take the legends
    away for a figure legend: each run has its own layers, so each panel keeps its own).
    """
    runs = _runs(data)
    wrap = col_wrap if col_wrap is not None else min(3, max(1, len(runs)))
    g = sns.FacetGrid(data, col="run", col_wrap=wrap, height=height, aspect=aspect,
                      sharex=sharex, sharey=sharey, col_order=runs, despine=False)
    for ax, run in zip(g.axes.flat, runs):
        drawer(ax, data[data["run"] == run], legend_loc="in", **kw)
    g.set_titles(col_template="{col_name}")
    g.tight_layout()
    return g


def _layer_axis(ax: Axes, n_layers: int, axis: str = "y", mark_out: bool = True) -> None:
    out = n_layers - 1 if mark_out else None
    fmt = FuncFormatter(lambda v, pos: (f"{round(v)} out" if round(v) == out
                                        else f"{round(v)}"))
    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_locator(MaxNLocator(nbins=min(10, max(n_layers, 2)), integer=True))
    a.set_major_formatter(fmt)


def _log_ticks_ok(ax: Axes, axis: str = "y") -> None:
    """On a log axis spanning less than a decade, show plain minor labels too."""
    lim = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lim[0] > 0 and lim[1] / lim[0] < 10:
        a = ax.yaxis if axis == "y" else ax.xaxis
        a.set_minor_formatter(FuncFormatter(lambda v, pos: f"{v:.2g}"))


def _layer_palette(n: int):
    """Colours of ``n`` layers, ordered from input (blue) to output (red) and far enough
    apart to tell up to 20 layers apart (viridis' neighbours merge beyond about six)."""
    n = max(n, 1)
    if n == 1:
        return [plt.get_cmap("turbo")(0.15)]
    return [plt.get_cmap("turbo")(x) for x in np.linspace(0.06, 0.94, n)]


#: Line styles of the layers beyond ten (colours alone then come too close).
_LAYER_STYLES = ("-", "--", ":")


def _layer_style(i: int, n: int) -> str:
    return "-" if n <= 10 else _LAYER_STYLES[i % len(_LAYER_STYLES)]


def _layer_legend(ax: Axes, layers: Sequence[int], palette, *, title="layer", most=10,
                  mark_out=True, legend_loc="out", styles=None) -> None:
    """A legend of layer colours: every layer when few, else an evenly spaced selection.

    ``legend_loc="out"``: beside the Axes on the right; ``"in"``: inside, where best.
    """
    layers = list(layers)
    idx = (np.unique(np.linspace(0, len(layers) - 1, most).round().astype(int))
           if len(layers) > most else np.arange(len(layers)))
    out = max(layers) if layers else None
    handles = [Line2D([], [], color=palette[i], lw=2, ls=styles[i] if styles else "-")
               for i in idx]
    labels = [f"{layers[i]} (out)" if mark_out and layers[i] == out else str(layers[i])
              for i in idx]
    if len(layers) > most:
        title += f"\n({len(idx)} of {len(layers)})"
    kw = ({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}
          if legend_loc == "out" else {"loc": "best", "framealpha": 0.8})
    ax.legend(handles, labels, title=title, fontsize="small", title_fontsize="small", **kw)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize="medium", color="0.35", wrap=True)


# -- gradient heatmap -----------------------------------------------------------------------
def gradient_heatmap(*, data: pd.DataFrame, value: str = "grad_norm", ax=None,
                     max_steps: int = 400, vmin: float | None = None,
                     vmax: float | None = None, colorbar: bool = True, cmap: str = "viridis"):
    """log10 of ``value`` as a layer x step heatmap.

    Layer 0 (input side) at the bottom, the output layer at the top; steps binned to at most
    ``max_steps`` columns by :func:`downsample` (bin medians), each column as wide as the
    steps it covers. Cells whose value is not finite or not positive are left blank (white).
    One run per Axes; with several runs and ``ax=None``, a FacetGrid with a shared colour
    scale and one colour bar. The QuadMesh's array is ``(layers, bins)``.
    """
    if value not in data.columns:
        raise ValueError(f"data has no column {value!r}")
    runs = _runs(data)
    if len(runs) > 1:
        if ax is not None:
            raise ValueError(f"data holds {len(runs)} runs; one Axes draws one run "
                             "(select one, or pass ax=None for a grid)")
        vals = _finite_positive(data, value)[value]
        lo, hi = _robust_range(np.log10(vals.to_numpy(float)))
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
        g = _facet(data, _draw_heatmap, value=value, max_steps=max_steps, vmin=vmin, vmax=vmax,
                   cmap=cmap, height=3.2, aspect=1.5)
        if colorbar:
            mesh = next((c for a in g.axes.flat for c in a.collections), None)
            if mesh is not None:
                cb = g.figure.colorbar(mesh, ax=list(g.axes.flat), shrink=0.9, pad=0.02)
                cb.set_label(CBAR_LABELS.get(value, f"log10 {value}"))
        return g
    ax = _new_ax(ax)
    mesh = _draw_heatmap(ax, data, value=value, max_steps=max_steps, vmin=vmin, vmax=vmax,
                         cmap=cmap)
    if colorbar and mesh is not None:
        cb = ax.figure.colorbar(mesh, ax=ax, pad=0.02)
        cb.set_label(CBAR_LABELS.get(value, f"log10 {value}"))
    return ax


def _robust_range(v: np.ndarray) -> tuple[float | None, float | None]:
    v = v[np.isfinite(v)]
    if not v.size:
        return None, None
    lo, hi = float(np.min(v)), float(np.max(v))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def heatmap_matrix(data: pd.DataFrame, value: str = "grad_norm", max_steps: int = 400):
    """The heatmap's numbers: ``(layers, bins)`` log10 values, the bins' steps and edges.

    Returns ``(Z, layers, steps, edges)``: ``Z[i, j]`` is log10 of the median of ``value``
    of layer ``layers[i]`` over bin ``j`` (NaN where not finite or not positive), ``steps``
    the bins' middle steps, ``edges`` the ``len(steps) + 1`` column boundaries in steps.
    """
    cols = ["step", "layer", value] + [c for c in ("step_lo", "step_hi") if c in data.columns]
    d = data[cols].copy()
    v = pd.to_numeric(d[value], errors="coerce").to_numpy(float)
    # drop non-finite before the medians, so a diverged step's inf does not pull a bin
    d[value] = np.where(np.isfinite(v), v, np.nan)
    d = downsample(d, max_steps, by=["layer"])
    table = d.pivot_table(index="layer", columns="step", values=value, aggfunc="median",
                          dropna=False)
    bins = d.groupby("step")[["step_lo", "step_hi"]].agg({"step_lo": "min", "step_hi": "max"})
    bins = bins.reindex(table.columns)
    layers = np.arange(int(d["layer"].min()), int(d["layer"].max()) + 1) if len(d) else []
    table = table.reindex(layers)
    with np.errstate(divide="ignore", invalid="ignore"):
        Z = np.log10(table.to_numpy(float))
    Z[~np.isfinite(Z)] = np.nan
    steps = table.columns.to_numpy()
    lo, hi = bins["step_lo"].to_numpy(float), bins["step_hi"].to_numpy(float)
    edges = np.empty(len(steps) + 1)
    if len(steps):
        edges[0], edges[-1] = lo[0] - 0.5, hi[-1] + 0.5
        edges[1:-1] = (hi[:-1] + lo[1:]) / 2
    return Z, np.asarray(layers), steps, edges


def _draw_heatmap(ax: Axes, data, *, value, max_steps, vmin=None, vmax=None, cmap="viridis",
                  legend_loc="out"):
    Z, layers, steps, edges = heatmap_matrix(data, value, max_steps)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(LAYER_LABEL)
    if not len(steps) or np.isnan(Z).all():
        _note(ax, f"no finite positive {value}")
        return None
    y = np.arange(layers[0], layers[-1] + 2) - 0.5
    mesh = ax.pcolormesh(edges, y, np.ma.masked_invalid(Z), cmap=cmap, vmin=vmin, vmax=vmax,
                         shading="flat", rasterized=True)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_facecolor("white")
    ax.grid(False)
    _layer_axis(ax, len(layers))
    _step_axis(ax)
    if np.isnan(Z).any():
        ax.text(1.0, 1.01, "white: not finite", transform=ax.transAxes, ha="right",
                va="bottom", fontsize="x-small", color="0.3")
    return mesh


# -- gradient profile across depth ----------------------------------------------------------
def gradient_profile(*, data: pd.DataFrame, value: str = "delta_norm",
                     moments=("start", "quarter", "half", "end"), ax=None, predicted=None,
                     predicted_label: str = "mean-field prediction at init",
                     legend_loc: str = "in"):
    """``value`` against layer at a few moments of training, log y, one line per moment.

    ``moments``: names (``start``, ``quarter``, ``half``, ``three_quarters``, ``end``),
    shares of the logged span (floats) or steps (ints); each picks the nearest logged step
    with finite values (``end`` of a diverged run is its last finite step). Lines go from
    light (early) to dark (late), with distinct markers. ``predicted``: theory values per
    layer (array from layer 0, or Series indexed by layer; a dict ``{run: values}`` with
    several runs) drawn dashed in black.
    """
    runs = _runs(data)
    if len(runs) > 1:
        _check_one_axes(runs, ax)
        return _facet(data, _draw_profile_run, value=value, moments=moments,
                      predicted=predicted, predicted_label=predicted_label)
    ax = _new_ax(ax)
    pred = predicted
    if isinstance(predicted, Mapping) and runs:
        pred = predicted.get(runs[0])
    _draw_profile(ax, data, value=value, moments=moments, predicted=pred,
                  predicted_label=predicted_label, legend_loc=legend_loc)
    return ax


def _draw_profile_run(ax, data, *, predicted=None, legend_loc="in", **kw):
    pred = predicted
    if isinstance(predicted, Mapping):
        run = data["run"].iloc[0] if len(data) else None
        pred = predicted.get(run)
    _draw_profile(ax, data, predicted=pred, **kw)


def _one_line(series: list, tol_decades: float = 0.05, tol_share: float = 0.02) -> bool:
    """Whether these per-layer profiles coincide on a log scale: within ``tol_decades``, or
    ``tol_share`` of the decades the first one spans if more, at every shared layer (on an
    axis of 15 decades, lines 0.1 decade apart look like one)."""
    base = np.log10(series[0].astype(float))
    span = float(np.nanmax(base) - np.nanmin(base)) if len(base) else 0.0
    tol_decades = max(tol_decades, tol_share * span)
    for s in series[1:]:
        other = np.log10(s.astype(float))
        common = base.index.intersection(other.index)
        if not len(common):
            return False
        if np.nanmax(np.abs(base[common].to_numpy() - other[common].to_numpy())) > tol_decades:
            return False
    return True


def _draw_profile(ax, data, *, value, moments, predicted, predicted_label, legend_loc="in"):
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel(f"{LABELS.get(value, value)} (log scale)")
    d = _finite_positive(data[["step", "layer", value]], value)
    drawn = 0
    lines: list = []
    p = pd.Series(dtype=float)
    if len(d):
        picks = moment_steps(d["step"], moments)
        colors = sns.cubehelix_palette(len(picks), start=0.5, rot=-0.6, dark=0.12, light=0.68)
        seen = {}
        n = len(picks)
        for i, (label, step) in enumerate(picks.items()):
            row = d[d["step"] == step].sort_values("layer")
            if step in seen:  # e.g. quarter and half on a short log: one line, two labels
                seen[step].set_label(f"{seen[step].get_label()}, {label}")
                continue
            # earlier moments get larger, open markers: lines that coincide still show as
            # rings around each other
            (line,) = ax.plot(row["layer"], row[value], marker=_MARKERS[i % len(_MARKERS)],
                              color=colors[i], lw=1.8, ms=4 + 2.2 * (n - 1 - i),
                              mfc="none" if i < n - 1 else colors[i], mew=1.4,
                              label=f"{label} (step {_human(step)})")
            seen[step] = line
            drawn += 1
        lines = [pd.Series(ln.get_ydata(), index=ln.get_xdata()) for ln in seen.values()]
    if predicted is not None:
        p = (predicted if isinstance(predicted, pd.Series)
             else pd.Series(np.asarray(predicted, float)))
        p = p[np.isfinite(p.to_numpy(float)) & (p.to_numpy(float) > 0)]
        if len(p):
            ax.plot(p.index.to_numpy(), p.to_numpy(float), ls="--", color="black", lw=1.5,
                    marker="x", ms=5, label=predicted_label)
            drawn += 1
    if not drawn:
        _note(ax, f"no finite positive {value}")
        return
    ax.set_yscale("log")
    if len(d) and len(lines) > 1 and _one_line(lines):
        with_pred = predicted is not None and _one_line(lines + [p]) if len(p) else False
        ax.text(0.02, 0.98, f"all {len(lines)} moments" + (" and the prediction"
                if with_pred else "") + " lie on one line:\nthe profile did not change in "
                "training", transform=ax.transAxes, ha="left", va="top", fontsize="small",
                color="0.2", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7",
                                   "pad": 2})
    n_layers = int(data["layer"].max()) + 1 if len(data) else 2
    _layer_axis(ax, n_layers, axis="x")
    _log_ticks_ok(ax)
    ax.legend(fontsize="small", **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0),
              "frameon": False} if legend_loc == "out" else {"loc": "best", "framealpha": 0.8}))


# -- dead units -----------------------------------------------------------------------------
def dead_units(*, data: pd.DataFrame, ax=None, threshold: float | None = None):
    """Share of dead units (``dead_frac``) per hidden layer over training, one line per layer.

    Uses the probe steps (rows where ``dead_frac`` is present); colour = layer (viridis,
    light = output side). Linear y from 0 to 1; ``threshold`` (e.g. the diagnosis's 0.5)
    drawn as a dashed line.
    """
    if "dead_frac" not in data.columns:
        raise ValueError("data has no column 'dead_frac' (read_layers gives it)")
    return _one_or_facet(data, ax, _draw_dead, threshold=threshold)


def _draw_dead(ax, data, legend_loc="out", threshold=None):
    d = _finite(data[["step", "layer", "dead_frac"]], "dead_frac")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(LABELS["dead_frac"])
    ax.set_ylim(-0.02, 1.02)
    _step_axis(ax)
    if threshold is not None:
        ax.axhline(threshold, color="black", ls="--", lw=1.2, gid="dead-threshold")
        ax.annotate(f"threshold {100 * threshold:.0f}%", xy=(0.0, threshold),
                    xycoords=("axes fraction", "data"), xytext=(3, 3),
                    textcoords="offset points", fontsize="small",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.85})
    if d.empty:
        _note(ax, "no dead-unit data (ReLU-family runs, probe steps only)")
        return
    layers = sorted(d["layer"].unique())
    pal = _layer_palette(len(layers))
    for i, (l, g) in enumerate(d.groupby("layer", sort=True)):
        g = g.sort_values("step")
        ax.plot(g["step"], g["dead_frac"], color=pal[i], lw=1.6,
                ls=_layer_style(i, len(layers)), marker="o" if len(g) < 30 else None, ms=3)
    _layer_legend(ax, layers, pal, mark_out=False, title="layer", legend_loc=legend_loc,
                  styles=[_layer_style(i, len(layers)) for i in range(len(layers))])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, pos: f"{100 * v:.0f}%"))


def dead_unit_map(*, steps, dead, layer=None, ax=None, sort: bool = True,
                  max_steps: int = 400):
    """Which units were dead when: a unit x probe-step image from ``read_dead_units``.

    ``steps`` and ``dead`` as :func:`~gradscope.reading.readers.read_dead_units` returns them; ``layer``
    one hidden layer, a sequence of them (stacked, input side at the bottom, separated by
    lines), or None for every hidden layer. Dark = dead. With ``sort``, each layer's units
    are ordered by the probe step from which they stay dead (never-dead units on top), so
    the image reads as "how many had died by when". At most ``max_steps`` probe columns
    (evenly spaced; each drawn as wide as the steps up to the next one).
    """
    steps = np.asarray(steps)
    layers = list(range(len(dead))) if layer is None else (
        [int(layer)] if np.isscalar(layer) else [int(x) for x in layer])
    ax = _new_ax(ax)
    ax.set_xlabel(STEP_LABEL)
    if not len(steps) or not layers:
        _note(ax, "no probe step logged")
        return ax
    cols = np.unique(np.linspace(0, len(steps) - 1, min(max_steps, len(steps))).round()
                     .astype(int))
    blocks, centers, pos = [], [], 0
    total = sum(np.asarray(dead[l]).shape[1] for l in layers)
    gap = max(1, round(0.025 * total)) if len(layers) > 1 else 0
    for j, l in enumerate(layers):
        m = np.asarray(dead[l], bool)[cols].T  # (units, probe steps)
        if sort and m.size:
            # the column from which the unit stays dead to the end (n if it is alive at the end)
            alive = ~m
            last_alive = np.where(alive.any(axis=1),
                                  m.shape[1] - 1 - np.argmax(alive[:, ::-1], axis=1), -1)
            since = np.where(m[:, -1], last_alive + 1, m.shape[1] + m.mean(axis=1))
            m = m[np.argsort(since, kind="stable")]
        if j:
            blocks.append(np.full((gap, m.shape[1]), np.nan))  # white space between layers
            pos += gap
        blocks.append(m.astype(float))
        centers.append(pos + m.shape[0] / 2)
        pos += m.shape[0]
    img = np.vstack(blocks)
    s = steps[cols].astype(float)
    if len(s) > 1:
        edges = np.concatenate([s, [s[-1] + (s[-1] - s[-2])]])
    else:
        edges = np.array([s[0] - 0.5, s[0] + 0.5])
    cmap = ListedColormap(["0.88", "0.08"])
    # pcolorfast: an image on the (possibly uneven) probe-step grid, fast for many units
    ax.pcolorfast(edges, np.arange(img.shape[0] + 1), np.ma.masked_invalid(img), cmap=cmap,
                  vmin=0, vmax=1)
    ax.set_facecolor("white")
    every = max(1, math.ceil(len(layers) / 12))  # at most ~12 labels
    ax.set_yticks(centers[::every])
    ax.set_yticklabels([str(l) for l in layers[::every]])
    # short enough for a panel a third of a page high
    ax.set_ylabel("layer: its units" + ("\n(by time of death)" if sort else ""))
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, img.shape[0])
    _step_axis(ax)
    ax.grid(False)
    ax.set_title("black = dead, light = alive", loc="right", fontsize="small")
    return ax


# -- activations ----------------------------------------------------------------------------
def activation_distributions(*, hist: pd.DataFrame, steps=None, ax=None,
                             open_ends: tuple[bool, bool] = (False, False)):
    """Per-layer activation distributions at the start and the end of training.

    ``hist`` from :func:`~gradscope.reading.readers.read_histograms`: density against activation value,
    one line per hidden layer (as in Glorot & Bengio's figures of activation histograms).
    ``steps``: the probe steps to show (default: the first and the last with data).

    ``ax=None``: a FacetGrid, one panel per step (columns) and run (rows). ``ax`` a sequence
    of Axes: one step per Axes (returns the sequence). ``ax`` one Axes: every step on it,
    the last solid and earlier ones dashed / dotted.

    ``open_ends``: whether the logged first / last bin also holds the values below / above
    the histogram's range (ReLU's values above 5, say); such a bin is left out of the lines
    and a note gives the share of values past the range.
    """
    runs = _runs(hist)
    h = hist[hist["count"].notna()] if "count" in hist.columns else hist
    if ax is None:
        per_run = [(run, g, _hist_steps(g, steps))
                   for run, g in (h.groupby("run", sort=False) if runs else [(None, h)])]
        n_cols = max([len(p) for _, _, p in per_run] + [1])
        # a FacetGrid of the right shape: rows = runs, columns = moments
        g = sns.FacetGrid(pd.DataFrame({"run": np.repeat([str(r) for r, _, _ in per_run] or [""],
                                                         n_cols),
                                        "moment": np.tile(np.arange(n_cols),
                                                          max(1, len(per_run)))}),
                          row="run" if len(per_run) > 1 else None, col="moment",
                          height=3.4, aspect=1.3, sharey=False, sharex=False, despine=False)
        axes = np.atleast_2d(g.axes)
        for i, (run, sub, picks) in enumerate(per_run):
            for j in range(n_cols):
                a = axes[i, j]
                if j >= len(picks):
                    a.set_axis_off()
                    continue
                _draw_hist(a, sub[sub["step"] == picks[j]], styles=["-"], open_ends=open_ends,
                           legend_loc="in" if j == len(picks) - 1 else None)
                title = _hist_moment(j, len(picks), picks[j])
                a.set_title(f"{run}: {title}" if len(per_run) > 1 else title)
        g.tight_layout()
        return g
    if runs and len(runs) > 1:
        raise ValueError(f"hist holds {len(runs)} runs; one Axes draws one run")
    picks = _hist_steps(h, steps)
    if isinstance(ax, (Sequence, np.ndarray)):
        axes = list(np.ravel(ax))
        for j, a in enumerate(axes):
            if j >= len(picks):
                a.set_axis_off()
                _note(a, "no histogram")
                continue
            _draw_hist(a, h[h["step"] == picks[j]], styles=["-"], open_ends=open_ends,
                       legend_loc="out" if j == len(axes) - 1 else None)
            a.set_title(_hist_moment(j, len(picks), picks[j]))
        # one density scale for the panels, so that start and end compare
        tops = [a.get_ylim()[1] for a in axes[: len(picks)]]
        for a in axes[: len(picks)]:
            a.set_ylim(0, max(tops) if tops else 1)
        return ax
    styles = [":", "--", "-."][: max(0, len(picks) - 1)] + ["-"]
    styles = styles[-len(picks):] if picks else []
    _draw_hist(ax, h[h["step"].isin(picks)], styles=styles, steps=picks, open_ends=open_ends)
    return ax


def _hist_steps(h: pd.DataFrame, steps) -> list:
    if steps is not None:
        return [int(s) for s in (np.atleast_1d(steps))]
    if h.empty:
        return []
    tot = h.groupby("step")["count"].sum() if "count" in h.columns else None
    ok = tot[tot > 0].index.to_numpy() if tot is not None else np.unique(h["step"])
    if not len(ok):
        return []
    return [int(ok[0])] if len(ok) == 1 else [int(ok[0]), int(ok[-1])]


def _hist_moment(i: int, n: int, step) -> str:
    name = "start" if i == 0 else ("end" if i == n - 1 else "")
    return f"{name} (step {_human(step)})" if name else f"step {_human(step)}"


#: Most bins drawn per histogram line (finer logged bins are merged in pairs, which keeps
#: a line of a few thousand values smooth).
HIST_DRAW_BINS = 25


def _rebin(left, right, count, most: int = HIST_DRAW_BINS):
    """Merge neighbouring bins until at most ``most`` remain; returns centres, density."""
    left, right, count = (np.asarray(a, float) for a in (left, right, count))
    k = max(1, math.ceil(len(count) / most))
    if k > 1:
        n = len(count) // k * k
        tail_c, tail_r = count[n:], right[n:]
        left = np.append(left[:n:k], left[n:n + 1] if len(tail_c) else [])
        right_new = right[k - 1:n:k]
        count = np.add.reduceat(count[:n], np.arange(0, n, k)) if n else np.array([])
        if len(tail_c):
            right_new = np.append(right_new, tail_r[-1])
            count = np.append(count, tail_c.sum())
        right = right_new
    width = right - left
    total = count.sum()
    dens = count / (total * width) if total > 0 else np.zeros_like(count)
    return (left + right) / 2, dens


def _draw_hist(ax, data, styles, steps=None, legend_loc="out", most: int = HIST_LAYERS,
               open_ends: tuple[bool, bool] = (False, False)):
    """``open_ends``: whether values below / above the histogram's range fall into its
    first / last bin (ReLU above its range, say). Such a bin is not drawn as density, where
    it would look like a spike; a note says what share of the values lie past the range."""
    ax.set_xlabel("activation value")
    ax.set_ylabel("density")
    if data.empty:
        _note(ax, "no activation histogram")
        return
    layers = sorted(data["layer"].unique())
    n_all = len(layers)
    if n_all > most:  # overlaid densities of many layers are unreadable: a spread of them
        layers = [layers[i] for i in np.unique(np.linspace(0, n_all - 1, most).round()
                                               .astype(int))]
    pal = _layer_palette(len(layers))
    steps = sorted(data["step"].unique()) if steps is None else list(steps)
    past = {0: [], 1: []}
    edge = {}
    for si, st in enumerate(steps):
        ls = styles[si] if si < len(styles) else "-"
        for i, l in enumerate(layers):
            g = data[(data["layer"] == l) & (data["step"] == st)].sort_values("bin_left")
            if g.empty:
                continue
            left, right = g["bin_left"].to_numpy(float), g["bin_right"].to_numpy(float)
            count = g["count"].to_numpy(float)
            total = count.sum()
            lo_i, hi_i = 0, len(count)
            if open_ends[0] and len(count) > 2:
                past[0].append(count[0] / total if total else 0.0)
                edge[0] = left[0]
                lo_i = 1
            if open_ends[1] and len(count) > 2:
                past[1].append(count[-1] / total if total else 0.0)
                edge[1] = right[-1]
                hi_i -= 1
            x, y = _rebin(left[lo_i:hi_i], right[lo_i:hi_i], count[lo_i:hi_i])
            if total:  # density of all values, so the areas still compare across layers
                y = y * count[lo_i:hi_i].sum() / total
            ax.plot(x, y, color=pal[i], ls=ls if len(steps) > 1 else
                    _layer_style(i, len(layers)), lw=1.4)
    ax.set_ylim(bottom=0)
    notes = []
    for side, word in ((0, "below"), (1, "at or above")):
        shares = past[side]
        if shares and max(shares) > 0:
            lo, hi = min(shares), max(shares)
            rng = f"{100 * hi:.0f}%" if round(100 * lo) == round(100 * hi) else \
                f"{100 * lo:.0f}-{100 * hi:.0f}%"
            notes.append(f"{rng} of values {word} {edge[side]:g} (not drawn)")
    if notes:
        ax.text(0.99, 0.97 if legend_loc != "in" else 0.03, "\n".join(notes),
                transform=ax.transAxes, ha="right",
                va="top" if legend_loc != "in" else "bottom", fontsize="x-small", color="0.2",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7", "pad": 2})
    if legend_loc is None:
        return
    _layer_legend(ax, layers, pal, mark_out=False, legend_loc=legend_loc,
                  title="layer" if n_all == len(layers) else f"layer\n({len(layers)} of {n_all})",
                  styles=[_layer_style(i, len(layers)) for i in range(len(layers))]
                  if len(steps) <= 1 else None)
    if len(steps) > 1:
        extra = [Line2D([], [], color="0.3", ls=styles[i] if i < len(styles) else "-",
                        label=f"step {_human(s)}") for i, s in enumerate(steps)]
        ax.add_artist(ax.get_legend())
        ax.legend(handles=extra, loc="upper right", fontsize="small", framealpha=0.8)


def activation_summary(*, data: pd.DataFrame, ax=None,
                       moments=("start", "half", "end")):
    """Mean +- standard deviation of each hidden layer's activations at moments of training.

    From ``read_layers`` (``act_mean``, ``act_std`` on the training batch): against layer,
    a marker at the mean with a bar of +- one std, one series per moment (slightly offset,
    light = early, dark = late). The fallback when no histogram was recorded.
    """
    return _one_or_facet(data, ax, _draw_act_summary, moments=moments)


def _draw_act_summary(ax, data, *, moments=("start", "half", "end"), legend_loc="out"):
    d = _finite(data[["step", "layer", "act_mean", "act_std"]], "act_mean", "act_std")
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel("activation: mean ± std")
    if d.empty:
        _note(ax, "no activation statistics")
        return
    picks = moment_steps(d["step"], moments)
    colors = sns.cubehelix_palette(len(picks), start=0.5, rot=-0.6, dark=0.12, light=0.68)
    width = 0.5
    offs = np.linspace(-width / 2, width / 2, len(picks)) if len(picks) > 1 else [0.0]
    for i, (label, st) in enumerate(picks.items()):
        g = d[d["step"] == st].sort_values("layer")
        ax.errorbar(g["layer"] + offs[i], g["act_mean"], yerr=g["act_std"], fmt=_MARKERS[i],
                    color=colors[i], ms=5, capsize=3, lw=1.4,
                    label=f"{label} (step {_human(st)})")
    _layer_axis(ax, int(d["layer"].max()) + 1, axis="x", mark_out=False)
    ax.legend(fontsize="small", **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0),
              "frameon": False} if legend_loc == "out" else {"loc": "best", "framealpha": 0.8}))


# -- update / weight ratio ------------------------------------------------------------------
def update_ratio(*, data: pd.DataFrame, ax=None, guide: float = UPDATE_GUIDE,
                 max_steps: int = 400):
    """``update_ratio`` (||dW_l|| / ||W_l||) per layer over training, log y.

    A dashed horizontal guide at ``guide`` (1e-3: the rule of thumb for a healthy
    learning rate) is labelled. Binned to ``max_steps`` (bin medians).
    """
    return _one_or_facet(data, ax, _draw_update, guide=guide, max_steps=max_steps)


def _draw_update(ax, data, *, guide, max_steps, legend_loc="out"):
    d = _finite_positive(data[["step", "layer", "update_ratio"]], "update_ratio")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"{LABELS['update_ratio']} (log scale)")
    _step_axis(ax)
    ax.set_yscale("log")
    if guide:
        ax.axhline(guide, color="black", ls="--", lw=1.3, zorder=3, gid="update-guide",
                   label=f"{guide:g} guide")
        ax.annotate(f"{guide:g}", xy=(0.0, guide), xycoords=("axes fraction", "data"),
                    xytext=(3, 2), textcoords="offset points", ha="left", va="bottom",
                    fontsize="small", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.85})
    if not d.empty:
        d = downsample(d, max_steps, by=["layer"])
        layers = sorted(d["layer"].unique())
        pal = _layer_palette(len(layers))
        for i, (l, g) in enumerate(d.groupby("layer", sort=True)):
            g = g.sort_values("step")
            ax.plot(g["step"], g["update_ratio"], color=pal[i], lw=1.4,
                    ls=_layer_style(i, len(layers)))
        _layer_legend(ax, layers, pal, title="layer", legend_loc=legend_loc,
                      styles=[_layer_style(i, len(layers)) for i in range(len(layers))])
        if guide:
            leg = ax.get_legend()
            handles = [*leg.legend_handles, Line2D([], [], color="black", ls="--", lw=1.3)]
            labels = [t.get_text() for t in leg.get_texts()] + [f"{guide:g} (rule of thumb)"]
            title = leg.get_title().get_text()
            kw = ({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}
                  if legend_loc == "out" else {"loc": "best", "framealpha": 0.8})
            ax.legend(handles, labels, title=title, fontsize="small", title_fontsize="small",
                      **kw)
    else:
        _note(ax, "no finite update ratio")
    if guide:
        lo, hi = ax.get_ylim()
        if d.empty:
            ax.set_ylim(guide / 10, guide * 10)
        else:
            ax.set_ylim(min(lo, guide / 3), max(hi, guide * 3))


# -- learning curves ------------------------------------------------------------------------
def learning_curves(*, steps: pd.DataFrame, epochs: pd.DataFrame | None = None, ax=None,
                    max_steps: int = 400, smooth: int | None = None):
    """Training loss (smoothed) and validation loss and accuracy per epoch.

    The training batch loss is a rolling median over ``smooth`` logged steps (default: 2% of
    the run), then binned to ``max_steps``; validation values are drawn per epoch at the
    epoch's last step, dashed with markers. The loss axis is logarithmic when the finite
    losses span more than 1.5 decades. Several runs (a ``run`` column) share the panels,
    coloured by run.

    ``ax=None``: a FacetGrid with a loss and an accuracy panel. ``ax``: one Axes (loss only)
    or a pair (loss, accuracy); returns what it drew on.
    """
    long = _learning_long(steps, epochs, max_steps, smooth)
    runs = list(dict.fromkeys(long["run"])) if len(long) else []
    long.attrs["diverged"] = _diverged_at(steps)
    if ax is None:
        g = sns.FacetGrid(long.assign(panel=long["metric"]), col="panel", sharey=False,
                          height=3.8, aspect=1.4, despine=False,
                          col_order=["loss", "accuracy"])
        for a, metric in zip(g.axes.flat, ["loss", "accuracy"]):
            _draw_learning(a, long[long["metric"] == metric], metric, runs,
                           legend=metric == "accuracy", diverged=long.attrs["diverged"])
        g.set_titles("")
        g.tight_layout()
        return g
    axes = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
    for i, (a, metric) in enumerate(zip(axes, ["loss", "accuracy"])):
        _draw_learning(a, long[long["metric"] == metric], metric, runs,
                       legend=i == len(axes) - 1, diverged=long.attrs["diverged"])
    return ax


def _learning_long(steps, epochs, max_steps, smooth) -> pd.DataFrame:
    parts = []
    st = steps.copy()
    if "run" not in st.columns:
        st["run"] = ""
    for run, g in st.groupby("run", sort=False):
        g = g.sort_values("step")
        w = smooth or max(1, len(g) // 50)
        for col, metric in (("loss", "loss"), ("accuracy", "accuracy")):
            if col not in g.columns:
                continue
            v = pd.to_numeric(g[col], errors="coerce").astype(float)
            v = v.where(np.isfinite(v))
            sm = v.rolling(w, center=True, min_periods=1).median()
            part = pd.DataFrame({"step": g["step"].to_numpy(), "value": sm.to_numpy()})
            part = downsample(part.dropna(), max_steps, by=[])
            part["run"], part["metric"] = run, metric
            part["split"] = "train (batch, smoothed)"
            parts.append(part[["run", "metric", "split", "step", "value"]])
    if epochs is not None and len(epochs):
        ep = epochs.copy()
        if "run" not in ep.columns:
            ep["run"] = ""
        for col, metric in (("val_loss", "loss"), ("val_accuracy", "accuracy")):
            if col in ep.columns:
                parts.append(pd.DataFrame({
                    "run": ep["run"].to_numpy(), "metric": metric,
                    "split": "validation (per epoch)", "step": ep["step"].to_numpy(),
                    "value": pd.to_numeric(ep[col], errors="coerce").to_numpy(float)}))
    if not parts:
        return pd.DataFrame(columns=["run", "metric", "split", "step", "value"])
    long = pd.concat(parts, ignore_index=True)
    v = long["value"].to_numpy(float)
    return long[np.isfinite(v)].reset_index(drop=True)


def _diverged_at(steps: pd.DataFrame) -> dict:
    """``{run: first step whose loss is not finite}`` ("" for a table without runs)."""
    out = {}
    st = steps if "run" in steps.columns else steps.assign(run="")
    for run, g in st.groupby("run", sort=False):
        bad = g["step"][~np.isfinite(pd.to_numeric(g["loss"], errors="coerce").to_numpy(float))]
        if len(bad):
            out[run] = int(bad.min())
    return out


def _draw_learning(ax, d, metric, runs, legend=True, diverged=None):
    ax.set_xlabel(STEP_LABEL)
    _step_axis(ax)
    if d.empty:
        ax.set_ylabel(metric)
        _note(ax, "no accuracy (regression)" if metric == "accuracy" else "no finite loss")
        return
    pal = (sns.color_palette("colorblind", len(runs)) if len(runs) <= 10
           else sns.color_palette("viridis", len(runs)))
    styles = {"train (batch, smoothed)": {"ls": "-", "lw": 1.6},
              "validation (per epoch)": {"ls": "--", "lw": 1.3, "marker": "o", "ms": 3}}
    for i, run in enumerate(runs):
        for split, kw in styles.items():
            g = d[(d["run"] == run) & (d["split"] == split)].sort_values("step")
            if len(g):
                ax.plot(g["step"], g["value"], color=pal[i], **kw)
        if diverged and run in diverged:
            ax.axvline(diverged[run], color=pal[i], ls=":", lw=1.5)
    if metric == "loss":
        pos = d["value"][d["value"] > 0]
        log = len(pos) == len(d) and len(pos) and pos.max() / pos.min() > 10 ** 1.5
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    else:
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, pos: f"{100 * v:.0f}%"))
    if not legend:
        return
    handles = [Line2D([], [], color="0.3", **kw, label=s) for s, kw in styles.items()]
    handles += [Line2D([], [], color=pal[i], lw=3, label=str(r)) for i, r in enumerate(runs)
                if r != ""]
    if diverged:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1.5,
                              label="loss not finite from here (diverged)"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)


# -- run comparison -------------------------------------------------------------------------
def run_comparison(*, summary: pd.DataFrame, x: str = "run", y: str = "ratio", hue=None,
                   style=None, ax=None, guides=(1e-3, 1e3)):
    """First-to-last-layer gradient ratio per run, log scale, one marker per row.

    ``summary``: one row per run (or per run and ``style``), a categorical column (runs) and
    a numeric column (the ratio, e.g. delta_norm[layer 0] / delta_norm[output] at the first
    logged step); whichever of ``x``, ``y`` is numeric is the log axis. ``hue`` (and
    ``style``) group the runs, e.g. by activation / init / optimizer. A thick grey line marks 1
    (no change across depth); dashed ``guides`` mark the vanishing / exploding thresholds.
    Rows whose ratio is not finite or not positive are listed as "n/a" beside the axis.
    """
    ax = _new_ax(ax, figsize=(8, 0.45 * max(4, len(summary)) + 1.5))
    num_is_x = pd.api.types.is_numeric_dtype(summary[x]) and not (
        pd.api.types.is_numeric_dtype(summary[y]))
    val, cat = (x, y) if num_is_x else (y, x)
    order = list(dict.fromkeys(summary[cat].astype(str)))
    d = summary.copy()
    d[cat] = pd.Categorical(d[cat].astype(str), categories=order, ordered=True)
    v = pd.to_numeric(d[val], errors="coerce").to_numpy(float)
    ok = np.isfinite(v) & (v > 0)
    good, bad = d[ok], d[~ok]
    pos = {c: i for i, c in enumerate(order)}
    if len(good):
        p = good[cat].map(pos).astype(float)
        if style is not None:  # dodge the style levels, so coinciding markers stay visible
            levels = list(dict.fromkeys(good[style]))
            off = dict(zip(levels, np.linspace(-0.12, 0.12, len(levels))
                           if len(levels) > 1 else [0.0]))
            p = p + good[style].map(off).astype(float)
        sns.scatterplot(data=good.assign(_pos=p),
                        x=val if num_is_x else "_pos", y="_pos" if num_is_x else val,
                        hue=hue, style=style, s=80, ax=ax, zorder=3, markers=True,
                        palette="colorblind" if hue else None, legend="auto")
    guide_kw = {"color": "0.35", "lw": 1.0}
    line = ax.axvline if num_is_x else ax.axhline
    line(1.0, ls="-", color="0.6", lw=2.0)
    for gv, name in zip(guides or (), ("vanishing", "exploding")):
        line(gv, ls="--", **guide_kw)
        if num_is_x:  # labels on the side of the line facing the plot's middle
            # (exploding at the top: the two never run into each other)
            right = name == "exploding"
            ax.annotate(f"{name} {gv:g}", xy=(gv, 1.0 if right else 0.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(-3 if right else 3, -3 if right else 3),
                        textcoords="offset points", va="top" if right else "bottom",
                        ha="right" if right else "left", fontsize="small",
                        bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})
        else:
            ax.annotate(f"{name} {gv:g}", xy=(0.0, gv), xycoords=("axes fraction", "data"),
                        xytext=(3, 3), textcoords="offset points", fontsize="small")
    setscale = ax.set_xscale if num_is_x else ax.set_yscale
    setscale("log")
    ticks = list(range(len(order)))
    if num_is_x:
        ax.set_yticks(ticks)
        ax.set_yticklabels(order)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_ylabel("")
        ax.set_xlabel(f"{val} (log scale)")
    else:
        ax.set_xticks(ticks)
        ax.set_xticklabels(order, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xlabel("")
        ax.set_ylabel(f"{val} (log scale)")
    # keep the guides in view
    lims = ax.get_xlim() if num_is_x else ax.get_ylim()
    vals = [*(v[ok] if ok.any() else []), 1.0, *(guides or ())]
    lo, hi = min(min(vals) / 3, lims[0]), max(max(vals) * 3, lims[1])
    (ax.set_xlim if num_is_x else ax.set_ylim)(lo, hi)
    for _, r in bad.iterrows():
        i = pos[str(r[cat])]
        if num_is_x:
            ax.annotate("n/a (not finite)", xy=(0.01, i), xycoords=("axes fraction", "data"),
                        va="center", fontsize="small", color="0.3")
        else:
            ax.annotate("n/a", xy=(i, 0.02), xycoords=("data", "axes fraction"), ha="center",
                        fontsize="small", color="0.3")
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                        frameon=False)
    return ax



# -- sweeps: one row per run ----------------------------------------------------------------
#: Axis / colour-bar labels of the per-run columns of a sweep (the run table of
#: gradscope.analysis.runs, which report.run_table and sweep.summarize share).
SWEEP_LABELS = {
    "ratio_early": "||delta_0|| / ||delta_out||\n(median over the first half of training)",
    "ratio_first": "||delta_0|| / ||delta_out||\n(at the first logged step)",
    "ratio_median": "||delta_0|| / ||delta_out||\n(median over all logged steps)",
    "dead_frac": "dead units: mean share over the hidden layers\n(last probe step)",
    "dead_frac_max": "dead units: share of the worst hidden layer\n(last probe step)",
    "accuracy": "final accuracy",
    "final_val_accuracy": "final validation accuracy",
    "final_train_accuracy": "final training accuracy (last epoch)",
}


def _column(summary: pd.DataFrame, name: str, what: str) -> str:
    """``name``, checked to be a column of ``summary``."""
    if name in summary.columns:
        return name
    raise ValueError(f"summary has no column {name!r} for the {what}; it has: "
                     f"{', '.join(map(str, summary.columns))}")


def _levels(df: pd.DataFrame, col) -> list:
    """The distinct values of ``col`` in a stable order (sorted when they sort), or [None]."""
    if col is None or col not in df.columns:
        return [None]
    vals = list(pd.unique(df[col].dropna()))
    try:
        return sorted(vals)
    except TypeError:
        return vals


def _select(df: pd.DataFrame, **levels) -> pd.DataFrame:
    ok = np.ones(len(df), bool)
    for col, v in levels.items():
        if col is not None and v is not None:
            ok &= (df[col] == v).to_numpy(bool)
    return df[ok]


def _panel_axes(summary, *, col, row, ax, sharey, height, aspect):
    """(FacetGrid or None, 2-D array of Axes, row levels, column levels).

    ``ax``: None (a new FacetGrid), one Axes (one panel only) or a sequence of Axes, one
    per panel, row by row.
    """
    cols, rows = _levels(summary, col), _levels(summary, row)
    if ax is None:
        data = summary.copy()
        c = col if cols != [None] else None
        r = row if rows != [None] else None
        g = sns.FacetGrid(data, col=c, row=r, col_order=cols if c else None,
                          row_order=rows if r else None, sharex=True, sharey=sharey,
                          height=height, aspect=aspect, despine=False)
        return g, np.asarray(g.axes).reshape(len(rows), len(cols)), rows, cols
    flat = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(
        ax, (Sequence, np.ndarray)) else [ax]
    if len(flat) != len(rows) * len(cols):
        raise ValueError(f"{len(rows) * len(cols)} panels ({len(rows)} {row or ''} x "
                         f"{len(cols)} {col or ''}) need as many Axes; got {len(flat)}")
    return None, np.asarray(flat, dtype=object).reshape(len(rows), len(cols)), rows, cols


def _panel_title(col, cv, row, rv) -> str:
    def one(name, v):
        if not name or v is None:
            return None
        return str(v) if "=" in str(v) else f"{name} = {v}"   # "residual=on" says it all

    return " | ".join(p for p in (one(row, rv), one(col, cv)) if p)


_LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}


def _blank(label: str) -> tuple[str, Line2D]:
    return label, Line2D([], [], color="none", label=label)


def _depth_lines(summary, *, y, x, hue, style, col, row, ax, predicted, log, ylabel,
                 palette, height, aspect, first=None, band_note=True):
    """Shared engine of :func:`phase_diagram` and :func:`depth_dead_units`."""
    d = summary.copy()
    has_first = first is not None and first in d.columns
    if has_first:
        f = pd.to_numeric(d[first], errors="coerce").to_numpy(float)
        d["_f"] = np.where(np.isfinite(f) & ((f > 0) if log else True), f, np.nan)
        has_first = bool(np.isfinite(d["_f"]).any())
    vals = pd.to_numeric(d[y], errors="coerce").to_numpy(float)
    good = np.isfinite(vals) & ((vals > 0) if log else True)
    d["_y"] = np.where(good, vals, np.nan)
    d["_x"] = pd.to_numeric(d[x], errors="coerce")
    has_pred = predicted is not None and predicted in d.columns
    if has_pred:
        p = pd.to_numeric(d[predicted], errors="coerce").to_numpy(float)
        d["_p"] = np.where(np.isfinite(p) & ((p > 0) if log else True), p, np.nan)
        has_pred = bool(np.isfinite(d["_p"]).any())
    g, axes, rows, cols = _panel_axes(d, col=col, row=row, ax=ax, sharey=True, height=height,
                                      aspect=aspect)
    hues, styles = _levels(d, hue), _levels(d, style)
    if palette is None:
        colors = sns.color_palette("colorblind", max(len(hues), 1))
        palette = dict(zip(hues, colors))
    markers = dict(zip(styles, _MARKERS * (len(styles) // len(_MARKERS) + 1)))
    xs = sorted(d["_x"].dropna().unique())
    several = False
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            a = axes[i, j]
            sub = _select(d, **{col or "_none": cv, row or "_none_": rv}) if (
                col or row) else d
            missing = int(sub["_y"].isna().sum())
            for hv in hues:
                for sv in styles:
                    if hue is not None and hue == style and hv != sv:
                        continue     # one variable drawn as colour and marker
                    gsub = _select(sub, **{hue or "_h": hv, style or "_s": sv})
                    if gsub.empty:
                        continue
                    color = palette.get(hv, "0.3")
                    mk = markers.get(sv, "o")
                    agg = (gsub.dropna(subset=["_y"]).groupby("_x")["_y"]
                           .agg(["median", "min", "max", "count"]).sort_index())
                    if len(agg):
                        a.plot(agg.index, agg["median"], color=color, marker=mk, ms=6.5,
                               lw=1.9, zorder=3, gid="measured")
                        if (agg["count"] > 1).any():
                            several = True
                            a.fill_between(agg.index, agg["min"], agg["max"], color=color,
                                           alpha=0.15, lw=0, zorder=2)
                    if has_first:
                        fs = gsub.dropna(subset=["_f"])
                        if len(fs):
                            a.plot(fs["_x"], fs["_f"], ls="none", marker="x", ms=5, mew=1.3,
                                   color=color, zorder=2.6, gid="first-step")
                    if has_pred:
                        pr = gsub.dropna(subset=["_p"]).groupby("_x")["_p"].median().sort_index()
                        if len(pr):
                            a.plot(pr.index, pr.to_numpy(), color=color, ls="--", lw=1.3,
                                   marker=mk, ms=5, mfc="none", alpha=0.9, zorder=2.5,
                                   gid="predicted")
            if log:
                a.set_yscale("log")
            if xs:
                if len(xs) <= 12:
                    a.set_xticks(xs)
                    a.set_xticklabels([_human(v) for v in xs])
                pad = 0.04 * (xs[-1] - xs[0]) if len(xs) > 1 else 0.5
                a.set_xlim(xs[0] - pad, xs[-1] + pad)
            a.set_xlabel(x if i == len(rows) - 1 else "")
            a.set_ylabel(ylabel if j == 0 else "")
            a.set_title(_panel_title(col, cv, row, rv), fontsize="medium")
            if missing:
                what = "finite positive" if log else "finite"
                a.text(0.99, 0.01, f"{missing} run{'s' if missing > 1 else ''} without a {what} "
                       f"value (not drawn)", transform=a.transAxes, ha="right", va="bottom",
                       fontsize="x-small", color="0.3")
            if not len(sub) or sub["_y"].isna().all() and not (has_pred and
                                                               sub["_p"].notna().any()):
                _note(a, "no value to draw")
    # the legend: colours (hue), markers (style), line kinds
    items = []
    if hue is not None and hue == style:    # one variable, colour and marker
        items.append(_blank(hue))
        items += [(str(h), Line2D([], [], color=palette.get(h, "0.3"), lw=2,
                                  marker=markers[h], ms=6)) for h in hues]
    elif hue is not None and hues != [None]:
        items.append(_blank(hue))
        items += [(str(h), Line2D([], [], color=palette.get(h, "0.3"), lw=2.5)) for h in hues]
    if style is not None and styles != [None] and style != hue:
        items.append(_blank(style))
        items += [(str(s), Line2D([], [], color="0.3", marker=markers[s], ls="none", ms=6.5))
                  for s in styles]
    items.append(_blank("line"))
    items.append(("measured" + (": median over seeds,\nband = min to max" if several and
                                band_note else ""),
                  Line2D([], [], color="0.3", lw=1.9, marker="o", ms=5)))
    if has_first:
        items.append(("measured at the first\nlogged step, each run",
                      Line2D([], [], color="0.3", ls="none", marker="x", ms=5, mew=1.3)))
    if has_pred:
        items.append(("mean-field prediction\nat init (plain MLP)",
                      Line2D([], [], color="0.3", lw=1.3, ls="--", marker="o", ms=5,
                             mfc="none")))
    labels, handles = [i[0] for i in items], [i[1] for i in items]
    if g is not None:
        g.add_legend(legend_data=dict(zip(labels, handles)), label_order=labels, title="",
                     fontsize="small")
        _bold_headers(g.legend, {hue, style, "line"})
    else:
        top_right = axes[0, -1]
        leg = top_right.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                               frameon=False, fontsize="small", handlelength=2.6)
        _bold_headers(leg, {hue, style, "line"})
    return g, axes, d


def _bold_headers(leg, headers) -> None:
    if leg is None:
        return
    for t in leg.get_texts():
        if t.get_text() in headers:
            t.set_fontweight("bold")


def phase_diagram(*, summary: pd.DataFrame, y: str = "ratio_early", x: str = "depth",
                  hue: str | None = "activation", style: str | None = "init",
                  col: str | None = "optimizer", row: str | None = None,
                  predicted: str | None = "predicted_ratio", first: str | None = "ratio_first",
                  guides=(1e-3, 1e3), ax=None,
                  palette: Mapping | None = None, height: float = 4.0, aspect: float = 1.0):
    """The vanishing-gradient phase diagram of a sweep: gradient ratio against depth.

    ``summary``: one row per run (the run table: :func:`gradscope.views.report.run_table`,
    :func:`gradscope.training.sweep.summarize`), with the columns named by ``x`` (numeric,
    default ``depth``), ``y`` (default ``ratio_early``: ``delta_norm`` of layer 0 over the
    output layer's, the median over the first half of training, as the diagnosis judges it;
    ``ratio_first`` is the first logged step) and the grouping columns ``hue`` (colour), ``style``
    (marker), ``col`` and ``row`` (panels; None for none).

    One line per hue x style level through the **median** over the rows sharing ``x`` (the
    seeds), with a band from their minimum to their maximum when there are several. Log y;
    rows whose ratio is not finite or not positive are counted in a note, not drawn.
    ``predicted`` (default ``predicted_ratio``, the mean-field ``chi1^(depth/2)``-type
    prediction at initialisation; silently left out when the column is missing or empty)
    is drawn dashed in the line's colour with hollow markers, and ``first`` (default
    ``ratio_first``, the ratio at the first logged step; left out when missing) as small crosses, one per run: the measurement
    the prediction describes. ``guides``: the vanishing and
    exploding thresholds, drawn dashed with the regions beyond them shaded; a grey line
    marks 1.

    ``ax=None``: a new FacetGrid (one panel per ``row`` x ``col`` level, shared y). ``ax``:
    one Axes per panel (a sequence, row by row; one Axes for a single panel); the legend goes
    beside the top-right one. Returns the FacetGrid, or the Axes as a 2-D array.
    """
    y = _column(summary, y, "gradient ratio")
    for c in (x, hue, style, col, row):
        if c is not None and c not in summary.columns:
            raise ValueError(f"summary has no column {c!r}")
    if first is not None and first not in summary.columns:
        first = None
    g, axes, d = _depth_lines(summary, y=y, x=x, hue=hue, style=style, col=col, row=row,
                              ax=ax, predicted=predicted, log=True, first=first,
                              ylabel=SWEEP_LABELS.get(y, f"{y} (log scale)") + "",
                              palette=palette, height=height, aspect=aspect)
    vals = [*d["_y"].dropna()]
    for c in ("_p", "_f"):
        if c in d.columns:
            vals += [*d[c].dropna()]
    vals += [1.0, *(guides or ())]
    lo, hi = min(vals) / 4, max(vals) * 4
    vanish, explode = (tuple(guides) + (None, None))[:2] if guides else (None, None)
    for a in axes.ravel():
        a.axhline(1.0, color="0.45", lw=1.0, zorder=1)
        if vanish:
            a.axhline(vanish, color="0.25", ls="--", lw=1.1, zorder=1, gid="vanishing-guide")
            a.axhspan(lo / 10, vanish, color="0.5", alpha=0.09, lw=0, zorder=0,
                      gid="vanishing-zone")
            a.annotate(f"vanishing (< {vanish:g})", xy=(0.01, vanish),
                       xycoords=("axes fraction", "data"), xytext=(2, -3),
                       textcoords="offset points", va="top", fontsize="x-small", color="0.2",
                       bbox=_LABEL_BOX)
        if explode:
            a.axhline(explode, color="0.25", ls="--", lw=1.1, zorder=1, gid="exploding-guide")
            a.axhspan(explode, hi * 10, color="0.5", alpha=0.09, lw=0, zorder=0,
                      gid="exploding-zone")
            a.annotate(f"exploding (> {explode:g})", xy=(0.01, explode),
                       xycoords=("axes fraction", "data"), xytext=(2, 3),
                       textcoords="offset points", va="bottom", fontsize="x-small",
                       color="0.2", bbox=_LABEL_BOX)
        a.set_ylim(lo, hi)
    return g if g is not None else axes


def depth_dead_units(*, summary: pd.DataFrame, y: str = "dead_frac", x: str = "depth",
                     hue: str | None = "activation", style: str | None = "init",
                     col: str | None = "optimizer", row: str | None = None,
                     threshold: float | None = None, ax=None, palette: Mapping | None = None,
                     height: float = 4.0, aspect: float = 1.0):
    """Share of dead units against depth, one line per hue x style level (seeds: median,
    min-max band), panels by ``col`` / ``row``.

    ``y`` (default ``dead_frac``: the mean over the hidden layers of the share of units dead
    on the probe set at the last probe step; ``dead_frac_max`` is the worst layer's share).
    Rows without a finite
    value (activations whose units cannot die) are left out: pass the ReLU-family runs.
    Linear y from 0 to 100 %; ``threshold`` drawn dashed. Returns a FacetGrid (``ax=None``)
    or the Axes as a 2-D array, as :func:`phase_diagram`.
    """
    y = _column(summary, y, "dead-unit share")
    for c in (x, hue, style, col, row):
        if c is not None and c not in summary.columns:
            raise ValueError(f"summary has no column {c!r}")
    d = summary[np.isfinite(pd.to_numeric(summary[y], errors="coerce").to_numpy(float))]
    if d.empty:
        d = summary
    g, axes, _ = _depth_lines(d, y=y, x=x, hue=hue, style=style, col=col, row=row, ax=ax,
                              predicted=None, log=False, ylabel=SWEEP_LABELS.get(y, y),
                              palette=palette, height=height, aspect=aspect)
    for a in axes.ravel():
        a.set_ylim(-0.02, 1.02)
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, pos: f"{100 * v:.0f}%"))
        if threshold is not None:
            a.axhline(threshold, color="0.25", ls="--", lw=1.1, gid="dead-threshold")
    return g if g is not None else axes


def grid_heatmap(*, summary: pd.DataFrame, value: str = "accuracy", x: str = "depth",
                 y=("activation", "init"), col: str | None = "optimizer", ax=None,
                 agg: str = "median", vmin: float | None = 0.0, vmax: float | None = 1.0,
                 cmap: str = "viridis", annot: bool = True, fmt: str | None = None,
                 colorbar: bool = True, label: str | None = None, height: float = 4.0,
                 aspect: float = 0.9):
    """A value of each run over the grid: rows = ``y`` levels, columns = ``x``, one panel per
    ``col`` level.

    ``summary``: one row per run (the run table). ``value`` (default ``accuracy``: final
    validation accuracy, else training). ``y``: one column or several, joined into row labels
    ``"relu / he"``; ``x``: the columns of each panel (sorted). Rows sharing a cell (seeds)
    are combined by ``agg`` (``median``, ``mean``, ``min``, ``max``); cells without a run
    are left blank ("no run"). Every panel has the same rows and columns. Cells are
    annotated with their value (``fmt``, default a percentage for values within [0, 1]),
    and with the number of runs ``n`` where that differs between cells; the colour map
    (default viridis, perceptually uniform) spans ``vmin``..``vmax`` (None: the data's
    range), with one colour bar.

    Returns a FacetGrid (``ax=None``) or the Axes as a 1-D array. The QuadMesh of each panel
    holds the ``(rows, columns)`` matrix of cell values (NaN masked).
    """
    value = _column(summary, value, "heatmap value")
    ys = [y] if isinstance(y, str) else list(y)
    for c in (x, col, *ys):
        if c is not None and c not in summary.columns:
            raise ValueError(f"summary has no column {c!r}")
    if agg not in ("median", "mean", "min", "max"):
        raise ValueError(f"agg={agg!r}; accepted: median, mean, min, max")
    d = summary.copy()
    d["_v"] = pd.to_numeric(d[value], errors="coerce")
    d.loc[~np.isfinite(d["_v"].to_numpy(float)), "_v"] = np.nan
    keys = d[ys].astype(object).where(d[ys].notna(), "-")
    order = sorted({tuple(r) for r in keys.itertuples(index=False)},
                   key=lambda t: tuple(str(v) for v in t))
    d["_row"] = [" / ".join(map(str, r)) for r in keys.itertuples(index=False)]
    row_labels = [" / ".join(map(str, t)) for t in order]
    xs = sorted(pd.to_numeric(d[x], errors="coerce").dropna().unique()) if (
        pd.api.types.is_numeric_dtype(d[x])) else _levels(d, x)
    d["_x"] = d[x]
    cols = _levels(d, col)
    g = None
    if ax is None:
        c = col if cols != [None] else None
        g = sns.FacetGrid(d, col=c, col_order=cols if c else None, height=height,
                          aspect=aspect * max(1.0, len(xs) / 4), sharex=False, sharey=False,
                          despine=False)
        axes = list(np.ravel(g.axes))
    else:
        axes = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(
            ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) != len(cols):
            raise ValueError(f"{len(cols)} panels ({col}) need as many Axes; got {len(axes)}")
    finite = d["_v"].dropna()
    lo = vmin if vmin is not None else (float(finite.min()) if len(finite) else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if len(finite) else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    as_pct = fmt is None and lo >= 0 and hi <= 1
    cm = plt.get_cmap(cmap)
    mesh = None
    # runs per cell: annotated only where cells differ in it
    counts = d.dropna(subset=["_v"]).groupby([c for c in (col, "_row", "_x") if c],
                                             dropna=False).size()
    uneven = counts.nunique() > 1
    for k, (a, cv) in enumerate(zip(axes, cols)):
        sub = _select(d, **{col or "_c": cv})
        Z = np.full((len(row_labels), len(xs)), np.nan)
        N = np.zeros_like(Z, dtype=int)
        for (rl, xv), grp in sub.groupby(["_row", "_x"], sort=False):
            v = grp["_v"].dropna()
            if rl in row_labels and xv in xs and len(v):
                Z[row_labels.index(rl), xs.index(xv)] = getattr(v, agg)()
                N[row_labels.index(rl), xs.index(xv)] = len(v)
        mesh = a.pcolormesh(np.arange(len(xs) + 1), np.arange(len(row_labels) + 1),
                            np.ma.masked_invalid(Z), cmap=cm, vmin=lo, vmax=hi,
                            edgecolors="white", linewidth=1.5, gid="grid-heatmap")
        a.set_xlim(0, len(xs))
        a.set_ylim(len(row_labels), 0)     # the first row on top
        a.set_facecolor("0.94")
        a.grid(False)
        a.set_xticks(np.arange(len(xs)) + 0.5)
        a.set_xticklabels([_human(v) if isinstance(v, (int, float, np.number)) else str(v)
                           for v in xs])
        a.set_yticks(np.arange(len(row_labels)) + 0.5)
        a.set_yticklabels(row_labels if k == 0 else [])
        a.tick_params(length=0)
        a.set_xlabel(x)
        a.set_ylabel(" / ".join(ys) if k == 0 else "")
        a.set_title(f"{col} = {cv}" if col and cv is not None else "", fontsize="medium")
        if annot:
            fontsize = 9 if len(xs) <= 8 and len(row_labels) <= 12 else 7
            for (i, j), v in np.ndenumerate(Z):
                if not np.isfinite(v):
                    a.text(j + 0.5, i + 0.5, "no run", ha="center", va="center",
                           fontsize=fontsize - 1, color="0.45")
                    continue
                rgba = cm((v - lo) / (hi - lo))
                lum = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
                txt = (f"{100 * v:.0f}%" if as_pct else
                       (fmt.format(v) if fmt else f"{v:.3g}"))
                if uneven:
                    txt += f"\n(n={N[i, j]})"
                a.text(j + 0.5, i + 0.5, txt, ha="center", va="center", fontsize=fontsize,
                       color="white" if lum < 0.5 else "black")
    if colorbar and mesh is not None:
        fig = axes[0].figure
        cb = fig.colorbar(mesh, ax=axes, shrink=0.85, pad=0.02, aspect=30)
        cb.set_label(label or SWEEP_LABELS.get(value, value))
        if as_pct:
            cb.formatter = FuncFormatter(lambda v, pos: f"{100 * v:.0f}%")
            cb.update_ticks()
    return g if g is not None else np.asarray(axes, dtype=object)


def profile_comparison(*, data: pd.DataFrame, runs: Sequence | None = None,
                       titles: Mapping | None = None, value: str = "delta_norm",
                       moments=("start", "end"), predicted: Mapping | None = None, ax=None,
                       height: float = 4.0, aspect: float = 0.9):
    """Gradient profiles across depth of several runs side by side, on one log y scale.

    ``data``: layer tables of the runs in long form with a ``run`` column (``read_layers``
    rows). One panel per run (``runs`` gives the order, default the order in ``data``):
    ``value`` against layer at ``moments`` (default the first and the last logged step), as
    :func:`gradient_profile` draws it; every panel gets the same y range so that heights
    compare across panels. ``titles``: ``{run: panel title}``; ``predicted``: ``{run:
    values per layer}`` drawn dashed (e.g. the mean-field profile of a plain run).

    Returns a FacetGrid (``ax=None``) or the sequence of Axes given.
    """
    if "run" not in data.columns:
        raise ValueError("data needs a 'run' column (one layer table per run)")
    runs = list(runs) if runs is not None else _runs(data)
    if ax is None:
        g = sns.FacetGrid(data[data["run"].isin(runs)], col="run", col_order=runs,
                          height=height, aspect=aspect, sharey=False, sharex=False,
                          despine=False)
        axes = list(np.ravel(g.axes))
    else:
        g = None
        axes = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(
            ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) < len(runs):
            raise ValueError(f"{len(runs)} runs need as many Axes; got {len(axes)}")
    for a, run in zip(axes, runs):
        pred = (predicted or {}).get(run)
        _draw_profile(a, data[data["run"] == run], value=value, moments=moments,
                      predicted=pred, predicted_label="mean-field prediction at init",
                      legend_loc="in")
        a.set_title((titles or {}).get(run, str(run)), fontsize="medium", loc="left")
    logs = [a for a in axes[: len(runs)] if a.get_yscale() == "log"]
    if logs:
        lo = min(a.get_ylim()[0] for a in logs)
        hi = max(a.get_ylim()[1] for a in logs)
        for a in logs:
            a.set_ylim(lo, hi)
            _log_ticks_ok(a)
        for a in logs[1:]:
            a.set_ylabel("")
    if g is not None:
        g.tight_layout()
        return g
    return ax


# -- every run at a glance ------------------------------------------------------------------
#: The smallest positive float64; a ratio of 0 means the gradient underflowed below it.
UNDERFLOW = 1e-308


def run_overview(*, summary: pd.DataFrame, ax, guides=(1e-3, 1e3), shares=(0.5, 0.5)):
    """Every run on one line: its gradient ratio and its dead / saturated shares.

    ``summary``: one row per run with ``run`` (label), ``ratio`` (first-to-output
    back-propagated gradient ratio, median over the first half of training), ``dead`` and
    ``saturated`` (the worst hidden layer's share, NaN where it does not apply) and
    ``alarm`` ("failing", "warning" or "", or a bool: True = failing). ``ax``: two Axes. Left: the ratio on a log axis with the vanishing and
    exploding ``guides`` and their zones shaded; a ratio of 0 (below the float range) is
    drawn at the axis' left end as "< 1e-308". Right: the two shares as bars, with the
    ``shares`` thresholds. Failing runs are red, warnings orange, healthy runs green.
    """
    a1, a2 = ax
    d = summary.reset_index(drop=True)
    n = len(d)
    y = np.arange(n)
    # "failing" red, "warning" orange, else (healthy) green; booleans: True = failing
    alarm = d["alarm"].map(lambda a: "failing" if a is True else ("" if a is False else a))
    col = alarm.map({"failing": "#c0392b", "warning": "#e67e22"}).fillna("#1e8449").to_numpy()
    r = pd.to_numeric(d["ratio"], errors="coerce").to_numpy(float)
    pos = r[np.isfinite(r) & (r > 0)]
    lo = min([guides[0] / 30, *(pos / 3)]) if len(pos) else guides[0] / 30
    hi = max([guides[1] * 30, *(pos * 3)]) if len(pos) else guides[1] * 30
    a1.set_xscale("log")
    a1.set_xlim(lo, hi)
    a1.axvspan(lo, guides[0], color="#fadbd8", zorder=0)
    a1.axvspan(guides[1], hi, color="#fdebd0", zorder=0)
    a1.axvline(1.0, color="0.6", lw=2.0, zorder=1)
    for gv, name, ha in ((guides[0], "vanishing", "right"), (guides[1], "exploding", "left")):
        a1.axvline(gv, color="0.3", ls="--", lw=1.0, zorder=1)
        a1.annotate(name, xy=(gv, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-3 if ha == "right" else 3, 2), textcoords="offset points",
                    ha=ha, va="bottom", fontsize="small", color="0.2")
    for i, v in enumerate(r):
        if np.isfinite(v) and v > 0:
            a1.plot([v], [i], "o", color=col[i], ms=6, zorder=3)
        elif v == 0:
            a1.plot([lo], [i], "<", color=col[i], ms=7, zorder=3, clip_on=False)
            a1.annotate(f"< {UNDERFLOW:g} (underflow)", xy=(lo, i), xytext=(8, 0),
                        textcoords="offset points", va="center", fontsize="x-small")
        else:
            a1.annotate("n/a", xy=(0.01, i), xycoords=("axes fraction", "data"),
                        va="center", fontsize="x-small", color="0.4")
    a1.set_yticks(y)
    a1.set_yticklabels(d["run"].astype(str), fontsize=7 if n > 12 else 8.5)
    a1.set_ylim(n - 0.5, -0.5)
    a1.set_xlabel("gradient at layer 0 / at the output layer (log scale)", fontsize=8.5)
    a1.grid(axis="y", visible=False)
    a1.tick_params(axis="x", labelsize=8)
    h = 0.38
    for key, off, colour, label in (("dead", -h / 2, "#34495e", "dead units"),
                                    ("saturated", h / 2, "#d68910", "saturated units")):
        v = pd.to_numeric(d.get(key, pd.Series([np.nan] * n)), errors="coerce").to_numpy(float)
        ok = np.isfinite(v)
        a2.barh(y[ok] + off, v[ok], height=h, color=colour, label=label)
    a2.axvline(shares[0], color="0.3", ls="--", lw=1.0)
    a2.set_xlim(0, 1)
    a2.set_ylim(n - 0.5, -0.5)
    a2.set_yticks(y)
    a2.set_yticklabels([])
    a2.grid(axis="y", visible=False)
    a2.xaxis.set_major_formatter(FuncFormatter(lambda v, pos: f"{100 * v:.0f}%"))
    a2.tick_params(axis="x", labelsize=8)
    a2.set_xlabel("share of the worst hidden layer's units", fontsize=8.5)
    a2.legend(fontsize="x-small", loc="lower right", framealpha=0.85)
    return ax

"""Reading long logs in time bins, so that time and memory do not grow with the run.

:func:`read_layers_binned` reads the layer table as at most ``max_steps`` time bins, each
the medians over a window of logged steps at its centre, reading only the windows (in
format 2 the blocks that hold them; in format 1 one regular HDF5 hyperslab per column);
:func:`downsample` bins a table already in memory the same way (the figures
use it). :func:`binned_median` is the vectorised median of row groups both use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..record.schema import OPTIONAL_COLUMNS, TABLES
from .readers import (
    columns_of,
    layer_count,
    layers_frame,
    open_log,
    read_columns,
    read_table,
    sorted_unique,
    table_length,
)

__all__ = ["MAX_STEPS", "PER_BIN", "binned_median", "check_bins", "downsample", "layers_binned",
           "read_layers_binned", "whole_step_windows"]

#: Time bins of the figures.
MAX_STEPS = 400
#: Logged steps read per time bin at most (a window at the bin's centre).
PER_BIN = 32
#: Rows of the probe table binned whole; beyond, windows of PER_BIN probe steps a bin.
FULL_PROBE_ROWS = 200_000


def read_layers_binned(path, max_steps: int = MAX_STEPS, per_bin: int = PER_BIN) -> pd.DataFrame:
    """The layer table of a log, binned in time (at most ``max_steps`` bins).

    Same columns as :func:`~gradscope.reading.readers.read_layers` plus ``step_lo`` and ``step_hi``
    (the bin's first and last logged step); ``step`` is the bin's middle logged step. The
    first and the last logged step keep bins of their own; the others are cut into bins of
    ``q = ceil((k - 2) / (max_steps - 2))`` consecutive logged steps (the last bin
    shorter). A bin's values are the medians (NaN ignored) over a window of
    ``min(per_bin, q)`` consecutive logged steps at its centre: the whole bin (exact
    medians) while ``q <= per_bin``, a sample beyond. Only the windows are read (the blocks
    that hold them), so the I/O, time and memory stay near ``max_steps * per_bin *
    layers`` values a column, whatever the length of the log. The probe-set
    columns are the medians of all the probe steps in the bin (NaN where there is none).

    A log with at most ``max_steps`` logged steps is returned whole, as ``read_layers``
    gives it.
    """
    max_steps, per_bin = check_bins(max_steps, per_bin)
    with open_log(path) as f:
        return layers_binned(f, max_steps, per_bin)


def check_bins(max_steps, per_bin) -> tuple[int, int]:
    """``(max_steps, per_bin)`` checked (ValueError naming the value and what is accepted),
    before a log is opened: a bad argument is not a damaged log."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) \
            or max_steps < 3:
        raise ValueError(f"max_steps={max_steps!r}; accepted: a whole number >= 3")
    if isinstance(per_bin, bool) or not isinstance(per_bin, (int, np.integer)) or per_bin < 1:
        raise ValueError(f"per_bin={per_bin!r}; accepted: a whole number >= 1")
    return int(max_steps), int(per_bin)


def layers_binned(f, max_steps: int = MAX_STEPS, per_bin: int = PER_BIN) -> pd.DataFrame:
    """:func:`read_layers_binned` on the open log ``f``."""
    max_steps, per_bin = check_bins(max_steps, per_bin)
    have = columns_of(f, "layers")
    present = [c for c in TABLES["layers"] if c in have]
    n_rows = table_length(f, "layers")
    n_layers = layer_count(f)
    k = min(table_length(f, "steps"), n_rows // n_layers) if n_layers else 0
    # regular: every logged step holds rows for layers 0 .. n_layers - 1 in order, as the
    # writer leaves them (checked at the ends), so a logged step's rows are found by position
    regular = k > 0
    for pos in {0, k - 1} if regular else ():
        blk = read_columns(f, "layers", ["step", "layer"],
                           slice(pos * n_layers, (pos + 1) * n_layers))
        step = read_columns(f, "steps", ["step"], slice(pos, pos + 1))["step"]
        regular &= bool(np.all(blk["step"] == step[0]))
        regular &= bool(np.array_equal(blk["layer"], np.arange(n_layers)))
    if not regular or k <= max_steps:
        layers = layers_frame(f)
        layers["step_lo"] = layers["step"]
        layers["step_hi"] = layers["step"]
        if not regular and len(layers):
            layers = downsample(layers, max_steps)
        return layers
    # bins (positions in the logged steps): [0], then bins of q logged steps (the last one
    # shorter), then [k - 1]
    mid = k - 2
    q = math.ceil(mid / (max_steps - 2))
    starts = np.concatenate([[0], np.arange(1, k - 1, q), [k - 1]])
    ends = np.append(starts[1:], k)
    # read from each middle bin a window of w consecutive logged steps at its centre:
    # max_steps * w * layers values a column
    w = min(per_bin, q)
    n_full = mid // q
    off = (q - w) // 2
    last_lo, last_hi = 1 + n_full * q, k - 1  # the shorter bin, maybe empty
    last_w = min(w, last_hi - last_lo)
    last_off = last_lo + (last_hi - last_lo - last_w) // 2
    bounds = np.concatenate([[0, 1], 1 + w * np.arange(1, n_full + 1)])
    if last_w > 0:
        bounds = np.append(bounds, bounds[-1] + last_w)
    bounds = np.append(bounds, bounds[-1] + 1)
    # the rows of the windows, in file order: the first logged step, w logged steps at the
    # centre of each full bin, the last bin's window, the last logged step
    sel = [np.arange(0, n_layers)]
    if n_full:
        first = (1 + off + q * np.arange(n_full)) * n_layers
        sel.append((first[:, None] + np.arange(w * n_layers)).ravel())
    if last_w > 0:
        sel.append(np.arange(last_off * n_layers, (last_off + last_w) * n_layers))
    sel.append(np.arange((k - 1) * n_layers, k * n_layers))
    sel = np.concatenate(sel)
    med = {}
    for c in (c for c in present if c not in ("step", "layer")):  # one column at a time
        arr = read_columns(f, "layers", [c], sel)[c].reshape(-1, n_layers)
        med[c] = binned_median(arr, bounds).ravel()
    n_bins = len(starts)
    mids = starts + (ends - starts) // 2
    wanted = sorted_unique(np.concatenate([starts, mids, ends - 1]))
    at = read_table(f, "steps", ["step", "epoch"], wanted).set_index(wanted)
    first_step = at.loc[starts, "step"].to_numpy()
    default = OPTIONAL_COLUMNS.get("layers", {})
    for c in (c for c in TABLES["layers"] if c not in have):  # a column the log lacks
        med[c] = np.full(n_bins * n_layers, default.get(c, np.nan), dtype=float)
    df = pd.DataFrame({"step": np.repeat(at.loc[mids, "step"].to_numpy(), n_layers),
                       "layer": np.tile(np.arange(n_layers), n_bins), **med})
    # probe-set metrics: medians of the probe steps in each bin (a window of them)
    pm = _binned_probes(f, first_step, per_bin * max(1, n_layers))
    idx = pd.MultiIndex.from_arrays([np.repeat(np.arange(n_bins), n_layers),
                                     np.tile(np.arange(n_layers), n_bins)])
    pm = pm.reindex(idx)
    for c in (c for c in TABLES["probes"] if c not in ("step", "layer")):
        df[c] = pm[c].to_numpy() if c in pm.columns else np.nan
    df["epoch"] = np.repeat(at.loc[mids, "epoch"].to_numpy(), n_layers)
    df["step_lo"] = np.repeat(first_step, n_layers)
    df["step_hi"] = np.repeat(at.loc[ends - 1, "step"].to_numpy(), n_layers)
    return df


def _binned_probes(f, first_step: np.ndarray, cap: int) -> pd.DataFrame:
    """Medians of the probe rows per (bin, layer); bin ``b`` holds the steps from
    ``first_step[b]`` up to the next bin's. In a long table a bin with more than ``cap``
    rows gives the medians of a window of whole probe steps at its centre."""
    n = table_length(f, "probes")
    if n <= FULL_PROBE_ROWS:
        probes = read_table(f, "probes")
        bins = np.searchsorted(first_step, probes["step"].to_numpy(), side="right") - 1
    else:
        # the step column alone (a probe table has 1 / probe_every of the layer rows)
        steps = read_columns(f, "probes", ["step"])["step"]
        lo = np.searchsorted(steps, first_step, "left")
        hi = np.append(lo[1:], n)
        rows = [np.arange(a, b) for a, b in zip(*whole_step_windows(steps, lo, hi, cap))]
        probes = read_table(f, "probes", rows=np.concatenate(rows))
        bins = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    if not len(probes):
        return pd.DataFrame()
    return probes.drop(columns="step").assign(_bin=bins).groupby(["_bin", "layer"]).median()


def whole_step_windows(steps: np.ndarray, lo: np.ndarray, hi: np.ndarray, cap: int):
    """Row ranges ``[lo, hi)`` of a table sorted by step cut to at most ``cap`` rows of
    whole steps at their centre (ranges no longer than ``cap`` are kept)."""
    lo, hi = lo.copy(), hi.copy()
    long = np.flatnonzero(hi - lo > cap)
    if len(long):
        centre = (lo[long] + hi[long]) // 2
        start = np.searchsorted(steps, steps[np.maximum(lo[long], centre - cap // 2)], "left")
        stop = np.minimum(start + cap, hi[long])
        inner = stop < len(steps)
        stop[inner] = np.searchsorted(steps, steps[stop[inner]], "left")
        lo[long], hi[long] = start, np.maximum(stop, start + 1)
    return lo, hi


def binned_median(arr: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Medians (NaN ignored) of the row groups ``arr[bounds[b]:bounds[b + 1]]``, vectorised.

    ``arr`` is ``(rows, layers)``; returns ``(len(bounds) - 1, layers)``, NaN for an empty
    or all-NaN group.
    """
    sizes = np.diff(bounds)
    n_bins, width = len(sizes), arr.shape[1]
    most = int(sizes.max()) if n_bins else 0
    pad = np.full((n_bins, max(most, 1), width), np.nan)
    rows = np.repeat(np.arange(n_bins), sizes)
    cols = np.arange(len(rows)) - np.repeat(bounds[:-1], sizes)
    pad[rows, cols] = arr[bounds[0]:bounds[-1]]
    pad.sort(axis=1)  # NaN last
    n = (~np.isnan(pad)).sum(axis=1)  # (bins, layers)
    lo = np.clip((n - 1) // 2, 0, None)[:, None, :]
    hi = np.clip(n // 2, 0, most - 1 if most else 0)[:, None, :]
    med = (np.take_along_axis(pad, lo, 1) + np.take_along_axis(pad, hi, 1))[:, 0, :] / 2
    med[n == 0] = np.nan
    return med


def downsample(df: pd.DataFrame, max_steps: int = 400, *, step: str = "step",
               by: Sequence[str] | None = None) -> pd.DataFrame:
    """Bin a long-form table in time: at most ``max_steps`` distinct steps per run.

    The logged steps (distinct values of ``step``, per run) are cut into consecutive bins
    holding equal numbers of logged steps, except that the first and the last logged step
    keep a bin of their own (the state at initialisation and at the end are shown as they
    are). Every other numeric column becomes its **median** over the bin's rows of each
    group (``by``, default the ``run`` and ``layer`` columns present), NaN ignored; an
    all-NaN group stays NaN. The bin is labelled by its middle logged step in ``step`` and
    spans ``step_lo`` .. ``step_hi`` (columns added; kept and merged if present, so binning
    twice is safe).

    A table with no more than ``max_steps`` logged steps (per run) comes back unchanged but
    for the ``step_lo`` / ``step_hi`` columns. Cost: one group-by over the rows.
    """
    if max_steps < 3:
        raise ValueError(f"max_steps={max_steps!r}; accepted: a whole number >= 3")
    if by is None:
        by = [c for c in ("run", "layer") if c in df.columns]
    by = list(by)
    runs = [c for c in by if c == "run"]
    if df.empty:
        out = df.copy()
        for c in ("step_lo", "step_hi"):
            if c not in out.columns:
                out[c] = pd.Series(dtype=df[step].dtype if step in df else "int64")
        return out
    if runs:
        parts = [_downsample_one(g, max_steps, step, by) for _, g in
                 df.groupby(runs[0], sort=False, observed=True)]
        return pd.concat(parts, ignore_index=True)
    return _downsample_one(df, max_steps, step, by)


def _downsample_one(df: pd.DataFrame, max_steps: int, step: str, by: list[str]) -> pd.DataFrame:
    df = df.copy()
    if "step_lo" not in df.columns:
        df["step_lo"] = df[step]
    if "step_hi" not in df.columns:
        df["step_hi"] = df[step]
    steps = np.unique(df[step].to_numpy())
    if len(steps) <= max_steps:
        return df.reset_index(drop=True)
    # positions of bin starts in ``steps``: [0], the middle in max_steps - 2 equal-count
    # bins, [n - 1]
    n = len(steps)
    mid = np.array_split(np.arange(1, n - 1), max_steps - 2)
    starts = np.array([0, *(m[0] for m in mid), n - 1])
    reps = np.array([steps[0], *(steps[m[len(m) // 2]] for m in mid), steps[-1]])
    pos = np.searchsorted(steps, df[step].to_numpy())
    df["_bin"] = np.searchsorted(starts, pos, side="right") - 1
    keys = [c for c in by if c != step] + ["_bin"]
    numeric = [c for c in df.columns if c not in keys and c not in (step, "step_lo", "step_hi")
               and pd.api.types.is_numeric_dtype(df[c])]
    other = [c for c in df.columns if c not in keys and c not in numeric
             and c not in (step, "step_lo", "step_hi")]
    grouped = df.groupby(keys, sort=True, observed=True)
    out = grouped[numeric].median() if numeric else grouped.size().to_frame("_n")[[]]
    out["step_lo"] = grouped["step_lo"].min()
    out["step_hi"] = grouped["step_hi"].max()
    for c in other:  # e.g. a string label that is constant within a group
        out[c] = grouped[c].first()
    out = out.reset_index()
    out[step] = reps[out["_bin"].to_numpy()].astype(df[step].dtype, copy=False)
    out = out.drop(columns="_bin")
    order = [c for c in df.columns if c in out.columns and c != "_bin"]
    return out[order]



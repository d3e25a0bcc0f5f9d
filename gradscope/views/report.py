"""A multi-page PDF report of one or more runs, and a plain-text verdict table.

:func:`make_report` reads each log, diagnoses it (:func:`gradscope.analysis.diagnose.diagnose`) and
writes one PDF (A4 landscape), one idea per page:

1. summary: each run's configuration, status, final training and validation loss and
   accuracy, its verdicts with the evidence messages and the mean-field theory line
   (several pages when the runs do not fit on one);
2. gradient flow: heatmaps of log10 ``grad_norm`` and ``delta_norm`` per layer and step;
3. gradient profile across depth at start / quarter / half / end, with the mean-field
   prediction at initialisation dashed;
4. dead ReLU units: dead fraction per layer over training and which units died when (only
   for runs with a ReLU-family activation; the page is left out when there are none);
5. activation saturation: activation distributions per layer at start and end (or mean and
   spread per layer when no histogram was recorded);
6. update / weight ratio with the 1e-3 guide;
7. loss and accuracy, training and validation, every run overlaid;
8. with several runs (up to ``COMPARISON_MAX_RUNS``): the first-to-last-layer gradient
   ratio of each run, grouped by activation / init / optimizer.

Pages 2-6 hold at most 6 panels (3 runs for the two-panel figures) and repeat for more runs.

Runs that form a grid (:func:`sweep_layout`: at least 3 runs whose depths differ along
with the activation, init or optimizer, e.g. a ``gradscope sweep`` folder) get three pages
after the summary, drawn from :func:`run_table` (one row per run):

- the vanishing-gradient phase diagram, :func:`gradscope.views.plots.phase_diagram`: the
  layer-0 / output gradient ratio (median over the first half of training, what the
  verdict judges) against depth, one line per activation x init, a panel per optimizer
  (and per variant: other options that differ, e.g. ``residual=on``), seeds as a median
  with a min-max band, the mean-field prediction dashed and the first-step ratios as
  crosses;
- dead ReLU units against depth (:func:`~gradscope.views.plots.depth_dead_units`), when some
  runs are of the ReLU family;
- the final accuracy over the grid (:func:`~gradscope.views.plots.grid_heatmap`).

Runs that differ only in a remedy (:func:`remedy_groups`: ``--residual``, ``--norm``,
``--dropout``, ``--clip-norm``, ``--clip-value``; same seed) get one page per group
after those: their gradient profiles across depth side by side on one log scale
(:func:`~gradscope.views.plots.profile_comparison`), titled ``Remedy: --residual (off vs on)``,
each panel titled with its setting and verdict.

With more than ``SAMPLE_ABOVE`` (12) runs the report stays short: the summary's verdict
table lists every run, followed by the alarms of the runs that have one (or did not
complete), not every check of every run; and the per-run pages 2-7 show a sample of
``SAMPLE_RUNS`` (6) runs (one per verdict in turn, the deepest and most extreme first; the
captions name them). A 36-run sweep folder of 300-step runs reports in about 15 s (14
pages; 75 s and 55 pages without the sample). Long sweep names are shortened in the
verdict table and the figures by leaving out the words every name starts or ends with (a
line says which).

Long logs are read binned (:func:`read_layers_binned`): at most ``max_steps`` time bins,
each the medians over a window of at most ``per_bin`` logged steps at its centre, so the
time and memory of a report do not grow with the length of the run (a log of 20 000 steps
and 9 layers takes about 3 s; 200 000 steps and 101 layers, a 1.9 GB log, about 6 s). A
log with more than ``FULL_DIAGNOSE_ROWS`` layer rows is diagnosed on ``DIAGNOSE_STEPS``
such bins instead of its full tables (the summary page says so). A log of a run that is
still running or was killed is reported from what it holds; a diverged run's NaN and inf
values are left out of the log-scale figures. A truncated file (an incomplete copy) is
refused by :func:`check_log_file` before HDF5 opens it.

:func:`collect_logs` expands directories into their ``*.h5`` logs; :func:`verdict_table`
formats the diagnoses for a terminal. Unusable input raises :class:`~gradscope.reading.readers.LogError`
with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import struct
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from ..reading.readers import (
    _committed,
    _read_table,
    open_log,
    read_config,
    read_epochs,
    read_layers,
    read_status,
    read_steps,
)
from ..record.schema import OPTIONAL_COLUMNS, TABLES, LogError
from . import plots

__all__ = [
    "PAGE_SIZE", "RunData", "check_log_file", "collect_logs", "comparison_summary",
    "load_run", "make_report", "read_layers_binned", "remedy_groups", "run_table",
    "sweep_layout", "verdict_table",
]

#: A4 landscape, inches.
PAGE_SIZE = (11.69, 8.27)
#: Time bins of the figures.
MAX_STEPS = 400
#: Logged steps read per time bin at most (a window at the bin's centre).
PER_BIN = 32
#: Layer-table rows up to which a run is diagnosed on its full tables; longer logs are
#: diagnosed on finer bins (DIAGNOSE_STEPS) of medians.
FULL_DIAGNOSE_ROWS = 500_000
DIAGNOSE_STEPS = 1000
DIAGNOSE_PER_BIN = 16
#: Panels per page (one per run), and runs per page for two-panel figures.
PANELS_PER_PAGE = 6
RUNS_PER_PAGE = 3
#: Lines of text on a summary page, their height (figure fraction), runs on a page at most.
SUMMARY_LINES = 50
_LINE = 0.016
RUNS_PER_SUMMARY_PAGE = 8
_WRAP = 165          # characters of a summary line (8.8 pt on A4 landscape)
_WRAP_BOLD = 148
_CAPTION_WRAP = 152
_RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 8.5, "legend.title_fontsize": 8.5,
    "pdf.fonttype": 42, "ps.fonttype": 42,
}
_VERDICTS = ("vanishing", "exploding", "dead_units", "saturated", "diverged")
_RELU_FAMILY = ("relu", "leaky_relu", "elu")


# -- inputs ---------------------------------------------------------------------------------
def collect_logs(inputs) -> list[Path]:
    """Log files named by ``inputs`` (paths of files or directories, or one such path).

    A directory stands for its ``*.h5`` files (sorted by name, numbers by value: ``d4``
    before ``d12``; not recursive); a file is
    kept as given (whether it is a gradscope log is checked when it is read). Duplicates
    are dropped. Raises :class:`LogError` for a path that does not exist or a directory
    without ``*.h5`` files.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted((q for q in p.glob("*.h5") if q.is_file()), key=_natural)
            if not found:
                raise LogError(f"{str(item)!r} is a directory without .h5 logs")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise LogError(f"{str(item)!r} does not exist")
    if not out:
        raise LogError("no log given")
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _natural(p: Path) -> tuple:
    """Sort key of a file name with its digit runs compared as numbers."""
    parts = re.split(r"(\d+)", p.name)
    return tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in parts), p.name


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_log_file(path, wait: float = 0.3) -> None:
    """Refuse a truncated HDF5 file before HDF5 opens it.

    A gradscope log (superblock version 2 or 3) records the end-of-file address in its
    superblock; a file shorter than that lost its end (an incomplete copy or download).
    HDF5 opened in SWMR mode (how gradscope reads, so that live and killed runs are
    readable) does not check this and retries failed metadata reads for a long time, so
    such a file would hang a reader instead of failing. A live log may be briefly shorter
    while the writer flushes: the size is checked again for ``wait`` seconds.

    Raises :class:`LogError`; other problems (missing file, not HDF5) are left to the reader.
    """
    p = Path(path)
    if not p.is_file():
        return
    try:
        with open(p, "rb") as fh:
            head = fh.read(48)
    except OSError as e:
        raise LogError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    if head[:8] != _HDF5_SIGNATURE:
        return  # not HDF5, or a user block: the reader says what it is
    if len(head) < 48:
        raise LogError(f"{str(path)!r} is truncated ({len(head)} bytes): not a complete log")
    version, size_of_offsets = head[8], head[9]
    if version not in (2, 3) or size_of_offsets != 8:
        return
    base, _ext, eof = struct.unpack("<3Q", head[12:36])
    need = base + eof
    deadline = time.monotonic() + wait
    while True:
        size = p.stat().st_size
        if size >= need:
            return
        if time.monotonic() >= deadline:
            raise LogError(f"{str(path)!r} is truncated: {size} of {need} bytes "
                           "(an incomplete copy?)")
        time.sleep(0.05)


# -- reading, binned ------------------------------------------------------------------------
def _read_selection(ds, blocks: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Read hyperslabs ``(start, count, stride, block)`` of a 1-D dataset, in file order,
    with one HDF5 read. (A union of many hyperslabs is slow to build in HDF5: use one
    regular hyperslab where possible.)"""
    import h5py

    total = sum(c * b for _, c, _, b in blocks)
    out = np.empty(total, dtype=ds.dtype)
    if not total:
        return out
    space = ds.id.get_space()
    space.select_none()
    for start, count, stride, block in blocks:
        space.select_hyperslab((start,), (count,), (max(stride, block),), (block,),
                               op=h5py.h5s.SELECT_OR)
    mspace = h5py.h5s.create_simple((total,))
    ds.id.read(mspace, space, out)
    return out


def read_layers_binned(path, max_steps: int = MAX_STEPS, per_bin: int = PER_BIN) -> pd.DataFrame:
    """The layer table of a log, binned in time (at most ``max_steps`` bins).

    Same columns as :func:`~gradscope.reading.readers.read_layers` plus ``step_lo`` and ``step_hi``
    (the bin's first and last logged step); ``step`` is the bin's middle logged step. The
    first and the last logged step keep bins of their own; the others are cut into bins of
    ``q = ceil((k - 2) / (max_steps - 2))`` consecutive logged steps (the last bin
    shorter). A bin's values are the medians (NaN ignored) over a window of
    ``min(per_bin, q)`` consecutive logged steps at its centre: the whole bin (exact
    medians) while ``q <= per_bin``, a sample beyond. The windows are read with one regular
    HDF5 hyperslab per column, so the I/O, time and memory stay near ``max_steps *
    per_bin * layers`` values a column, whatever the length of the log. The probe-set
    columns are the medians of all the probe steps in the bin (NaN where there is none).

    A log with at most ``max_steps`` logged steps is returned whole, as ``read_layers``
    gives it.
    """
    if max_steps < 3:
        raise ValueError(f"max_steps={max_steps!r}; accepted: a whole number >= 3")
    with open_log(path) as f:
        counts = _committed(f)
        steps_tab = _read_table(f, "steps")
        g = f["layers"]
        present = [c for c in TABLES["layers"] if c in g]
        n_rows = min([counts["layers"], *(g[c].shape[0] for c in present)])
        S = steps_tab["step"].to_numpy()
        head = g["layer"][: min(n_rows, 4096)]
        n_layers = int(np.flatnonzero(head == 0)[1]) if (head == 0).sum() > 1 else (
            int(head.max()) + 1 if len(head) else 0)
        k = min(len(S), n_rows // n_layers) if n_layers else 0
        regular = k > 0 and np.array_equal(head[:n_layers], np.arange(n_layers))
        if regular:
            for pos in {0, k - 1}:
                blk = g["step"][pos * n_layers:(pos + 1) * n_layers]
                regular &= bool(np.all(blk == S[pos]))
                regular &= bool(np.array_equal(g["layer"][pos * n_layers:(pos + 1) * n_layers],
                                               np.arange(n_layers)))
        if not regular or k <= max_steps:
            small = True
        else:
            small = False
            # bins (positions in the logged steps): [0], then bins of q logged steps (the
            # last one shorter), then [k - 1]
            mid = k - 2
            q = math.ceil(mid / (max_steps - 2))
            starts = np.concatenate([[0], np.arange(1, k - 1, q), [k - 1]])
            ends = np.append(starts[1:], k)
            # read from each middle bin a window of w consecutive logged steps at its
            # centre: one regular hyperslab (start, count, stride, block) per column for
            # the full bins, one slice for the last (shorter) one; the I/O is
            # max_steps * w * layers values a column, whatever the length of the log
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
            value_cols = [c for c in present if c not in ("step", "layer")]
            med = {}
            for c in value_cols:  # one column in memory at a time
                ds = g[c]
                parts = [ds[0:n_layers]]
                if n_full:
                    parts.append(_read_selection(ds, [((1 + off) * n_layers, n_full,
                                                       q * n_layers, w * n_layers)]))
                if last_w > 0:
                    parts.append(ds[last_off * n_layers:(last_off + last_w) * n_layers])
                parts.append(ds[(k - 1) * n_layers:k * n_layers])
                arr = np.concatenate(parts).reshape(-1, n_layers)
                med[c] = _binned_median(arr, bounds).ravel()
            missing = [c for c in TABLES["layers"] if c not in g]
            probes = _read_table(f, "probes")
    if small:
        layers = read_layers(path)
        layers["step_lo"] = layers["step"]
        layers["step_hi"] = layers["step"]
        if not regular and len(layers):
            layers = plots.downsample(layers, max_steps)
        return layers
    n_bins = len(starts)
    reps = S[starts + (ends - starts) // 2]
    default = OPTIONAL_COLUMNS.get("layers", {})
    for c in missing:  # a column this log was written without
        med[c] = np.full(n_bins * n_layers, default.get(c, np.nan), dtype=float)
    df = pd.DataFrame({"step": np.repeat(reps, n_layers),
                       "layer": np.tile(np.arange(n_layers), n_bins), **med})
    # probe-set metrics: medians of the probe steps in each bin
    if len(probes):
        pos = np.searchsorted(S[:k], probes["step"].to_numpy())
        probes = probes.assign(_bin=np.searchsorted(starts, pos, side="right") - 1)
        pm = probes.drop(columns="step").groupby(["_bin", "layer"]).median()
        idx = pd.MultiIndex.from_arrays([np.repeat(np.arange(n_bins), n_layers),
                                         np.tile(np.arange(n_layers), n_bins)])
        pm = pm.reindex(idx)
        for c in pm.columns:
            df[c] = pm[c].to_numpy()
    else:
        for c in TABLES["probes"]:
            if c not in ("step", "layer"):
                df[c] = np.nan
    epoch_at = pd.Series(steps_tab["epoch"].to_numpy(), index=S)
    df["epoch"] = epoch_at.reindex(df["step"]).to_numpy()
    df["step_lo"] = np.repeat(S[starts], n_layers)
    df["step_hi"] = np.repeat(S[ends - 1], n_layers)
    return df


def _binned_median(arr: np.ndarray, bounds: np.ndarray) -> np.ndarray:
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


def _read_probe_arrays(path, relu: bool, max_cols: int):
    """First and last non-empty activation histograms (long form, as read_histograms) and,
    for the ReLU family, the dead flags at no more than ``max_cols`` probe steps."""
    with open_log(path) as f:
        g = f["probe_units"]
        n = min(_committed(f)["probe_units"], g["step"].shape[0])
        steps = g["step"][:n]
        edges = g.attrs["hist_edges"]
        n_hidden = len([k for k in g if k.startswith("hist_")])
        hist_frames = []
        if n:
            # the first row and the last row with counts (a diverged step may have none)
            rows = [0]
            for i in range(n - 1, 0, -1):
                if g["hist_0"][i].sum() > 0 if n_hidden else False:
                    rows.append(i)
                    break
            for l in range(n_hidden):
                counts = g[f"hist_{l}"][sorted(set(rows))]
                total = counts.sum(axis=1, keepdims=True).clip(min=1)
                nb = counts.shape[1]
                hist_frames.append(pd.DataFrame({
                    "step": np.repeat(steps[sorted(set(rows))], nb), "layer": l,
                    "bin_left": np.tile(edges[:-1], len(set(rows))),
                    "bin_right": np.tile(edges[1:], len(set(rows))),
                    "count": counts.ravel(),
                    "density": (counts / total / np.diff(edges)).ravel()}))
        dead, dead_steps = None, None
        if relu and n:
            cols = np.unique(np.linspace(0, n - 1, min(max_cols, n)).round().astype(int))
            dead_steps = steps[cols]
            dead = [g[f"dead_{l}"][cols].astype(bool) for l in range(n_hidden)]
    hist = (pd.concat(hist_frames, ignore_index=True) if hist_frames else
            pd.DataFrame(columns=["step", "layer", "bin_left", "bin_right", "count", "density"]))
    return hist, dead_steps, dead


@dataclass
class RunData:
    """What the report needs of one run (binned)."""

    path: Path
    label: str
    config: dict
    status: dict
    steps: pd.DataFrame        # full step table
    epochs: pd.DataFrame
    layers: pd.DataFrame       # binned layer table (read_layers_binned)
    probes: pd.DataFrame       # probe-step rows (dead_frac, ...), one per probe step and layer
    hist: pd.DataFrame         # histograms at the first and last probe step
    dead_steps: np.ndarray | None
    dead: list | None
    diagnosis: dict
    notes: list = field(default_factory=list)
    short: str | None = None   # a shorter label for figures (a sweep's names, shortened)

    @property
    def activation(self) -> str:
        return str(self.config.get("activation", ""))

    @property
    def flabel(self) -> str:
        """The label for figure text (the short one if set), where a "$" would start a
        formula."""
        return (self.short or self.label).replace("$", r"\$")

    @property
    def relu_family(self) -> bool:
        return _relu_family(self.activation)


def _relu_family(name: str) -> bool:
    """Whether units of this activation can die (the registry says; known names else)."""
    try:
        from ..engine.activations import get_activation
        return bool(get_activation(name).relu_family)
    except (ImportError, KeyError, AttributeError):
        return name in _RELU_FAMILY


def load_run(path, *, max_steps: int = MAX_STEPS, per_bin: int = PER_BIN, label=None,
             **thresholds) -> RunData:
    """Read and diagnose one log for the report. Raises :class:`LogError` for a bad file."""
    path = Path(path)
    check_log_file(path)
    try:
        config = read_config(path)
        status = read_status(path)
        steps = read_steps(path)
        epochs = read_epochs(path)
        layers = read_layers_binned(path, max_steps=max_steps, per_bin=per_bin)
        with open_log(path) as f:
            probes = _read_table(f, "probes")
            n_layer_rows = _committed(f)["layers"]
        relu = _relu_family(str(config.get("activation")))
        hist, dead_steps, dead = _read_probe_arrays(path, relu, max_steps)
    except LogError:
        raise
    except (OSError, KeyError, IndexError, TypeError, ValueError) as e:
        # h5py and numpy errors of a damaged file, not a gradscope problem to show as a trace
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LogError(f"{str(path)!r} is damaged or incomplete: {msg}") from None
    notes = []
    # a log short enough to be read whole (no binning) is diagnosed on the tables read
    # here, not read a second time
    whole = (layers.drop(columns=["step_lo", "step_hi"])
             if len(layers) == n_layer_rows and (layers["step_lo"] == layers["step_hi"]).all()
             else None)
    diag = _diagnose(path, steps, layers, config, status, n_layer_rows, max_steps, per_bin,
                     notes, thresholds, whole=whole)
    return RunData(path=path, label=label or path.stem, config=config, status=status,
                   steps=steps, epochs=epochs, layers=layers, probes=probes, hist=hist,
                   dead_steps=dead_steps, dead=dead, diagnosis=diag, notes=notes)


def _diagnose(path, steps, layers, config, status, n_rows, max_steps, per_bin, notes,
              thresholds, whole=None) -> dict:
    try:
        from ..analysis.diagnose import diagnose
    except ImportError:
        notes.append("no diagnosis: gradscope.diagnose is not available")
        return _no_diagnosis(path, config, status)
    if whole is not None:
        return diagnose(path, frames={"steps": steps, "layers": whole, "config": config,
                                      "status": status}, **thresholds)
    if n_rows <= FULL_DIAGNOSE_ROWS:
        return diagnose(path, **thresholds)
    fine = read_layers_binned(path, max_steps=max(DIAGNOSE_STEPS, max_steps),
                              per_bin=DIAGNOSE_PER_BIN)
    notes.append(f"diagnosed on {fine['step'].nunique()} time bins of medians "
                 f"(the log has {n_rows} layer rows)")
    frames = {"steps": steps, "layers": fine.drop(columns=["step_lo", "step_hi"]),
              "config": config, "status": status}
    return diagnose(path, frames=frames, **thresholds)


def _no_diagnosis(path, config, status) -> dict:
    d = {"run": str(path), "status": status.get("status", "unknown"),
         "status_message": status.get("message", ""), "config_summary": _config_summary(config),
         "verdict": "not diagnosed", "theory": None}
    for v in _VERDICTS:
        d[v] = False
        d[f"{v}_evidence"] = {"layers": [], "steps": [], "value": math.nan, "threshold": None,
                              "rule": "", "message": f"{v}: not judged", "applicable": False}
    return d


def _config_summary(config: dict) -> str:
    try:
        from ..analysis.diagnose import config_summary
        return config_summary(config)
    except ImportError:
        keys = ("dataset", "depth", "width", "activation", "init", "optimizer", "lr")
        return " ".join(f"{k}={config.get(k)}" for k in keys if config.get(k) is not None)


# -- text -----------------------------------------------------------------------------------
def _flag(d: dict, name: str) -> str:
    if d.get(name):
        return "YES"
    ev = d.get(f"{name}_evidence") or {}
    return "n/a" if ev.get("applicable") is False else "-"


def _run_name(d: dict) -> str:
    run = d.get("run")
    return Path(run).name if run else "run"


def verdict_table(diagnoses) -> str:
    """A short plain-text table of diagnoses, one line per run, for a terminal.

    Columns: run (file name), status, vanishing, exploding, dead (units), saturated,
    verdict. ``YES`` marks an alarm, ``-`` a check passed, ``n/a`` a check that does not
    apply (e.g. dead units of tanh) or could not be judged.
    """
    head = ["run", "status", "vanishing", "exploding", "dead", "saturated", "verdict"]
    rows = []
    diagnoses = list(diagnoses)
    names, note = _short_names([_run_name(d) for d in diagnoses])
    for d, name in zip(diagnoses, names):
        if len(name) > _NAME_WIDTH:
            name = name[:22] + "..." + name[-23:]
        rows.append([name, str(d.get("status", "")), _flag(d, "vanishing"),
                     _flag(d, "exploding"), _flag(d, "dead_units"), _flag(d, "saturated"),
                     str(d.get("verdict", ""))])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if note:
        lines.append(note)
    return "\n".join(lines)


_NAME_WIDTH = 48
_FIGURE_NAME_WIDTH = 40


def _short_names(names: list[str], width: int = _NAME_WIDTH) -> tuple[list[str], str]:
    """Names that fit ``width`` where possible: when some do not, ``-``-separated words
    that every name ends with, then words every name starts with, are left out, one at a
    time until the names fit (a sweep's names differ in the middle); a note says which.
    Returns the names unchanged (and no note) when nothing needs or can be left out."""
    if len(names) < 2 or max(len(n) for n in names) <= width:
        return names, ""
    toks = [n.split("-") for n in names]
    max_suf = 0
    while (all(len(t) > max_suf + 1 for t in toks)
           and len({t[len(t) - 1 - max_suf] for t in toks}) == 1):
        max_suf += 1
    max_pre = 0
    while (all(len(t) > max_suf + max_pre + 1 for t in toks)
           and len({t[max_pre] for t in toks}) == 1):
        max_pre += 1
    pre = suf = 0

    def longest():
        return max(len("-".join(t[pre:len(t) - suf])) for t in toks)

    while longest() > width and (suf < max_suf or pre < max_pre):
        if suf < max_suf:
            suf += 1
        else:
            pre += 1
    if not pre and not suf:
        return names, ""
    short = ["-".join(t[pre:len(t) - suf]) for t in toks]
    if len(set(short)) < len(set(names)):
        return names, ""
    parts = []
    if pre:
        parts.append(f"start {'-'.join(toks[0][:pre])}-")
    if suf:
        parts.append(f"end -{'-'.join(toks[0][len(toks[0]) - suf:])}")
    return short, f"(run names without their common {' and '.join(parts)})"


def _fmt(x, pct=False) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else str(x)
    if pct:
        return f"{100 * x:.1f}%"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.2e}"
    return f"{x:.4g}"


def _final_line(run: RunData) -> str:
    ep = run.epochs
    parts = []
    if len(ep):
        last = ep.iloc[-1]
        parts.append(f"train loss {_fmt(last['train_loss'])}, accuracy "
                     f"{_fmt(last['train_accuracy'], pct=True)}")
        parts.append(f"validation loss {_fmt(last['val_loss'])}, accuracy "
                     f"{_fmt(last['val_accuracy'], pct=True)}")
        where = f"after epoch {int(last['epoch'])} (step {int(last['step'])})"
    else:
        where = "no epoch completed"
    st = run.steps
    if len(st):
        last = st.iloc[-1]
        parts.append(f"last logged batch loss {_fmt(last['loss'])} at step {int(last['step'])}")
    return f"final, {where}: " + "; ".join(parts)


def _theory_line(d: dict) -> str | None:
    t = d.get("theory")
    if not t:
        return None
    xi = _float(t.get("xi"))
    xi_txt = "inf" if math.isinf(xi) else f"{_fmt(xi)} layers"
    pred, meas = t.get("predicted_ratio"), t.get("measured_ratio")
    verdict = ""
    if t.get("explains") is True:
        verdict = " - the prediction explains the measurement"
    elif t.get("explains") is False and meas is not None and math.isfinite(_float(meas)):
        verdict = " - not explained by the prediction"
    step = t.get("measured_step")
    return (f"theory: chi1 = {_fmt(t.get('chi1'))} ({t.get('phase', '?')}), depth scale "
            f"xi = {xi_txt}; layer-0 / output gradient ratio at init: predicted "
            f"{_fmt(pred)}, measured {_fmt(meas)}"
            + (f" at step {step}" if step is not None else "") + verdict)


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _wrap(text: str, indent: str = "", width: int = _WRAP) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent,
                         subsequent_indent=indent + "    ", break_long_words=True,
                         break_on_hyphens=False) or [indent]


def _needs_block(run: RunData) -> bool:
    d = run.diagnosis
    return (d.get("verdict") not in ("healthy",) or d.get("status") != "completed"
            or bool(run.notes))


def _compact_block(run: RunData) -> list[tuple[str, str]]:
    """A run's lines on the summary pages of a sweep: what it is, how it ended, its
    alarms (not the checks it passed)."""
    d = run.diagnosis
    st = run.status
    label = run.label if len(run.label) <= 120 else run.label[:117] + "..."
    ev = d.get("vanishing_evidence") or {}
    acc, split = _final_accuracy(run)
    bits = [d.get("config_summary", ""), f"status: {st.get('status', 'unknown')}"]
    if split:
        bits.append(f"final {split} accuracy {_fmt(acc, pct=True)}")
    ratio = f"ratio layer 0 / output {_fmt(ev.get('ratio_median_early'))}"
    pred = _float((d.get("theory") or {}).get("predicted_ratio"))
    if math.isfinite(pred):
        ratio += f" (theory {_fmt(pred)})"
    bits.append(ratio)
    out = [("head", label)]
    out += [("text", line) for line in _wrap("  |  ".join(bits), "   ")]
    verdict = d.get("verdict", "")
    out.append(("alarm" if verdict not in ("healthy", "no data", "not diagnosed") else "ok",
                f"   verdict: {verdict}"))
    for v in _VERDICTS:
        if d.get(v):
            msg = (d.get(f"{v}_evidence") or {}).get("message", v)
            out += [("alarm", line) for line in _wrap(f"! {msg}", "     ", width=_WRAP_BOLD)]
    for note in run.notes:
        out.append(("dim", f"   note: {note}"))
    out.append(("gap", ""))
    return out


def _run_block(run: RunData) -> list[tuple[str, str]]:
    """Lines (style, text) of a run on the summary page."""
    d = run.diagnosis
    st = run.status
    status = st.get("status", "unknown")
    msg = st.get("message") or ""
    label = run.label if len(run.label) <= 120 else run.label[:117] + "..."
    out = [("head", label)]
    for line in _wrap(f"{d.get('config_summary', '')}  |  status: {status}"
                      + (f" ({msg})" if msg else "") + f"  |  {len(run.steps)} logged steps",
                      "   "):
        out.append(("text", line))
    for line in _wrap(_final_line(run), "   "):
        out.append(("text", line))
    verdict = d.get("verdict", "")
    out.append(("alarm" if verdict not in ("healthy", "no data", "not diagnosed") else "ok",
                f"   verdict: {verdict}"))
    na = []
    for v in _VERDICTS:
        ev = d.get(f"{v}_evidence") or {}
        if not d.get(v) and ev.get("applicable") is False:
            na.append(ev.get("message", v))
            continue
        mark = "!" if d.get(v) else "-"
        width = _WRAP_BOLD if d.get(v) else _WRAP
        for line in _wrap(f"{mark} {ev.get('message', v)}", "     ", width=width):
            out.append(("alarm" if d.get(v) else "text", line))
    if na:
        for line in _wrap("n/a: " + "; ".join(m.split(": ")[-1] for m in na), "     "):
            out.append(("dim", line))
    th = _theory_line(d)
    if th:
        for line in _wrap(th, "   "):
            out.append(("text", line))
    for note in run.notes:
        out.append(("dim", f"   note: {note}"))
    out.append(("gap", ""))
    return out


# -- pages ----------------------------------------------------------------------------------
@dataclass
class _Page:
    title: str
    caption: str
    draw: object  # callable(fig), or callable(fig, top) without layout
    layout: bool = True


def _new_page(title: str, caption: str, layout: bool = True) -> tuple[Figure, float]:
    """A page with its title and caption; returns the figure and the top of the free area
    (figure fraction). With ``layout``, constrained layout keeps the axes below it."""
    # a Figure without pyplot: no GUI backend involved, nothing left open in a notebook
    fig = Figure(figsize=PAGE_SIZE, layout="constrained" if layout else None)
    fig.text(0.02, 0.968, title, fontsize=16, fontweight="bold", va="top")
    top = 0.92
    if caption:
        lines = _wrap(caption, width=_CAPTION_WRAP)
        fig.text(0.02, top, "\n".join(lines), fontsize=9.5, va="top", color="0.25",
                 linespacing=1.3, parse_math=False)
        top -= len(lines) * 9.5 * 1.3 / 72 / PAGE_SIZE[1] + 0.012
    if layout:
        fig.get_layout_engine().set(rect=(0.01, 0.04, 0.98, top - 0.04))
    return fig, top


def _footer(fig, source: str, i: int, n: int) -> None:
    fig.text(0.02, 0.015, f"gradscope report - {source}", fontsize=8, color="0.4",
             parse_math=False)
    fig.text(0.98, 0.015, f"page {i} of {n}", fontsize=8, color="0.4", ha="right")


def _chunks(seq, n):
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def _grid(n: int) -> tuple[int, int]:
    return {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2)}.get(n, (2, 3))


def _summary_pages(runs: list[RunData], diagnoses: list[dict]) -> list[_Page]:
    table = verdict_table(diagnoses).splitlines()
    head, rows = table[:2], table[2:]
    if rows and rows[-1].startswith("(run names without"):
        head = [rows.pop()] + head   # repeated above the table on every page
    per = SUMMARY_LINES - 4
    blocks: list[list[tuple[str, str]]] = [
        [("mono", t) for t in head + rows[i:i + per]] + [("gap", "")]
        for i in range(0, max(len(rows), 1), per)]
    compact = len(runs) > SAMPLE_ABOVE
    for r in runs:
        if compact and not _needs_block(r):
            continue   # healthy and completed: the table's line says it all
        b = _compact_block(r) if compact else _run_block(r)
        # a block longer than a page (very long messages) continues on the next page
        blocks += [b[i:i + SUMMARY_LINES] for i in range(0, len(b), SUMMARY_LINES)]

    def height(b):
        return sum(0.6 if style == "gap" else 1.0 for style, _ in b)

    pages, cur, n_runs_cur = [], [], 0
    for block in blocks:
        is_run = block[0][0] == "head"
        if cur and (sum(height(b) for b in cur) + height(block) > SUMMARY_LINES
                    or (is_run and n_runs_cur >= (2 * RUNS_PER_SUMMARY_PAGE if compact
                                                   else RUNS_PER_SUMMARY_PAGE))):
            pages.append(cur)
            cur, n_runs_cur = [], 0
        cur.append(block)
        n_runs_cur += is_run
    if cur:
        pages.append(cur)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = []
    for i, page_blocks in enumerate(pages):
        flat = [x for b in page_blocks for x in b]

        def draw(fig, top, flat=flat):
            ax = fig.add_axes((0, 0, 1, 1))
            ax.set_axis_off()
            y, h = top, _LINE
            styles = {
                "head": {"fontweight": "bold", "fontsize": 10},
                "text": {"fontsize": 8.8},
                "alarm": {"fontsize": 8.8, "color": "#a50f15", "fontweight": "bold"},
                "ok": {"fontsize": 8.8, "color": "#005a32", "fontweight": "bold"},
                "dim": {"fontsize": 8.5, "color": "0.4"},
                "mono": {"fontsize": 8.5, "family": "monospace"},
            }
            for style, text in flat:
                if y < 0.03:
                    break
                if style != "gap":  # parse_math off: a "$" in a name is no formula
                    ax.text(0.025, y, text, va="top", parse_math=False, **styles[style])
                y -= h * (0.6 if style == "gap" else 1.0)

        n_runs = len(runs)
        title = "Summary"
        caption = (f"{n_runs} run{'s' if n_runs != 1 else ''}, report made {stamp}. "
                   "YES = alarm, - = check passed, n/a = not applicable or not judged. "
                   "Gradient ratios compare ||delta|| = ||dL/dz|| of layer 0 (input side) "
                   "with the output layer's."
                   + (f" With more than {SAMPLE_ABOVE} runs, the table lists every run and "
                      "below it each run with an alarm (or not completed) gets its alarms; a "
                      "report of one run lists every check." if compact else ""))
        out.append(_Page(title, caption if i == 0 else "", draw, layout=False))
    return out


def _flow_pages(runs):
    out = []
    for group in _chunks(runs, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False)
            for row, run in zip(axes, group):
                for ax, value in zip(row, ("grad_norm", "delta_norm")):
                    plots.gradient_heatmap(data=run.layers, value=value, ax=ax,
                                           max_steps=MAX_STEPS)
                    what = ("weight gradient ||dL/dW_l||" if value == "grad_norm"
                            else "back-propagated gradient ||delta_l||")
                    ax.set_title(f"{run.flabel}: {what}", fontsize=10, loc="left")
        out.append(_Page(
            "Gradient flow",
            "log10 of the gradient norm of each layer (rows, input side at the bottom) over "
            "training (columns: time bins, medians). Left: ||dL/dW_l||; right: ||delta_l|| = "
            "||dL/dz_l||. Colours changing from the bottom to the top rows mean the gradient "
            "shrinks (vanishing) or grows (exploding) on its way back to the input. Each panel "
            "has its own colour scale; white cells hold no finite value.", draw))
    return out


def _profile_pages(runs):
    out = []
    for group in _chunks(runs, PANELS_PER_PAGE):
        def draw(fig, group=group):
            r, c = _grid(len(group))
            axes = fig.subplots(r, c, squeeze=False).ravel()
            for ax, run in zip(axes, group):
                pred = _predicted_profile(run)
                plots.gradient_profile(data=run.layers, ax=ax, predicted=pred,
                                       legend_loc="in")
                ax.set_title(run.flabel, fontsize=10, loc="left")
            for ax in axes[len(group):]:
                ax.set_axis_off()
        out.append(_Page(
            "Gradient profile across depth",
            "||delta_l|| = ||dL/dz_l|| of each layer (log scale) at the start, a quarter, half "
            "way and the end of training. A straight sloped line is a geometric change per "
            "layer. Dashed: the mean-field prediction at initialisation, scaled to the "
            "measured output layer at the first logged step.", draw))
    return out


def _predicted_profile(run: RunData):
    t = run.diagnosis.get("theory") or {}
    prof = t.get("predicted_profile")
    if not prof:
        return None
    lay = run.layers
    if lay.empty:
        return None
    first = lay[lay["step"] == lay["step"].min()]
    out_layer = first[first["layer"] == first["layer"].max()]["delta_norm"]
    if not len(out_layer):
        return None
    scale = float(out_layer.iloc[0])
    if not (math.isfinite(scale) and scale > 0):
        return None
    return pd.Series(np.asarray(prof, float) * scale, index=np.arange(len(prof)))


def predicted_profile(run: RunData):
    """The mean-field gradient profile at initialisation, scaled to the run's output layer
    at the first logged step (a Series by layer), or None when theory cannot describe it."""
    return _predicted_profile(run)


def _dead_pages(runs, thresholds):
    relu = [r for r in runs if r.relu_family]
    if not relu:
        return []
    others = [r for r in runs if not r.relu_family]
    note = ""
    if others:
        names = ", ".join(f"{r.short or r.label} ({r.activation})" for r in others[:6])
        more = f" and {len(others) - 6} more" if len(others) > 6 else ""
        note = f" Not applicable to {names}{more}: their units cannot die."
    out = []
    for group in _chunks(relu, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False,
                                gridspec_kw={"width_ratios": [1, 1.15]})
            for (a1, a2), run in zip(axes, group):
                plots.dead_units(data=run.probes, ax=a1,
                                 threshold=thresholds.get("dead_units"))
                a1.set_title(f"{run.flabel}: dead units per layer", fontsize=10, loc="left")
                if run.dead is not None and len(run.dead_steps):
                    plots.dead_unit_map(steps=run.dead_steps, dead=run.dead, ax=a2)
                    a2.set_title("which units were dead when", fontsize=10, loc="left")
                else:
                    a2.set_axis_off()
        out.append(_Page(
            "Dead ReLU units",
            "A unit is dead when its pre-activation is <= 0 on every probe example: it passes "
            "no gradient and stops learning. Left: share of dead units per hidden layer at "
            "the probe steps. Right: each layer's units (sorted by when they died) against "
            "probe step, black = dead." + note, draw))
    return out


def _activation_pages(runs):
    out = []
    for group in _chunks(runs, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False)
            for i, run in enumerate(group):
                a1, a2 = axes[i]
                if len(run.hist) and run.hist["count"].sum() > 0:
                    plots.activation_distributions(hist=run.hist, ax=[a1, a2])
                    for a in (a1, a2):
                        t = a.get_title()
                        a.set_title("")
                        a.set_title(f"{run.flabel}: {t}", fontsize=10, loc="left")
                else:
                    gs = a1.get_subplotspec().get_gridspec()
                    a1.remove()
                    a2.remove()
                    ax = fig.add_subplot(gs[i, :])
                    plots.activation_summary(data=run.layers, ax=ax)
                    ax.set_title(f"{run.flabel}: activation mean and std on the training "
                                 "batch (no histogram recorded)", fontsize=10, loc="left")
        out.append(_Page(
            "Activation saturation",
            "Distribution of each hidden layer's activations on the probe set at the first "
            "and the last probe step (density against activation value, one line per layer). "
            "Mass piling up at the ends of a bounded activation (0 and 1 for sigmoid, -1 and 1 "
            "for tanh) means saturated units whose derivative is near zero; for ReLU, mass at "
            "0 means units that are off.", draw))
    return out


def _update_pages(runs):
    out = []
    for group in _chunks(runs, PANELS_PER_PAGE):
        def draw(fig, group=group):
            # time series: wide panels, one run per row (two columns beyond 3 runs)
            r, c = (len(group), 1) if len(group) <= 3 else (3, 2)
            axes = fig.subplots(r, c, squeeze=False).ravel()
            for ax, run in zip(axes, group):
                plots.update_ratio(data=run.layers, ax=ax, max_steps=MAX_STEPS)
                ax.set_title(run.flabel, fontsize=10, loc="left")
            for ax in axes[len(group):]:
                ax.set_axis_off()
        out.append(_Page(
            "Update / weight ratio",
            "||dW_l|| / ||W_l||: how much each update changes a layer's weights, per layer "
            "over training (log scale, bin medians). Around 1e-3 (dashed) is the usual rule "
            "of thumb; far below, the layer barely learns; far above, the learning rate is "
            "likely too large.", draw))
    return out


def _learning_page(runs):
    steps = pd.concat([r.steps.assign(run=r.flabel) for r in runs], ignore_index=True)
    epochs = pd.concat([r.epochs.assign(run=r.flabel) for r in runs if len(r.epochs)],
                       ignore_index=True) if any(len(r.epochs) for r in runs) else None

    def draw(fig):
        axes = fig.subplots(1, 2)
        plots.learning_curves(steps=steps, epochs=epochs, ax=list(axes), max_steps=MAX_STEPS)
        axes[0].set_title("loss", fontsize=10, loc="left")
        axes[1].set_title("accuracy", fontsize=10, loc="left")

    return [_Page(
        "Loss and accuracy",
        "Training: the batch loss and accuracy, running median over 2% of the run (solid). "
        "Validation: once per epoch on the held-out split (dashed, markers). The loss axis is "
        "logarithmic when the loss spans more than 1.5 decades.", draw)]


def comparison_summary(runs_or_diagnoses) -> pd.DataFrame:
    """One row per run and measurement for :func:`gradscope.views.plots.run_comparison`.

    Columns: ``run`` (label), ``label`` (activation / init / optimizer ...), ``activation``,
    ``init``, ``optimizer``, ``when`` (``"first logged step"`` or ``"median, first half"``)
    and ``ratio`` (delta_norm[layer 0] / delta_norm[output layer]).
    """
    rows = []
    for item in runs_or_diagnoses:
        d = item.diagnosis if isinstance(item, RunData) else item
        cfg = item.config if isinstance(item, RunData) else {}
        name = item.flabel if isinstance(item, RunData) else _run_name(d)
        ev = d.get("vanishing_evidence") or {}
        act = cfg.get("activation") or (d.get("theory") or {}).get("activation", "?")
        init = cfg.get("init") or (d.get("theory") or {}).get("init", "?")
        opt = cfg.get("optimizer", "?")
        lr = cfg.get("lr") or (cfg.get("optimizer_hyper") or {}).get("lr")
        label = f"{act} / {init} / {opt}" + (f" lr={lr:g}" if lr else "")
        if cfg.get("depth"):
            label += f" / depth {cfg['depth']}"
        for when, key in (("first logged step", "ratio_first"),
                          ("median, first half", "ratio_median_early")):
            rows.append({"run": name, "label": label, "activation": act, "init": init,
                         "optimizer": opt, "when": when, "ratio": _float(ev.get(key))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    dup = df.drop_duplicates("run")["label"].duplicated(keep=False)
    dups = set(df.drop_duplicates("run")["label"][dup])
    df["label"] = [f"{lab} ({run})" if lab in dups else lab
                   for lab, run in zip(df["label"], df["run"])]
    order = (df.drop_duplicates("run").sort_values(["activation", "init", "optimizer", "label"])
             ["label"].tolist())
    df["label"] = pd.Categorical(df["label"], categories=order, ordered=True)
    return df.sort_values(["label", "when"]).reset_index(drop=True)


def _comparison_page(runs, thresholds):
    summary = comparison_summary(runs)
    thr = (thresholds.get("vanishing", 1e-3), thresholds.get("exploding", 1e3))

    def draw(fig):
        ax = fig.subplots(1, 1)
        plots.run_comparison(summary=summary, x="ratio", y="label", hue="activation",
                             style="when", ax=ax, guides=thr)
        ax.set_xlabel("||delta_0|| / ||delta_output|| (log scale): back-propagated gradient at "
                      "the input side over the output layer's")

    return [_Page(
        "Gradient ratio across depth, run by run",
        "One row per run, grouped by activation / init / optimizer. 1 (grey line) means the "
        "gradient reaches the input side undiminished; left of the dashed vanishing threshold "
        "it has all but vanished, right of the exploding threshold it has exploded. Circle: "
        "at the first logged step; other marker: median over the first half of training.",
        draw)]


# -- sweeps: one row per run, grids, remedies -----------------------------------------------
#: The remedy options (docs/remedies.md): runs that differ only in these are compared side
#: by side; and what their resolved configuration adds when they are on.
REMEDY_KEYS = ("residual", "norm", "dropout", "clip_norm", "clip_value")
_REMEDY_DERIVED = ("residual_layers", "norm_eps", "norm_momentum")
#: Options that change what is logged, not what is trained: not part of a run's identity.
LOGGING_KEYS = ("log_every", "probe_every", "probe_size", "hist_bins", "snapshot_every")
#: The grid's axes in the sweep pages: x, colour, marker, panel.
GRID_KEYS = ("depth", "activation", "init", "optimizer")
#: Beyond this many runs, the per-run pages show a sample of SAMPLE_RUNS runs.
SAMPLE_ABOVE = 12
SAMPLE_RUNS = 6
#: The run-by-run ratio page is left out beyond this many runs (the phase diagram covers them).
COMPARISON_MAX_RUNS = 40
#: Remedy comparison pages at most (one per group of runs).
MAX_REMEDY_PAGES = 12
_HYPER = ("lr", "momentum", "beta1", "beta2", "eps", "rho", "alpha", "weight_decay")


def _train_fields() -> list[str]:
    try:
        from dataclasses import fields

        from ..training.loop import TrainConfig
        return [f.name for f in fields(TrainConfig) if f.name != "extra"]
    except ImportError:
        return ["dataset", "target", "data_seed", "standardize", "depth", "width", "widths",
                "activation", "init", "init_gain", "optimizer", *_HYPER, "batch_size",
                "epochs", "steps", "val_fraction", "seed", "dtype", *LOGGING_KEYS,
                *REMEDY_KEYS]


def _options(config: dict) -> dict:
    """A run's training options as it used them: the optimizer's defaults filled in from
    ``optimizer_hyper``, ``widths`` None when it is ``[width] * depth``, ``depth`` and
    ``width`` from ``widths`` otherwise."""
    out = {k: config.get(k) for k in _train_fields()}
    hyper = config.get("optimizer_hyper") or {}
    for k in _HYPER:
        if out.get(k) is None and k in hyper:
            out[k] = hyper[k]
    widths = config.get("widths")
    if widths:
        ws = [int(w) for w in widths]
        out["depth"] = len(ws)
        if len(set(ws)) == 1:
            out["width"], out["widths"] = ws[0], None
        else:
            out["width"] = None
    if out.get("dropout") in (None, 0, 0.0):
        out["dropout"] = 0.0
    out["residual"] = bool(out.get("residual"))
    if out.get("norm") in ("none", ""):
        out["norm"] = None
    if out.get("init_gain") is None:
        out["init_gain"] = 1.0
    return out


def _key(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _varying(opts: list[dict], skip=()) -> list[str]:
    """The options that differ between runs; an optimizer option (lr, momentum, ...) only
    when it differs between runs of the same optimizer (not merely because the optimizers
    differ, and with them their defaults and options)."""
    keys = [k for k in (opts[0] if opts else {}) if k not in skip]
    out = []
    for k in keys:
        if len({_key(o.get(k)) for o in opts}) < 2:
            continue
        if k in _HYPER:
            per_opt: dict = {}
            for o in opts:
                per_opt.setdefault(o.get("optimizer"), set()).add(_key(o.get(k)))
            if all(len(v) == 1 for v in per_opt.values()):
                continue
        out.append(k)
    return out


def _setting(k: str, v) -> str:
    if isinstance(v, bool):
        return f"{k}={'on' if v else 'off'}"
    if v is None:
        return f"{k}=none"
    if isinstance(v, float):
        return f"{k}={v:g}"
    if isinstance(v, (list, tuple)):
        return f"{k}={','.join(map(str, v))}"
    return f"{k}={v}"


def _remedy_text(o: dict) -> str:
    try:
        from ..analysis.diagnose import remedy_parts
    except ImportError:  # the report also renders without the diagnosis module
        return "n/a"
    return " + ".join(remedy_parts(o)) or "none"


def _final_accuracy(run: RunData) -> tuple[float, str]:
    ep = run.epochs
    if len(ep) and "val_accuracy" in ep.columns:
        v = pd.to_numeric(ep["val_accuracy"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1]), "validation"
    if len(ep) and "train_accuracy" in ep.columns:
        v = pd.to_numeric(ep["train_accuracy"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1]), "training"
    if len(run.steps) and "accuracy" in run.steps.columns:
        v = pd.to_numeric(run.steps["accuracy"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1]), "training batch"
    return math.nan, ""


def run_table(runs) -> pd.DataFrame:
    """One row per run: its options and the numbers the sweep pages draw.

    ``runs``: :class:`RunData` (from :func:`load_run`). The table is what
    :func:`gradscope.views.plots.phase_diagram`, :func:`~gradscope.views.plots.depth_dead_units` and
    :func:`~gradscope.views.plots.grid_heatmap` take. Columns:

    - ``run`` (the label), ``file``, ``status``, ``verdict``;
    - the options as the run used them: ``dataset``, ``depth``, ``width`` (None for
      unequal ``widths``), ``widths``, ``activation``, ``init``, ``init_gain``,
      ``optimizer``, ``lr`` (the optimizer's default filled in), ``batch_size``, ``seed``,
      ``dropout``, ``residual``, ``norm``, ``clip_norm``, ``clip_value``;
    - ``remedy``: the remedies that are on (``"residual + batchnorm"``) or ``"none"``;
      ``variant``: the options other than depth, activation, init, optimizer and seed that
      differ between these runs, as text (``"residual=on"``; ``""`` when none does);
    - ``ratio_first`` (``delta_norm`` of layer 0 over the output layer's at the first
      logged step, ``first_step``) and ``ratio_early`` (its median over the first half of
      training): the diagnosis's ``ratio_first`` and ``ratio_median_early`` evidence;
      ``predicted_ratio``: the mean-field prediction at initialisation
      (``predicted_delta_profile(...)[0]`` with the run's weight variances, as
      :func:`gradscope.analysis.diagnose.theory_check` computes it; NaN with skips, normalisation or
      dropout);
    - ``dead_frac``: the mean over the hidden layers of the share of dead units at the last
      usable probe step (the diagnosis's per-layer values), ``dead_frac_max`` the worst
      layer's, ``dead_step`` that probe step (NaN / None outside the ReLU family);
    - ``accuracy``: the final validation accuracy, else the last epoch's training accuracy,
      else the last batch's; ``accuracy_split`` says which (``validation``, ``training``,
      ``training batch``); ``n_classes``;
    - the verdict booleans ``vanishing``, ``exploding``, ``dead_units``, ``saturated``,
      ``diverged``.
    """
    runs = list(runs)
    opts = [_options(r.config) for r in runs]
    skip = ({"depth", "activation", "init", "optimizer", "seed", "widths"}
            | set(LOGGING_KEYS))
    var_keys = _varying(opts, skip)
    rows = []
    for r, o in zip(runs, opts):
        d = r.diagnosis
        ev = d.get("vanishing_evidence") or {}
        dead_ev = d.get("dead_units_evidence") or {}
        by_layer = {k: _float(v) for k, v in (dead_ev.get("by_layer") or {}).items()}
        finite = [v for v in by_layer.values() if math.isfinite(v)]
        relu = r.relu_family and dead_ev.get("applicable", True) and finite
        theory = d.get("theory") or {}
        acc, split = _final_accuracy(r)
        row = {"run": r.label, "file": r.path.name, "status": d.get("status", ""),
               "verdict": d.get("verdict", "")}
        for k in ("dataset", "depth", "width", "widths", "activation", "init", "init_gain",
                  "optimizer", "lr", "batch_size", "seed", *REMEDY_KEYS):
            v = o.get(k)
            row[k] = ",".join(map(str, v)) if isinstance(v, list) else v
        row["remedy"] = _remedy_text(o)
        row["variant"] = ", ".join(_setting(k, o.get(k)) for k in var_keys)
        row.update({
            "ratio_first": _float(ev.get("ratio_first")), "first_step": ev.get("first_step"),
            "ratio_early": _float(ev.get("ratio_median_early")),
            "predicted_ratio": _float(theory.get("predicted_ratio")),
            "dead_frac": float(np.mean(finite)) if relu else math.nan,
            "dead_frac_max": float(np.max(finite)) if relu else math.nan,
            "dead_step": dead_ev.get("step") if relu else None,
            "accuracy": acc, "accuracy_split": split,
            "n_classes": r.config.get("n_outputs") if r.config.get("task", "classification")
            == "classification" else None,
        })
        for v in _VERDICTS:
            row[v] = bool(d.get(v, False))
        rows.append(row)
    return pd.DataFrame(rows)


def _from_sweep_folder(runs) -> bool:
    return bool(runs) and all((r.path.parent / "sweep.json").is_file() for r in runs)


def sweep_layout(table: pd.DataFrame, *, from_sweep: bool = False) -> dict | None:
    """How the sweep pages draw these runs, or None when they do not form a grid.

    A grid: at least 3 runs, whose depths differ, and at least one of activation, init and
    optimizer differs too (or the runs are a sweep folder's, ``from_sweep``), with at least
    one line of the phase diagram (an activation / init / optimizer / variant) holding two
    depths. Returns ``{"x": "depth", "hue": "activation", "style": "init", "col":
    "optimizer", "row": "variant" or None, "seeds": most runs per grid point}``.
    """
    if len(table) < 3 or "depth" not in table or table["depth"].nunique() < 2:
        return None
    others = [c for c in ("activation", "init", "optimizer") if table[c].nunique() > 1]
    if not others and not from_sweep:
        return None
    lines = table.groupby(["activation", "init", "optimizer", "variant"], dropna=False)
    if lines["depth"].nunique().max() < 2:
        return None
    point = ["depth", "activation", "init", "optimizer", "variant"]
    return {"x": "depth", "hue": "activation", "style": "init", "col": "optimizer",
            "row": "variant" if table["variant"].nunique() > 1 else None,
            "seeds": int(table.groupby(point, dropna=False).size().max())}


def _seeds_text(table: pd.DataFrame, layout: dict) -> str:
    n = layout["seeds"]
    if n <= 1:
        return "one run per point"
    return (f"up to {n} runs (seeds) per point: the line joins their medians, the band "
            "spans their minimum to maximum")


def _sweep_pages(table: pd.DataFrame, layout: dict, thr: dict) -> list[_Page]:
    row = layout["row"]
    n_rows = table[row].nunique() if row else 1
    n_cols = table["optimizer"].nunique()
    seeds = _seeds_text(table, layout)
    pages = []

    def grid(fig, n_r, n_c):
        return fig.subplots(n_r, n_c, squeeze=False, sharey=True, sharex=True)

    def draw_phase(fig):
        axes = grid(fig, n_rows, n_cols)
        plots.phase_diagram(summary=table, ax=axes, row=row,
                            guides=(thr.get("vanishing", 1e-3), thr.get("exploding", 1e3)))

    with_theory = table["predicted_ratio"].notna()
    theory_note = ("Dashed, hollow markers: the mean-field prediction at initialisation in the "
                   "line's colour, predicted_delta_profile(...)[0] with each run's weight "
                   "variance, the output layer's included (about chi1^(depth/2)); crosses: "
                   "each run's ratio at its first logged step, what the prediction describes "
                   "(training moves the solid line away from it). "
                   if with_theory.any() else
                   "Crosses: each run's ratio at its first logged step. ")
    if with_theory.any() and not with_theory.all():
        theory_note += "(The theory covers plain MLPs only: no dashed line with remedies.) "
    pages.append(_Page(
        "Vanishing-gradient phase diagram",
        "Gradient ratio ||delta_0|| / ||delta_out|| (back-propagated gradient at the first "
        "layer over the output layer's) against depth, log scale: the median over the "
        "logged steps of the first half of training, the number the vanishing and exploding "
        "verdicts judge. One line per activation (colour) and init (marker), one panel per "
        f"optimizer{' and variant' if row else ''}; {seeds}. " + theory_note
        + f"In the shaded band below the dashed {thr.get('vanishing', 1e-3):g} line the "
        f"gradient has vanished, above {thr.get('exploding', 1e3):g} exploded; grey line: "
        "1, no change. A straight line is a constant factor per layer.", draw_phase))

    relu = table[np.isfinite(table["dead_frac"].to_numpy(float))]
    if len(relu):
        not_relu = sorted(set(table["activation"]) - set(relu["activation"]))
        n_rows_r = relu[row].nunique() if row else 1
        n_cols_r = relu["optimizer"].nunique()

        # one ReLU-family activation: colour by init (a line per init either way)
        hue = "activation" if relu["activation"].nunique() > 1 else "init"

        def draw_dead(fig):
            axes = grid(fig, n_rows_r, n_cols_r)
            plots.depth_dead_units(summary=relu, ax=axes, row=row, hue=hue)

        pages.append(_Page(
            "Dead ReLU units across depth",
            "Mean over the hidden layers of the share of units dead on the probe set (pre-"
            "activation <= 0 on every probe example) at the last probe step, against depth. "
            f"One line per activation and init (colour: {hue}), one panel per optimizer"
            f"{' and variant' if row else ''}; {seeds}. The "
            f"dead-unit verdict looks at the worst single layer (threshold "
            f"{100 * thr.get('dead_units', 0.5):.0f}% of its units), so a run can be "
            "flagged with a lower mean."
            + (f" Not shown: {', '.join(not_relu)} (units cannot die)." if not_relu else ""),
            draw_dead))

    ys = ["activation", "init"] + (["variant"] if row else [])
    splits = sorted(set(table["accuracy_split"]) - {""})
    what = {"validation": "validation accuracy after the last epoch",
            "training": "training accuracy of the last epoch (no validation split)",
            "training batch": "training accuracy of the last batch (no epoch completed)"}
    classes = sorted({int(c) for c in table["n_classes"].dropna()}) if (
        "n_classes" in table) else []
    chance = (f" Chance level: {100 / classes[0]:.0f}% ({classes[0]} classes)."
              if len(classes) == 1 and classes[0] > 1 else "")
    label = ("final validation accuracy" if splits == ["validation"] else
             "final accuracy" + (f" ({', '.join(splits)})" if splits else ""))
    regression = not table["accuracy"].notna().any()
    if not regression:
        def draw_acc(fig):
            axes = fig.subplots(1, n_cols, squeeze=False)[0]
            plots.grid_heatmap(summary=table, value="accuracy", y=ys, ax=axes, label=label)

        pages.append(_Page(
            "Final accuracy over the grid",
            "Final accuracy of each run: " + "; ".join(what[s] for s in splits if s in what)
            + ". Rows: activation / init" + (" / variant" if row else "") + "; columns: "
            "depth; one panel per optimizer. "
            + ("Several runs in a cell (seeds): their median (n = runs, shown where it "
               "varies). " if layout["seeds"] > 1 else "")
            + "Colours: viridis from 0 to 100%." + chance, draw_acc))
    return pages


def remedy_groups(runs) -> list[list]:
    """Groups of runs that differ only in their remedies (docs/remedies.md).

    Runs whose options (as they used them, :func:`run_table`'s) are equal except for
    ``residual``, ``norm``, ``dropout``, ``clip_norm`` and ``clip_value`` (and what those
    add to the configuration) form a group; the seed is part of a run's identity, so runs
    of different seeds are never compared, and options that only change what is logged
    (:data:`LOGGING_KEYS`) are ignored. A group holds two or more different remedy
    settings (a repeated setting keeps its first run), the run with the fewest remedies on
    first. Returns the groups ordered by depth, activation, init, optimizer and seed.
    """
    runs = list(runs)
    groups: dict[str, list] = {}
    for r in runs:
        o = _options(r.config)
        ident = {k: v for k, v in o.items() if k not in REMEDY_KEYS and k not in LOGGING_KEYS}
        groups.setdefault(_key(ident), []).append((r, o))
    out = []
    for members in groups.values():
        seen, keep = set(), []
        for r, o in members:
            k = _key({x: o.get(x) for x in REMEDY_KEYS})
            if k not in seen:
                seen.add(k)
                keep.append((r, o))
        if len(keep) < 2:
            continue
        keep.sort(key=lambda ro: (_remedy_count(ro[1]), runs.index(ro[0])))
        out.append([r for r, _ in keep])
    # in grid order: depth (as a number), activation, init, optimizer, seed
    def order(group):
        o = _options(group[0].config)
        return tuple((v if isinstance(v, (int, float)) else math.inf, str(v))
                     for v in (o.get(k) for k in (*GRID_KEYS, "seed")))

    return sorted(out, key=order)


def _remedy_count(o: dict) -> int:
    return (bool(o.get("residual")) + bool(o.get("norm")) + bool(o.get("dropout"))
            + (o.get("clip_norm") is not None) + (o.get("clip_value") is not None))


def _remedy_value(k: str, v) -> str:
    if k == "residual":
        return "on" if v else "off"
    if k == "norm":
        return v or "none"
    if v in (None, 0, 0.0):
        return "off"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _remedy_pages(groups: list[list]) -> list[_Page]:
    pages = []
    described = []
    for group in groups[:MAX_REMEDY_PAGES]:
        opts = [_options(r.config) for r in group]
        keys = [k for k in REMEDY_KEYS if len({_key(o.get(k)) for o in opts}) > 1]
        flags = [f"--{k.replace('_', '-')}" for k in keys]
        if len(keys) == 1:
            vals = [_remedy_value(keys[0], o.get(keys[0])) for o in opts]
            title = f"Remedy: {flags[0]} ({' vs '.join(vals)})"
        else:
            title = f"Remedies: {', '.join(flags)} ({len(group)} settings)"
        described.append((title, group, opts, keys))
    # groups with the same title: name what sets them apart (depth, activation, ...)
    by_title: dict[str, list] = {}
    for i, (title, *_rest) in enumerate(described):
        by_title.setdefault(title, []).append(i)
    for title, idx in by_title.items():
        if len(idx) < 2:
            continue
        bases = [{k: v for k, v in described[i][2][0].items() if k not in REMEDY_KEYS
                  and k not in LOGGING_KEYS} for i in idx]
        apart = _varying(bases)
        for i, base in zip(idx, bases):
            t, g, o, k = described[i]
            extra = ", ".join(_setting(a, base.get(a)).replace("=", " ") for a in apart[:3])
            described[i] = (f"{t}: {extra}" if extra else t, g, o, k)
    skipped = len(groups) - len(described)
    for n, (title, group, opts, keys) in enumerate(described):
        base = group[0].diagnosis.get("config_summary") or _config_summary(group[0].config)
        seed = opts[0].get("seed")
        titles, preds = {}, {}
        for r, o in zip(group, opts):
            setting = ", ".join(f"--{k.replace('_', '-')} {_remedy_value(k, o.get(k))}"
                                for k in keys)
            titles[r.flabel] = f"{setting}: {r.diagnosis.get('verdict', '')}"
            p = _predicted_profile(r)
            if p is not None:
                preds[r.flabel] = p
        data = pd.concat([r.layers.assign(run=r.flabel) for r in group], ignore_index=True)
        chunks = _chunks(group, PANELS_PER_PAGE)
        for chunk in chunks:
            def draw(fig, chunk=chunk, data=data, titles=titles, preds=preds):
                r_, c_ = _grid(len(chunk))
                axes = fig.subplots(r_, c_, squeeze=False, sharey=True).ravel()
                labels = [r.flabel for r in chunk]
                plots.profile_comparison(data=data, runs=labels, titles=titles,
                                         predicted=preds, ax=axes[:len(chunk)])
                for ax, r in zip(axes, chunk):
                    alarm = r.diagnosis.get("verdict") not in ("healthy", "no data",
                                                               "not diagnosed")
                    ax.set_title(titles[r.flabel], loc="left", fontsize=11,
                                 fontweight="bold", color="#a50f15" if alarm else "#005a32")
                for ax in axes[len(chunk):]:
                    ax.set_axis_off()
            caption = (
                f"The same network and training ({base}, seed {seed}) with "
                + (f"{', '.join('--' + k.replace('_', '-') for k in keys)} changed" if keys
                   else "different remedies")
                + ": ||delta_l|| = ||dL/dz_l|| of each layer (log scale, one scale for every "
                "panel) at the first and the last logged step. Each panel's title: the "
                "setting and the run's verdict (red: an alarm). A line falling towards layer "
                "0 is a gradient that vanishes on its way back; dashed: the mean-field "
                "prediction at initialisation (plain MLP only).")
            if skipped and n == len(described) - 1:
                caption += (f" {skipped} more group{'s' if skipped > 1 else ''} of runs "
                            f"differing only in remedies not shown (at most "
                            f"{MAX_REMEDY_PAGES} pages).")
            pages.append(_Page(title, caption, draw))
    return pages


def _sample_runs(runs: list[RunData], table: pd.DataFrame,
                 k: int = SAMPLE_RUNS) -> list[RunData]:
    """``k`` runs for the per-run pages: one per verdict in turn (alarms first), within a
    verdict the most extreme first (deepest, then the ratio farthest from 1), preferring an
    activation / init not in the sample yet; in the runs' order."""
    if len(runs) <= SAMPLE_ABOVE:
        return list(runs)
    by_verdict: dict[str, list[int]] = {}
    for i, v in enumerate(table["verdict"]):
        by_verdict.setdefault(str(v), []).append(i)

    def extremeness(i):
        r = _float(table["ratio_early"].iloc[i])
        far = abs(math.log10(r)) if math.isfinite(r) and r > 0 else math.inf
        depth = _float(table["depth"].iloc[i])
        return (-(depth if math.isfinite(depth) else 0), -far)

    order = sorted(by_verdict, key=lambda v: (v in ("healthy", "no data", "not diagnosed"),
                                              -len(by_verdict[v]), v))
    queues = [sorted(by_verdict[v], key=extremeness) for v in order]
    picked: list[int] = []
    shown: set = set()   # (activation, init) pairs already in the sample
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                # prefer an activation / init not shown yet
                pos = next((n for n, i in enumerate(q) if (table["activation"].iloc[i],
                            table["init"].iloc[i]) not in shown), 0)
                i = q.pop(pos)
                shown.add((table["activation"].iloc[i], table["init"].iloc[i]))
                picked.append(i)
    return [runs[i] for i in sorted(picked)]


# -- the report -----------------------------------------------------------------------------
def _labels(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def make_report(paths, out, *, max_steps: int = MAX_STEPS, title: str | None = None,
                **thresholds) -> dict:
    """Write a multi-page PDF report of the logs ``paths`` to ``out``.

    ``paths``: log files (see :func:`collect_logs` for directories); ``thresholds``: the
    diagnosis thresholds (``vanishing``, ``exploding``, ``dead_units``, ``saturated``),
    passed to :func:`gradscope.analysis.diagnose.diagnose`. The PDF is written to a temporary file
    beside ``out`` and renamed at the end, so a failed report leaves no partial file.

    Returns ``{"out": Path, "pages": int, "titles": [page titles], "runs": [labels],
    "diagnoses": [diagnose() dicts], "table": run_table(), "sweep": sweep_layout() or None,
    "remedy_groups": [[labels]], "sampled": [labels of the runs with per-run pages],
    "seconds": float}``. Raises :class:`LogError` (one line) for a missing,
    non-HDF5, non-gradscope or truncated file, ``ValueError`` for a bad threshold.
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise LogError("no log given")
    try:
        from ..analysis.diagnose import resolve_thresholds
        thr = resolve_thresholds(**thresholds)
    except ImportError:
        thr = dict(thresholds)
    out = Path(out)
    labels = _labels(paths)
    runs = [load_run(p, max_steps=max_steps, label=lab, **thresholds)
            for p, lab in zip(paths, labels)]
    diagnoses = [r.diagnosis for r in runs]
    table = run_table(runs)
    layout = sweep_layout(table, from_sweep=_from_sweep_folder(runs))
    groups = remedy_groups(runs)
    sample = _sample_runs(runs, table)
    shorts, short_note = _short_names(labels, width=_FIGURE_NAME_WIDTH)
    if short_note:
        for r, sh in zip(runs, shorts):
            r.short = sh
        short_note = " " + short_note[1:-1].replace("run names", "Run names", 1) + "."

    pages: list[_Page] = []
    pages += _summary_pages(runs, diagnoses)
    if layout is not None:
        pages += _sweep_pages(table, layout, thr)
    pages += _remedy_pages(groups)
    per_run = (_flow_pages(sample) + _profile_pages(sample) + _dead_pages(sample, thr)
               + _activation_pages(sample) + _update_pages(sample) + _learning_page(sample))
    if len(sample) < len(runs):
        note = (f" Showing {len(sample)} of {len(runs)} runs, a sample: one run per verdict "
                "in turn, the deepest and most extreme first (" + ", ".join(
                    r.short or r.label for r in sample) + "). The summary"
                + (", the sweep pages" if layout is not None else "")
                + (" and the run-by-run ratios" if len(runs) <= COMPARISON_MAX_RUNS else "")
                + " cover every run.")
        for p in per_run:
            p.caption += note
    for p in per_run if short_note else ():
        p.caption += short_note
    pages += per_run
    if 1 < len(runs) <= COMPARISON_MAX_RUNS:
        pages += _comparison_page(runs, thr)

    # number the pages of a figure that spans several: "Gradient flow (2 of 3)"
    counts: dict[str, int] = {}
    for p in pages:
        counts[p.title] = counts.get(p.title, 0) + 1
    seen: dict[str, int] = {}
    for p in pages:
        if counts[p.title] > 1:
            seen[p.title] = seen.get(p.title, 0) + 1
            p.title = f"{p.title} ({seen[p.title]} of {counts[p.title]})"

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    source = ", ".join(labels) if len(labels) <= 3 else f"{len(labels)} runs"
    if len(source) > 120:
        source = source[:117] + "..."
    meta = {
        "Title": title or f"gradscope report: {source}",
        "Subject": "; ".join(f"{lab}: {d.get('verdict', '')}" for lab, d in
                             zip(labels, diagnoses))[:2000],
        "Keywords": "gradscope, gradient diagnostics",
        "Creator": "gradscope",
    }
    titles = []
    try:
        style = sns.axes_style("whitegrid", {"axes.edgecolor": "0.3"})
        with plt.rc_context({**style, **_RC}), PdfPages(tmp, metadata=meta) as pdf:
            for i, page in enumerate(pages, 1):
                fig, top = _new_page(page.title, page.caption, layout=page.layout)
                try:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=".*constrained_layout.*")
                        warnings.filterwarnings("ignore", category=UserWarning,
                                                message=".*(Data has no positive values|"
                                                "converting a masked element|No artists).*")
                        page.draw(fig) if page.layout else page.draw(fig, top)
                        _footer(fig, source, i, len(pages))
                        pdf.savefig(fig)
                finally:
                    fig.clear()
                titles.append(page.title)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"out": out, "pages": len(pages), "titles": titles, "runs": labels,
            "diagnoses": diagnoses, "table": table, "sweep": layout,
            "remedy_groups": [[r.label for r in g] for g in groups],
            "sampled": [r.label for r in sample], "seconds": time.perf_counter() - t0}

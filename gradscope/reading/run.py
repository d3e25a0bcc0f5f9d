"""One run read in one go: :func:`read_run` opens the log once and hands every consumer
(the diagnosis, the report's pages, the sweep summary) what it needs.

A short log is read whole. A long one is read in bounded pieces so that time and memory
do not grow with the run: the layer table as time bins of medians
(:func:`~gradscope.reading.binned.layers_binned`), the step and probe tables as evenly
spread windows of whole steps (every step whose loss or gradient norm is not finite is
kept), the diagnosis on finer bins. :func:`read_frames` is the diagnosis's share alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..record.schema import LogError
from .binned import MAX_STEPS, PER_BIN, check_bins, layers_binned, whole_step_windows
from .readers import (
    columns_of,
    layers_frame,
    log_status,
    open_log,
    read_columns,
    read_table,
    sorted_unique,
    table_length,
)

__all__ = [
    "DIAGNOSE_PER_BIN", "DIAGNOSE_STEPS", "FULL_DIAGNOSE_ROWS", "FULL_TABLE_ROWS", "Run",
    "is_relu_family", "read_frames", "read_run", "train_options",
]

#: Layer-table rows up to which a run is diagnosed on its full tables; longer logs are
#: diagnosed on DIAGNOSE_STEPS bins of medians over DIAGNOSE_PER_BIN logged steps.
FULL_DIAGNOSE_ROWS = 500_000
DIAGNOSE_STEPS = 1000
DIAGNOSE_PER_BIN = 16
#: Rows of the step and probe tables read whole; beyond, evenly spread windows of steps.
FULL_TABLE_ROWS = 200_000
_WINDOWS = 400
_SCAN_ROWS = 1 << 20  # rows per piece when scanning a long step table for non-finite values
#: Activations whose units can die, for logs written before the config said so itself.
_RELU_FAMILY_NAMES = ("relu", "leaky_relu", "elu")
#: The training options of logs written before the config listed them (``train_options``).
_FORMAT1_OPTIONS = (
    "dataset", "target", "data_seed", "standardize", "depth", "width", "widths", "activation",
    "init", "init_gain", "optimizer", "lr", "momentum", "beta1", "beta2", "eps", "rho",
    "alpha", "weight_decay", "batch_size", "epochs", "steps", "val_fraction", "seed", "dtype",
    "log_every", "probe_every", "probe_size", "hist_bins", "snapshot_every", "dropout",
    "residual", "norm", "clip_norm", "clip_value",
)
_HIST_COLUMNS = ["step", "layer", "bin_left", "bin_right", "count", "density"]


def is_relu_family(config: dict) -> bool:
    """Whether the run's units can die: the logged config's ``relu_family``, or for a log
    written before it held that, the activation's name."""
    if "relu_family" in config:
        return bool(config["relu_family"])
    return str(config.get("activation", "")).lower() in _RELU_FAMILY_NAMES


def train_options(config: dict) -> list[str]:
    """The names of the run's training options: the logged config's ``train_options``, or
    for a log written before it listed them, the options gradscope had then."""
    return list(config.get("train_options") or _FORMAT1_OPTIONS)


@dataclass
class Run:
    """What the consumers of one log need, read with one open (:func:`read_run`)."""

    path: Path
    config: dict
    status: dict
    steps: pd.DataFrame        # whole, or evenly spread windows of a long table
    epochs: pd.DataFrame
    layers: pd.DataFrame       # whole or binned in time (step_lo, step_hi columns)
    probes: pd.DataFrame       # probe-step rows (dead_frac, ...), one per probe step and layer
    hist: pd.DataFrame         # activation histograms at the first and last probe step
    dead_steps: np.ndarray | None
    dead: list | None          # per hidden layer (probe steps, width) bool, ReLU family only
    layer_rows: int = 0        # committed rows of the layer table
    logged_steps: int = 0      # committed rows of the step table
    diagnosis_layers: pd.DataFrame | None = None  # the layer table the diagnosis judges
    notes: list = field(default_factory=list)

    @property
    def activation(self) -> str:
        return str(self.config.get("activation", ""))

    @property
    def relu_family(self) -> bool:
        return is_relu_family(self.config)

    def frames(self) -> dict:
        """The diagnosis's tables: ``{"steps", "layers", "config", "status", "epochs"}``."""
        return {"steps": self.steps, "layers": self.diagnosis_layers, "config": self.config,
                "status": self.status, "epochs": self.epochs}


def read_run(path, *, max_steps: int = MAX_STEPS, per_bin: int = PER_BIN,
             figures: bool = True) -> Run:
    """Read one log with one open. ``max_steps`` and ``per_bin``: the layer table's time
    bins (:func:`~gradscope.reading.binned.read_layers_binned`); ``figures=False`` reads
    only what the diagnosis needs (``layers`` is then its table, ``hist`` empty).

    Raises :class:`LogError` with one line for a missing, truncated, non-HDF5,
    non-gradscope or damaged file.
    """
    path = Path(path)
    max_steps, per_bin = check_bins(max_steps, per_bin)
    try:
        with open_log(path) as f:
            return _read(f, path, max_steps, per_bin, figures)
    except LogError:
        raise
    except (OSError, KeyError, IndexError, TypeError, ValueError) as e:
        # h5py and numpy errors of a damaged file, not a gradscope problem to show as a trace
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LogError(f"{str(path)!r} is damaged or incomplete: {msg}") from None


def read_frames(path) -> dict:
    """The diagnosis's tables of one log, with one open: ``{"steps", "layers", "config",
    "status", "epochs"}`` (a long log's layers as fine time bins, as :func:`read_run` gives them)."""
    return read_run(path, figures=False).frames()


def _read(f, path: Path, max_steps: int, per_bin: int, figures: bool) -> Run:
    config = json.loads(f.attrs["config"])
    steps = _sampled(f, "steps", scan_nonfinite=("loss", "grad_norm_total"))
    status = log_status(f)
    epochs = read_table(f, "epochs")
    layer_rows = table_length(f, "layers")
    notes: list[str] = []
    if layer_rows <= FULL_DIAGNOSE_ROWS:
        layers = layers_binned(f, max_steps, per_bin) if figures else layers_frame(f)
        short = len(layers) == layer_rows and (
            not figures or (layers["step_lo"] == layers["step_hi"]).all())
        # a log short enough for the figures to show it whole is read once
        whole = (layers.drop(columns=["step_lo", "step_hi"], errors="ignore") if short
                 else layers_frame(f))
    else:
        fine = layers_binned(f, max(DIAGNOSE_STEPS, max_steps), DIAGNOSE_PER_BIN)
        notes.append(f"diagnosed on {fine['step'].nunique()} time bins of medians "
                     f"(the log has {layer_rows} layer rows)")
        layers = layers_binned(f, max_steps, per_bin) if figures else fine
        whole = fine.drop(columns=["step_lo", "step_hi"])
    if not figures:
        return Run(path=path, config=config, status=status, steps=steps, epochs=epochs,
                   layers=whole, probes=pd.DataFrame(), hist=pd.DataFrame(columns=_HIST_COLUMNS),
                   dead_steps=None, dead=None, layer_rows=layer_rows,
                   logged_steps=table_length(f, "steps"), diagnosis_layers=whole, notes=notes)
    probes = _sampled(f, "probes")
    hist, dead_steps, dead = _probe_arrays(f, is_relu_family(config), max_steps)
    return Run(path=path, config=config, status=status, steps=steps, epochs=epochs,
               layers=layers, probes=probes, hist=hist, dead_steps=dead_steps, dead=dead,
               layer_rows=layer_rows, logged_steps=table_length(f, "steps"),
               diagnosis_layers=whole, notes=notes)


def _sampled(f, name: str, scan_nonfinite=()) -> pd.DataFrame:
    """Table ``name`` whole when short, else ``_WINDOWS`` evenly spread windows of whole
    steps (``FULL_TABLE_ROWS`` rows at most) plus its last step, plus every row where a
    ``scan_nonfinite`` column is not finite (read a piece at a time)."""
    n = table_length(f, name)
    if n <= FULL_TABLE_ROWS:
        return read_table(f, name)
    size = FULL_TABLE_ROWS // _WINDOWS
    if name == "steps":  # one row a step: evenly spaced windows, one regular selection
        lo = np.arange(_WINDOWS) * ((n - size) // (_WINDOWS - 1))
        hi = lo + size
        last = n - 1
    else:  # several rows a step: windows of whole steps
        steps = read_columns(f, name, ["step"])["step"]
        lo = np.searchsorted(steps, steps[np.linspace(0, n - size, _WINDOWS).astype(np.int64)])
        lo, hi = whole_step_windows(steps, lo, np.append(lo[1:], n), size)
        last = int(np.searchsorted(steps, steps[-1], "left"))
    windows = sorted_unique(np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]))
    extra = [np.arange(last, n)]
    for start in range(0, n, _SCAN_ROWS) if scan_nonfinite else ():
        stop = min(n, start + _SCAN_ROWS)
        bad = np.zeros(stop - start, bool)
        for v in read_columns(f, name, scan_nonfinite, slice(start, stop)).values():
            bad |= ~np.isfinite(v)
        extra.append(start + np.flatnonzero(bad))
    extra = sorted_unique(np.concatenate(extra))
    extra = extra[~np.isin(extra, windows)]
    table = pd.concat([read_table(f, name, rows=windows), read_table(f, name, rows=extra)],
                      ignore_index=True)
    order = np.argsort(np.concatenate([windows, extra]), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def _probe_arrays(f, relu: bool, max_cols: int):
    """First and last non-empty activation histograms (long form, as read_histograms) and,
    for the ReLU family, the dead flags at no more than ``max_cols`` probe steps."""
    steps = read_columns(f, "probe_units", ["step"])["step"]
    n = len(steps)
    edges = f["probe_units"].attrs["hist_edges"]
    n_hidden = len([k for k in columns_of(f, "probe_units") if k.startswith("hist_")])
    hist_frames = []
    if n:
        # the first row and the last row with counts (a diverged step may have none)
        rows = [0]
        if n_hidden:
            filled = np.flatnonzero(read_columns(f, "probe_units", ["hist_0"])["hist_0"]
                                    .sum(axis=1) > 0)
            rows += [int(filled[-1])] if len(filled) and filled[-1] > 0 else []
        rows = sorted(set(rows))
        for l in range(n_hidden):
            counts = read_columns(f, "probe_units", [f"hist_{l}"], rows)[f"hist_{l}"]
            total = counts.sum(axis=1, keepdims=True).clip(min=1)
            nb = counts.shape[1]
            hist_frames.append(pd.DataFrame({
                "step": np.repeat(steps[rows], nb), "layer": l,
                "bin_left": np.tile(edges[:-1], len(rows)),
                "bin_right": np.tile(edges[1:], len(rows)),
                "count": counts.ravel(),
                "density": (counts / total / np.diff(edges)).ravel()}))
    dead, dead_steps = None, None
    if relu and n:
        cols = np.unique(np.linspace(0, n - 1, min(max_cols, n)).round().astype(int))
        dead_steps = steps[cols]
        dead = [v.astype(bool) for v in read_columns(
            f, "probe_units", [f"dead_{l}" for l in range(n_hidden)], cols).values()]
    hist = (pd.concat(hist_frames, ignore_index=True) if hist_frames else
            pd.DataFrame(columns=_HIST_COLUMNS))
    return hist, dead_steps, dead

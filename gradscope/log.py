"""The run log: one HDF5 file per run, written in blocks, readable while live and after a crash.

Layout (documented in docs/log-format.md)::

    /                      attrs: format="gradscope-log", format_version, gradscope_version, config (JSON)
    /status                scalar bytes: running | completed | diverged | interrupted
    /status_message        scalar bytes: one line explaining the status
    /committed             int64 (n_tables,), attrs names: rows of each table that are complete
    /steps/<column>        1-D, one row per logged step
    /layers/<column>       1-D, one row per logged step and layer
    /epochs/<column>       1-D, one row per epoch
    /probes/<column>       1-D, one row per probe step and layer
    /probe_units/step      1-D, one row per probe step
    /probe_units/dead_<l>  (probe steps, width_l) uint8, dead flags of hidden layer l
    /probe_units/hist_<l>  (probe steps, bins) int64, activation histogram of hidden layer l
    /snapshots/step, /snapshots/W_<l>, /snapshots/b_<l>     parameters every --snapshot-every steps
    /params/initial/W_<l>, b_<l>;  /params/final/W_<l>, b_<l>

Every object exists before SWMR mode is switched on (HDF5 allows no new object after).
Rows are buffered in memory and appended a block at a time; after each block the
``/committed`` counter is written last and the file flushed, so a reader (or a file
left by SIGKILL) sees ``min(committed, length)`` consistent rows of every table.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

FORMAT = "gradscope-log"
FORMAT_VERSION = 1

F8, I8 = np.float64, np.int64

STEP_COLUMNS = {
    "step": I8, "epoch": I8, "loss": F8, "accuracy": F8, "lr": F8,
    "grad_norm_total": F8, "time": F8,
}
LAYER_COLUMNS = {
    "step": I8, "layer": I8, "grad_norm": F8, "bias_grad_norm": F8, "delta_norm": F8,
    "weight_norm": F8, "update_norm": F8, "update_ratio": F8,
    "act_mean": F8, "act_std": F8, "saturated_frac": F8,
}
EPOCH_COLUMNS = {
    "epoch": I8, "step": I8, "train_loss": F8, "train_accuracy": F8,
    "val_loss": F8, "val_accuracy": F8, "time": F8,
}
PROBE_COLUMNS = {
    "step": I8, "layer": I8, "dead_frac": F8, "probe_act_mean": F8, "probe_act_std": F8,
    "probe_saturated_frac": F8,
}
TABLES = {"steps": STEP_COLUMNS, "layers": LAYER_COLUMNS, "epochs": EPOCH_COLUMNS,
          "probes": PROBE_COLUMNS}
# the counter's slots: the four tables, then the per-unit probe arrays and snapshots
COUNTERS = [*TABLES, "probe_units", "snapshots"]
STATUSES = ("running", "completed", "diverged", "interrupted")


class LogError(ValueError):
    """A file that is not a readable gradscope log; the message is one line for the user."""


class _Rows:
    """Equal-length resizable datasets filled from an in-memory buffer of ``capacity`` rows.

    ``shapes`` gives each dataset's row shape (``()`` for a column of scalars).
    """

    def __init__(self, group: h5py.Group, dtypes: dict, shapes: dict | None = None,
                 capacity: int = 4096):
        shapes = shapes or {}
        self.capacity = capacity
        self.n_buf = 0
        self.n_written = 0
        self.ds, self.buf = {}, {}
        for name, dtype in dtypes.items():
            shape = tuple(shapes.get(name, ()))
            rows_per_chunk = max(1, min(capacity, (1 << 16) // max(1, int(np.prod(shape)))))
            self.ds[name] = group.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(rows_per_chunk, *shape),
            )
            self.buf[name] = np.empty((capacity, *shape), dtype=dtype)

    def append(self, n: int, values: dict) -> bool:
        """Append ``n`` rows (scalars broadcast); True when the buffer is full."""
        if self.n_buf + n > self.capacity:
            self.write()
        i = self.n_buf
        for name, buf in self.buf.items():
            buf[i : i + n] = values[name]
        self.n_buf += n
        return self.n_buf >= self.capacity

    def write(self) -> None:
        if not self.n_buf:
            return
        lo, hi = self.n_written, self.n_written + self.n_buf
        for name, ds in self.ds.items():
            ds.resize(hi, axis=0)
            ds[lo:hi] = self.buf[name][: self.n_buf]
        self.n_written, self.n_buf = hi, 0


class LogWriter:
    """Writes one run's log. Create it, append rows, then :meth:`close` with a status.

    Parameters
    ----------
    path : the file to create (an existing file is replaced: the caller decides that).
    config : the run's resolved configuration (JSON-serialisable).
    params : the initial parameters ``[W_0, b_0, ...]``; fixes every shape in the file.
    hist_edges : bin edges of the activation histograms of hidden layers.
    snapshots : whether to keep ``/snapshots`` (with ``--snapshot-every``).
    flush_interval : seconds between flushes at most (rows are never older than this
        in memory, give or take one training step).
    fsync_interval : seconds between ``os.fsync`` calls, against power loss.
    """

    def __init__(self, path, config: dict, params: list[np.ndarray], hist_edges: np.ndarray,
                 snapshots: bool = False, flush_interval: float = 1.0,
                 fsync_interval: float = 10.0):
        from . import __version__

        self.path = Path(path)
        self.flush_interval = flush_interval
        self.fsync_interval = fsync_interval
        n_layers = len(params) // 2
        widths = [params[2 * l].shape[1] for l in range(n_layers - 1)]
        f = self.f = h5py.File(self.path, "w", libver="latest")
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["gradscope_version"] = __version__
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.create_dataset("status", data=np.bytes_("running".ljust(16)), dtype="S16")
        f.create_dataset("status_message", data=np.bytes_("".ljust(512)), dtype="S512")
        counter = f.create_dataset("committed", data=np.zeros(len(COUNTERS), dtype=I8))
        counter.attrs["names"] = json.dumps(COUNTERS)
        self.tables = {name: _Rows(f.create_group(name), cols) for name, cols in TABLES.items()}
        units = {"step": I8}
        shapes = {}
        for l, w in enumerate(widths):
            units[f"dead_{l}"] = np.uint8
            shapes[f"dead_{l}"] = (w,)
            units[f"hist_{l}"] = I8
            shapes[f"hist_{l}"] = (len(hist_edges) - 1,)
        g = f.create_group("probe_units")
        g.attrs["hist_edges"] = np.asarray(hist_edges, dtype=F8)
        self.units = _Rows(g, units, shapes, capacity=16)
        self.snaps = None
        if snapshots:
            cols = {"step": I8}
            shapes = {}
            for l in range(n_layers):
                cols[f"W_{l}"], shapes[f"W_{l}"] = params[2 * l].dtype, params[2 * l].shape
                cols[f"b_{l}"], shapes[f"b_{l}"] = params[2 * l + 1].dtype, params[2 * l + 1].shape
            self.snaps = _Rows(f.create_group("snapshots"), cols, shapes, capacity=1)
        for which in ("initial", "final"):
            g = f.create_group(f"params/{which}")
            for l in range(n_layers):
                for kind, p in (("W", params[2 * l]), ("b", params[2 * l + 1])):
                    if which == "initial":
                        g.create_dataset(f"{kind}_{l}", data=p)
                    else:
                        g.create_dataset(f"{kind}_{l}", shape=p.shape, dtype=p.dtype,
                                         fillvalue=np.nan)
        f.swmr_mode = True  # no new objects from here on
        self._counter = counter
        self._last_flush = self._last_fsync = self._last_append = time.monotonic()
        self.closed = False

    # -- appending --------------------------------------------------------------------------
    def append(self, table: str, n: int = 1, **values) -> None:
        """Append ``n`` rows to a table (``steps``, ``layers``, ``epochs``, ``probes``)."""
        full = self.tables[table].append(n, values)
        self._maybe_flush(full)

    def append_units(self, step: int, dead: list[np.ndarray], hist: list[np.ndarray]) -> None:
        """Per-unit dead flags and activation histograms of every hidden layer at a probe step."""
        values = {"step": step}
        for l, (d, h) in enumerate(zip(dead, hist)):
            values[f"dead_{l}"], values[f"hist_{l}"] = d, h
        self._maybe_flush(self.units.append(1, values))

    def append_snapshot(self, step: int, params: list[np.ndarray]) -> None:
        values = {"step": step}
        for l in range(len(params) // 2):
            values[f"W_{l}"], values[f"b_{l}"] = params[2 * l], params[2 * l + 1]
        self.snaps.append(1, values)
        self.flush()

    def _maybe_flush(self, full: bool) -> None:
        now = time.monotonic()
        # flush at least every flush_interval; when appends are far apart (slow steps)
        # flush at once, so that no row waits in memory for a slow step to finish
        if (full or now - self._last_flush >= self.flush_interval
                or now - self._last_append >= 0.5 * self.flush_interval):
            self.flush(now)
        self._last_append = now

    def flush(self, now: float | None = None) -> None:
        """Write every buffered row, then the row counter, then flush the file."""
        parts = [*self.tables.values(), self.units, self.snaps]
        for t in parts:
            if t is not None:
                t.write()
        self.f.flush()
        self._counter[...] = [t.n_written if t is not None else 0 for t in parts]
        self.f.flush()
        now = time.monotonic() if now is None else now
        self._last_flush = now
        if now - self._last_fsync >= self.fsync_interval:
            self._fsync()
            self._last_fsync = now

    def _fsync(self) -> None:
        try:
            os.fsync(self.f.id.get_vfd_handle())
        except (OSError, ValueError, TypeError):
            pass  # a driver without a file descriptor: flush() is all there is

    def set_status(self, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r}; accepted: {', '.join(STATUSES)}")
        self.f["status"][()] = np.bytes_(status.ljust(16))
        self.f["status_message"][()] = np.bytes_(message.encode()[:512].decode("utf-8", "ignore"))
        self.flush()

    def close(self, status: str, message: str = "", params: list[np.ndarray] | None = None):
        """Write the final parameters and the status, then close the file."""
        if self.closed:
            return
        if params is not None:
            g = self.f["params/final"]
            for l in range(len(params) // 2):
                g[f"W_{l}"][...] = params[2 * l]
                g[f"b_{l}"][...] = params[2 * l + 1]
        self.set_status(status, message)
        self._fsync()
        self.f.close()
        self.closed = True


# -- reading ----------------------------------------------------------------------------------
@contextmanager
def open_log(path):
    """Open a gradscope log for reading (also while it is written, or after a crash).

    Raises :class:`LogError` with a one-line message for a missing file, a file that is
    not HDF5, or an HDF5 file that is not a gradscope log.
    """
    p = Path(path)
    if not p.exists():
        raise LogError(f"{str(path)!r} does not exist")
    if p.is_dir():
        raise LogError(f"{str(path)!r} is a directory, not a log file")
    try:
        is_h5 = h5py.is_hdf5(p)
    except OSError as e:
        raise LogError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    if not is_h5:
        raise LogError(f"{str(path)!r} is not an HDF5 file (a gradscope log is one)")
    try:
        # SWMR read works for a live run, a finished one, and one killed while writing
        f = h5py.File(p, "r", swmr=True, locking=False)
    except OSError:
        try:
            f = h5py.File(p, "r", locking=False)
        except OSError as e:
            raise LogError(f"cannot open {str(path)!r}: {str(e).splitlines()[0]}") from None
    try:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise LogError(f"{str(path)!r} is an HDF5 file but not a gradscope log")
        if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise LogError(
                f"{str(path)!r} has log format version {int(f.attrs['format_version'])}; "
                f"this gradscope reads up to {FORMAT_VERSION}"
            )
        yield f
    except (KeyError, OSError) as e:
        raise LogError(f"{str(path)!r} is damaged or incomplete: {str(e).splitlines()[0]}") from None
    finally:
        f.close()


def _committed(f) -> dict[str, int]:
    names = json.loads(f["committed"].attrs["names"])
    return dict(zip(names, (int(v) for v in f["committed"][()])))


def _read_table(f, name: str) -> pd.DataFrame:
    g = f[name]
    n = _committed(f)[name]
    cols = {c: g[c] for c in TABLES[name]}
    n = min([n, *(ds.shape[0] for ds in cols.values())])
    return pd.DataFrame({c: ds[:n] for c, ds in cols.items()})


def read_config(path) -> dict:
    """The run's resolved configuration (every option, defaults filled in)."""
    with open_log(path) as f:
        return json.loads(f.attrs["config"])


def read_status(path) -> dict:
    """How the run ended (or ``running``).

    Returns ``{"status", "message", "last_step", "rows"}``: ``last_step`` is the last logged
    step (None before any), ``rows`` the committed row count of every table.
    """
    with open_log(path) as f:
        c = _committed(f)
        status = f["status"][()].decode().strip()
        steps = _read_table(f, "steps")
        return {
            "status": status,
            "message": f["status_message"][()].decode("utf-8", "ignore").strip(),
            "last_step": int(steps["step"].iloc[-1]) if len(steps) else None,
            "rows": c,
        }


def read_steps(path) -> pd.DataFrame:
    """One row per logged step: step, epoch, loss, accuracy, lr, grad_norm_total, time."""
    with open_log(path) as f:
        return _read_table(f, "steps")


def read_epochs(path) -> pd.DataFrame:
    """One row per epoch: epoch, step, train and validation loss and accuracy, time."""
    with open_log(path) as f:
        return _read_table(f, "epochs")


def read_layers(path) -> pd.DataFrame:
    """One row per logged step and layer, metrics as columns.

    The probe-set metrics (``dead_frac``, ``probe_act_mean``, ``probe_act_std``,
    ``probe_saturated_frac``) are filled at probe steps and NaN elsewhere. ``epoch``
    comes from the step table.
    """
    with open_log(path) as f:
        layers = _read_table(f, "layers")
        probes = _read_table(f, "probes")
        steps = _read_table(f, "steps")[["step", "epoch"]]
    df = layers.merge(probes, on=["step", "layer"], how="left")
    df = df.merge(steps, on="step", how="left")
    return df


def read_dead_units(path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-unit dead flags at each probe step.

    Returns ``steps`` (probe steps,) and, for each hidden layer, a bool array
    ``(probe steps, width)``: True where the unit's pre-activation was <= 0 on every
    probe example (meaningful for the ReLU family).
    """
    with open_log(path) as f:
        g = f["probe_units"]
        n = min(_committed(f)["probe_units"], g["step"].shape[0])
        steps = g["step"][:n]
        dead = []
        l = 0
        while f"dead_{l}" in g:
            dead.append(g[f"dead_{l}"][:n].astype(bool))
            l += 1
    return steps, dead


def read_histograms(path) -> pd.DataFrame:
    """Activation histograms of hidden layers on the probe set, long form.

    Columns: step, layer, bin_left, bin_right, count, density (count / examples / width).
    Activations outside the range are counted in the first or last bin.
    """
    with open_log(path) as f:
        g = f["probe_units"]
        edges = g.attrs["hist_edges"]
        n = min(_committed(f)["probe_units"], g["step"].shape[0])
        steps = g["step"][:n]
        frames = []
        l = 0
        while f"hist_{l}" in g:
            counts = g[f"hist_{l}"][:n]
            total = counts.sum(axis=1, keepdims=True).clip(min=1)
            nb = counts.shape[1]
            frames.append(pd.DataFrame({
                "step": np.repeat(steps, nb), "layer": l,
                "bin_left": np.tile(edges[:-1], n), "bin_right": np.tile(edges[1:], n),
                "count": counts.ravel(), "density": (counts / total / np.diff(edges)).ravel(),
            }))
            l += 1
    cols = ["step", "layer", "bin_left", "bin_right", "count", "density"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def read_weights(path, step: int | str = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parameters as ``[(W_0, b_0), ...]``.

    ``step=0`` (or ``"initial"``): at initialisation; ``"final"``: after the last update
    (NaN if the run has not finished); any other step: the snapshot taken before update
    ``step`` (``--snapshot-every``), ``LogError`` if there is none.
    """
    with open_log(path) as f:
        if step in (0, "initial", "final"):
            g = f["params/initial" if step != "final" else "params/final"]
            n = len([k for k in g if k.startswith("W_")])
            return [(g[f"W_{l}"][()], g[f"b_{l}"][()]) for l in range(n)]
        if "snapshots" not in f:
            raise LogError(f"{str(path)!r} has no snapshots (train with --snapshot-every)")
        g = f["snapshots"]
        n = min(_committed(f)["snapshots"], g["step"].shape[0])
        steps = g["step"][:n]
        hits = np.flatnonzero(steps == int(step))
        if not len(hits):
            raise LogError(
                f"no snapshot at step {step} in {str(path)!r}; snapshots at: "
                f"{', '.join(map(str, steps[:20]))}{' ...' if n > 20 else ''}"
            )
        i = int(hits[0])
        nl = len([k for k in g if k.startswith("W_")])
        return [(g[f"W_{l}"][i], g[f"b_{l}"][i]) for l in range(nl)]


def finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")

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
    with --norm, beside W/b in params/* and snapshots: gamma_<l>, beta_<l> (hidden layer l),
    and with --norm batch running_mean_<l>, running_var_<l>

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
    "grad_norm_total": F8, "time": F8, "clipped": I8,
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
#: columns added after format version 1 first shipped: the value a row gets when a writer
#: does not give one, and that the readers fill in for a log written without the column
OPTIONAL_COLUMNS = {"steps": {"clipped": 0}}
#: the names of the normalisation arrays in /params/* and /snapshots, in their list order
NORM_PARAM_NAMES = ("gamma", "beta")
NORM_STATE_NAMES = ("running_mean", "running_var")
STATUSES = ("running", "completed", "diverged", "interrupted")


class LogError(ValueError):
    """A file that is not a readable gradscope log; the message is one line for the user."""


class _Rows:
    """Equal-length resizable datasets filled from an in-memory buffer of ``capacity`` rows.

    ``shapes`` gives each dataset's row shape (``()`` for a column of scalars).
    """

    def __init__(self, group: h5py.Group, dtypes: dict, shapes: dict | None = None,
                 capacity: int = 4096, defaults: dict | None = None):
        shapes = shapes or {}
        self.defaults = defaults or {}
        self.capacity = capacity
        self.n_buf = 0      # rows in the buffer
        self.n_mark = 0     # of which the first n_mark belong to finished steps
        self.n_written = 0  # rows in the file
        self.ds, self.buf = {}, {}
        for name, dtype in dtypes.items():
            shape = tuple(shapes.get(name, ()))
            # small chunks keep short runs small on disk (a chunk is allocated whole)
            rows_per_chunk = max(1, min(capacity, 1024, (1 << 16) // max(1, int(np.prod(shape)))))
            self.ds[name] = group.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(rows_per_chunk, *shape),
            )
            self.buf[name] = np.empty((capacity, *shape), dtype=dtype)

    def append(self, n: int, values: dict) -> None:
        """Buffer ``n`` rows (scalars broadcast); they are written once :meth:`mark` covers them."""
        if self.n_buf + n > self.capacity:
            self.write()
            if self.n_buf + n > self.capacity:  # one step's rows exceed the buffer: grow it
                self.capacity = max(2 * self.capacity, self.n_buf + n)
                for name, buf in self.buf.items():
                    grown = np.empty((self.capacity, *buf.shape[1:]), dtype=buf.dtype)
                    grown[: self.n_buf] = buf[: self.n_buf]
                    self.buf[name] = grown
        i = self.n_buf
        for name, buf in self.buf.items():
            buf[i : i + n] = values[name] if name in values else self.defaults[name]
        self.n_buf += n

    def mark(self) -> bool:
        """Every buffered row belongs to a finished step; True when the buffer is full."""
        self.n_mark = self.n_buf
        return self.n_buf >= self.capacity

    def write(self) -> None:
        """Write the marked rows; rows of an unfinished step stay in the buffer."""
        k = self.n_mark
        if not k:
            return
        lo, hi = self.n_written, self.n_written + k
        for name, ds in self.ds.items():
            ds.resize(hi, axis=0)
            ds[lo:hi] = self.buf[name][:k]
            if self.n_buf > k:
                self.buf[name][: self.n_buf - k] = self.buf[name][k : self.n_buf].copy()
        self.n_written, self.n_buf, self.n_mark = hi, self.n_buf - k, 0


class LogWriter:
    """Writes one run's log. Create it, append rows, then :meth:`close` with a status.

    Parameters
    ----------
    path : the file to create (an existing file is replaced: the caller decides that).
    config : the run's resolved configuration (JSON-serialisable).
    params : the initial parameters ``[W_0, b_0, ...]``; fixes every shape in the file.
    hist_edges : bin edges of the activation histograms of hidden layers.
    snapshots : whether to keep ``/snapshots`` (with ``--snapshot-every``).
    norm_params : with ``--norm``, the initial ``[gamma_0, beta_0, ...]`` (one pair per hidden
        layer), kept beside the weights in ``/params/*`` and ``/snapshots``.
    norm_state : with ``--norm batch``, the initial ``[running_mean_0, running_var_0, ...]``.
    flush_interval : seconds between flushes at most (rows are never older than this
        in memory, give or take one training step).
    fsync_interval : seconds between ``os.fsync`` calls, against power loss.
    """

    def __init__(self, path, config: dict, params: list[np.ndarray], hist_edges: np.ndarray,
                 snapshots: bool = False, flush_interval: float = 1.0,
                 fsync_interval: float = 10.0, norm_params: list[np.ndarray] | None = None,
                 norm_state: list[np.ndarray] | None = None):
        from . import __version__

        self.path = Path(path)
        self.flush_interval = flush_interval
        self.fsync_interval = fsync_interval
        n_layers = len(params) // 2
        widths = [params[2 * l].shape[1] for l in range(n_layers - 1)]
        # no file locking: readers open with locking=False too (the flags must match), so
        # the writing process itself can read its live log
        f = self.f = h5py.File(self.path, "w", libver="latest", locking=False)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["gradscope_version"] = __version__
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.create_dataset("status", data=np.bytes_("running".ljust(16)), dtype="S16")
        f.create_dataset("status_message", data=np.bytes_("".ljust(512)), dtype="S512")
        counter = f.create_dataset("committed", data=np.zeros(len(COUNTERS), dtype=I8))
        counter.attrs["names"] = json.dumps(COUNTERS)
        self.tables = {name: _Rows(f.create_group(name), cols,
                                   defaults=OPTIONAL_COLUMNS.get(name))
                       for name, cols in TABLES.items()}
        extra = _norm_arrays(norm_params, norm_state)  # {"gamma_0": array, ...}
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
            for k, p in extra.items():
                cols[k], shapes[k] = p.dtype, p.shape
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
            for k, p in extra.items():
                if which == "initial":
                    g.create_dataset(k, data=p)
                else:
                    g.create_dataset(k, shape=p.shape, dtype=p.dtype, fillvalue=np.nan)
        f.swmr_mode = True  # no new objects from here on
        self._counter = counter
        self._last_flush = self._last_fsync = self._last_append = time.monotonic()
        self.closed = False

    # -- appending --------------------------------------------------------------------------
    # Rows are buffered as a step produces them; end_step() marks them complete. Only
    # complete steps are ever written, so a kill or an interrupt in mid-step leaves the
    # tables agreeing (every committed step has its layer rows, and no more).
    def append(self, table: str, n: int = 1, **values) -> None:
        """Buffer ``n`` rows of a table (``steps``, ``layers``, ``epochs``, ``probes``)."""
        self.tables[table].append(n, values)

    def append_units(self, step: int, dead: list[np.ndarray], hist: list[np.ndarray]) -> None:
        """Per-unit dead flags and activation histograms of every hidden layer at a probe step."""
        values = {"step": step}
        for l, (d, h) in enumerate(zip(dead, hist)):
            values[f"dead_{l}"], values[f"hist_{l}"] = d, h
        self.units.append(1, values)

    def append_snapshot(self, step: int, params: list[np.ndarray],
                        norm_params: list[np.ndarray] | None = None,
                        norm_state: list[np.ndarray] | None = None) -> None:
        values = {"step": step}
        for l in range(len(params) // 2):
            values[f"W_{l}"], values[f"b_{l}"] = params[2 * l], params[2 * l + 1]
        values.update(_norm_arrays(norm_params, norm_state))
        self.snaps.append(1, values)

    def end_step(self) -> None:
        """The rows appended so far are complete: write them when a flush is due."""
        full = False
        for t in self._parts():
            full |= t.mark()
        now = time.monotonic()
        # flush at least every flush_interval; when steps are far apart (slow steps)
        # flush at once, so that no finished step waits in memory for the next one
        if (full or now - self._last_flush >= self.flush_interval
                or now - self._last_append >= 0.5 * self.flush_interval):
            self.flush(now)
        self._last_append = now

    def _parts(self) -> list[_Rows]:
        return [t for t in (*self.tables.values(), self.units, self.snaps) if t is not None]

    def flush(self, now: float | None = None) -> None:
        """Write the rows of finished steps, then the row counter, then flush the file."""
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

    def close(self, status: str, message: str = "", params: list[np.ndarray] | None = None,
              norm_params: list[np.ndarray] | None = None,
              norm_state: list[np.ndarray] | None = None):
        """Write the final parameters (and normalisation arrays) and the status, then close."""
        if self.closed:
            return
        if params is not None:
            g = self.f["params/final"]
            for l in range(len(params) // 2):
                g[f"W_{l}"][...] = params[2 * l]
                g[f"b_{l}"][...] = params[2 * l + 1]
            for k, p in _norm_arrays(norm_params, norm_state).items():
                g[k][...] = p
        self.set_status(status, message)
        self._fsync()
        self.f.close()
        self.closed = True


def _norm_arrays(norm_params, norm_state) -> dict[str, np.ndarray]:
    """``{"gamma_0": ..., "beta_0": ..., "running_mean_0": ..., ...}`` from the flat lists."""
    out = {}
    for names, arrays in ((NORM_PARAM_NAMES, norm_params), (NORM_STATE_NAMES, norm_state)):
        for i, p in enumerate(arrays or []):
            out[f"{names[i % 2]}_{i // 2}"] = np.asarray(p)
    return out


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
    _check_not_truncated(p)
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


def _check_not_truncated(p: Path) -> None:
    """Refuse a file shorter than the end-of-file address its superblock records.

    HDF5 retries failed reads of a truncated file for minutes before giving up; this
    check answers at once. It reads superblock versions 2 and 3 (what gradscope writes,
    with libver="latest"); for others it does nothing. A killed log is not truncated:
    its size is at least that address.
    """
    with open(p, "rb") as fh:
        head = fh.read(48)
        size = os.fstat(fh.fileno()).st_size
    if head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return
    eof = int.from_bytes(head[28:36], "little")
    if size < eof:
        raise LogError(
            f"{str(p)!r} is truncated ({size} of {eof} bytes); it cannot be read"
        )


def _committed(f) -> dict[str, int]:
    names = json.loads(f["committed"].attrs["names"])
    return dict(zip(names, (int(v) for v in f["committed"][()])))


def _read_table(f, name: str) -> pd.DataFrame:
    g = f[name]
    n = _committed(f)[name]
    optional = OPTIONAL_COLUMNS.get(name, {})
    cols = {c: g[c] for c in TABLES[name] if c in g or c not in optional}
    n = min([n, *(ds.shape[0] for ds in cols.values())])
    return pd.DataFrame({c: cols[c][:n] if c in cols else np.full(n, optional[c], dtype=dt)
                         for c, dt in TABLES[name].items()})


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
    """One row per logged step: step, epoch, loss, accuracy, lr, grad_norm_total, time,
    clipped (1 where --clip-norm or --clip-value changed the gradient, else 0; 0 in logs
    written before the column existed)."""
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


def read_norm(path, step: int | str = "final") -> dict[str, list[np.ndarray]]:
    """Normalisation arrays of a ``--norm`` run, one per hidden layer.

    Returns ``{"gamma": [...], "beta": [...]}`` plus, for batch norm, ``"running_mean"``
    and ``"running_var"``; ``{}`` for a run without normalisation. ``step`` as in
    :func:`read_weights`: ``0``/``"initial"``, ``"final"`` or a snapshot step.
    """
    with open_log(path) as f:
        if step in (0, "initial", "final"):
            g = f["params/initial" if step != "final" else "params/final"]
            i = None
        else:
            if "snapshots" not in f:
                raise LogError(f"{str(path)!r} has no snapshots (train with --snapshot-every)")
            g = f["snapshots"]
            n = min(_committed(f)["snapshots"], g["step"].shape[0])
            hits = np.flatnonzero(g["step"][:n] == int(step))
            if not len(hits):
                raise LogError(f"no snapshot at step {step} in {str(path)!r}")
            i = int(hits[0])
        out = {}
        for name in (*NORM_PARAM_NAMES, *NORM_STATE_NAMES):
            arrays, l = [], 0
            while f"{name}_{l}" in g:
                ds = g[f"{name}_{l}"]
                arrays.append(ds[()] if i is None else ds[i])
                l += 1
            if arrays:
                out[name] = arrays
    return out


def finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")

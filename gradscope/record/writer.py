"""Writes a run's log in blocks (see :mod:`gradscope.record.schema` for the layout).

Every object exists before SWMR mode is switched on (HDF5 allows no new object after).
Rows are buffered in memory and appended a block at a time; after each block the
``/committed`` counter is written last and the file flushed, so a reader (or a file
left by SIGKILL) sees ``min(committed, length)`` consistent rows of every table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from .schema import (
    COUNTERS,
    F8,
    FORMAT,
    FORMAT_VERSION,
    I8,
    NORM_PARAM_NAMES,
    NORM_STATE_NAMES,
    OPTIONAL_COLUMNS,
    STATUSES,
    TABLES,
)


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
    widths : the unit count of each hidden layer (the per-unit probe arrays' widths); by
        default ``W_l.shape[1]``, the engine's ``(fan_in, fan_out)`` matrices. A writer whose
        weights have other shapes (convolutions, from the PyTorch adapter) passes them.
    flush_interval : seconds between flushes at most (rows are never older than this
        in memory, give or take one training step).
    fsync_interval : seconds between ``os.fsync`` calls, against power loss.
    """

    def __init__(self, path, config: dict, params: list[np.ndarray], hist_edges: np.ndarray,
                 snapshots: bool = False, flush_interval: float = 1.0,
                 fsync_interval: float = 10.0, norm_params: list[np.ndarray] | None = None,
                 norm_state: list[np.ndarray] | None = None,
                 widths: list[int] | None = None):
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.fsync_interval = fsync_interval
        n_layers = len(params) // 2
        if widths is None:
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

"""Writes a run's log (see :mod:`gradscope.record.schema` for the layout, format version 2).

Every object exists before SWMR mode is switched on (HDF5 allows no new object after).
Rows are buffered in memory; a flush seals every whole block (compressed and checksummed
by :mod:`gradscope.record.blocks`, appended, never rewritten), writes the rows after the
last whole block plain into the tail slot the counter does not name, and writes the
``/committed`` counter last: a reader, or a file left by SIGKILL, sees every committed
row and nothing else. Nothing already committed is ever written over.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5p, h5s, h5t

from .._version import __version__
from . import blocks
from .schema import (
    BLOCK_ROWS,
    COUNTER_FIELDS,
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
    LogBusyError,
    LogError,
)


class _Part:
    """A part of the log (a table, the per-unit probe arrays, the snapshots): rows buffered
    in memory, sealed into compressed, checksummed blocks of ``block_rows`` rows, the rows
    after the last whole block written plain into one of two tail slots.

    ``shapes`` gives each column's row shape (``()`` for a column of scalars). Only rows
    that :meth:`mark` covers (rows of finished steps) are ever written.
    """

    def __init__(self, group: h5py.Group, dtypes: dict, shapes: dict | None = None,
                 capacity: int = 4096, block_rows: int = 4096, period: int = 1,
                 defaults: dict | None = None):
        shapes = shapes or {}
        self.defaults = defaults or {}
        self.names = list(dtypes)
        self.dtypes = {n: np.dtype(d) for n, d in dtypes.items()}
        self.shapes = {n: tuple(int(k) for k in shapes.get(n, ())) for n in dtypes}
        self.B = int(block_rows)
        self.period = max(1, int(period))
        self.capacity = max(1, capacity)  # rows after which a flush is due
        self.n_buf = 0      # rows in the buffer: the rows after the last sealed block
        self.n_mark = 0     # of which the first n_mark belong to finished steps
        self.n_sealed = self.n_blocks = self.data_bytes = self.slot = self.n_tail = 0
        # the scalar columns of one dtype share a 2-D buffer (a view of it per column), so
        # that a step's rows of many columns are buffered in one assignment (append_block)
        self._groups: dict[tuple, list[str]] = {}
        for n in self.names:
            if not self.shapes[n]:
                self._groups.setdefault(("scalar", self.dtypes[n].str), []).append(n)
            else:
                self._groups[("array", n)] = [n]
        self._block_of = {tuple(names): key for key, names in self._groups.items()
                          if key[0] == "scalar"}
        self._others = {key: [n for n in self.names if n not in names]
                        for key, names in self._groups.items()}
        self._alloc(max(self.capacity, self.B))
        group.attrs["columns"] = json.dumps(
            [[n, self.dtypes[n].str, list(self.shapes[n])] for n in self.names])
        group.attrs["block_rows"] = self.B
        group.attrs["period"] = self.period
        # through the low-level API (see _new_dataset), closed once made and opened again
        # when first written (at a flush): a process creating many logs (a stack) keeps few
        # HDF5 objects open while it creates them (with thousands open, each new dataset
        # took twice as long)
        self.gid = gid = group.id
        self._open: dict = {}
        _new_dataset(gid, "data", (0,), np.uint8, maxshape=(None,), chunks=(1 << 16,))
        width = 3 + 3 * len(self.names)
        _new_dataset(gid, "index", (0, width), I8, maxshape=(None, width), chunks=(64, width))
        self.tail_gid = None
        if self.B > 1:
            self.tail_gid = t = group.create_group("tail").id
            for n in self.names:
                shape = self.shapes[n]
                # small chunks: a short run allocates only what it fills
                rows = max(1, min(self.B, 512, (1 << 16) // max(1, int(np.prod(shape)))))
                _new_dataset(t, n, (2 * self.B, *shape), self.dtypes[n], chunks=(rows, *shape))
            _new_dataset(gid, "tail_crc", (2, len(self.names)), I8,
                         data=np.zeros((2, len(self.names)), dtype=I8))

    def _ds(self, name: str, tail: bool = False):
        """The low-level id of dataset ``name`` of this part (``tail/name`` with ``tail``),
        opened at its first write and kept open (the file's close closes it)."""
        key = (tail, name)
        ds = self._open.get(key)
        if ds is None:
            ds = self._open[key] = h5d.open(self.tail_gid if tail else self.gid, name.encode())
        return ds

    @property
    def n_written(self) -> int:
        return self.n_sealed + self.n_tail

    def counter(self) -> list[int]:
        return [self.n_written, self.n_sealed, self.n_blocks, self.data_bytes, self.slot, 0]

    def _alloc(self, cap: int) -> None:
        """(Re)allocate the buffers for ``cap`` rows, keeping the buffered ones."""
        old = getattr(self, "_arrays", None)
        self._arrays, self.buf = {}, {}
        for key, names in self._groups.items():
            if key[0] == "scalar":
                a = np.empty((cap, len(names)), dtype=self.dtypes[names[0]])
            else:
                a = np.empty((cap, *self.shapes[names[0]]), dtype=self.dtypes[names[0]])
            if old is not None:
                a[: self.n_buf] = old[key][: self.n_buf]
            self._arrays[key] = a
            for j, name in enumerate(names):
                self.buf[name] = a[:, j] if key[0] == "scalar" else a

    def _room(self, n: int) -> None:
        if self.n_buf + n > self.buf[self.names[0]].shape[0]:
            # never written from here (only a flush writes, so that the counter follows
            # every write): the buffer grows until the step ends
            self._alloc(max(2 * self.buf[self.names[0]].shape[0], self.n_buf + n))

    def append(self, n: int, values: dict) -> None:
        """Buffer ``n`` rows (scalars broadcast); they are written once :meth:`mark` covers them."""
        self._room(n)
        i = self.n_buf
        for name, buf in self.buf.items():
            buf[i : i + n] = values[name] if name in values else self.defaults[name]
        self.n_buf += n

    def append_block(self, n: int, names: tuple, block: np.ndarray, values: dict) -> None:
        """:meth:`append` with the columns ``names`` given as the columns of ``block``
        (``(n, len(names))``): one assignment when they are all the scalar columns of
        one dtype, in table order."""
        key = self._block_of.get(tuple(names))
        if key is None:
            return self.append(n, {**values, **dict(zip(names, np.asarray(block).T))})
        self._room(n)
        i = self.n_buf
        self._arrays[key][i : i + n] = block
        for name in self._others[key]:
            self.buf[name][i : i + n] = values[name] if name in values else self.defaults[name]
        self.n_buf += n

    def mark(self) -> bool:
        """Every buffered row belongs to a finished step; True when a flush is due."""
        self.n_mark = self.n_buf
        return self.n_buf >= self.capacity

    def write(self) -> None:
        """Seal the whole blocks among the marked rows, then write the rest into the tail
        slot that the counter does not name (the caller writes the counter next)."""
        k = self.n_mark
        nb = k // self.B
        for i in range(nb):
            self._seal(slice(i * self.B, (i + 1) * self.B))
        if nb:
            done = nb * self.B
            for a in self._arrays.values():
                a[: self.n_buf - done] = a[done : self.n_buf].copy()
            self.n_buf -= done
            k -= done
            self.n_mark = k
            self.n_tail = 0
        if k and k != self.n_tail:
            s = 1 - self.slot
            lo = s * self.B
            crcs = []
            for name in self.names:
                rows = np.ascontiguousarray(self.buf[name][:k])
                _write(self._ds(name, tail=True), rows, lo)
                crcs.append(blocks.crc(rows))
            _write(self._ds("tail_crc"), np.asarray([crcs], dtype=I8), s)
            self.slot, self.n_tail = s, k

    def _seal(self, rows: slice) -> None:
        cols = {n: self.buf[n][rows] for n in self.names}
        parts, entry, off = [], [self.n_sealed, self.B], self.data_bytes
        for n in self.names:
            b = blocks.encode(n, cols[n], self.period, cols)
            parts.append(b)
            entry += [off, len(b), blocks.crc(b)]
            off += len(b)
        entry.append(blocks.crc(np.asarray(entry, dtype=I8)))
        blob = np.frombuffer(b"".join(parts), dtype=np.uint8)
        data, index = self._ds("data"), self._ds("index")
        data.set_extent((off,))
        _write(data, blob, self.data_bytes)
        index.set_extent((self.n_blocks + 1, len(entry)))
        _write(index, np.asarray([entry], dtype=I8), self.n_blocks)
        self.n_sealed += self.B
        self.n_blocks += 1
        self.data_bytes = off


class LogWriter:
    """Writes one run's log. Create it, append rows, then :meth:`close` with a status.

    Parameters
    ----------
    path : the file to create. An existing file is replaced (refusing is the caller's
        decision), but only once the run has committed its first step: a run that fails
        or stops before that leaves the existing file as it was.
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

    One writer per log: the writer holds an exclusive lock (``.NAME.lock`` beside the log)
    from before anything is created or replaced until it is closed; a second writer gets
    :class:`LogBusyError` and changes nothing.
    """

    def __init__(self, path, config: dict, params: list[np.ndarray], hist_edges: np.ndarray,
                 snapshots: bool = False, flush_interval: float = 1.0,
                 fsync_interval: float = 10.0, norm_params: list[np.ndarray] | None = None,
                 norm_state: list[np.ndarray] | None = None,
                 widths: list[int] | None = None):
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.fsync_interval = fsync_interval
        self.closed = False
        self.broken: BaseException | None = None  # the write error that stopped the log
        self.f = None
        self._lock = LogLock(self.path)
        self._lock.acquire()
        # the file is created under a temporary name and moved into place once complete (a
        # kill in mid-creation leaves no half-made log); a file already there is replaced
        # only once a step is committed (see place())
        self.replacing = self.path.exists() or self.path.is_symlink()
        self.file = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        self.placed = False
        try:
            self._create(config, params, hist_edges, snapshots, norm_params, norm_state, widths)
            if not self.replacing:
                self.place()
        except BaseException:
            if self.f is not None:
                with contextlib.suppress(Exception):
                    self.f.close()
            with contextlib.suppress(OSError):
                self.file.unlink()
            self._lock.release()
            self.closed = True
            raise

    def _create(self, config, params, hist_edges, snapshots, norm_params, norm_state, widths):
        n_layers = len(params) // 2
        if widths is None:
            widths = [params[2 * l].shape[1] for l in range(n_layers - 1)]
        # no HDF5 file locking: readers open with locking=False too (the flags must match),
        # so the writing process itself can read its live log; LogLock keeps writers apart
        f = self.f = h5py.File(self.file, "w", libver="latest", locking=False)
        config_json = json.dumps(config, sort_keys=True)
        edges = np.asarray(hist_edges, dtype=F8)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["gradscope_version"] = __version__
        f.attrs["config"] = config_json
        f.attrs["attrs_crc"] = attrs_crc(config_json, edges)
        fid = f.id
        self._status = _new_dataset(fid, "status", (), "S16",
                                    data=np.bytes_("running".ljust(16)), keep=True)
        self._message = _new_dataset(fid, "status_message", (), "S512",
                                     data=np.bytes_("".ljust(512)), keep=True)
        counter = _new_dataset(fid, "committed", (6 * len(COUNTERS) + 2,), I8,
                               data=np.zeros(6 * len(COUNTERS) + 2, dtype=I8), keep=True)
        attrs = h5py.AttributeManager(h5py.Dataset(counter))
        attrs["names"] = json.dumps(COUNTERS)
        attrs["fields"] = json.dumps(COUNTER_FIELDS)
        self.tables = {name: _Part(f.create_group(name), cols,
                                   block_rows=BLOCK_ROWS[name],
                                   period=n_layers if name in ("layers", "probes") else 1,
                                   defaults=OPTIONAL_COLUMNS.get(name))
                       for name, cols in TABLES.items()}
        extra = _norm_arrays(norm_params, norm_state)  # {"gamma_0": array, ...}
        units = {"step": I8}
        shapes = {}
        for l, w in enumerate(widths):
            units[f"dead_{l}"] = np.uint8
            shapes[f"dead_{l}"] = (w,)
            units[f"hist_{l}"] = I8
            shapes[f"hist_{l}"] = (len(edges) - 1,)
        g = f.create_group("probe_units")
        g.attrs["hist_edges"] = edges
        self.units = _Part(g, units, shapes, capacity=16, block_rows=BLOCK_ROWS["probe_units"])
        self.snaps = None
        if snapshots:
            cols = {"step": I8}
            shapes = {}
            for l in range(n_layers):
                cols[f"W_{l}"], shapes[f"W_{l}"] = params[2 * l].dtype, params[2 * l].shape
                cols[f"b_{l}"], shapes[f"b_{l}"] = params[2 * l + 1].dtype, params[2 * l + 1].shape
            for k, p in extra.items():
                cols[k], shapes[k] = p.dtype, p.shape
            self.snaps = _Part(f.create_group("snapshots"), cols, shapes, capacity=1,
                               block_rows=BLOCK_ROWS["snapshots"])
        arrays = {}
        for l in range(n_layers):
            arrays[f"W_{l}"], arrays[f"b_{l}"] = params[2 * l], params[2 * l + 1]
        arrays.update(extra)
        self._array_names = list(arrays)
        self._final = {}  # name -> dtype
        for which in ("initial", "final"):
            g = f.create_group(f"params/{which}").id
            for k, p in arrays.items():
                p = np.asarray(p)
                if which == "initial":
                    _new_dataset(g, k, p.shape, p.dtype, data=p)
                else:
                    _new_dataset(g, k, p.shape, p.dtype, fillvalue=np.nan)
                    self._final[k] = p.dtype
            self._final_gid = g
        crcs = np.full((2, len(arrays)), -1, dtype=I8)  # -1: not written (final: all NaN)
        crcs[0] = [blocks.crc(np.ascontiguousarray(p)) for p in arrays.values()]
        self._params_crc_row = crcs[1].copy()
        pc = _new_dataset(fid, "params_crc", crcs.shape, I8, data=crcs, keep=True)
        self._params_crc = h5py.Dataset(pc)
        self._params_crc.attrs["names"] = json.dumps(self._array_names)
        self._counter = counter
        self._status_crc = status_crc(_read_scalar(self._status),
                                      _read_scalar(self._message))
        self._committed = [0] * (6 * len(COUNTERS))
        self._write_counter()
        f.swmr_mode = True  # no new objects from here on
        self._last_flush = self._last_fsync = self._last_append = time.monotonic()

    # -- appending --------------------------------------------------------------------------
    # Rows are buffered as a step produces them; end_step() marks them complete. Only
    # complete steps are ever written, so a kill or an interrupt in mid-step leaves the
    # tables agreeing (every committed step has its layer rows, and no more).
    def append(self, table: str, n: int = 1, **values) -> None:
        """Buffer ``n`` rows of a table (``steps``, ``layers``, ``epochs``, ``probes``)."""
        self.tables[table].append(n, values)

    def append_block(self, table: str, n: int, names: tuple, block: np.ndarray,
                     **values) -> None:
        """:meth:`append` with the columns ``names`` as the columns of ``block``, an
        ``(n, len(names))`` array (one assignment for a step's per-layer numbers)."""
        self.tables[table].append_block(n, names, block, values)

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

    def _parts(self) -> list[_Part]:
        return [t for t in (*self.tables.values(), self.units, self.snaps) if t is not None]

    def flush(self, now: float | None = None) -> None:
        """Write the rows of finished steps, then the row counter, then flush the file.

        A write that fails (a full disk: h5py raises RuntimeError or OSError) stops the
        log where its last counter left it: the error is raised, and every later write
        is refused, so the file keeps the rows committed before.
        """
        self._check_usable()
        try:
            for t in self._parts():
                t.write()
            self.f.flush()
            parts = [*self.tables.values(), self.units, self.snaps]
            committed = []
            for t in parts:
                committed += t.counter() if t is not None else [0] * 6
            self._committed = committed
            self._write_counter()
            self.f.flush()
        except BaseException as e:
            self.broken = e
            raise
        if not self.placed and self.tables["steps"].n_written > 0:
            self.place()
        now = time.monotonic() if now is None else now
        self._last_flush = now
        if now - self._last_fsync >= self.fsync_interval:
            self._fsync()
            self._last_fsync = now

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise LogError(f"the log {str(self.path)!r} stopped after a write error: "
                           f"{one_line(self.broken)}")

    def _write_counter(self) -> None:
        vals = np.asarray([*self._committed, self._status_crc, 0], dtype=I8)
        vals[-1] = blocks.crc(vals[:-1])
        _write(self._counter, vals)

    def place(self) -> None:
        """Move the new log over the file it replaces (once it has a committed step)."""
        if not self.placed:
            os.replace(self.file, self.path)
            self.file = self.path
            self.placed = True

    def _close_file(self) -> None:
        """Close the HDF5 file; when that fails (a full disk), close it into /dev/null.

        HDF5 keeps a file it could not flush open, and tries again at interpreter exit,
        where the failure crashed the process (a segfault). What is on disk is what the
        last counter committed; the writes HDF5 still wants to make are sent to
        /dev/null so that the file closes and stays as it is.
        """
        if self.broken is None:
            try:
                self.f.close()
                return
            except Exception:  # noqa: BLE001
                pass
        # after a failed write, closing normally fails too and leaves HDF5's objects in a
        # state that crashed the garbage collector later: redirect first, then close
        try:
            fd = self.f.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except Exception:  # noqa: BLE001 -- no file descriptor: nothing more to try
            pass
        with contextlib.suppress(Exception):
            self.f.close()

    def _fsync(self) -> None:
        try:
            os.fsync(self.f.id.get_vfd_handle())
        except (OSError, ValueError, TypeError, RuntimeError):
            pass  # a driver without a file descriptor: flush() is all there is

    def set_status(self, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r}; accepted: {', '.join(STATUSES)}")
        st = np.bytes_(status.ljust(16))
        msg = np.bytes_(message.encode()[:512].decode("utf-8", "ignore").encode())
        _write(self._status, np.asarray(st, dtype="S16"))
        _write(self._message, np.asarray(msg, dtype="S512"))
        # the checksum of the values as stored (read back)
        self._status_crc = status_crc(_read_scalar(self._status), _read_scalar(self._message))
        if self.broken is None:
            self.flush()
        else:  # the rows stay as last committed; the status says why (in place: no new space)
            self._write_counter()
            with contextlib.suppress(Exception):
                self.f.flush()

    def close(self, status: str, message: str = "", params: list[np.ndarray] | None = None,
              norm_params: list[np.ndarray] | None = None,
              norm_state: list[np.ndarray] | None = None):
        """Write the final parameters (and normalisation arrays) and the status, then close.

        After a write error (see :meth:`flush`) the final parameters are not written and the
        status is written when the file still takes it. The file is closed and the lock
        released whatever happens; an error is raised after that.
        """
        if self.closed:
            return
        err = None
        try:
            if params is not None and self.broken is None:
                arrays = {}
                for l in range(len(params) // 2):
                    arrays[f"W_{l}"], arrays[f"b_{l}"] = params[2 * l], params[2 * l + 1]
                arrays.update(_norm_arrays(norm_params, norm_state))
                crcs = self._params_crc_row
                for k, p in arrays.items():
                    p = np.ascontiguousarray(p, dtype=self._final[k])
                    ds = h5d.open(self._final_gid, k.encode())
                    _write(ds, p)
                    ds.close()
                    crcs[self._array_names.index(k)] = blocks.crc(p)
                _write(self._params_crc.id, crcs[None, :], 1)
            self.set_status(status, message)
            self._fsync()
        except BaseException as e:  # noqa: BLE001 -- closed below, raised after
            err = e
            if self.broken is None:
                self.broken = e
        finally:
            self._close_file()
            self.closed = True
            try:
                if not self.placed:
                    if self.tables["steps"].n_written > 0 and err is None:
                        self.place()
                    else:  # nothing committed: the file it would replace stays as it was
                        with contextlib.suppress(OSError):
                            self.file.unlink()
            finally:
                self._lock.release()
        if err is not None:
            raise err


def one_line(e: BaseException) -> str:
    """An exception as one line: its type when the message is empty."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    name = type(e).__name__
    return f"{name}: {msg}" if msg and name not in ("LogError", "ConfigError") else (msg or name)


def attrs_crc(config_json: str, hist_edges: np.ndarray) -> int:
    return blocks.crc(config_json.encode() + np.ascontiguousarray(hist_edges, dtype=F8).tobytes())


def status_crc(status: bytes, message: bytes) -> int:
    return blocks.crc(bytes(status) + b"\0" + bytes(message))


class LogLock:
    """The exclusive lock of one log's writer: ``flock`` on ``.NAME.lock`` beside the log.

    The lock goes with the open file, so the operating system releases it when the writer
    dies, however it dies. The lock file holds the writer's process id (for the message
    a second writer gets) and is removed when the lock is released. Where ``fcntl`` is
    missing (Windows), logs are not locked.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        for _ in range(100):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise LogError(f"cannot write {str(self.path)!r}: "
                               f"{e.strerror or e} ({str(self.lock_path)!r})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                raise LogBusyError(
                    f"{str(self.path)!r} is being written by another process"
                    f"{f' (pid {holder})' if holder else ''}; wait for it to end or choose "
                    f"another output file") from None
            # the file may have been removed (and its lock released) between our open and
            # our flock: then the lock is on a file nobody else will see, try again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                # files left by a writer killed while creating this log: ours to remove
                for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.new"):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise LogError(f"cannot lock {str(self.path)!r}")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_being_written(path) -> bool | None:
    """Whether a live writer holds the log's lock (None where locks are not available)."""
    try:
        import fcntl
    except ImportError:
        return None
    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _norm_arrays(norm_params, norm_state) -> dict[str, np.ndarray]:
    """``{"gamma_0": ..., "beta_0": ..., "running_mean_0": ..., ...}`` from the flat lists."""
    out = {}
    for names, arrays in ((NORM_PARAM_NAMES, norm_params), (NORM_STATE_NAMES, norm_state)):
        for i, p in enumerate(arrays or []):
            out[f"{names[i % 2]}_{i // 2}"] = np.asarray(p)
    return out


# -- low-level HDF5 ---------------------------------------------------------------------------
# A log has about a hundred datasets; h5py's create_dataset and slice assignment spend
# 100-200 us of Python on each call, several times HDF5's own work. These helpers make the
# same HDF5 calls with the properties h5py's defaults give (no creation times, attribute
# creation order not tracked, contiguous unless chunked), so the files are the same.
_TYPES: dict = {}
_DCPLS: dict = {}


def _type_id(dtype):
    dtype = np.dtype(dtype)
    tid = _TYPES.get(dtype)
    if tid is None:
        tid = _TYPES[dtype] = h5t.py_create(dtype, logical=1)
    return tid


def _dcpl(chunks, fill):
    key = (chunks, None if fill is None else (fill.dtype.str, fill.tobytes()))
    dcpl = _DCPLS.get(key)
    if dcpl is None:
        dcpl = h5p.create(h5p.DATASET_CREATE)
        if chunks is not None:
            dcpl.set_chunk(chunks)
        if fill is not None:
            dcpl.set_fill_value(fill)
        dcpl.set_obj_track_times(False)
        dcpl.set_attr_creation_order(0)
        _DCPLS[key] = dcpl
    return dcpl


def _new_dataset(parent, name: str, shape: tuple, dtype, *, maxshape=None, chunks=None,
                 data=None, fillvalue=None, keep: bool = False):
    """A new dataset ``name`` in the group or file ``parent`` (a low-level id), as
    ``h5py.Group.create_dataset`` makes it. Closed at once (explicitly, so that an error
    is raised here, not printed by the garbage collector), or with ``keep`` returned open
    as a low-level ``DatasetID``."""
    fill = None if fillvalue is None else np.array(fillvalue)
    if maxshape is not None:
        maxshape = tuple(h5s.UNLIMITED if m is None else m for m in maxshape)
    space = h5s.create_simple(tuple(shape), maxshape)
    dsid = h5d.create(parent, name.encode(), _type_id(dtype), space,
                      dcpl=_dcpl(None if chunks is None else tuple(chunks), fill))
    try:
        if data is not None:
            dsid.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(data, dtype=dtype))
    finally:
        if not keep:
            dsid.close()
    return dsid if keep else None


def _write(dsid, rows: np.ndarray, lo: int | None = None) -> None:
    """Write the C-contiguous ``rows`` over the whole dataset, or from row ``lo`` on its
    first axis."""
    if lo is None:
        dsid.write(h5s.ALL, h5s.ALL, rows)
        return
    space = dsid.get_space()
    space.select_hyperslab((lo,) + (0,) * (rows.ndim - 1), rows.shape)
    dsid.write(h5s.create_simple(rows.shape), space, rows)


def _read_scalar(dsid):
    """A scalar dataset's value as ``ds[()]`` reads it."""
    out = np.empty((), dtype=dsid.dtype)
    dsid.read(h5s.ALL, h5s.ALL, out)
    return out[()]

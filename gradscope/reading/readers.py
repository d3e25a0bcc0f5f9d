"""The public reading layer: every reader of a gradscope log goes through here.

Open a log with :func:`open_log` (a live run, a finished one, or one killed while writing)
and read its tables as pandas DataFrames. Only committed rows are returned.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import time
import zlib
from contextlib import contextmanager, suppress
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..record import blocks
from ..record.schema import (
    COUNTER_FIELDS,
    FORMAT,
    LAYER_COLUMNS,
    NORM_PARAM_NAMES,
    NORM_STATE_NAMES,
    OPTIONAL_COLUMNS,
    PROBE_COLUMNS,
    READABLE_VERSIONS,
    STATUSES,
    TABLES,
    CorruptLogError,
    LogError,
)
from ..record.writer import attrs_crc, is_being_written, status_crc


@contextmanager
def open_log(path):
    """Open a gradscope log for reading (also while it is written, or after a crash).

    Raises :class:`LogError` with a one-line message for a missing file, a file that is
    not HDF5, an HDF5 file that is not a gradscope log, or a damaged one;
    :class:`CorruptLogError` when what is read fails its checksum.

    No open or read can hang: a log that is not being written is opened without SWMR
    where it can be (a log closed by its writer), else with SWMR and a single attempt at
    every metadata read (HDF5 would otherwise retry a bad read for hours); a live log
    gets a bounded number of attempts (about a second in all).
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
    check_log_file(p)
    f = _open_h5(p)
    try:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise LogError(f"{str(path)!r} is an HDF5 file but not a gradscope log")
        version = f.attrs.get("format_version", 0)
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise LogError(f"{str(path)!r} has log format version {version!r}; this gradscope "
                           f"reads versions {', '.join(map(str, READABLE_VERSIONS))}") from None
        if version not in READABLE_VERSIONS:
            raise LogError(
                f"{str(path)!r} has log format version {version}; this gradscope reads "
                f"up to {max(READABLE_VERSIONS)}"
            )
        _info(f, str(path))  # checks the header and the counter
        yield f
    except LogError:
        raise
    except (KeyError, OSError, RuntimeError, ValueError, TypeError, IndexError,
            zlib.error) as e:
        raise LogError(f"{str(path)!r} is damaged or incomplete: {_first_line(e)}") from None
    finally:
        with suppress(Exception):
            f.close()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


#: metadata read attempts for a log being written (HDF5's default, 100, sleeps up to an
#: hour between attempts); 30 attempts sleep at most about a second in all
LIVE_READ_ATTEMPTS = 30


def _open_h5(p: Path):
    try:
        # a log closed by its writer: no SWMR, so nothing is ever retried
        return h5py.File(p, "r", locking=False)
    except OSError as first:
        live = is_being_written(p)
        try:
            return _open_swmr(p, LIVE_READ_ATTEMPTS if live else 1)
        except OSError:
            raise LogError(f"cannot open {str(p)!r}: {_first_line(first)}") from None


def _open_swmr(p: Path, attempts: int):
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    with suppress(AttributeError):
        fapl.set_file_locking(False, True)
    # no sieve buffer: HDF5 may serve a small contiguous dataset (the counter, a tail's
    # checksums) from the bytes an earlier read of the same open buffered, not as the
    # writer left it since (the reads of a live log read the counter again)
    fapl.set_sieve_buf_size(0)
    _set_read_attempts(fapl, attempts)
    fid = h5py.h5f.open(os.fsencode(p), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ,
                        fapl=fapl)
    return h5py.File(fid)


_H5_SET_ATTEMPTS = []


def _set_read_attempts(fapl, attempts: int) -> None:
    """``H5Pset_metadata_read_attempts`` (not wrapped by h5py) on the HDF5 library that
    h5py loaded; without it, HDF5's default applies."""
    if not _H5_SET_ATTEMPTS:
        fn = None
        try:
            import ctypes

            with open("/proc/self/maps") as maps:
                libs = sorted({line.split()[-1] for line in maps
                               if "libhdf5" in line and "hdf5_hl" not in line
                               and line.split()[-1].startswith("/")})
            for lib in libs:
                cand = ctypes.CDLL(lib).H5Pset_metadata_read_attempts
                cand.argtypes = [ctypes.c_int64, ctypes.c_uint]
                cand.restype = ctypes.c_int
                fn = cand
                break
        except (OSError, AttributeError, ImportError):
            fn = None
        _H5_SET_ATTEMPTS.append(fn)
    fn = _H5_SET_ATTEMPTS[0]
    if fn is not None:
        fn(fapl.id, max(1, int(attempts)))


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_log_file(path, wait: float = 0.3) -> None:
    """Refuse a truncated HDF5 file before HDF5 opens it (the one truncation check).

    A gradscope log (superblock version 2 or 3) records the end-of-file address in its
    superblock; a file shorter than that lost its end (an incomplete copy or download).
    HDF5 opened in SWMR mode (how gradscope reads, so that live and killed runs are
    readable) does not check this and retries failed metadata reads for minutes, so
    such a file would hang a reader instead of failing. A killed log is not truncated
    (its size is at least that address); a live log may be briefly shorter while the
    writer flushes, so the size is checked again for ``wait`` seconds.

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


# -- the lowest level: committed rows, checked ----------------------------------------------
class _Info:
    """What a reader needs to know of an open log, read and checked once per open."""

    def __init__(self, f, path: str):
        self.path = path
        self.version = int(f.attrs.get("format_version", 1))
        if f.swmr_mode:
            f["committed"].refresh()
        raw = np.asarray(f["committed"][()])
        self.names = json.loads(f["committed"].attrs["names"])
        self.parts: dict[str, dict] = {}
        if self.version == 1:
            if raw.ndim != 1 or raw.shape[0] != len(self.names) or (raw < 0).any():
                raise CorruptLogError(f"{path!r} is corrupted: its row counter "
                                      f"{raw.tolist()} is not a list of row counts")
            for name, v in zip(self.names, raw.tolist()):
                self.parts[name] = {"rows": int(v)}
            return
        # a live log: the writer writes the status, then the counter that holds its
        # checksum; a read between the two is read again
        attempts = LIVE_RETRIES if f.swmr_mode else 1
        for i in range(attempts):
            if i:
                time.sleep(LIVE_RETRY_SLEEP)
                raw = _counter_raw(f)
            counter_ok = _counter_ok(raw, len(self.names))
            status_ok = counter_ok and status_crc(
                _fresh(f, "status")[()], _fresh(f, "status_message")[()]) == int(raw[-2])
            if status_ok:
                break
        if not counter_ok:
            raise CorruptLogError(f"{path!r} is corrupted: its row counter fails its checksum")
        cfg = f.attrs["config"]
        edges = f["probe_units"].attrs["hist_edges"]
        if attrs_crc(cfg if isinstance(cfg, str) else cfg.decode(), edges) != int(
                f.attrs["attrs_crc"]):
            raise CorruptLogError(f"{path!r} is corrupted: its configuration or histogram "
                                  f"edges fail their checksum")
        if not status_ok:
            raise CorruptLogError(f"{path!r} is corrupted: its status fails its checksum")
        self.parts = _counter_parts(raw, self.names)

    def rows(self, part: str) -> int:
        return self.parts[part]["rows"]

    def moved(self, part: str, counter: dict) -> _Info:
        """This log's info with the counter of ``part`` replaced (read again)."""
        new = copy.copy(self)
        new.parts = {**self.parts, part: counter}
        return new


#: a live log's reads that met the writer (see _read_tail) are tried again this many times
LIVE_RETRIES = 20
LIVE_RETRY_SLEEP = 0.01


def _fresh(f, name: str):
    ds = f[name]
    if f.swmr_mode:
        ds.refresh()
    return ds


def _counter_raw(f) -> np.ndarray:
    return np.asarray(_fresh(f, "committed")[()])


def _counter_ok(raw: np.ndarray, parts: int) -> bool:
    return bool(raw.ndim == 1 and raw.shape[0] == len(COUNTER_FIELDS) * parts + 2
                and blocks.crc(raw[:-1]) == int(raw[-1]))


def _counter_parts(raw: np.ndarray, names) -> dict[str, dict]:
    k = len(COUNTER_FIELDS)
    return {name: dict(zip(COUNTER_FIELDS, (int(v) for v in raw[k * i:k * (i + 1)])))
            for i, name in enumerate(names)}


def _counter_now(f, info) -> dict | None:
    """The counter of a live log as it is now (None while it does not check)."""
    raw = _counter_raw(f)
    return _counter_parts(raw, info.names) if _counter_ok(raw, len(info.names)) else None


def _info(f, path: str | None = None) -> _Info:
    info = getattr(f, "_gradscope_info", None)
    if info is None:
        info = _Info(f, path or f.filename)
        f._gradscope_info = info
    return info


def columns_of(f, part: str) -> dict[str, tuple[np.dtype, tuple]]:
    """The columns a part of the log holds: ``{name: (dtype, row shape)}``."""
    g = f[part]
    if _info(f).version == 1:
        return {k: (g[k].dtype, tuple(g[k].shape[1:])) for k in g}
    return {n: (np.dtype(dt), tuple(shape)) for n, dt, shape in json.loads(g.attrs["columns"])}


def table_length(f, part: str) -> int:
    """The rows of a part that every reader sees (committed, and present in a v1 file)."""
    info = _info(f)
    if part not in f:
        return 0
    if info.version == 1:
        g = f[part]
        return min([info.rows(part), *(g[c].shape[0] for c in g)])
    return info.rows(part)


def read_columns(f, part: str, columns=None, rows=None) -> dict[str, np.ndarray]:
    """Committed rows of some columns of a part of an open log, every byte checked.

    ``rows``: None (every committed row), a ``slice`` (step 1), or sorted row numbers.
    Raises :class:`CorruptLogError` naming the part, the rows and the column when a
    checksum fails. Memory: the result and one block.
    """
    info = _info(f)
    cols = columns_of(f, part)
    names = list(cols) if columns is None else list(columns)
    n = table_length(f, part)
    if rows is None:
        rows = slice(0, n)
    if isinstance(rows, slice):
        lo, hi = max(0, rows.start or 0), n if rows.stop is None else min(n, rows.stop)
        hi = max(lo, hi)
        sel = None
    else:
        sel = np.asarray(rows, dtype=np.int64)
        if sel.size and (sel.min() < 0 or sel.max() >= n):
            raise IndexError(f"rows {sel.min()}..{sel.max()} of {part!r}, which has {n}")
        lo, hi = 0, n
    g = f[part]
    if info.version == 1:
        return {c: g[c][lo:hi] if sel is None else _take(g[c], sel) for c in names}
    return _read_v2(f, g, info, part, cols, names, n, lo, hi, sel)


def _corrupt(info, part, a, b, col, why="fail their checksum"):
    return CorruptLogError(f"{info.path!r} is corrupted: {part} rows {a}-{b - 1} "
                           f"(column {col}) {why}; nothing of them was read")


def _read_v2(f, g, info, part, cols, names, n, lo, hi, sel, depth=0):
    c = info.parts[part]
    B = int(g.attrs["block_rows"])
    period = int(g.attrs["period"])
    ns, nb, nd, slot = c["sealed"], c["blocks"], c["data_bytes"], c["slot"]
    all_names = list(cols)
    if not (0 <= ns <= n and ns == nb * B and n - ns < max(B, 1) + (B == 1)
            and slot in (0, 1) and 0 <= nd):
        raise CorruptLogError(f"{info.path!r} is corrupted: the row counter of {part} "
                              f"is inconsistent")
    need = names + [d for d in blocks.predicted_needs(names) if d in cols]
    count = (hi - lo) if sel is None else sel.size
    out = {k: np.empty((count, *cols[k][1]), dtype=cols[k][0]) for k in names}
    if count == 0:
        return out
    if f.swmr_mode:
        for ds in (g["data"], g["index"]):
            ds.refresh()
    # which rows: a range [lo, hi) or the positions sel; filled block by block
    if sel is None:
        b_first, b_last = lo // B, (min(hi, ns) - 1) // B if min(hi, ns) > lo else -1
        block_ids = range(b_first, b_last + 1) if ns > lo else range(0)
    else:
        block_ids = sorted_unique(sel[sel < ns] // B) if ns else []
    if len(block_ids):
        if g["data"].shape[0] < nd or g["index"].shape[0] < nb:
            raise CorruptLogError(f"{info.path!r} is corrupted: {part} holds less than its "
                                  f"counter says")
        index = g["index"][int(block_ids[0]):int(block_ids[-1]) + 1]
    for bi in block_ids:
        bi = int(bi)
        entry = index[bi - int(block_ids[0])]
        a, b = bi * B, (bi + 1) * B
        if (blocks.crc(np.ascontiguousarray(entry[:-1])) != int(entry[-1])
                or int(entry[0]) != a or int(entry[1]) != B):
            raise _corrupt(info, part, a, b, "index")
        spans = {}
        for k in need:
            j = all_names.index(k)
            off, nbytes, cr = (int(v) for v in entry[2 + 3 * j:5 + 3 * j])
            if off < 0 or nbytes < 0 or off + nbytes > nd:
                raise _corrupt(info, part, a, b, k)
            spans[k] = (off, nbytes, cr)
        s0 = min(o for o, _, _ in spans.values())
        s1 = max(o + m for o, m, _ in spans.values())
        raw = g["data"][s0:s1].tobytes()
        dec = {}
        for k in sorted(need, key=lambda x: x in blocks.PREDICTED):
            off, nbytes, cr = spans[k]
            data = raw[off - s0:off - s0 + nbytes]
            if blocks.crc(data) != cr:
                raise _corrupt(info, part, a, b, k)
            try:
                dec[k] = blocks.decode(k, data, cols[k][0], (B, *cols[k][1]), period, dec)
            except (zlib.error, ValueError) as e:
                raise _corrupt(info, part, a, b, k, f"cannot be decoded ({_first_line(e)})")
        _place(out, dec, names, a, b, lo, hi, sel)
    if hi > ns or (sel is not None and sel.size and sel.max() >= ns):
        dec = _read_tail(f, g, info, part, cols, names, depth)
        _place(out, dec, names, ns, n, lo, hi, sel)
    return out


def _read_tail(f, g, info, part, cols, names, depth) -> dict[str, np.ndarray]:
    """The rows ``sealed .. rows - 1`` of ``part`` (those after the last sealed block), from
    the tail slot the counter names.

    A live log's writer writes that slot again once a later counter names the other one;
    the slot's rows are the committed ones only if the counter has not moved meanwhile, so
    it is read again after the read. When it has moved, the rows (committed: their values
    never change) are read where the newer counter puts them, in sealed blocks or the
    other slot."""
    c = info.parts[part]
    B, ns, n, slot = int(g.attrs["block_rows"]), c["sealed"], c["rows"], c["slot"]
    all_names = list(cols)
    m = n - ns
    for _attempt in range(LIVE_RETRIES if f.swmr_mode else 1):
        dec, bad = {}, None
        tcrc = _fresh(f, f"{part}/tail_crc")[slot]
        for k in names:
            vals = _fresh(f, f"{part}/tail/{k}")[slot * B:slot * B + m]
            if vals.shape[0] != m or blocks.crc(np.ascontiguousarray(vals)) != int(
                    tcrc[all_names.index(k)]):
                bad = k
                break
            dec[k] = vals
        if not f.swmr_mode:
            break
        now = _counter_now(f, info)
        if now is not None and now[part] == c:
            break  # the slot was not written meanwhile: what was read is what was committed
        if now is not None and now[part]["rows"] >= n and depth < LIVE_RETRIES:
            return _read_v2(f, g, info.moved(part, now[part]), part, cols, names,
                            now[part]["rows"], ns, n, None, depth + 1)
        time.sleep(LIVE_RETRY_SLEEP)
    else:
        raise LogError(f"{info.path!r} changed under every read of {part} rows {ns}-{n - 1}: "
                       f"it is written faster than it can be read; try again")
    if bad is not None:
        raise _corrupt(info, part, ns, n, bad)
    return dec


def _place(out, dec, names, a, b, lo, hi, sel):
    """Copy the decoded rows [a, b) that the selection wants into ``out``."""
    if sel is None:
        s, e = max(a, lo), min(b, hi)
        if s >= e:
            return
        for k in names:
            out[k][s - lo:e - lo] = dec[k][s - a:e - a]
    else:
        i0, i1 = np.searchsorted(sel, a), np.searchsorted(sel, b)
        if i1 > i0:
            for k in names:
                out[k][i0:i1] = dec[k][sel[i0:i1] - a]


def committed_rows(f) -> dict[str, int]:
    """Rows of every table that are complete, in a log opened with :func:`open_log`
    (``{"steps": n, "layers": n, ...}``); a reader that follows a live run reads up to these."""
    return {name: table_length(f, name) for name in _info(f).names}


def read_table(f, name: str, columns=None, rows=None) -> pd.DataFrame:
    """Table ``name`` of the open log ``f`` as a DataFrame (committed rows only, every byte
    checked: :func:`read_columns`).

    ``columns``: the columns to read (default: all, in the schema's order); ``rows``: a
    slice (step 1) or sorted positions to read instead of every row. A column the log was
    written without gets its default (:data:`~gradscope.record.schema.OPTIONAL_COLUMNS`).
    """
    optional = OPTIONAL_COLUMNS.get(name, {})
    schema = TABLES[name]
    wanted = list(schema) if columns is None else list(columns)
    have = columns_of(f, name)
    n = table_length(f, name)
    if rows is None:
        rows = slice(0, n)
    elif isinstance(rows, slice):
        rows = slice(*rows.indices(n))
    else:
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows < n]
    data = read_columns(f, name, [c for c in wanted if c in have], rows)
    size = len(range(*rows.indices(n))) if isinstance(rows, slice) else len(rows)
    return pd.DataFrame({c: data[c] if c in data else np.full(size, optional[c], dtype=schema[c])
                         for c in wanted})


def read_rows(f, name: str, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Committed rows ``start:stop`` of table ``name`` (steps, layers, epochs, probes) of a
    log opened with :func:`open_log`: a live view reads only the rows added since its last
    read, never the whole table again."""
    n = table_length(f, name)
    stop = n if stop is None else min(stop, n)
    return read_table(f, name, rows=slice(min(max(start, 0), stop), stop))


def _take(ds, rows) -> np.ndarray:
    """``ds[rows]`` for a slice or sorted positions: a dense set is read as one range, a
    sparse one as one selection of its runs of consecutive positions."""
    if isinstance(rows, slice):
        return ds[rows]
    if not len(rows):
        return np.empty(0, dtype=ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * len(rows) + 4096:
        return ds[lo:hi][rows - lo]
    uniq = sorted_unique(rows)
    cut = np.flatnonzero(np.diff(uniq) != 1) + 1
    starts, ends = uniq[np.r_[0, cut]], uniq[np.r_[cut - 1, len(uniq) - 1]] + 1
    sizes, gaps = ends - starts, np.diff(starts)
    if len(starts) > 1 and (sizes[:-1] == sizes[0]).all() and (gaps == gaps[0]).all():
        # evenly spaced windows (the last may be shorter): one regular hyperslab
        whole = _read_hyperslabs(ds, [(int(starts[0]), len(starts) - 1, int(gaps[0]),
                                      int(sizes[0]))])
        got = np.concatenate([whole, ds[int(starts[-1]):int(ends[-1])]])
    elif len(starts) <= 16:
        got = _read_hyperslabs(ds, [(int(a), 1, 1, int(b - a)) for a, b in zip(starts, ends)])
    else:  # HDF5 builds a union of many hyperslabs slowly: one read a run
        got = np.concatenate([ds[int(a):int(b)] for a, b in zip(starts, ends)])
    return got if len(uniq) == len(rows) else got[np.searchsorted(uniq, rows)]


def sorted_unique(a) -> np.ndarray:
    """``np.unique`` of an int array by sorting (numpy's hash-based unique took seconds on
    arrays of row positions here); the input is usually sorted already."""
    a = np.asarray(a, dtype=np.int64)
    if len(a) and not np.all(a[1:] > a[:-1]):
        a = np.sort(a)
        a = a[np.r_[True, a[1:] != a[:-1]]]
    return a


def _read_hyperslabs(ds, slabs) -> np.ndarray:
    """Read hyperslabs ``(start, count, stride, block)`` of rows (the first axis; whole
    rows of a dataset with a row shape) with one HDF5 read, in file order. (A union of
    many hyperslabs is slow to build in HDF5: use one regular hyperslab where possible.)"""
    total = sum(c * b for _, c, _, b in slabs)
    row = tuple(int(k) for k in ds.shape[1:])
    out = np.empty((total, *row), dtype=ds.dtype)
    if not total:
        return out
    space = ds.id.get_space()
    space.select_none()
    zeros, ones = (0,) * len(row), (1,) * len(row)
    for start, count, stride, block in slabs:
        space.select_hyperslab((start, *zeros), (count, *ones), (max(stride, block), *ones),
                               (block, *row), op=h5py.h5s.SELECT_OR)
    mspace = h5py.h5s.create_simple(out.shape)
    ds.id.read(mspace, space, out)
    return out


def search_sorted(f, name: str, value, side: str = "left") -> int:
    """``np.searchsorted`` of ``value`` in the (sorted) step column of table ``name``,
    reading a few rows per halving instead of the column (a long log's step column is
    large; in format 2 each probe decodes one block)."""
    n = table_length(f, name)
    lo, hi = 0, n
    while hi - lo > 4096:
        mid = (lo + hi) // 2
        v = read_columns(f, name, ["step"], slice(mid, mid + 1))["step"][0]
        if v < value or (side == "right" and v == value):
            lo = mid + 1
        else:
            hi = mid
    return lo + int(np.searchsorted(read_columns(f, name, ["step"], slice(lo, hi))["step"],
                                    value, side=side))


def layer_count(f) -> int:
    """Layers per logged step (weight matrices), from the first rows of the layer table."""
    head = read_columns(f, "layers", ["layer"],
                        slice(0, min(table_length(f, "layers"), 4096)))["layer"]
    if (head == 0).sum() > 1:
        return int(np.flatnonzero(head == 0)[1])
    return int(head.max()) + 1 if len(head) else 0


#: Layer rows up to which ``every`` reads the selection's step column to pick its steps;
#: beyond, it relies on the writer's order (every logged step holds one row per layer).
STEP_COLUMN_ROWS = 1 << 22


def _whole(v) -> bool:
    """A whole number (an int, or a float without a fraction; not a bool)."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer()


def check_selection(columns=None, steps=None, every=None):
    """The selection of :func:`read_layers`, checked and normalised: ``(columns, steps,
    every)`` with ``columns`` a list or None, ``steps`` None, a ``(first, last)`` pair of
    ints or a sorted int64 array, ``every`` an int or None. A bad value raises ValueError
    naming it and what is accepted (before the log is opened: a bad argument is not a
    damaged log)."""
    known = [*LAYER_COLUMNS, *(c for c in PROBE_COLUMNS if c not in LAYER_COLUMNS), "epoch"]
    if columns is not None:
        columns = [columns] if isinstance(columns, str) else list(columns)
        bad = [c for c in columns if not isinstance(c, str) or c not in known]
        if bad:
            raise ValueError(f"unknown column {bad[0]!r}; accepted: {', '.join(known)}")
    if every is not None:
        if not _whole(every) or every < 1:
            raise ValueError(f"every={every!r}; accepted: a whole number >= 1")
        every = int(every)
    if steps is not None:
        accepted = "accepted: a (first, last) pair of whole numbers, or a list of steps"
        if isinstance(steps, tuple) and len(steps) == 2:
            if not all(_whole(s) for s in steps):
                raise ValueError(f"steps={steps!r}; {accepted}")
            steps = (int(steps[0]), int(steps[1]))
        else:
            if isinstance(steps, (str, bytes, dict)):
                raise ValueError(f"steps={steps!r}; {accepted}")
            try:
                values = list(steps) if np.iterable(steps) else [steps]
            except TypeError:
                values = [steps]
            if not all(_whole(s) for s in values):
                raise ValueError(f"steps={steps!r}; {accepted}")
            steps = sorted_unique(np.array([int(s) for s in values], dtype=np.int64))
    return columns, steps, every


def layers_frame(f, columns=None, steps=None, every: int | None = None) -> pd.DataFrame:
    """:func:`read_layers` on the open log ``f``."""
    columns, steps, every = check_selection(columns, steps, every)
    keep = ("step", "layer")
    lcols = [c for c in LAYER_COLUMNS if columns is None or c in columns or c in keep]
    pcols = [c for c in PROBE_COLUMNS if c in keep or columns is None or c in columns]
    n = table_length(f, "layers")

    def step_col(rows):
        return read_columns(f, "layers", ["step"], rows)["step"]

    rows = slice(0, n)
    if steps is not None:
        if isinstance(steps, tuple) and len(steps) == 2:
            rows = slice(search_sorted(f, "layers", steps[0], "left"),
                         search_sorted(f, "layers", steps[1], "right"))
        else:
            rows = np.concatenate([
                np.arange(search_sorted(f, "layers", s, "left"),
                          search_sorted(f, "layers", s, "right")) for s in steps
            ] or [np.empty(0, np.int64)])
    if every is not None:
        every = min(every, max(n, 1))  # beyond the rows: the first selected step alone
    if every not in (None, 1):
        if isinstance(rows, slice):
            lo, hi = rows.start, rows.stop
            at = step_col(slice(lo, hi)) if hi - lo <= STEP_COLUMN_ROWS else None
        else:
            at = step_col(rows) if len(rows) else rows
            lo = 0
        nl = layer_count(f)
        if at is None and nl:  # a long range: every logged step holds nl rows in order
            starts = np.arange(lo, hi, nl * every)
            rows = (starts[:, None] + np.arange(nl)).ravel()
            rows = rows[rows < hi]
        else:
            _, first, inverse = np.unique(at, return_index=True, return_inverse=True)
            chosen = (np.arange(len(first)) % every == 0)[inverse]
            rows = (np.arange(lo, lo + len(at)) if isinstance(rows, slice) else rows)[chosen]
    layers = read_table(f, "layers", lcols, rows)
    if len(layers):
        lo_s, hi_s = int(layers["step"].iloc[0]), int(layers["step"].iloc[-1])
    else:
        lo_s, hi_s = 0, -1
    sel = None if (steps is None and every in (None, 1)) else layers["step"].unique()
    probes = _step_range(f, "probes", pcols, lo_s, hi_s, sel)
    df = layers.merge(probes, on=["step", "layer"], how="left")
    if columns is None or "epoch" in columns:
        st = _step_range(f, "steps", ["step", "epoch"], lo_s, hi_s, sel)
        df = df.merge(st, on="step", how="left")
    return df


def _step_range(f, name, columns, lo, hi, sel) -> pd.DataFrame:
    """Rows of table ``name`` with ``lo <= step <= hi`` (and in ``sel`` when given)."""
    n = table_length(f, name)
    if sel is None and lo == 0 and hi < 0:
        rows = slice(0, 0)
    elif sel is None:
        rows = slice(0, n)
    else:
        rows = slice(search_sorted(f, name, lo, "left"), search_sorted(f, name, hi, "right"))
    df = read_table(f, name, columns, rows)
    return df if sel is None else df[df["step"].isin(sel)].reset_index(drop=True)


def _check_params(f, which: str, arrays: dict) -> None:
    """Check parameters read from /params/<which> against their checksums (format 2)."""
    info = _info(f)
    if info.version < 2:
        return
    pc = _fresh(f, "params_crc")
    names = json.loads(pc.attrs["names"])
    row = pc[0 if which == "initial" else 1]
    for k, a in arrays.items():
        if k not in names:
            continue
        want = int(row[names.index(k)])
        if want == -1:  # final parameters not written (the run did not end): all NaN
            ok = np.isnan(a).all()
        else:
            ok = blocks.crc(np.ascontiguousarray(a)) == want
        if not ok:
            raise CorruptLogError(f"{info.path!r} is corrupted: params/{which}/{k} fails its "
                                  f"checksum")


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
        return log_status(f)


def log_status(f) -> dict:
    """:func:`read_status` of a log opened with :func:`open_log` (reads one step row, so a
    live view can ask every second without reading the step table)."""
    c = committed_rows(f)
    status = f["status"][()].decode("ascii", "replace").strip()
    if status not in STATUSES:
        raise CorruptLogError(f"{_info(f).path!r} is corrupted: its status {status!r} is not "
                              f"one of {', '.join(STATUSES)}")
    n = table_length(f, "steps")
    last = read_columns(f, "steps", ["step"], slice(n - 1, n))["step"] if n else []
    return {
        "status": status,
        "message": f["status_message"][()].decode("utf-8", "ignore").strip(),
        "last_step": int(last[-1]) if len(last) else None,
        "rows": c,
    }


def read_steps(path) -> pd.DataFrame:
    """One row per logged step: step, epoch, loss, accuracy, lr, grad_norm_total, time,
    clipped (1 where --clip-norm or --clip-value changed the gradient, else 0; 0 in logs
    written before the column existed)."""
    with open_log(path) as f:
        return read_table(f, "steps")


def read_epochs(path) -> pd.DataFrame:
    """One row per epoch: epoch, step, train and validation loss and accuracy, time."""
    with open_log(path) as f:
        return read_table(f, "epochs")


def read_layers(path, columns=None, steps=None, every: int | None = None) -> pd.DataFrame:
    """One row per logged step and layer, metrics as columns.

    The probe-set metrics (``dead_frac``, ``probe_act_mean``, ``probe_act_std``,
    ``probe_saturated_frac``) are filled at probe steps and NaN elsewhere. ``epoch``
    comes from the step table.

    Selections read only what they select: ``columns`` (names; ``step`` and ``layer`` are
    always kept), ``steps`` (a ``(first, last)`` pair of steps, inclusive, or a list of
    steps) and ``every`` (every k-th of the selected logged steps, from the first).
    """
    columns, steps, every = check_selection(columns, steps, every)
    with open_log(path) as f:
        return layers_frame(f, columns, steps, every)


def _unit_columns(f, prefix: str) -> list[str]:
    have = columns_of(f, "probe_units")
    out, l = [], 0
    while f"{prefix}_{l}" in have:
        out.append(f"{prefix}_{l}")
        l += 1
    return out


def read_dead_units(path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-unit dead flags at each probe step.

    Returns ``steps`` (probe steps,) and, for each hidden layer, a bool array
    ``(probe steps, width)``: True where the unit's pre-activation was <= 0 on every
    probe example (meaningful for the ReLU family).
    """
    with open_log(path) as f:
        names = _unit_columns(f, "dead")
        data = read_columns(f, "probe_units", ["step", *names])
    return data["step"], [data[k].astype(bool) for k in names]


def read_histograms(path) -> pd.DataFrame:
    """Activation histograms of hidden layers on the probe set, long form.

    Columns: step, layer, bin_left, bin_right, count, density (count / examples / width).
    Activations outside the range are counted in the first or last bin.
    """
    with open_log(path) as f:
        edges = f["probe_units"].attrs["hist_edges"]
        names = _unit_columns(f, "hist")
        data = read_columns(f, "probe_units", ["step", *names])
    steps = data["step"]
    n = len(steps)
    frames = []
    for l, k in enumerate(names):
        counts = data[k]
        total = counts.sum(axis=1, keepdims=True).clip(min=1)
        nb = counts.shape[1]
        frames.append(pd.DataFrame({
            "step": np.repeat(steps, nb), "layer": l,
            "bin_left": np.tile(edges[:-1], n), "bin_right": np.tile(edges[1:], n),
            "count": counts.ravel(), "density": (counts / total / np.diff(edges)).ravel(),
        }))
    cols = ["step", "layer", "bin_left", "bin_right", "count", "density"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _params_group(f, which: str, prefixes) -> dict[str, np.ndarray]:
    # a live log's writer writes the final arrays, then their checksums: a read between
    # the two is read again
    attempts = LIVE_RETRIES if f.swmr_mode else 1
    for i in range(attempts):
        if i:
            time.sleep(LIVE_RETRY_SLEEP)
        g = f[f"params/{which}"]
        out = {k: _fresh(f, f"params/{which}/{k}")[()] for k in g
               if k.split("_")[0] in prefixes or k.rsplit("_", 1)[0] in prefixes}
        try:
            _check_params(f, which, out)
            return out
        except CorruptLogError:
            if i + 1 == attempts:
                raise
    return out


def _snapshot_row(f, path, step) -> int:
    if "snapshots" not in f:
        raise LogError(f"{str(path)!r} has no snapshots (train with --snapshot-every)")
    steps = read_columns(f, "snapshots", ["step"])["step"]
    hits = np.flatnonzero(steps == int(step))
    if not len(hits):
        raise LogError(
            f"no snapshot at step {step} in {str(path)!r}; snapshots at: "
            f"{', '.join(map(str, steps[:20]))}{' ...' if len(steps) > 20 else ''}"
        )
    return int(hits[0])


def read_weights(path, step: int | str = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parameters as ``[(W_0, b_0), ...]``.

    ``step=0`` (or ``"initial"``): at initialisation; ``"final"``: after the last update
    (NaN if the run has not finished); any other step: the snapshot taken before update
    ``step`` (``--snapshot-every``), ``LogError`` if there is none.
    """
    with open_log(path) as f:
        if step in (0, "initial", "final"):
            arrays = _params_group(f, "final" if step == "final" else "initial", ("W", "b"))
        else:
            i = _snapshot_row(f, path, step)
            names = [k for k in columns_of(f, "snapshots") if k.split("_")[0] in ("W", "b")]
            arrays = {k: v[0] for k, v in read_columns(f, "snapshots", names, [i]).items()}
    n = len([k for k in arrays if k.startswith("W_")])
    return [(arrays[f"W_{l}"], arrays[f"b_{l}"]) for l in range(n)]


def read_norm(path, step: int | str = "final") -> dict[str, list[np.ndarray]]:
    """Normalisation arrays of a ``--norm`` run, one per hidden layer.

    Returns ``{"gamma": [...], "beta": [...]}`` plus, for batch norm, ``"running_mean"``
    and ``"running_var"``; ``{}`` for a run without normalisation. ``step`` as in
    :func:`read_weights`: ``0``/``"initial"``, ``"final"`` or a snapshot step.
    """
    kinds = (*NORM_PARAM_NAMES, *NORM_STATE_NAMES)
    with open_log(path) as f:
        if step in (0, "initial", "final"):
            arrays = _params_group(f, "final" if step == "final" else "initial", kinds)
        else:
            i = _snapshot_row(f, path, step)
            names = [k for k in columns_of(f, "snapshots") if k.rsplit("_", 1)[0] in kinds]
            arrays = {k: v[0] for k, v in read_columns(f, "snapshots", names, [i]).items()}
    out = {}
    for name in kinds:
        found, l = [], 0
        while f"{name}_{l}" in arrays:
            found.append(arrays[f"{name}_{l}"])
            l += 1
        if found:
            out[name] = found
    return out


def finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")

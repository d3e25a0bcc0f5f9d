"""The public reading layer: every reader of a gradscope log goes through here.

Open a log with :func:`open_log` (a live run, a finished one, or one killed while writing)
and read its tables as pandas DataFrames. Only committed rows are returned.
"""

from __future__ import annotations

import json
import math
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..record.schema import (
    FORMAT,
    FORMAT_VERSION,
    LAYER_COLUMNS,
    NORM_PARAM_NAMES,
    NORM_STATE_NAMES,
    OPTIONAL_COLUMNS,
    PROBE_COLUMNS,
    TABLES,
    LogError,
)


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
    check_log_file(p)
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


def committed_rows(f) -> dict[str, int]:
    """The committed row count of every table of the open log ``f``."""
    names = json.loads(f["committed"].attrs["names"])
    return dict(zip(names, (int(v) for v in f["committed"][()])))


def table_length(f, name: str, columns=None) -> int:
    """Rows of table ``name`` that are committed and present in every stored column."""
    # Within one open a table's length does not change (a SWMR reader sees new rows only
    # after a refresh), and looking datasets up is slow enough to matter when a run is read
    # in many pieces: the lengths are kept on the open file object (an attribute, not a
    # weak reference, whose callback a signal could interrupt).
    known = getattr(f, "_gradscope_lengths", None)
    if known is None:
        known = {"committed": committed_rows(f)}
        f._gradscope_lengths = known
    if name not in known:
        g = f[name]
        known[name] = {c: g[c].shape[0] for c in g}
    shapes = known[name]
    optional = OPTIONAL_COLUMNS.get(name, {})
    present = [c for c in (columns or TABLES[name]) if c in shapes or c not in optional]
    return min([known["committed"][name], *(shapes[c] for c in present)])


def read_table(f, name: str, columns=None, rows=None) -> pd.DataFrame:
    """Table ``name`` of the open log ``f`` as a DataFrame (committed rows only).

    ``columns``: the columns to read (default: all, in the schema's order); ``rows``: a
    slice or sorted positions to read instead of every row. A column the log was written
    without gets its default (:data:`~gradscope.record.schema.OPTIONAL_COLUMNS`).
    """
    g = f[name]
    optional = OPTIONAL_COLUMNS.get(name, {})
    schema = TABLES[name]
    wanted = list(schema) if columns is None else list(columns)
    n = table_length(f, name, wanted)
    if rows is None:
        rows = slice(0, n)
    elif isinstance(rows, slice):
        rows = slice(*rows.indices(n))
    else:
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows < n]
    out = {}
    for c in wanted:
        if c in g:
            out[c] = _take(g[c], rows)
        else:
            size = len(range(*rows.indices(n))) if isinstance(rows, slice) else len(rows)
            out[c] = np.full(size, optional[c], dtype=schema[c])
    return pd.DataFrame(out)


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
        whole = read_hyperslabs(ds, [(int(starts[0]), len(starts) - 1, int(gaps[0]),
                                      int(sizes[0]))])
        got = np.concatenate([whole, ds[int(starts[-1]):int(ends[-1])]])
    elif len(starts) <= 16:
        got = read_hyperslabs(ds, [(int(a), 1, 1, int(b - a)) for a, b in zip(starts, ends)])
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


def read_hyperslabs(ds, blocks) -> np.ndarray:
    """Read hyperslabs ``(start, count, stride, block)`` of a 1-D dataset, in file order,
    with one HDF5 read. (A union of many hyperslabs is slow to build in HDF5: use one
    regular hyperslab where possible.)"""
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


def search_sorted(ds, n: int, value, side: str = "left") -> int:
    """``np.searchsorted(ds[:n], value, side)`` for a sorted 1-D dataset, reading a few
    values per halving instead of the column (a long log's step column is large)."""
    lo, hi = 0, n
    while hi - lo > 4096:
        mid = (lo + hi) // 2
        v = ds[mid]
        if v < value or (side == "right" and v == value):
            lo = mid + 1
        else:
            hi = mid
    return lo + int(np.searchsorted(ds[lo:hi], value, side=side))


def layer_count(f) -> int:
    """Layers per logged step (weight matrices), from the first rows of the layer table."""
    head = f["layers"]["layer"][: min(table_length(f, "layers"), 4096)]
    if (head == 0).sum() > 1:
        return int(np.flatnonzero(head == 0)[1])
    return int(head.max()) + 1 if len(head) else 0


#: Layer rows up to which ``every`` reads the selection's step column to pick its steps;
#: beyond, it relies on the writer's order (every logged step holds one row per layer).
STEP_COLUMN_ROWS = 1 << 22


def layers_frame(f, columns=None, steps=None, every: int | None = None) -> pd.DataFrame:
    """:func:`read_layers` on the open log ``f``."""
    known = [*LAYER_COLUMNS, *(c for c in PROBE_COLUMNS if c not in LAYER_COLUMNS), "epoch"]
    if columns is not None:
        columns = [columns] if isinstance(columns, str) else list(columns)
        bad = [c for c in columns if c not in known]
        if bad:
            raise ValueError(f"unknown column {bad[0]!r}; accepted: {', '.join(known)}")
    if every is not None and (not isinstance(every, (int, np.integer)) or every < 1):
        raise ValueError(f"every={every!r}; accepted: a whole number >= 1")
    keep = ("step", "layer")
    lcols = [c for c in LAYER_COLUMNS if columns is None or c in columns or c in keep]
    pcols = [c for c in PROBE_COLUMNS if c in keep or columns is None or c in columns]
    n = table_length(f, "layers")
    step_ds = f["layers"]["step"]
    rows = slice(0, n)
    if steps is not None:
        if isinstance(steps, tuple) and len(steps) == 2:
            rows = slice(search_sorted(step_ds, n, steps[0], "left"),
                         search_sorted(step_ds, n, steps[1], "right"))
        else:
            wanted = np.unique(np.asarray(list(np.atleast_1d(steps)), dtype=np.int64))
            rows = np.concatenate([
                np.arange(search_sorted(step_ds, n, s, "left"),
                          search_sorted(step_ds, n, s, "right")) for s in wanted
            ] or [np.empty(0, np.int64)])
    if every not in (None, 1):
        if isinstance(rows, slice):
            lo, hi = rows.start, rows.stop
            at = step_ds[lo:hi] if hi - lo <= STEP_COLUMN_ROWS else None
        else:
            at = step_ds[rows[0]:rows[-1] + 1][rows - rows[0]] if len(rows) else rows
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
    n = table_length(f, name, columns)
    ds = f[name]["step"]
    if sel is None and lo == 0 and hi < 0:
        rows = slice(0, 0)
    elif sel is None:
        rows = slice(0, n)
    else:
        rows = slice(search_sorted(ds, n, lo, "left"), search_sorted(ds, n, hi, "right"))
    df = read_table(f, name, columns, rows)
    return df if sel is None else df[df["step"].isin(sel)].reset_index(drop=True)


def read_rows(f, name: str, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Committed rows ``start:stop`` of table ``name`` (steps, layers, epochs, probes) of a
    log opened with :func:`open_log`: a live view reads only the rows added since its last
    read, never the whole table again."""
    g = f[name]
    n = committed_rows(f)[name]  # fresh: a live view reads this file again and again
    optional = OPTIONAL_COLUMNS.get(name, {})
    cols = {c: g[c] for c in TABLES[name] if c in g or c not in optional}
    n = min([n, *(ds.shape[0] for ds in cols.values())])
    stop = n if stop is None else min(stop, n)
    start = min(max(start, 0), stop)
    return pd.DataFrame({c: cols[c][start:stop] if c in cols
                         else np.full(stop - start, optional[c], dtype=dt)
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
        return log_status(f)


def log_status(f) -> dict:
    """:func:`read_status` of a log opened with :func:`open_log` (reads one step row, so a
    live view can ask every second without reading the step table)."""
    c = committed_rows(f)
    last = read_rows(f, "steps", c["steps"] - 1) if c["steps"] else None
    return {
        "status": f["status"][()].decode().strip(),
        "message": f["status_message"][()].decode("utf-8", "ignore").strip(),
        "last_step": int(last["step"].iloc[-1]) if last is not None and len(last) else None,
        "rows": c,
    }


def units_length(f) -> int:
    """Committed rows of the per-unit probe arrays (``/probe_units``)."""
    return min(committed_rows(f)["probe_units"], f["probe_units"]["step"].shape[0])


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
    with open_log(path) as f:
        return layers_frame(f, columns, steps, every)


def read_dead_units(path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-unit dead flags at each probe step.

    Returns ``steps`` (probe steps,) and, for each hidden layer, a bool array
    ``(probe steps, width)``: True where the unit's pre-activation was <= 0 on every
    probe example (meaningful for the ReLU family).
    """
    with open_log(path) as f:
        g = f["probe_units"]
        n = units_length(f)
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
        n = units_length(f)
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
        n = min(committed_rows(f)["snapshots"], g["step"].shape[0])
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
            n = min(committed_rows(f)["snapshots"], g["step"].shape[0])
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

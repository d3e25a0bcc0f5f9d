"""The public reading layer: every reader of a gradscope log goes through here.

Open a log with :func:`open_log` (a live run, a finished one, or one killed while writing)
and read its tables as pandas DataFrames. Only committed rows are returned.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..record.schema import (
    FORMAT,
    FORMAT_VERSION,
    NORM_PARAM_NAMES,
    NORM_STATE_NAMES,
    OPTIONAL_COLUMNS,
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
    return read_rows(f, name)


def committed_rows(f) -> dict[str, int]:
    """Rows of every table that are complete, in a log opened with :func:`open_log`
    (``{"steps": n, "layers": n, ...}``); a reader that follows a live run reads up to these."""
    return _committed(f)


def read_rows(f, name: str, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Committed rows ``start:stop`` of table ``name`` (steps, layers, epochs, probes) of a
    log opened with :func:`open_log`: a live view reads only the rows added since its last
    read, never the whole table again."""
    g = f[name]
    n = _committed(f)[name]
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
    c = _committed(f)
    last = read_rows(f, "steps", c["steps"] - 1) if c["steps"] else None
    return {
        "status": f["status"][()].decode().strip(),
        "message": f["status_message"][()].decode("utf-8", "ignore").strip(),
        "last_step": int(last["step"].iloc[-1]) if last is not None and len(last) else None,
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

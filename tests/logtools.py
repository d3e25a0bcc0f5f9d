"""Test helper: copy a log through the reading layer and the writer, with its tables edited.

Tests that need a log with particular values (a non-finite loss at one step, a status as if
the run had been killed) build it this way instead of writing into the file's datasets, so
that the copy is a well-formed log of the current format (checksums and all).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from gradscope.reading.readers import (
    columns_of,
    log_status,
    open_log,
    read_columns,
    read_table,
    read_weights,
)
from gradscope.record.writer import LogWriter

TABLE_NAMES = ("steps", "layers", "epochs", "probes")


def rewrite(src, dst, edit=None, status: str | None = None, message: str | None = None):
    """Write ``dst``: the log ``src`` row for row (tables, per-unit arrays, parameters),
    after ``edit(tables)`` changed the dict of DataFrames in place; ``status`` and
    ``message`` replace the run's (``"running"`` leaves the copy open as a killed run
    leaves its log). Snapshots and normalisation arrays are not copied."""
    with open_log(src) as f:
        config = json.loads(f.attrs["config"])
        edges = np.asarray(f["probe_units"].attrs["hist_edges"])
        tables = {t: read_table(f, t) for t in TABLE_NAMES}
        units = read_columns(f, "probe_units")
        unit_cols = columns_of(f, "probe_units")
        st = log_status(f)
    initial = [a for pair in read_weights(src, 0) for a in pair]
    final = [a for pair in read_weights(src, "final") for a in pair]
    if edit is not None:
        edit(tables)
    widths = [unit_cols[f"dead_{l}"][1][0] for l in range(len(initial) // 2 - 1)
              if f"dead_{l}" in unit_cols]
    dst = Path(dst)
    target = dst.with_name(f"{dst.stem}.writing.h5") if status == "running" else dst
    w = LogWriter(target, config, initial, edges, widths=widths or None, flush_interval=0.0)
    by_step = {t: dict(tuple(df.groupby("step", sort=False))) for t, df in tables.items()}
    unit_at = {int(s): i for i, s in enumerate(units["step"])}
    for s in tables["steps"]["step"]:
        for t in TABLE_NAMES:
            rows = by_step[t].get(s)
            if rows is not None and len(rows):
                w.append(t, len(rows), **{c: rows[c].to_numpy() for c in rows.columns})
        if int(s) in unit_at:
            i = unit_at[int(s)]
            n_hidden = len([k for k in unit_cols if k.startswith("dead_")])
            w.append_units(int(s), [units[f"dead_{l}"][i] for l in range(n_hidden)],
                           [units[f"hist_{l}"][i] for l in range(n_hidden)])
        w.end_step()
    status = status or st["status"]
    message = st["message"] if message is None else message
    if status == "running":
        # what a kill leaves: the file as the last flush left it, never closed
        w.flush()
        shutil.copyfile(w.file, dst)
        w.close("interrupted")
        Path(w.path).unlink()
    else:
        w.close(status, message, params=final)
    return dst

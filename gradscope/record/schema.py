"""The log's schema: the one description of what a gradscope log holds, shared by every
writer (the numpy engine, the PyTorch adapter) and every reader.

Layout of format version 2 (documented in docs/log-format.md; version 1 in its history)::

    /                      attrs: format="gradscope-log", format_version, gradscope_version,
                           config (JSON), attrs_crc (CRC-32 of config and hist_edges)
    /status                scalar bytes: running | completed | diverged | interrupted | failed
    /status_message        scalar bytes: one line explaining the status
    /committed             int64 (6 * n_parts + 2,), attrs names: per part (the four tables,
                           probe_units, snapshots) rows, sealed rows, blocks, data bytes,
                           tail slot, 0; then the CRC-32 of status and message, and the CRC-32
                           of everything before it
    /<part>/data           uint8: the sealed blocks, each column encoded by record.blocks
    /<part>/index          int64 (blocks, 3 + 3 * columns): row_lo, rows, then per column
                           offset, bytes, CRC-32 of the encoded bytes; last the row's CRC-32
    /<part>/tail/<column>  (2 * block rows, *row shape): two slots for the rows after the
                           last sealed block, written plain; the counter names the live slot
    /<part>/tail_crc       int64 (2, columns): CRC-32 of each column's rows in each slot
    /params/initial/*, /params/final/*: W_<l>, b_<l> (and with --norm gamma_<l>, beta_<l>,
                           running_mean_<l>, running_var_<l>), plain datasets
    /params_crc            int64 (2, arrays): CRC-32 of each array (initial, final)

The parts and their columns: ``steps``, ``layers``, ``epochs``, ``probes`` (TABLES below);
``probe_units``: step, dead_<l> (width_l) uint8 and hist_<l> (bins) int64 per hidden layer;
``snapshots``: step, W_<l>, b_<l> (and the normalisation arrays) every --snapshot-every steps.

Every object exists before SWMR mode is switched on (HDF5 allows no new object after).
Rows are buffered in memory; a flush seals every whole block (compressed, checksummed,
appended, never rewritten), writes the remaining rows plain into the tail slot not in
use, and only then writes the counter, so a reader (or a file left by SIGKILL) sees
every committed row, and a changed byte is found by a checksum, never read as a number.
"""

from __future__ import annotations

import numpy as np

FORMAT = "gradscope-log"
FORMAT_VERSION = 2
#: the versions this gradscope reads
READABLE_VERSIONS = (1, 2)

F8, I8 = np.float64, np.int64

STEP_COLUMNS = {
    "step": I8, "epoch": I8, "loss": F8, "accuracy": F8, "lr": F8,
    "grad_norm_total": F8, "time": F8, "clipped": I8, "skipped": I8,
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
OPTIONAL_COLUMNS = {"steps": {"clipped": 0, "skipped": 0}}
#: the names of the normalisation arrays in /params/* and /snapshots, in their list order
NORM_PARAM_NAMES = ("gamma", "beta")
NORM_STATE_NAMES = ("running_mean", "running_var")
#: The optimizer options of a run's config: given at its top level (None: the optimizer's
#: default), resolved in its ``optimizer_hyper``.
OPTIMIZER_OPTIONS = ("lr", "momentum", "beta1", "beta2", "eps", "rho", "alpha", "weight_decay")
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
#: rows per sealed block of each part (a block is compressed as a whole; the rows after the
#: last whole block wait in a plain tail slot)
#: (1024 rows compress as well as 4096 within 1%, and the two plain tail slots, which a
#: short run pays in full, stay small)
BLOCK_ROWS = {"steps": 1024, "layers": 1024, "epochs": 256, "probes": 1024,
              "probe_units": 16, "snapshots": 1}
#: slots per part in /committed
COUNTER_FIELDS = ("rows", "sealed", "blocks", "data_bytes", "slot", "reserved")


class LogError(ValueError):
    """A file that is not a readable gradscope log; the message is one line for the user."""


class CorruptLogError(LogError):
    """Bytes of the log changed after they were written: a checksum does not match."""


class LogBusyError(LogError):
    """Another process is writing the log (it holds the log's lock)."""

"""The log's schema: the one description of what a gradscope log holds, shared by every
writer (the numpy engine, the PyTorch adapter) and every reader.

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

import numpy as np

FORMAT = "gradscope-log"
FORMAT_VERSION = 1

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
STATUSES = ("running", "completed", "diverged", "interrupted")


class LogError(ValueError):
    """A file that is not a readable gradscope log; the message is one line for the user."""

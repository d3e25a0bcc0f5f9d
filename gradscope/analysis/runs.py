"""The run table: one row per run, one name per quantity.

The report's sweep pages (:func:`gradscope.views.report.run_table`), the sweep summary
(:func:`gradscope.training.sweep.summarize`, summary.csv) and :func:`run_table` here all build
their rows with :func:`run_row`, so a column means the same everywhere; docs/log-format.md
lists the columns (:data:`RUN_COLUMNS`). The consumers add the run's options (config keys:
``depth``, ``activation``, ``lr``, ...) beside them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..record.schema import LogError
from .diagnose import CHECKS, Diagnosis, diagnose, load_frames

#: The measured columns of the run table, in order (the options are added by the consumers).
RUN_COLUMNS = (
    "run", "status", "message", "verdict", "severity", "causes", "flags", *CHECKS,
    "final_step", "epochs_logged", "train_seconds",
    "loss_start", "loss_end", "chance_loss", "loss_fall",
    "accuracy", "accuracy_split", "chance_accuracy", "n_classes",
    "final_train_loss", "final_train_accuracy", "final_val_loss", "final_val_accuracy",
    "ratio_first", "first_step", "ratio_early", "ratio_median", "ratio_last",
    "grad_ratio_first", "grad_ratio_early", "predicted_ratio", "chi1",
    "signal_ratio", "predicted_signal_ratio", "update_ratio",
    "loss_spread", "loss_climb",
    "dead_frac", "dead_frac_max", "dead_step", "saturated_frac_max",
    "error",
)
#: The columns holding one boolean per check.
CHECK_COLUMNS = CHECKS


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def run_row(d: Diagnosis, *, steps: pd.DataFrame | None = None,
            epochs: pd.DataFrame | None = None) -> dict:
    """One row of the run table from a diagnosis and the run's steps and epochs tables."""
    f = d.findings
    prog = f["not_learning"].numbers
    van = f["vanishing"].numbers
    dead = f["dead_units"]
    by_layer = [v for v in (dead.numbers.get("by_layer") or {}).values() if math.isfinite(v)]
    sat = f["saturated"]
    theory = d.theory or {}
    row = {
        "run": d.run or "", "status": d.status, "message": d.status_message,
        "verdict": d.verdict, "severity": d.severity or "",
        "causes": ",".join(d.cause_names), "flags": ",".join(d.flags),
    }
    for name in CHECKS:
        row[name] = bool(f[name].flagged)
    last = steps.iloc[-1] if steps is not None and len(steps) else None
    row["final_step"] = int(last["step"]) if last is not None else math.nan
    row["train_seconds"] = _f(last["time"]) if last is not None and "time" in last else math.nan
    row["epochs_logged"] = len(epochs) if epochs is not None else 0
    ep = epochs.iloc[-1] if epochs is not None and len(epochs) else None
    for col in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        row[f"final_{col}"] = _f(ep[col]) if ep is not None and col in ep else math.nan
    row.update({
        "loss_start": _f(prog.get("loss_start")), "loss_end": _f(prog.get("loss_end")),
        "chance_loss": _f(prog.get("chance_loss")), "loss_fall": _f(prog.get("loss_fall")),
        "accuracy": _f(prog.get("accuracy")), "accuracy_split": prog.get("accuracy_split", ""),
        "chance_accuracy": _f(prog.get("chance_accuracy")),
        "n_classes": (round(1 / prog["chance_accuracy"])
                      if math.isfinite(_f(prog.get("chance_accuracy"))) else None),
        "ratio_first": _f(van.get("ratio_first")), "first_step": van.get("first_step"),
        "ratio_early": _f(van.get("ratio_median_early")),
        "ratio_median": _f(van.get("ratio_median")), "ratio_last": _f(van.get("ratio_last")),
        "grad_ratio_first": _f(van.get("grad_ratio_first")),
        "grad_ratio_early": _f(van.get("grad_ratio_median_early")),
        "predicted_ratio": _f(theory.get("predicted_ratio")), "chi1": _f(theory.get("chi1")),
        "signal_ratio": _f(f["collapsed_signal"].numbers.get("signal_ratio")),
        "predicted_signal_ratio": _f(f["collapsed_signal"].numbers.get("predicted_signal_ratio")),
        "update_ratio": _f(f["stalled_updates"].value),
        "loss_spread": _f(f["unstable_loss"].numbers.get("spread")),
        "loss_climb": _f(f["unstable_loss"].numbers.get("climb")),
        "dead_frac": float(np.mean(by_layer)) if dead.applicable and by_layer else math.nan,
        "dead_frac_max": float(np.max(by_layer)) if dead.applicable and by_layer else math.nan,
        "dead_step": dead.numbers.get("step") if dead.applicable and by_layer else None,
        "saturated_frac_max": _f(sat.value) if sat.applicable else math.nan,
        "error": "",
    })
    return row


def error_row(path, message: str, status: str = "unreadable") -> dict:
    """The row of a log that could not be read: NaN / empty measurements, ``error`` set."""
    row = {c: math.nan for c in RUN_COLUMNS}
    row.update(run=str(path), status=status, message=message, verdict="", severity="",
               causes="", flags="", accuracy_split="", error=message,
               first_step=None, dead_step=None, n_classes=None)
    for name in CHECKS:
        row[name] = pd.NA
    return row


def run_table(paths, **thresholds) -> pd.DataFrame:
    """One row per log (:data:`RUN_COLUMNS`); an unreadable log gets a row with ``error``
    (its one-line message) and ``status`` ``unreadable``."""
    rows = []
    for p in paths:
        try:
            frames = load_frames(p)
            d = diagnose(p, frames=frames, **thresholds)
        except LogError as e:
            rows.append(error_row(p, str(e)))
            continue
        rows.append(run_row(d, steps=frames["steps"], epochs=frames["epochs"]))
    return table_frame(rows)


def table_frame(rows: list[dict], extra_columns=()) -> pd.DataFrame:
    """The rows as a DataFrame with the run table's columns and types."""
    df = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *extra_columns])
    for name in CHECKS:
        df[name] = df[name].astype("boolean")
    for c in ("verdict", "severity", "causes", "flags", "message", "error", "accuracy_split"):
        df[c] = df[c].fillna("")
    return df


__all__ = ["CHECK_COLUMNS", "RUN_COLUMNS", "error_row", "run_row", "run_table", "table_frame"]

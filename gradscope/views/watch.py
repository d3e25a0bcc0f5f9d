"""A live terminal view of one run, or of a folder of runs, while their logs grow.

``gradscope watch RUN.h5`` shows, for the latest logged steps: the back-propagated gradient
norm of every layer as a bar on a log scale (a vanishing gradient is a staircase falling
towards layer 0), the weight-gradient norm, the update/weight ratio, the dead and saturated
shares, the loss curve as a sparkline and the verdicts of :func:`gradscope.diagnose` as soon
as the log holds the evidence. ``gradscope watch DIR`` shows one row per run (status, step,
loss, gradient ratio, verdict), the runs that need attention first; runs that start later
(a sweep's ``.partial/`` logs, or any new ``*.h5``) are picked up.

The view is a reader like any other: it opens each log read-only through SWMR
(:func:`gradscope.reading.readers.open_log`) for the moment of a read and never writes, so
the writer is neither blocked nor slowed beyond the reader's own CPU time. Each refresh reads
only the rows committed since the last one (:func:`~gradscope.reading.readers.read_rows`); the
history it keeps for the sparkline and the verdicts is thinned to at most ``KEEP_STEPS`` steps
(every other step is dropped when it grows past that; probe steps are kept), so a long run
costs the view the same as a short one. A log that stops growing while its status still says
``running`` for ``stale`` seconds is shown as ``stalled`` (killed, or a step that takes that
long). The view exits by itself when every run has ended (completed, diverged, interrupted,
stalled, failed), or on ``q`` or Ctrl-C.

``rich`` (the optional ``watch`` extra) is imported only here.
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.diagnose import CAUSES, FAILING, WARNING, Diagnosis
from ..reading.readers import committed_rows, log_status, open_log, read_config, read_rows
from ..record.schema import LogError

#: history kept per run (steps); thinned by halves past it
KEEP_STEPS = 2000
#: a log with more layer rows than this is read binned on first sight (reading.readers is
#: fast, but a million rows would stall the first frame)
BINNED_FIRST_READ = 400_000
#: the latest values are medians over this many logged steps (one step's batch is noisy)
RECENT = 5
#: seconds without a write after which a "running" log is shown as stalled
STALE = 30.0
#: seconds a new file may stay unreadable (being created) before it is shown as unreadable
UNREADABLE_AFTER = 5.0
#: seconds between two diagnoses of a run that keeps growing
DIAGNOSE_EVERY = 5.0
#: statuses of a run that will not change any more
ENDED = ("completed", "diverged", "interrupted", "stalled", "failed", "unreadable")
SPARK = "▁▂▃▄▅▆▇█"
#: how much a status asks for attention (lower first) in the folder view
_ATTENTION = {"diverged": 0, "failed": 1, "unreadable": 1, "stalled": 2, "interrupted": 3,
              "running": 5, "completed": 6, "waiting": 7}


def parse_every(text) -> float:
    """``"2s"``, ``"500ms"``, ``"1m"`` or a number of seconds; ValueError with a one-line
    message otherwise."""
    s = str(text).strip().lower()
    scale = 1.0
    for suffix, k in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if s.endswith(suffix):
            s, scale = s[: -len(suffix)], k
            break
    try:
        v = float(s) * scale
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and 0.05 <= v <= 3600):
        raise ValueError(f"{text!r}; accepted: a duration from 50ms to 1h, e.g. 2s, 500ms, 1m")
    return v


# -- following one log -----------------------------------------------------------------------
@dataclass
class RunTail:
    """One log followed as it grows: reads only the rows committed since the last poll."""

    path: Path
    name: str
    stale: float = STALE
    status: str = "waiting"
    message: str = ""
    config: dict | None = None
    rows: dict = field(default_factory=lambda: {"steps": 0, "layers": 0, "probes": 0})
    steps: pd.DataFrame | None = None     # thinned step history
    layers: pd.DataFrame | None = None    # thinned layer history (no probe columns)
    probes: pd.DataFrame | None = None    # every probe row
    last_step: int | None = None
    diagnosis: Diagnosis | None = None
    diagnosis_error: str = ""             # why the last diagnosis failed, if it did
    error: str = ""
    _stamp: tuple = ()
    _grew_at: float = 0.0
    _diag_rows: int = -1
    _diag_at: float = -math.inf
    _error_at: float | None = None
    _ended_reads: int = 0

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def depth(self) -> int | None:
        if self.config and self.config.get("widths") is not None:
            return len(self.config["widths"])
        if self.layers is not None and len(self.layers):
            return int(self.layers["layer"].max())
        return None

    @property
    def total_steps(self) -> int | None:
        t = (self.config or {}).get("total_steps")
        return int(t) if t is not None else None

    def poll(self, now: float | None = None) -> bool:
        """Read what was added since the last poll; True when anything changed."""
        now = time.monotonic() if now is None else now
        try:
            st = self.path.stat()
        except OSError:
            if self.status == "waiting":
                return False
            self.status, self.message = "unreadable", f"{self.path.name} is gone"
            return True
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp, self._grew_at = stamp, now
        elif self.status == "stalled" or (self.ended and self._ended_reads >= 2):
            # nothing was written since; an ended run is read once more after its status
            # said so (the writer sets the status before its last rows' counter)
            return False
        try:
            changed = self._read()
        except LogError as e:
            # a log created a moment ago may not be readable yet; a failure that persists
            # is the file's, and is shown
            self.error = str(e)
            if self.config is None and now - self._first_error(now) < UNREADABLE_AFTER:
                self._stamp = ()
                return False
            self.status, self.message = "unreadable", self.error
            return True
        self._ended_reads = self._ended_reads + 1 if self.ended else 0
        if self.status == "running" and now - self._grew_at > self.stale:
            self.status = "stalled"
            self.message = (f"no write for {self.stale:.0f} s while 'running' "
                            "(killed, or a very slow step)")
            return True
        return changed

    def _first_error(self, now: float) -> float:
        if self._error_at is None:
            self._error_at = now
        return self._error_at

    def _read(self) -> bool:
        if self.config is None:
            self.config = read_config(self.path)
        with open_log(self.path) as f:
            st = log_status(f)
            c = committed_rows(f)
            if any(c[t] < n for t, n in self.rows.items()):
                self._reset()   # fewer rows than read before: a new run in the same file
            binned = self.rows["layers"] == 0 and c["layers"] > BINNED_FIRST_READ
            new = {t: read_rows(f, t, self.rows[t], c[t])
                   for t in ("steps", "layers", "probes")
                   if c[t] > self.rows[t] and not (binned and t == "layers")}
        if self.config is None:
            self.config = read_config(self.path)
        if binned:
            new["layers"] = self._binned_layers()
        old = (self.status, self.message, self.last_step)
        self.status, self.message = st["status"], st["message"]
        self.last_step = st["last_step"]
        for t, df in new.items():
            # as many as were read: a dataset's extent seen by a SWMR reader can lag the
            # counter, and the rest is read next time
            self.rows[t] = c[t] if binned and t == "layers" else self.rows[t] + len(df)
        if "steps" in new:
            self.steps = _append(self.steps, new["steps"])
        if "layers" in new:
            self.layers = _append(self.layers, new["layers"])
        if "probes" in new:
            self.probes = _append(self.probes, new["probes"])
        self._thin()
        return bool(new) or old != (self.status, self.message, self.last_step)

    def _reset(self) -> None:
        self.rows = {t: 0 for t in self.rows}
        self.steps = self.layers = self.probes = self.diagnosis = self.config = None
        self._diag_rows = -1

    def _binned_layers(self) -> pd.DataFrame:
        # a long log seen for the first time: medians over time bins (the report's reader)
        from .report import read_layers_binned

        lay = read_layers_binned(self.path, max_steps=KEEP_STEPS // 2)
        lay = lay.drop(columns=[c for c in lay.columns if c not in _LAYER_COLUMNS])
        with open_log(self.path) as f:
            self.rows["layers"] = committed_rows(f)["layers"]
        return lay

    def _thin(self) -> None:
        while self.steps is not None and len(self.steps) > KEEP_STEPS:
            self.steps = _halve(self.steps, set())
        keep = set() if self.probes is None else set(self.probes["step"].tolist())
        while self.layers is not None and self.layers["step"].nunique() > KEEP_STEPS:
            n = len(self.layers)
            self.layers = _halve(self.layers, keep)
            if len(self.layers) == n:
                break

    # -- what the views show -------------------------------------------------------------
    def recent_layers(self) -> pd.DataFrame | None:
        """Median of each layer's metrics over the last ``RECENT`` logged steps."""
        if self.layers is None or not len(self.layers):
            return None
        steps = np.unique(self.layers["step"].to_numpy())[-RECENT:]
        lay = self.layers[self.layers["step"].isin(steps)]
        num = lay.drop(columns=["step"]).replace([np.inf, -np.inf], np.nan)
        return num.groupby("layer").median()

    def latest_probe(self) -> pd.DataFrame | None:
        if self.probes is None or not len(self.probes):
            return None
        last = self.probes["step"].max()
        return self.probes[self.probes["step"] == last].set_index("layer")

    def ratio(self) -> float:
        """Layer 0's back-propagated gradient over the output layer's, recent median."""
        r = self.recent_layers()
        if r is None or "delta_norm" not in r or len(r) < 2:
            return math.nan
        v = r["delta_norm"]
        out = v.iloc[-1]
        return float(v.iloc[0] / out) if out > 0 and math.isfinite(out) else math.nan

    def steps_per_second(self) -> float:
        s = self.steps
        if s is None or len(s) < 2 or self.status != "running":
            return math.nan
        tail = s.iloc[-50:]
        dt = float(tail["time"].iloc[-1] - tail["time"].iloc[0])
        ds = float(tail["step"].iloc[-1] - tail["step"].iloc[0])
        return ds / dt if dt > 0 else math.nan

    def diagnose(self, now: float | None = None, force: bool = False) -> Diagnosis | None:
        """The verdicts on the history held, recomputed when new rows came and at most every
        ``DIAGNOSE_EVERY`` seconds while the run grows."""
        now = time.monotonic() if now is None else now
        n = sum(self.rows.values())
        if self.layers is None or self.config is None:
            return self.diagnosis
        if n == self._diag_rows and self.diagnosis is not None and not force:
            return self.diagnosis
        if not (force or self.ended or now - self._diag_at >= DIAGNOSE_EVERY
                or self.diagnosis is None):
            return self.diagnosis
        from ..analysis.diagnose import diagnose

        layers = self.layers
        if self.probes is not None and len(self.probes):
            layers = layers.merge(self.probes, on=["step", "layer"], how="left")
        status = {"status": "running" if self.status == "stalled" else self.status,
                  "message": self.message, "last_step": self.last_step, "rows": dict(self.rows)}
        try:
            self.diagnosis = diagnose(str(self.path), frames={
                "steps": self.steps, "layers": layers, "config": self.config,
                "status": status})
            self.diagnosis_error = ""
        except Exception as e:  # noqa: BLE001 - a view shows the problem, it does not stop
            self.diagnosis, self.diagnosis_error = None, f"{type(e).__name__}: {e}"
        self._diag_rows, self._diag_at = n, now
        return self.diagnosis


_LAYER_COLUMNS = ("step", "layer", "grad_norm", "bias_grad_norm", "delta_norm", "weight_norm",
                  "update_norm", "update_ratio", "act_mean", "act_std", "saturated_frac")


def _append(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    return new.reset_index(drop=True) if old is None or not len(old) else pd.concat(
        [old, new], ignore_index=True)


def _halve(df: pd.DataFrame, keep: set) -> pd.DataFrame:
    """Every other step (and the last, and the steps in ``keep``)."""
    steps = np.unique(df["step"].to_numpy())
    kept = set(steps[::2].tolist()) | {int(steps[-1])} | keep
    return df[df["step"].isin(kept)].reset_index(drop=True)


# -- which runs ------------------------------------------------------------------------------
class Watch:
    """The runs a ``gradscope watch`` follows: one file, several, or a folder's ``*.h5``
    (and a sweep's ``.partial/*.h5`` and planned runs)."""

    def __init__(self, targets, *, stale: float = STALE):
        self.targets = [Path(t) for t in targets]
        self.folder = self.targets[0] if len(self.targets) == 1 and self.targets[0].is_dir() \
            else None
        self.stale = stale
        self.runs: dict[str, RunTail] = {}
        self.planned: list[str] = []
        self.failed_notes: dict[str, str] = {}
        self._new_at = time.monotonic()
        if self.folder is None:
            for p in self.targets:
                self.runs[str(p)] = RunTail(p, p.name, stale=stale)

    @property
    def single(self) -> RunTail | None:
        return next(iter(self.runs.values())) if self.folder is None and len(self.runs) == 1 \
            else None

    def scan(self) -> None:
        """Pick up logs that appeared in the folder (and a partial log renamed to its final
        name when its run completed)."""
        if self.folder is None:
            return
        spec = self.folder / "sweep.json"
        if spec.exists():
            try:
                self.planned = [r["name"] for r in json.loads(spec.read_text()).get("runs", [])]
            except (OSError, ValueError, TypeError, KeyError):
                pass
        partial = self.folder / ".partial"
        found = {p.stem: p for p in sorted(partial.glob("*.h5"))} if partial.is_dir() else {}
        found.update({p.stem: p for p in sorted(self.folder.glob("*.h5"))})
        if partial.is_dir():
            for note in partial.glob("*.failed"):
                if note.stem not in found:
                    try:
                        self.failed_notes[note.stem] = note.read_text().strip().splitlines()[0]
                    except (OSError, IndexError):
                        self.failed_notes[note.stem] = "failed"
        for name, path in found.items():
            tail = self.runs.get(name)
            if tail is None:
                self.runs[name] = RunTail(path, name, stale=self.stale)
                self._new_at = time.monotonic()
            elif tail.path != path:
                tail.path, tail._stamp = path, ()   # same file, renamed: keep what was read
                if tail.status in ("stalled", "unreadable"):
                    tail.status = "running"

    def poll(self) -> bool:
        self.scan()
        now = time.monotonic()
        changed = False
        for tail in self.runs.values():
            changed |= tail.poll(now)
            tail.diagnose(now)
        return changed

    def rows(self) -> list[dict]:
        """One dict per run (and planned run without a log), sorted by what needs attention."""
        out = []
        for name, t in self.runs.items():
            d = t.diagnosis
            verdict = (d.headline if d is not None else "?" if t.diagnosis_error else "")
            out.append({"name": t.name, "status": t.status, "message": t.message or t.error,
                        "step": t.last_step, "total": t.total_steps,
                        "loss": _last_loss(t), "ratio": t.ratio(),
                        "verdict": verdict if t.status != "waiting" else "",
                        "alarm": _alarmed(d), "severity": d.severity if d else None})
        have = {t.name for t in self.runs.values()} | {Path(n).stem for n in self.runs}
        for name in self.planned:
            if name not in have:
                st = "failed" if name in self.failed_notes else "waiting"
                out.append({"name": name, "status": st,
                            "message": self.failed_notes.get(name, ""), "step": None,
                            "total": None, "loss": math.nan, "ratio": math.nan, "verdict": "",
                            "alarm": False, "severity": None})
        for r, short in zip(out, short_names([r["name"] for r in out])):
            r["short"] = short
        return sorted(out, key=_attention)

    def all_ended(self, linger: float = 0.0) -> bool:
        """Every run has ended (and, in a folder, every planned run has a final log or failed,
        and no new log appeared for ``linger`` seconds)."""
        if not self.runs:
            return False
        if not all(t.ended for t in self.runs.values()):
            return False
        if self.folder is None:
            return True
        names = {t.name for t in self.runs.values()}
        for name in self.planned:
            if name not in names and name not in self.failed_notes:
                return False
            t = self.runs.get(name)
            if t is not None and t.path.parent.name == ".partial" and t.status != "failed":
                return False   # a sweep renames a finished log; retries reuse the partial
        return time.monotonic() - self._new_at >= linger


def short_names(names: list[str]) -> list[str]:
    """The names without the ``-``-separated words that every name starts or ends with (a
    sweep's runs differ in a few options in the middle of long names)."""
    if len(names) < 2:
        return list(names)
    words = [n.split("-") for n in names]
    k = min(len(w) for w in words) - 1
    head = 0
    while head < k and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while tail < k - head and len({w[len(w) - 1 - tail] for w in words}) == 1:
        tail += 1
    return ["-".join(w[head:len(w) - tail]) or n for w, n in zip(words, names)]


def _last_loss(t: RunTail) -> float:
    if t.steps is None or not len(t.steps):
        return math.nan
    v = t.steps["loss"].iloc[-RECENT:].to_numpy(float)
    return float(v[-1]) if not np.isfinite(v).all() else float(np.median(v))


def _alarmed(d: Diagnosis | None) -> bool:
    """A failing verdict (not learning, diverged) or a warning."""
    return d is not None and d.severity is not None


def _attention(row: dict) -> tuple:
    rank = _ATTENTION.get(row["status"], 4)
    if row["alarm"] and row["status"] in ("running", "completed"):
        rank -= 0.5 if row["status"] == "completed" else 1.5
    r = row["ratio"]
    extreme = -abs(math.log10(r)) if r and math.isfinite(r) and r > 0 else 0.0
    return (rank, extreme, row["name"])


# -- drawing ---------------------------------------------------------------------------------
def fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if pct:
        return f"{100 * x:.0f}%"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    return f"{x:.2g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.3g}"


def sparkline(values, width: int = 60) -> tuple[str, bool]:
    """``values`` in ``width`` characters (bin means; ``×`` where a bin holds a non-finite
    value); log-scaled when positive values span more than a decade. Returns the line and
    whether it is log-scaled."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return "", False
    bins = np.array_split(np.arange(len(v)), min(width, len(v)))
    means, bad = [], []
    for b in bins:
        chunk = v[b]
        ok = chunk[np.isfinite(chunk)]
        bad.append(len(ok) < len(chunk))
        means.append(ok.mean() if len(ok) else math.nan)
    m = np.array(means)
    fin = m[np.isfinite(m)]
    log = bool(len(fin) and fin.min() > 0 and fin.max() / fin.min() > 10)
    if log:
        m = np.log10(m)
        fin = np.log10(fin)
    lo, hi = (fin.min(), fin.max()) if len(fin) else (0.0, 1.0)
    chars = []
    for x, b in zip(m, bad):
        if b or not math.isfinite(x):
            chars.append("×")
        else:
            k = 0 if hi <= lo else int(round((x - lo) / (hi - lo) * (len(SPARK) - 1)))
            chars.append(SPARK[k])
    return "".join(chars), log


def log_bars(values, width: int) -> tuple[list[int], float, float]:
    """Bar lengths (0..width) of positive ``values`` on a log scale from the decade below the
    smallest to the decade above the largest; non-positive or non-finite values get 0."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    if not ok.any():
        return [0] * len(v), math.nan, math.nan
    lg = np.log10(v[ok])
    lo, hi = math.floor(lg.min()), math.ceil(lg.max())
    if hi - lo < 1:
        lo -= 1
    out = []
    for x, good in zip(v, ok):
        out.append(max(1, int(round((math.log10(x) - lo) / (hi - lo) * width))) if good else 0)
    return out, float(lo), float(hi)


def _status_style(status: str) -> str:
    return {"running": "bold cyan", "completed": "bold green", "diverged": "bold red",
            "stalled": "bold yellow", "interrupted": "yellow", "failed": "bold red",
            "unreadable": "bold red", "waiting": "dim"}.get(status, "")


def render_run(t: RunTail, width: int = 100, every: float | None = None):
    """The single-run view as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = []
    head = Text()
    head.append(f"{t.name}  ", style="bold")
    head.append(t.status, style=_status_style(t.status))
    if t.last_step is not None:
        tot = t.total_steps
        head.append(f"   step {t.last_step + 1:,}" + (f" / {tot:,}" if tot else ""))
    rate = t.steps_per_second()
    if math.isfinite(rate):
        head.append(f"   {rate:,.0f} steps/s")
    loss = _last_loss(t)
    if math.isfinite(loss) or t.last_step is not None:
        head.append(f"   loss {fmt(loss)}")
    parts.append(head)
    if t.config:
        from ..analysis.diagnose import config_summary
        parts.append(Text(config_summary(t.config), style="dim"))
    if t.message:
        parts.append(Text(t.message, style=_status_style(t.status)))
    rec = t.recent_layers()
    if rec is None:
        if t.status in ENDED and t.status != "stalled":  # nothing more will come
            parts.append(Text("no step was logged before the run ended", style="dim"))
        else:
            parts.append(Text("waiting for the first logged step ...", style="dim"))
        return Group(*parts)

    depth = t.depth if t.depth is not None else int(rec.index.max())
    bar_w = max(10, min(44, width - 56))
    delta = rec["delta_norm"].reindex(range(depth + 1))
    bars, lo, hi = log_bars(delta.to_numpy(), bar_w)
    probe = t.latest_probe()
    thr = t.diagnosis.thresholds["vanishing"] if t.diagnosis else 1e-3
    out_v = delta.iloc[-1]
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False,
                  title_justify="left", title_style="bold")
    table.title = (f"back-propagated gradient |dL/dz| per layer, log scale "
                   f"(median of the last {min(RECENT, t.layers['step'].nunique())} logged steps)")
    table.add_column("layer", justify="right")
    table.add_column(f"10^{lo:.0f}" + " " * max(0, bar_w - 10) + f"10^{hi:.0f}"
                     if math.isfinite(lo) else "", no_wrap=True, min_width=bar_w)
    table.add_column("|dL/dz|", justify="right")
    table.add_column("|dL/dW|", justify="right")
    table.add_column("update/W", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("saturated", justify="right")
    for l in range(depth + 1):
        v = delta.iloc[l]
        r = rec.loc[l] if l in rec.index else None
        rel = v / out_v if out_v and math.isfinite(out_v) and out_v > 0 else math.nan
        style = ("red" if math.isfinite(rel) and rel < thr else
                 "magenta" if math.isfinite(rel) and rel > 1e3 else "green")
        bar = Text("█" * bars[l], style=style) if bars[l] else Text(
            "nan" if not math.isfinite(v) else "0", style="bold red")
        dead = sat = "-"
        if l < depth and not _applies(t, "saturated"):
            sat = "n/a"
        elif l < depth:
            if probe is not None and l in probe.index:
                dead = fmt(probe.loc[l, "dead_frac"], pct=True)
                sat = fmt(probe.loc[l, "probe_saturated_frac"], pct=True)
            elif r is not None:
                sat = fmt(r.get("saturated_frac", math.nan), pct=True)
        if l < depth and not _applies(t, "dead_units"):
            dead = "n/a"
        name = "out" if l == depth else str(l)
        table.add_row(name, bar, fmt(v), fmt(None if r is None else r["grad_norm"]),
                      fmt(None if r is None else r["update_ratio"]), dead, sat)
    parts.append(Text(""))
    parts.append(table)
    if t.steps is not None and len(t.steps):
        line, log = sparkline(t.steps["loss"].to_numpy(float), width=max(20, min(70, width - 30)))
        lv = t.steps["loss"].to_numpy(float)
        fin = lv[np.isfinite(lv) & (lv > 0)] if log else lv[np.isfinite(lv)]
        s = Text("\nloss  ", style="bold")
        s.append(line, style="cyan")
        if len(fin):
            s.append(f"  {fmt(fin.min())} .. {fmt(fin.max())}" + (" (log)" if log else ""),
                     style="dim")
        s.append(f"   steps {int(t.steps['step'].iloc[0]):,}-{int(t.steps['step'].iloc[-1]):,}",
                 style="dim")
        parts.append(s)
    parts.append(Text(""))
    parts.extend(_verdict_lines(t))
    return Group(*parts)


def _applies(t: RunTail, name: str) -> bool:
    """Whether the diagnosis judges ``name`` for this run (dead units: ReLU family;
    saturation: sigmoid, tanh); True until a diagnosis says otherwise."""
    if t.diagnosis is None:
        return True
    f = t.diagnosis[name]
    return f.applicable or bool(f.layers)


def _verdict_lines(t: RunTail) -> list:
    from rich.text import Text

    d = t.diagnosis
    if d is None and t.diagnosis_error:
        return [Text(f"verdict: not judged ({t.diagnosis_error})", style="yellow")]
    if d is None:
        return [Text("verdict: waiting for evidence", style="dim")]
    style = {FAILING: "bold red", WARNING: "bold yellow"}.get(
        d.severity, "dim" if d.verdict == "no_data" else "bold green")
    lines = [Text.assemble(("verdict: ", "bold"), (d.headline, style))]
    # a failure's causes in their order (upstream first), then the other flags
    for i, c in enumerate(d.causes, 1):
        lines.append(Text(f"  {i}. {c.message}", style="red"))
    for name in d.flags:
        if name not in d.cause_names:
            lines.append(Text(f"  ✗ {d[name].message}",
                              style="red" if d[name].severity == FAILING else "yellow"))
    ok = []
    for name in CAUSES:
        f = d[name]
        if not f.flagged and name not in d.cause_names:
            label = name.replace("_", " ")
            ok.append(f"{label} n/a" if not f.applicable else f"no {label}")
    if ok:
        lines.append(Text("  ✓ " + ", ".join(ok), style="green"))
    return lines


def render_table(w: Watch, width: int = 100, height: int | None = None):
    """The folder view: one row per run, the ones that need attention first."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows = w.rows()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    alarms = sum(r["alarm"] for r in rows)
    head = Text()
    where = str(w.folder) if w.folder is not None else f"{len(w.targets)} logs"
    head.append(f"{where}  ", style="bold")
    head.append(f"{len(rows)} run{'s' if len(rows) != 1 else ''}: " + ", ".join(f"{n} {s}" for s, n in sorted(
        counts.items(), key=lambda kv: _ATTENTION.get(kv[0], 4))))
    if alarms:
        head.append(f"; {alarms} with an alarm", style="bold red")
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    name_w = max(12, min(48, width - 62))
    table.add_column("run", no_wrap=True, max_width=name_w, overflow="ellipsis")
    table.add_column("status", no_wrap=True)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("loss", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("verdict", no_wrap=True, overflow="ellipsis")
    shown = rows if height is None else rows[:max(1, height - 5)]
    for r in shown:
        step = "-" if r["step"] is None else f"{r['step'] + 1:,}" + (
            f"/{r['total']:,}" if r["total"] else "")
        verdict = r["verdict"] or ("" if r["status"] != "failed" else r["message"])
        vstyle = {FAILING: "bold red", WARNING: "bold yellow"}.get(
            r["severity"], "green" if verdict == "healthy" else "dim")
        table.add_row(r["short"], Text(r["status"], style=_status_style(r["status"])), step,
                      fmt(r["loss"]), fmt(r["ratio"]), Text(verdict, style=vstyle))
    parts = [head, table]
    if len(shown) < len(rows):
        parts.append(Text(f"... and {len(rows) - len(shown)} more (the healthiest)", style="dim"))
    parts.append(Text("ratio: layer 0's back-propagated gradient over the output layer's "
                      "(recent median)", style="dim"))
    return Group(*parts)


def render(w: Watch, width: int = 100, height: int | None = None, every: float | None = None,
           interactive: bool = False):
    from rich.console import Group
    from rich.text import Text

    body = render_run(w.single, width) if w.single is not None else render_table(w, width,
                                                                                  height)
    if not interactive:
        return body
    foot = "q: quit" + (f"   refresh every {every:g} s" if every else "")
    if w.all_ended():
        foot = "all runs have ended"
    return Group(body, Text(foot, style="dim"))


# -- the loop ----------------------------------------------------------------------------------
@contextmanager
def _keys():
    """``wait(seconds)`` returns a key pressed meanwhile (or None); cbreak mode on a tty."""
    fd = None
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            import termios
            import tty

            fd = sys.stdin.fileno()
            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (ImportError, OSError, ValueError):
            fd = None

    def wait(seconds: float):
        if fd is None:
            time.sleep(seconds)
            return None
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 32).decode(errors="ignore") if ready else None

    try:
        yield wait
    finally:
        if fd is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def check_targets(targets) -> None:
    """LogError (one line) for a target that cannot be watched; a folder may be empty."""
    targets = [Path(t) for t in targets]
    if not targets:
        raise LogError("give a log file (RUN.h5) or a folder of logs")
    if len(targets) > 1 and any(t.is_dir() for t in targets):
        raise LogError("give one folder, or one or more log files, not both")
    for t in targets:
        if not t.exists():
            raise LogError(f"{str(t)!r} does not exist; give a log file (RUN.h5) or a folder")
        if t.is_file():
            with open_log(t):
                pass


def watch(targets, *, every: float = 2.0, once: bool = False, stale: float = STALE,
          console=None, linger: float | None = None) -> int:
    """Show the runs until they have all ended (or q / Ctrl-C). ``once``: print the view
    once and return (what a script or a pipe gets)."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    w = Watch(targets, stale=stale)
    linger = max(3 * every, 5.0) if linger is None else linger
    if once or not console.is_terminal:
        w.poll()
        for t in w.runs.values():
            t.diagnose(force=True)
        console.print(render(w, console.width))
        return 0
    try:
        with _keys() as wait, Live(console=console, auto_refresh=False, transient=False,
                                   vertical_overflow="crop") as live:
            while True:
                w.poll()
                ended = w.all_ended(linger)
                if ended:
                    for t in w.runs.values():
                        t.diagnose(force=True)
                live.update(render(w, console.width, console.height - 2, every, True),
                            refresh=True)
                if ended:
                    break
                key = wait(every)
                if key and key.strip().lower().startswith("q"):
                    break
    except KeyboardInterrupt:
        pass
    return 0

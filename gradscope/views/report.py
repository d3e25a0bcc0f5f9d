"""A multi-page PDF report of one or more runs, and a plain-text verdict table.

:func:`make_report` reads each log, diagnoses it (:func:`gradscope.analysis.diagnose.diagnose`) and
writes one PDF (A4 landscape), one idea per page:

1. summary: each run's configuration, status, final training and validation loss and
   accuracy, its verdict (healthy, warning, not_learning, diverged) with the ranked causes
   of a failure, every check's evidence message and the mean-field theory line
   (several pages when the runs do not fit on one);
2. gradient flow: heatmaps of log10 ``grad_norm`` and ``delta_norm`` per layer and step;
3. gradient profile across depth at start / quarter / half / end, with the mean-field
   prediction at initialisation dashed;
4. dead ReLU units: dead fraction per layer over training and which units died when (only
   for runs with a ReLU-family activation; the page is left out when there are none);
5. activation saturation: activation distributions per layer at start and end (or mean and
   spread per layer when no histogram was recorded);
6. update / weight ratio with the 1e-3 guide;
7. loss and accuracy, training and validation, every run overlaid;
8. with several runs (up to ``COMPARISON_MAX_RUNS``): the first-to-last-layer gradient
   ratio of each run, grouped by activation / init / optimizer.

Pages 2-6 hold at most 6 panels (3 runs for the two-panel figures) and repeat for more runs.

Runs that form a grid (:func:`sweep_layout`: at least 3 runs whose depths differ along
with the activation, init or optimizer, e.g. a ``gradscope sweep`` folder) get three pages
after the summary, drawn from :func:`run_table` (one row per run):

- the vanishing-gradient phase diagram, :func:`gradscope.views.plots.phase_diagram`: the
  layer-0 / output gradient ratio (median over the first half of training, what the
  verdict judges) against depth, one line per activation x init, a panel per optimizer
  (and per variant: other options that differ, e.g. ``residual=on``), seeds as a median
  with a min-max band, the mean-field prediction dashed and the first-step ratios as
  crosses;
- dead ReLU units against depth (:func:`~gradscope.views.plots.depth_dead_units`), when some
  runs are of the ReLU family;
- the final accuracy over the grid (:func:`~gradscope.views.plots.grid_heatmap`).

Runs that differ only in a remedy (:func:`remedy_groups`: ``--residual``, ``--norm``,
``--dropout``, ``--clip-norm``, ``--clip-value``; same seed) get one page per group
after those: their gradient profiles across depth side by side on one log scale
(:func:`~gradscope.views.plots.profile_comparison`), titled ``Remedy: --residual (off vs on)``,
each panel titled with its setting and verdict.

With more than ``SAMPLE_ABOVE`` (12) runs the report stays short: the summary's verdict
table lists every run, followed by the alarms of the runs that have one (or did not
complete), not every check of every run; and the per-run pages 2-7 show a sample of
``SAMPLE_RUNS`` (6) runs (one per verdict in turn, the deepest and most extreme first; the
captions name them), so a sweep folder reports in seconds (docs/performance.md). Long sweep names are shortened in the
verdict table and the figures by leaving out the words every name starts or ends with (a
line says which).

Each log is read with one open (:func:`~gradscope.reading.run.read_run`, through
:func:`load_run`). Long logs are read binned
(:func:`~gradscope.reading.binned.read_layers_binned`): at most ``max_steps`` time bins,
each the medians over a window of at most ``per_bin`` logged steps at its centre, so the
time and memory of a report do not grow with the length of the run (docs/performance.md).
A log with more than ``FULL_DIAGNOSE_ROWS`` layer rows is diagnosed on ``DIAGNOSE_STEPS``
such bins instead of its full tables (the summary page says so). A log of a run that is
still running or was killed is reported from what it holds; a diverged run's NaN and inf
values are left out of the log-scale figures. A truncated file (an incomplete copy) is
refused by :func:`~gradscope.reading.readers.check_log_file` before HDF5 opens it.

:func:`collect_logs` expands directories into their ``*.h5`` logs; :func:`verdict_table`
formats the diagnoses for a terminal. Unusable input raises :class:`~gradscope.reading.readers.LogError`
with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import textwrap
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from ..analysis.diagnose import (
    CHECKS,
    FAILING,
    VERDICT_SEVERITY,
    WARNING,
    Diagnosis,
    diagnose,
    remedy_parts,
    resolve_thresholds,
)
from ..analysis.remedies import problems, remedies_for_run
from ..analysis.runs import run_row
from ..files import atomic_file
from ..reading.binned import MAX_STEPS, PER_BIN, read_layers_binned
from ..reading.readers import check_log_file
from ..reading.run import (  # noqa: F401  (the thresholds are part of this module's API)
    DIAGNOSE_PER_BIN,
    DIAGNOSE_STEPS,
    FULL_DIAGNOSE_ROWS,
    Run,
    read_run,
    train_options,
)
from ..record.schema import OPTIMIZER_OPTIONS, LogError
from . import plots

__all__ = [
    "PAGE_SIZE", "RunData", "check_log_file", "collect_logs", "comparison_summary",
    "load_run", "make_report", "read_layers_binned", "remedy_groups", "run_table",
    "sweep_layout", "verdict_table",
]

#: A4 landscape, inches.
PAGE_SIZE = (11.69, 8.27)
#: Panels per page (one per run), and runs per page for two-panel figures.
PANELS_PER_PAGE = 6
RUNS_PER_PAGE = 3
#: Lines of text on a summary page, their height (figure fraction), runs on a page at most.
SUMMARY_LINES = 50
_LINE = 0.016
RUNS_PER_SUMMARY_PAGE = 8
_WRAP = 165          # characters of a summary line (8.8 pt on A4 landscape)
_WRAP_BOLD = 148
_CAPTION_WRAP = 152
_RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 8.5, "legend.title_fontsize": 8.5,
    "pdf.fonttype": 42, "ps.fonttype": 42,
}


# -- inputs ---------------------------------------------------------------------------------
def collect_logs(inputs) -> list[Path]:
    """Log files named by ``inputs`` (paths of files or directories, or one such path).

    A directory stands for its ``*.h5`` files (sorted by name, numbers by value: ``d4``
    before ``d12``; not recursive); a file is
    kept as given (whether it is a gradscope log is checked when it is read). Duplicates
    are dropped. Raises :class:`LogError` for a path that does not exist or a directory
    without ``*.h5`` files.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted((q for q in p.glob("*.h5") if q.is_file()), key=_natural)
            if not found:
                raise LogError(f"{str(item)!r} is a directory without .h5 logs")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise LogError(f"{str(item)!r} does not exist")
    if not out:
        raise LogError("no log given")
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _natural(p: Path) -> tuple:
    """Sort key of a file name with its digit runs compared as numbers."""
    parts = re.split(r"(\d+)", p.name)
    return tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in parts), p.name


# -- reading --------------------------------------------------------------------------------
@dataclass
class RunData(Run):
    """What the report needs of one run: the run as read with one open
    (:func:`~gradscope.reading.run.read_run`, its layer table binned), a label and its
    diagnosis."""

    label: str = ""
    diagnosis: Diagnosis | None = None
    short: str | None = None   # a shorter label for figures (a sweep's names, shortened)

    @property
    def flabel(self) -> str:
        """The label for figure text (the short one if set), where a "$" would start a
        formula."""
        return (self.short or self.label).replace("$", r"\$")


def load_run(path, *, max_steps: int = MAX_STEPS, per_bin: int = PER_BIN, label=None,
             **thresholds) -> RunData:
    """Read one log (one open) and diagnose it for the report. Raises :class:`LogError`
    for a bad file."""
    run = read_run(path, max_steps=max_steps, per_bin=per_bin)
    return RunData(**{f.name: getattr(run, f.name) for f in fields(Run)},
                   label=label or run.path.stem, diagnosis=diagnose(run, **thresholds))


# -- text -----------------------------------------------------------------------------------
def _run_name(d: Diagnosis) -> str:
    return Path(d.run).name if d.run else "run"


def _why(d: Diagnosis) -> str:
    """The causes of a failure (upstream first), the warnings of a run that learns."""
    if d.failing:
        return ", ".join(d.cause_names) or "no cause found"
    return ", ".join(d.flags) or "-"


def verdict_table(diagnoses) -> str:
    """A short plain-text table of diagnoses, one line per run, for a terminal.

    Columns: run (file name), status, accuracy (the final accuracy the verdict judged, with
    ``(live)`` for a run still being written), verdict (:data:`~gradscope.analysis.diagnose.VERDICTS`)
    and why: for ``not_learning`` and ``diverged`` the causes, upstream first (or ``no cause
    found``), for ``warning`` the flagged checks.
    """
    head = ["run", "status", "accuracy", "verdict", "cause / warnings"]
    rows = []
    diagnoses = list(diagnoses)
    names, note = _short_names([_run_name(d) for d in diagnoses])
    for d, name in zip(diagnoses, names):
        if len(name) > _NAME_WIDTH:
            name = name[:22] + "..." + name[-23:]
        acc = d["not_learning"].numbers.get("accuracy")
        rows.append([name, d.status, _fmt(acc, pct=True) + (" (live)" if d.live else ""),
                     d.verdict, _why(d)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if note:
        lines.append(note)
    return "\n".join(lines)


_NAME_WIDTH = 48
_FIGURE_NAME_WIDTH = 40


def _short_names(names: list[str], width: int = _NAME_WIDTH) -> tuple[list[str], str]:
    """Names that fit ``width`` where possible: when some do not, ``-``-separated words
    that every name ends with, then words every name starts with, are left out, one at a
    time until the names fit (a sweep's names differ in the middle); a note says which.
    Returns the names unchanged (and no note) when nothing needs or can be left out."""
    if len(names) < 2 or max(len(n) for n in names) <= width:
        return names, ""
    toks = [n.split("-") for n in names]
    max_suf = 0
    while (all(len(t) > max_suf + 1 for t in toks)
           and len({t[len(t) - 1 - max_suf] for t in toks}) == 1):
        max_suf += 1
    max_pre = 0
    while (all(len(t) > max_suf + max_pre + 1 for t in toks)
           and len({t[max_pre] for t in toks}) == 1):
        max_pre += 1
    pre = suf = 0

    def longest():
        return max(len("-".join(t[pre:len(t) - suf])) for t in toks)

    while longest() > width and (suf < max_suf or pre < max_pre):
        if suf < max_suf:
            suf += 1
        else:
            pre += 1
    if not pre and not suf:
        return names, ""
    short = ["-".join(t[pre:len(t) - suf]) for t in toks]
    if len(set(short)) < len(set(names)):
        return names, ""
    parts = []
    if pre:
        parts.append(f"start {'-'.join(toks[0][:pre])}-")
    if suf:
        parts.append(f"end -{'-'.join(toks[0][len(toks[0]) - suf:])}")
    return short, f"(run names without their common {' and '.join(parts)})"


def _fmt(x, pct=False, ratio=False) -> str:
    """A number for text; with ``ratio`` (a ratio of norms, which is 0 only when the
    numerator fell below the float range), 0 is written as "< 1e-308 (underflow)"."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else str(x)
    if ratio and x == 0:
        return "< 1e-308 (underflow)"
    if pct:
        return f"{100 * x:.1f}%"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.2e}"
    return f"{x:.4g}"


def _final_line(run: RunData) -> str:
    ep = run.epochs
    parts = []
    if len(ep):
        last = ep.iloc[-1]
        parts.append(f"train loss {_fmt(last['train_loss'])}, accuracy "
                     f"{_fmt(last['train_accuracy'], pct=True)}")
        parts.append(f"validation loss {_fmt(last['val_loss'])}, accuracy "
                     f"{_fmt(last['val_accuracy'], pct=True)}")
        # epochs are numbered from 0 in the log: the last of 10 is epoch 9, the 10th
        total = run.config.get("epochs")
        of = f" of {int(total)}" if total else ""
        where = f"after epoch {int(last['epoch']) + 1}{of} (step {int(last['step'])})"
    else:
        where = "no epoch completed"
    st = run.steps
    if len(st):
        last = st.iloc[-1]
        parts.append(f"last logged batch loss {_fmt(last['loss'])} at step {int(last['step'])}")
    return f"final, {where}: " + "; ".join(parts)


def _theory_line(d: Diagnosis) -> str | None:
    t = d.theory
    if t is None:
        return None
    xi_txt = "inf" if math.isinf(t.xi) else f"{_fmt(t.xi)} layers"
    pred, meas = t.predicted_ratio, t.measured_ratio
    verdict = ""
    if t.explains:
        verdict = " - the prediction explains the measurement"
    elif math.isfinite(meas):
        verdict = " - not explained by the prediction"
    step = t.measured_step
    return (f"theory: chi1 = {_fmt(t.chi1)} ({t.phase}), depth scale "
            f"xi = {xi_txt}; layer-0 / output gradient ratio at init: predicted "
            f"{_fmt(pred, ratio=True)}, measured {_fmt(meas, ratio=True)}"
            + (f" at step {step}" if step is not None else "") + verdict)


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _wrap(text: str, indent: str = "", width: int = _WRAP) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent,
                         subsequent_indent=indent + "    ", break_long_words=True,
                         break_on_hyphens=False) or [indent]


def _needs_block(run: RunData) -> bool:
    d = run.diagnosis
    return d.verdict != "healthy" or d.status != "completed" or bool(run.notes)


_STYLE_OF = {FAILING: "alarm", WARNING: "warn"}


def _verdict_lines(d: Diagnosis) -> list[tuple[str, str]]:
    """The verdict line and, for a failure, its causes ranked."""
    style = _STYLE_OF.get(d.severity, "ok")
    out = [(style, f"   verdict: {d.headline}")]
    for i, c in enumerate(d.causes, 1):
        out += [(style, line) for line in _wrap(f"{i}. {c.message}", "     ",
                                                width=_WRAP_BOLD)]
    return out


def _overview_lines(n_runs: int) -> int:
    """Summary lines the at-a-glance figure takes (it grows with the runs, up to 40%)."""
    return int(min(26, 9 + 0.9 * n_runs))


def overview_summary(runs: list[RunData]) -> pd.DataFrame:
    """The at-a-glance figure's numbers: one row per run (``run``, ``ratio``, ``dead``,
    ``saturated``, ``alarm``: "failing", "warning" or "")."""
    rows = []
    for r in runs:
        d = r.diagnosis
        shares = {}
        for key, name in (("dead", "dead_units"), ("saturated", "saturated")):
            f = d[name]
            vals = [_float(v) for v in (f.numbers.get("by_layer") or {}).values()]
            vals = [v for v in vals if math.isfinite(v)]
            shares[key] = max(vals) if (vals and f.applicable) else math.nan
        rows.append({"run": _fit(r.short or r.label, 34),
                     "ratio": _float(d["vanishing"].numbers.get("ratio_early")),
                     **shares,
                     "alarm": {FAILING: "failing", WARNING: "warning"}.get(d.severity, "")})
    return pd.DataFrame(rows)


def _draw_overview(fig, runs, thresholds, top: float, height: float) -> None:
    thr = thresholds or {}
    s = overview_summary(runs)
    bottom = top - height + 0.06     # room for the axis labels
    h = top - 0.03 - bottom
    a1 = fig.add_axes((0.20, bottom, 0.44, h))
    a2 = fig.add_axes((0.67, bottom, 0.27, h))
    plots.run_overview(summary=s, ax=[a1, a2],
                       guides=(thr.get("vanishing", 1e-3), thr.get("exploding", 1e3)),
                       shares=(thr.get("dead_units", 0.5), thr.get("saturated", 0.5)))


#: Remedies shown per failing run on the summary (all of them: ``gradscope advise RUN.h5``).
SUMMARY_REMEDIES = 2
_CMD_WRAP = 150


def _remedies(run: RunData):
    return remedies_for_run(run.config, run.diagnosis, run.path)


def _command_lines(cmd: str, indent: str) -> list[str]:
    """A command wrapped with shell continuations, so that the lines paste as one command."""
    words, lines, cur = cmd.split(" "), [], ""
    for w in words:
        if cur and len(indent) + len(cur) + 1 + len(w) > _CMD_WRAP - 2:
            lines.append(cur + " \\")
            cur = "    " + w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    return [indent + line for line in lines]


def _remedy_block(run: RunData, most: int = SUMMARY_REMEDIES) -> list[tuple[str, str]]:
    rs = _remedies(run)
    if not rs:
        return []
    out = [("todo", "   what to do next (most promising first):")]
    for i, r in enumerate(rs[:most], 1):
        out += [("todo" if j == 0 else "text", line) for j, line in
                enumerate(_wrap(f"{i}. {r.summary}", "     "))]
        if not r.torch:
            out += [("cmd", line) for line in _command_lines(r.command, "        ")]
    if len(rs) > most:
        out.append(("dim", f"     {len(rs) - most} more: gradscope advise {run.path}"))
    return out


def _compact_block(run: RunData) -> list[tuple[str, str]]:
    """A run's lines on the summary pages of a sweep: what it is, how it ended, its
    verdict with its causes and the warnings (not the checks it passed)."""
    d = run.diagnosis
    st = run.status
    label = run.label if len(run.label) <= 120 else run.label[:117] + "..."
    acc, split = _final_accuracy(run)
    bits = [d.config_summary, f"status: {st.get('status', 'unknown')}"]
    if split:
        bits.append(f"final {split} accuracy {_fmt(acc, pct=True)}")
    ratio = ("ratio layer 0 / output "
             f"{_fmt(d['vanishing'].numbers.get('ratio_early'), ratio=True)}")
    pred = d.theory.predicted_ratio if d.theory else math.nan
    if math.isfinite(pred):
        ratio += f" (theory {_fmt(pred, ratio=True)})"
    bits.append(ratio)
    out = [("head", label)]
    out += [("text", line) for line in _wrap("  |  ".join(bits), "   ")]
    out += _verdict_lines(d)
    out += _remedy_block(run, most=1)
    if not d.failing:
        for name in d.flags:
            out += [("warn", line) for line in _wrap(f"? {d[name].message}", "     ",
                                                     width=_WRAP_BOLD)]
    for note in run.notes:
        out.append(("dim", f"   note: {note}"))
    out.append(("gap", ""))
    return out


def _run_block(run: RunData) -> list[tuple[str, str]]:
    """Lines (style, text) of a run on the summary page."""
    d = run.diagnosis
    st = run.status
    status = st.get("status", "unknown")
    msg = st.get("message") or ""
    label = run.label if len(run.label) <= 120 else run.label[:117] + "..."
    out = [("head", label)]
    for line in _wrap(f"{d.config_summary}  |  status: {status}"
                      + (f" ({msg})" if msg else "") + f"  |  {run.logged_steps} logged steps",
                      "   "):
        out.append(("text", line))
    for line in _wrap(_final_line(run), "   "):
        out.append(("text", line))
    out += _verdict_lines(d)
    todo = _remedy_block(run)
    out += todo
    if todo:
        out.append(("dim", "   evidence:"))
    na, passed = [], []
    for name in CHECKS:
        f = d[name]
        if not f.flagged and not f.applicable:
            na.append(f.message)
            continue
        if not f.flagged:  # a passed check: its name is enough here (figures show the rest)
            passed.append(f.message.split(":")[0])
            continue
        mark = {FAILING: "!", WARNING: "?"}.get(f.severity, "-")
        for line in _wrap(f"{mark} {f.message}", "     ", width=_WRAP_BOLD):
            out.append((_STYLE_OF.get(f.severity, "text"), line))
    if passed or na:  # one line: the checks passed, then those that do not apply
        text = ("passed: " + "; ".join(passed) if passed else "") + (
            ("  |  n/a: " if passed else "n/a: ") + "; ".join(m.split(": ")[-1] for m in na)
            if na else "")
        for line in _wrap(text, "     "):
            out.append(("dim", line))
    th = _theory_line(d)
    if not th and run.config.get("mean_field_note"):
        th = f"theory: no mean-field overlay ({run.config['mean_field_note']})"
    if th:
        for line in _wrap(th, "   "):
            out.append(("text", line))
    names = _layer_names(run.config)
    if names:
        for line in _wrap("layers: " + ", ".join(names), "   "):
            out.append(("dim", line))
    for note in run.notes:
        out.append(("dim", f"   note: {note}"))
    out.append(("gap", ""))
    return out


def _layer_names(config: dict) -> list[str]:
    """``"0: features.0 (Conv2d 16x1x3x3)"`` per layer, from a log that names its layers
    (the PyTorch adapter's); empty for the engine's logs, whose layers are numbers."""
    names = config.get("layer_names")
    if not names:
        return []
    types = config.get("layer_types") or [""] * len(names)
    shapes = config.get("layer_shapes") or [None] * len(names)
    out = []
    for i, (n, t, s) in enumerate(zip(names, types, shapes)):
        what = " ".join(x for x in (t, "x".join(map(str, s)) if s else "") if x)
        out.append(f"{i}: {n}" + (f" ({what})" if what else ""))
    return out


def _name_layer_ticks(ax, config: dict, most: int = 16) -> None:
    """Label a layer axis (y) with the layers' names where the log has them and they fit."""
    names = config.get("layer_names")
    if not names or len(names) > most:
        return
    from matplotlib.ticker import FixedLocator, FuncFormatter

    ax.yaxis.set_major_locator(FixedLocator(range(len(names))))
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, pos: names[round(v)] if 0 <= round(v) < len(names) else ""))
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("layer (input side at the bottom)")


# -- pages ----------------------------------------------------------------------------------
@dataclass
class _Page:
    title: str
    caption: str
    draw: object  # callable(fig), or callable(fig, top) without layout
    layout: bool = True


def _new_page(title: str, caption: str, layout: bool = True) -> tuple[Figure, float]:
    """A page with its title and caption; returns the figure and the top of the free area
    (figure fraction). With ``layout``, constrained layout keeps the axes below it."""
    # a Figure without pyplot: no GUI backend involved, nothing left open in a notebook
    fig = Figure(figsize=PAGE_SIZE, layout="constrained" if layout else None)
    fig.text(0.02, 0.968, title, fontsize=16, fontweight="bold", va="top")
    top = 0.92
    if caption:
        lines = _wrap(caption, width=_CAPTION_WRAP)
        fig.text(0.02, top, "\n".join(lines), fontsize=9.5, va="top", color="0.25",
                 linespacing=1.3, parse_math=False)
        top -= len(lines) * 9.5 * 1.3 / 72 / PAGE_SIZE[1] + 0.012
    if layout:
        fig.get_layout_engine().set(rect=(0.01, 0.04, 0.98, top - 0.04))
    return fig, top


def _footer(fig, source: str, i: int, n: int) -> None:
    fig.text(0.02, 0.015, f"gradscope report - {source}", fontsize=8, color="0.4",
             parse_math=False)
    fig.text(0.98, 0.015, f"page {i} of {n}", fontsize=8, color="0.4", ha="right")


def _chunks(seq, n):
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def _grid(n: int) -> tuple[int, int]:
    return {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2)}.get(n, (2, 3))


def _summary_pages(runs: list[RunData], diagnoses: list[Diagnosis],
                   thresholds: dict | None = None) -> list[_Page]:
    table = verdict_table(diagnoses).splitlines()
    head, rows = table[:2], table[2:]
    if rows and rows[-1].startswith("(run names without"):
        head = [rows.pop()] + head   # repeated above the table on every page
    per = SUMMARY_LINES - 4
    blocks: list[list[tuple[str, str]]] = [
        [("mono", t) for t in head + rows[i:i + per]] + [("gap", "")]
        for i in range(0, max(len(rows), 1), per)]
    compact = len(runs) > SAMPLE_ABOVE
    fig_lines = _overview_lines(len(runs))
    blocks.insert(0, [("figure", "")] * fig_lines + [("gap", "")])
    # runs with an alarm first: their remedies are what the page is for
    for r in sorted(runs, key=lambda r: not _needs_block(r)):
        if compact and not _needs_block(r):
            continue   # healthy and completed: the table's line says it all
        b = _compact_block(r) if compact else _run_block(r)
        # a block longer than a page (very long messages) continues on the next page
        blocks += [b[i:i + SUMMARY_LINES] for i in range(0, len(b), SUMMARY_LINES)]

    def height(b):
        return sum(0.6 if style == "gap" else 1.0 for style, _ in b)

    pages, cur, n_runs_cur = [], [], 0
    for block in blocks:
        is_run = block[0][0] == "head"
        if cur and (sum(height(b) for b in cur) + height(block) > SUMMARY_LINES
                    or (is_run and n_runs_cur >= (2 * RUNS_PER_SUMMARY_PAGE if compact
                                                   else RUNS_PER_SUMMARY_PAGE))):
            pages.append(cur)
            cur, n_runs_cur = [], 0
        cur.append(block)
        n_runs_cur += is_run
    if cur:
        pages.append(cur)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = []
    for i, page_blocks in enumerate(pages):
        flat = [x for b in page_blocks for x in b]

        def draw(fig, top, flat=flat):
            ax = fig.add_axes((0, 0, 1, 1))
            ax.set_axis_off()
            y, h = top, _LINE
            styles = {
                "head": {"fontweight": "bold", "fontsize": 10},
                "text": {"fontsize": 8.8},
                "alarm": {"fontsize": 8.8, "color": "#a50f15", "fontweight": "bold"},
                "warn": {"fontsize": 8.8, "color": "#8c510a", "fontweight": "bold"},
                "ok": {"fontsize": 8.8, "color": "#005a32", "fontweight": "bold"},
                "dim": {"fontsize": 8.5, "color": "0.4"},
                "mono": {"fontsize": 8.5, "family": "monospace"},
                "cmd": {"fontsize": 8.0, "family": "monospace", "color": "#08306b"},
                "todo": {"fontsize": 8.8, "color": "#08306b", "fontweight": "bold"},
            }
            drawn_figure = False
            for style, text in flat:
                if y < 0.03:
                    break
                if style == "figure":
                    if not drawn_figure:
                        n_fig = sum(1 for st, _ in flat if st == "figure")
                        _draw_overview(fig, runs, thresholds, y, n_fig * h)
                        drawn_figure = True
                elif style != "gap":  # parse_math off: a "$" in a name is no formula
                    ax.text(0.025, y, text, va="top", parse_math=False, **styles[style])
                y -= h * (0.6 if style == "gap" else 1.0)

        n_runs = len(runs)
        title = "Summary"
        caption = (f"{n_runs} run{'s' if n_runs != 1 else ''}, report made {stamp}. "
                   "Left: how much of the output layer's gradient reaches the first layer "
                   "(1 = all; shaded: vanished or exploded); right: the worst layer's share of "
                   "dead or saturated units. Red: failing (not_learning, diverged), orange: "
                   "warning (learns, something flagged), green: healthy. Under each run that is "
                   "not healthy: what to do next, commands to paste, most promising first; then "
                   "the evidence (! failing, ? warning). Terms: last page."
                   + (f" With more than {SAMPLE_ABOVE} runs, the table lists every run and "
                      "below it each run that is not healthy (or not completed) gets its "
                      "verdict, causes and warnings; a report of one run lists every check."
                      if compact else ""))
        out.append(_Page(title, caption if i == 0 else "", draw, layout=False))
    return out


def _log_range(runs, value) -> tuple[float | None, float | None]:
    """One log10 colour range of ``value`` over every run, so that compared panels share
    their colours."""
    vals = [np.log10(v[np.isfinite(v) & (v > 0)]) for v in
            (pd.to_numeric(r.layers[value], errors="coerce").to_numpy(float)
             for r in runs if value in r.layers.columns)]
    vals = [v for v in vals if v.size]
    if not vals:
        return None, None
    return plots._robust_range(np.concatenate(vals))


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _flow_pages(runs):
    out = []
    ranges = {v: _log_range(runs, v) for v in ("grad_norm", "delta_norm")}
    for group in _chunks(runs, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False)
            for row, run in zip(axes, group):
                for ax, value in zip(row, ("grad_norm", "delta_norm")):
                    lo, hi = ranges[value]
                    plots.gradient_heatmap(data=run.layers, value=value, ax=ax,
                                           max_steps=MAX_STEPS, vmin=lo, vmax=hi)
                    _name_layer_ticks(ax, run.config)
                    what = ("weight gradient" if value == "grad_norm"
                            else "back-propagated gradient")
                    ax.set_title(f"{_fit(run.flabel, 44)}: {what}", fontsize=9.5, loc="left")
        out.append(_Page(
            "Gradient flow",
            "How large each layer's gradient is (colour, log10 of its norm) at each moment of "
            "training (columns), layer by layer (rows, the input side at the bottom). Left: "
            "the gradient of the layer's weights, ||dL/dW_l||. Right: the gradient passed "
            "back to the layer, ||delta_l|| = ||dL/dz_l||. A colour that changes from the top "
            "rows to the bottom ones means the gradient shrinks (vanishing) or grows "
            "(exploding) on its way back to the input. Every panel of a column uses the same "
            "colour scale, across all pages, so runs compare by colour; white cells hold no "
            "finite value.", draw))
    return out


def _profile_pages(runs):
    out = []
    for group in _chunks(runs, PANELS_PER_PAGE):
        def draw(fig, group=group):
            r, c = _grid(len(group))
            axes = fig.subplots(r, c, squeeze=False, sharey=True).ravel()
            for ax, run in zip(axes, group):
                pred = _predicted_profile(run)
                plots.gradient_profile(data=run.layers, ax=ax, predicted=pred,
                                       legend_loc="in")
                ax.set_title(_fit(run.flabel, 60 if c <= 2 else 40), fontsize=10, loc="left")
            for ax in axes[len(group):]:
                ax.set_axis_off()
            for i, ax in enumerate(axes[:len(group)]):
                if i % c:
                    ax.set_ylabel("")
                    ax.tick_params(labelleft=True)
        out.append(_Page(
            "Gradient profile across depth",
            "How large the gradient passed back to each layer is, ||delta_l|| = ||dL/dz_l|| "
            "(log scale, one y axis for all panels so slopes compare), at the start, a quarter, "
            "half way and the end of training. A straight sloped line means the gradient "
            "changes by the same factor at every layer; flat is healthy. Dashed: what "
            "mean-field theory predicts at initialisation, scaled to the measured output "
            "layer at the first logged step. Lines that coincide show as rings of markers "
            "around each other.", draw))
    return out


def _predicted_profile(run: RunData):
    t = run.diagnosis.theory
    prof = t.predicted_profile if t else None
    if not prof:
        return None
    lay = run.layers
    if lay.empty:
        return None
    first = lay[lay["step"] == lay["step"].min()]
    out_layer = first[first["layer"] == first["layer"].max()]["delta_norm"]
    if not len(out_layer):
        return None
    scale = float(out_layer.iloc[0])
    if not (math.isfinite(scale) and scale > 0):
        return None
    return pd.Series(np.asarray(prof, float) * scale, index=np.arange(len(prof)))


def predicted_profile(run: RunData):
    """The mean-field gradient profile at initialisation, scaled to the run's output layer
    at the first logged step (a Series by layer), or None when theory cannot describe it."""
    return _predicted_profile(run)


def _dead_pages(runs, thresholds):
    relu = [r for r in runs if r.relu_family]
    if not relu:
        return []
    others = [r for r in runs if not r.relu_family]
    note = ""
    if others:
        names = ", ".join(f"{r.short or r.label} ({r.activation})" for r in others[:6])
        more = f" and {len(others) - 6} more" if len(others) > 6 else ""
        note = f" Not applicable to {names}{more}: their units cannot die."
    out = []
    for group in _chunks(relu, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False,
                                gridspec_kw={"width_ratios": [1, 1.15]})
            for (a1, a2), run in zip(axes, group):
                plots.dead_units(data=run.probes, ax=a1,
                                 threshold=thresholds.get("dead_units"))
                a1.set_title(f"{_fit(run.flabel, 44)}: dead units per layer", fontsize=10,
                             loc="left")
                if run.dead is not None and len(run.dead_steps):
                    plots.dead_unit_map(steps=run.dead_steps, dead=run.dead, ax=a2)
                    a2.set_title("which units were dead when", fontsize=10, loc="left")
                else:
                    a2.set_axis_off()
        out.append(_Page(
            "Dead ReLU units",
            "A unit is dead when its pre-activation is <= 0 on every probe example: it passes "
            "no gradient and stops learning. Left: share of dead units per hidden layer at "
            "the probe steps. Right: each layer's units (sorted by when they died) against "
            "probe step, black = dead." + note, draw))
    return out


#: Whether an activation's values can lie below / above its logged histogram range (they
#: are counted in the end bin then): bounded activations cannot.
_OPEN_ENDS = {"sigmoid": (False, False), "logistic": (False, False), "tanh": (False, False),
              "relu": (False, True), "linear": (False, True), "softplus": (False, True),
              "elu": (False, True), "leaky_relu": (True, True)}


def _open_ends(activation: str) -> tuple[bool, bool]:
    return _OPEN_ENDS.get(activation, (True, True))


def _activation_pages(runs):
    out = []
    for group in _chunks(runs, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False)
            for i, run in enumerate(group):
                a1, a2 = axes[i]
                if len(run.hist) and run.hist["count"].sum() > 0:
                    plots.activation_distributions(hist=run.hist, ax=[a1, a2],
                                                   open_ends=_open_ends(run.activation))
                    for a in (a1, a2):
                        t = a.get_title()
                        a.set_title("")
                        a.set_title(f"{run.flabel}: {t}", fontsize=10, loc="left")
                else:
                    gs = a1.get_subplotspec().get_gridspec()
                    a1.remove()
                    a2.remove()
                    ax = fig.add_subplot(gs[i, :])
                    plots.activation_summary(data=run.layers, ax=ax)
                    ax.set_title(f"{run.flabel}: activation mean and std on the training "
                                 "batch (no histogram recorded)", fontsize=10, loc="left")
        out.append(_Page(
            "Activation saturation",
            "What values each hidden layer's units output on a fixed set of examples (the "
            "probe set), at the first and the last check (density against activation value, "
            "one line per layer, input side blue to output side red). Mass piling up at the "
            "ends of a bounded activation (0 and 1 for sigmoid, -1 and 1 for tanh) means "
            "saturated units, whose slope is near zero so they pass almost no gradient; for "
            "ReLU, mass at 0 means units that are off. Values past the range shown are not "
            "drawn; a note in the panel gives their share.", draw))
    return out


def _update_pages(runs):
    out = []
    for group in _chunks(runs, PANELS_PER_PAGE):
        def draw(fig, group=group):
            # time series: wide panels, one run per row (two columns beyond 3 runs)
            r, c = (len(group), 1) if len(group) <= 3 else (3, 2)
            axes = fig.subplots(r, c, squeeze=False).ravel()
            for ax, run in zip(axes, group):
                plots.update_ratio(data=run.layers, ax=ax, max_steps=MAX_STEPS)
                ax.set_title(run.flabel, fontsize=10, loc="left")
            for ax in axes[len(group):]:
                ax.set_axis_off()
        out.append(_Page(
            "Update / weight ratio",
            "How much each update changes a layer's weights, as a share of their size, "
            "||dW_l|| / ||W_l||, per layer over training (log scale, bin medians). Around 1e-3 (dashed) is the usual rule "
            "of thumb; far below, the layer barely learns; far above, the learning rate is "
            "likely too large.", draw))
    return out


def _learning_page(runs):
    steps = pd.concat([r.steps.assign(run=r.flabel) for r in runs], ignore_index=True)
    epochs = pd.concat([r.epochs.assign(run=r.flabel) for r in runs if len(r.epochs)],
                       ignore_index=True) if any(len(r.epochs) for r in runs) else None

    def draw(fig):
        axes = fig.subplots(1, 2)
        plots.learning_curves(steps=steps, epochs=epochs, ax=list(axes), max_steps=MAX_STEPS)
        axes[0].set_title("loss", fontsize=10, loc="left")
        axes[1].set_title("accuracy", fontsize=10, loc="left")

    return [_Page(
        "Loss and accuracy",
        "Training: the batch loss and accuracy, running median over 2% of the run (solid). "
        "Validation: once per epoch on the held-out split (dashed, markers). The loss axis is "
        "logarithmic when the loss spans more than 1.5 decades.", draw)]


def comparison_summary(runs_or_diagnoses) -> pd.DataFrame:
    """One row per run and measurement for :func:`gradscope.views.plots.run_comparison`.

    Columns: ``run`` (label), ``label`` (activation / init / optimizer ...), ``activation``,
    ``init``, ``optimizer``, ``depth``, ``when`` (``"first logged step"`` or ``"median, first half"``)
    and ``ratio`` (delta_norm[layer 0] / delta_norm[output layer]).
    """
    rows = []
    for item in runs_or_diagnoses:
        d = item.diagnosis if isinstance(item, RunData) else item
        cfg = item.config if isinstance(item, RunData) else {}
        name = item.flabel if isinstance(item, RunData) else _run_name(d)
        ev = d["vanishing"].numbers
        act = cfg.get("activation") or (d.theory.activation if d.theory else "?")
        init = cfg.get("init") or (d.theory.init if d.theory else "?")
        opt = cfg.get("optimizer", "?")
        lr = cfg.get("lr") or (cfg.get("optimizer_hyper") or {}).get("lr")
        label = f"{act} / {init} / {opt}" + (f" lr={lr:g}" if lr else "")
        if cfg.get("depth"):
            label += f" / depth {cfg['depth']}"
        for when, key in (("first logged step", "ratio_first"),
                          ("median, first half", "ratio_early")):
            rows.append({"run": name, "label": label, "activation": act, "init": init,
                         "optimizer": opt, "depth": _float(cfg.get("depth")), "when": when,
                         "ratio": _float(ev.get(key))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    dup = df.drop_duplicates("run")["label"].duplicated(keep=False)
    dups = set(df.drop_duplicates("run")["label"][dup])
    df["label"] = [f"{lab} ({run})" if lab in dups else lab
                   for lab, run in zip(df["label"], df["run"])]
    order = (df.drop_duplicates("run")
             .sort_values(["activation", "init", "optimizer", "depth", "label"])
             ["label"].tolist())
    df["label"] = pd.Categorical(df["label"], categories=order, ordered=True)
    return df.sort_values(["label", "when"]).reset_index(drop=True)


def _comparison_page(runs, thresholds):
    summary = comparison_summary(runs)
    thr = (thresholds.get("vanishing", 1e-3), thresholds.get("exploding", 1e3))

    n = summary["label"].nunique() if len(summary) else 1

    def draw(fig, top):
        # as tall as the runs need (a page of two runs is not stretched over the page)
        height = min(top - 0.12, 0.09 + 0.055 * n)
        ax = fig.add_axes((0.30, top - 0.03 - height, 0.50, height))
        plots.run_comparison(summary=summary, x="ratio", y="label", hue="activation",
                             style="when", ax=ax, guides=thr)
        ax.set_xlabel("gradient at layer 0 / at the output layer, ||delta_0|| / "
                      "||delta_out|| (log scale)")

    return [_Page(
        "Gradient ratio across depth, run by run",
        "One row per run, grouped by activation / init / optimizer: how much of the gradient "
        "at the output layer reaches the input side. 1 (thick grey line) means it arrives "
        "undiminished; left of the dashed vanishing threshold it has all but vanished, right "
        "of the exploding threshold it has exploded. Circle: at the first logged step; other "
        "marker: median over the first half of training (what the verdict judges).",
        draw, layout=False)]


# -- how to read, checked advice ------------------------------------------------------------
#: Every word and symbol the pages use, defined once: (term, plain words).
GLOSSARY = (
    ("layer l", "a weight matrix, counted from the input: layer 0 takes the input, the last "
     "layer (\"out\") gives the output. Hidden layers are all but the last."),
    ("step", "one update of the weights, from one mini-batch of examples."),
    ("pre-activation z_l", "what a layer computes before its activation function: z_l = a W_l "
     "+ b_l; the activation phi turns it into the layer's output phi(z_l)."),
    ("weight gradient ||dL/dW_l||", "how strongly the loss L would change if layer l's "
     "weights changed: the size of the step gradient descent gives them."),
    ("back-propagated gradient delta_l", "delta_l = dL/dz_l, the gradient passed back from the "
     "output to layer l. ||.|| is its size (Frobenius norm)."),
    ("gradient ratio", "||delta_0|| / ||delta_out||: how much of the output layer's gradient "
     "reaches the first layer. 1 = all of it; 1e-7 = a ten-millionth."),
    ("verdict", "healthy: the run learns and no check is flagged; warning: it learns but a "
     "check is flagged; not_learning: the loss and accuracy barely moved from chance; "
     "diverged: the loss became infinite or NaN. A failing verdict names its causes."),
    ("cause", "a flagged check that explains a failing run, strongest first (vanishing "
     "gradients, dead units, ...); what to do next is ranked from them."),
    ("vanishing", "the ratio is below 1e-3 (median over the first half of training): the first "
     "layers barely learn."),
    ("exploding", "the ratio is above 1e3: the gradient grows on its way back to the input."),
    ("forward signal", "the size of each layer's activations; it collapses or explodes with "
     "depth for the same reasons the gradient vanishes or explodes."),
    ("dead unit", "a ReLU unit whose pre-activation is <= 0 on every probe example: it outputs "
     "0, passes no gradient and no longer learns."),
    ("saturated unit", "a sigmoid or tanh unit whose slope phi' is below 5% of its maximum: it "
     "passes almost no gradient."),
    ("probe set", "a fixed set of training examples (up to 1024) on which dead and saturated "
     "units and the activation histograms are measured every ~100 steps."),
    ("update / weight ratio", "||dW_l|| / ||W_l||: the share by which one update changes the "
     "weights; about 1e-3 is the usual rule of thumb."),
    ("mean-field theory", "what happens, on average, in a very wide network with random "
     "weights at initialisation; its prediction is drawn dashed."),
    ("weight variance s_w^2", "fan_in x the variance of one weight: how large the initial "
     "weights are. Set by --init and multiplied by --init-gain squared."),
    ("bias variance s_b^2", "the variance of the initial biases (0 in gradscope)."),
    ("q*", "the typical squared pre-activation a signal settles to after many layers at "
     "initialisation (the fixed point of q_l, the mean square of z_l at layer l)."),
    ("chi1", "the factor by which the squared gradient grows (> 1) or shrinks (< 1) from one "
     "layer to the one before; over L layers the ratio is about chi1^(L/2)."),
    ("ordered / critical / chaotic", "chi1 < 1 (gradients shrink), chi1 = 1 (they keep their "
     "size: the aim of a good initialisation), chi1 > 1 (they grow)."),
    ("depth scale xi", "the number of layers over which the gradient changes by a factor "
     "e = 2.7; infinite at criticality."),
    ("gain", "--init-gain: a factor on the initial weights. gradscope advise gives the gain "
     "at which chi1 = 1."),
    ("predicted ratio", "the gradient ratio mean-field theory predicts at initialisation for "
     "a run's activation, init, gain and depth."),
)


def _how_to_read_page() -> list[_Page]:
    def draw(fig, top):
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        y = top
        for term, text in GLOSSARY:
            lines = textwrap.wrap(text, 118) or [""]
            ax.text(0.025, y, term, va="top", fontsize=9.2, fontweight="bold",
                    parse_math=False)
            for j, line in enumerate(lines):
                ax.text(0.27, y - j * _LINE * 1.05, line, va="top", fontsize=9.2,
                        parse_math=False)
            y -= _LINE * 1.05 * len(lines) + _LINE * 0.45

    return [_Page(
        "How to read this report",
        "The words and symbols the pages use, in plain words. Every figure draws a layer's "
        "number on its layer axis with the input side at 0; log scales are marked.",
        draw, layout=False)]


def _advice_pages(pairs) -> list[_Page]:
    out = []
    for group in _chunks(pairs, RUNS_PER_PAGE):
        def draw(fig, group=group):
            axes = fig.subplots(len(group), 2, squeeze=False, sharey="row")
            for (a1, a2), (before, remedy, after) in zip(axes, group):
                for ax, run, when in ((a1, before, "before"), (a2, after, "after")):
                    plots.gradient_profile(data=run.layers, ax=ax,
                                           predicted=_predicted_profile(run), legend_loc="in")
                    verdict = run.diagnosis.headline
                    name = _fit(before.flabel, 36)
                    what = name if when == "before" else ", ".join(
                        f"{k}={v}" for k, v in remedy.change.items())
                    ax.set_title(f"{when}: {what} ({len(run.steps)} steps) -> {verdict}",
                                 fontsize=9.5, loc="left", color="#a50f15" if
                                 run.diagnosis.failing else "#005a32")
                a2.set_ylabel("")
        out.append(_Page(
            "Advice, checked",
            "Each run with an alarm (left) retrained with the first remedy of its list (right), "
            "the same options otherwise and the same seed, for at most "
            f"{ADVICE_STEPS} steps; each title ends with the verdict. Gradient passed back to "
            "each layer, ||delta_l|| (log scale, one y axis per row), at the start, a quarter, "
            "half way and the end of training; dashed: mean-field prediction at "
            "initialisation.", draw))
    return out


#: The longest retraining of a --check-advice run (steps).
ADVICE_STEPS = 600


# -- sweeps: one row per run, grids, remedies -----------------------------------------------
#: The remedy options (docs/remedies.md): runs that differ only in these are compared side
#: by side; and what their resolved configuration adds when they are on.
REMEDY_KEYS = ("residual", "norm", "dropout", "clip_norm", "clip_value")
_REMEDY_DERIVED = ("residual_layers", "norm_eps", "norm_momentum")
#: Options that change what is logged, not what is trained: not part of a run's identity.
LOGGING_KEYS = ("log_every", "probe_every", "probe_size", "hist_bins", "snapshot_every")
#: The grid's axes in the sweep pages: x, colour, marker, panel.
GRID_KEYS = ("depth", "activation", "init", "optimizer")
#: Beyond this many runs, the per-run pages show a sample of SAMPLE_RUNS runs.
SAMPLE_ABOVE = 12
SAMPLE_RUNS = 6
#: The run-by-run ratio page is left out beyond this many runs (the phase diagram covers them)
#: and below COMPARISON_MIN_RUNS (the summary's at-a-glance figure shows the same ratios).
COMPARISON_MAX_RUNS = 40
COMPARISON_MIN_RUNS = 4
#: Remedy comparison pages at most (one per group of runs).
MAX_REMEDY_PAGES = 12


def _options(config: dict) -> dict:
    """A run's training options as it used them: the optimizer's defaults filled in from
    ``optimizer_hyper``, ``widths`` None when it is ``[width] * depth``, ``depth`` and
    ``width`` from ``widths`` otherwise."""
    out = {k: config.get(k) for k in train_options(config)}
    hyper = config.get("optimizer_hyper") or {}
    for k in OPTIMIZER_OPTIONS:
        if out.get(k) is None and k in hyper:
            out[k] = hyper[k]
    widths = config.get("widths")
    if widths:
        ws = [int(w) for w in widths]
        out["depth"] = len(ws)
        if len(set(ws)) == 1:
            out["width"], out["widths"] = ws[0], None
        else:
            out["width"] = None
    if out.get("dropout") in (None, 0, 0.0):
        out["dropout"] = 0.0
    out["residual"] = bool(out.get("residual"))
    if out.get("norm") in ("none", ""):
        out["norm"] = None
    if out.get("init_gain") is None:
        out["init_gain"] = 1.0
    return out


def _key(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _varying(opts: list[dict], skip=()) -> list[str]:
    """The options that differ between runs; an optimizer option (lr, momentum, ...) only
    when it differs between runs of the same optimizer (not merely because the optimizers
    differ, and with them their defaults and options)."""
    keys = [k for k in (opts[0] if opts else {}) if k not in skip]
    out = []
    for k in keys:
        if len({_key(o.get(k)) for o in opts}) < 2:
            continue
        if k in OPTIMIZER_OPTIONS:
            per_opt: dict = {}
            for o in opts:
                per_opt.setdefault(o.get("optimizer"), set()).add(_key(o.get(k)))
            if all(len(v) == 1 for v in per_opt.values()):
                continue
        out.append(k)
    return out


def _setting(k: str, v) -> str:
    if isinstance(v, bool):
        return f"{k}={'on' if v else 'off'}"
    if v is None:
        return f"{k}=none"
    if isinstance(v, float):
        return f"{k}={v:g}"
    if isinstance(v, (list, tuple)):
        return f"{k}={','.join(map(str, v))}"
    return f"{k}={v}"


def _remedy_text(o: dict) -> str:
    return " + ".join(remedy_parts(o)) or "none"


def _final_accuracy(run: RunData) -> tuple[float, str]:
    ep = run.epochs
    if len(ep) and "val_accuracy" in ep.columns:
        v = pd.to_numeric(ep["val_accuracy"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1]), "validation"
    if len(ep) and "train_accuracy" in ep.columns:
        v = pd.to_numeric(ep["train_accuracy"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1]), "training"
    if len(run.steps) and "accuracy" in run.steps.columns:
        v = pd.to_numeric(run.steps["accuracy"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1]), "training batch"
    return math.nan, ""


def run_table(runs) -> pd.DataFrame:
    """One row per run: the run table of :func:`gradscope.analysis.runs.run_row` (the
    columns of :data:`~gradscope.analysis.runs.RUN_COLUMNS`, the same as the sweep summary's;
    docs/log-format.md lists them) with ``run`` the label, plus ``file`` and the options.

    ``runs``: :class:`RunData` (from :func:`load_run`). The table is what
    :func:`gradscope.views.plots.phase_diagram`, :func:`~gradscope.views.plots.depth_dead_units` and
    :func:`~gradscope.views.plots.grid_heatmap` take. Added columns:

    - ``file``; the options as the run used them: ``dataset``, ``depth``, ``width`` (None for
      unequal ``widths``), ``widths``, ``activation``, ``init``, ``init_gain``,
      ``optimizer``, ``lr`` (the optimizer's default filled in), ``batch_size``, ``seed``,
      ``dropout``, ``residual``, ``norm``, ``clip_norm``, ``clip_value``;
    - ``remedy``: the remedies that are on (``"residual + batchnorm"``) or ``"none"``;
      ``variant``: the options other than depth, activation, init, optimizer and seed that
      differ between these runs, as text (``"residual=on"``; ``""`` when none does).
    """
    runs = list(runs)
    opts = [_options(r.config) for r in runs]
    skip = ({"depth", "activation", "init", "optimizer", "seed", "widths"}
            | set(LOGGING_KEYS))
    var_keys = _varying(opts, skip)
    rows = []
    for r, o in zip(runs, opts):
        row = run_row(r.diagnosis, steps=r.steps, epochs=r.epochs)
        row["run"] = r.label
        row["file"] = r.path.name
        for k in ("dataset", "depth", "width", "widths", "activation", "init", "init_gain",
                  "optimizer", "lr", "batch_size", "seed", *REMEDY_KEYS):
            v = o.get(k)
            row[k] = ",".join(map(str, v)) if isinstance(v, list) else v
        row["remedy"] = _remedy_text(o)
        row["variant"] = ", ".join(_setting(k, o.get(k)) for k in var_keys)
        rows.append(row)
    return pd.DataFrame(rows)


def _from_sweep_folder(runs) -> bool:
    return bool(runs) and all((r.path.parent / "sweep.json").is_file() for r in runs)


def sweep_layout(table: pd.DataFrame, *, from_sweep: bool = False) -> dict | None:
    """How the sweep pages draw these runs, or None when they do not form a grid.

    A grid: at least 3 runs, whose depths differ, and at least one of activation, init and
    optimizer differs too (or the runs are a sweep folder's, ``from_sweep``), with at least
    one line of the phase diagram (an activation / init / optimizer / variant) holding two
    depths. Returns ``{"x": "depth", "hue": "activation", "style": "init", "col":
    "optimizer", "row": "variant" or None, "seeds": most runs per grid point}``.
    """
    if len(table) < 3 or "depth" not in table or table["depth"].nunique() < 2:
        return None
    others = [c for c in ("activation", "init", "optimizer") if table[c].nunique() > 1]
    if not others and not from_sweep:
        return None
    lines = table.groupby(["activation", "init", "optimizer", "variant"], dropna=False)
    if lines["depth"].nunique().max() < 2:
        return None
    point = ["depth", "activation", "init", "optimizer", "variant"]
    return {"x": "depth", "hue": "activation", "style": "init", "col": "optimizer",
            "row": "variant" if table["variant"].nunique() > 1 else None,
            "seeds": int(table.groupby(point, dropna=False).size().max())}


def _seeds_text(table: pd.DataFrame, layout: dict) -> str:
    n = layout["seeds"]
    if n <= 1:
        return "one run per point"
    return (f"up to {n} runs (seeds) per point: the line joins their medians, the band "
            "spans their minimum to maximum")


def _sweep_pages(table: pd.DataFrame, layout: dict, thr: dict) -> list[_Page]:
    row = layout["row"]
    n_rows = table[row].nunique() if row else 1
    n_cols = table["optimizer"].nunique()
    seeds = _seeds_text(table, layout)
    pages = []

    def grid(fig, n_r, n_c):
        return fig.subplots(n_r, n_c, squeeze=False, sharey=True, sharex=True)

    def draw_phase(fig):
        axes = grid(fig, n_rows, n_cols)
        plots.phase_diagram(summary=table, ax=axes, row=row,
                            guides=(thr.get("vanishing", 1e-3), thr.get("exploding", 1e3)))

    with_theory = table["predicted_ratio"].notna()
    theory_note = ("Dashed, hollow markers: what mean-field theory predicts at "
                   "initialisation, in the line's colour, from each run's initial weight "
                   "size (about chi1^(depth/2): chi1 is the factor by which the squared "
                   "gradient changes per layer, see the last page); crosses: each run's "
                   "ratio at its first logged step, what the prediction describes "
                   "(training moves the solid line away from it). "
                   if with_theory.any() else
                   "Crosses: each run's ratio at its first logged step. ")
    if with_theory.any() and not with_theory.all():
        theory_note += "(The theory covers plain MLPs only: no dashed line with remedies.) "
    pages.append(_Page(
        "Vanishing-gradient phase diagram",
        "How much of the output layer's gradient reaches the first layer, "
        "||delta_0|| / ||delta_out||, against depth (log scale): the median over the "
        "logged steps of the first half of training, the number the vanishing and exploding "
        "verdicts judge. One line per activation (colour) and init (marker), one panel per "
        f"optimizer{' and variant' if row else ''}; {seeds}. " + theory_note
        + f"In the shaded band below the dashed {thr.get('vanishing', 1e-3):g} line the "
        f"gradient has vanished, above {thr.get('exploding', 1e3):g} exploded; grey line: "
        "1, no change. A straight line is a constant factor per layer.", draw_phase))

    relu = table[np.isfinite(table["dead_frac"].to_numpy(float))]
    if len(relu):
        not_relu = sorted(set(table["activation"]) - set(relu["activation"]))
        n_rows_r = relu[row].nunique() if row else 1
        n_cols_r = relu["optimizer"].nunique()

        # one ReLU-family activation: colour by init (a line per init either way)
        hue = "activation" if relu["activation"].nunique() > 1 else "init"

        def draw_dead(fig):
            axes = grid(fig, n_rows_r, n_cols_r)
            plots.depth_dead_units(summary=relu, ax=axes, row=row, hue=hue)

        pages.append(_Page(
            "Dead ReLU units across depth",
            "Mean over the hidden layers of the share of units dead on the probe set (pre-"
            "activation <= 0 on every probe example) at the last probe step, against depth. "
            f"One line per activation and init (colour: {hue}), one panel per optimizer"
            f"{' and variant' if row else ''}; {seeds}. The "
            f"dead-unit verdict looks at the worst single layer (threshold "
            f"{100 * thr.get('dead_units', 0.5):.0f}% of its units), so a run can be "
            "flagged with a lower mean."
            + (f" Not shown: {', '.join(not_relu)} (units cannot die)." if not_relu else ""),
            draw_dead))

    ys = ["activation", "init"] + (["variant"] if row else [])
    splits = sorted(set(table["accuracy_split"]) - {""})
    what = {"validation": "validation accuracy after the last epoch",
            "training": "training accuracy of the last epoch (no validation split)",
            "training batch": "training accuracy of the last batch (no epoch completed)"}
    classes = sorted({int(c) for c in table["n_classes"].dropna()}) if (
        "n_classes" in table) else []
    chance = (f" Chance level: {100 / classes[0]:.0f}% ({classes[0]} classes)."
              if len(classes) == 1 and classes[0] > 1 else "")
    label = ("final validation accuracy" if splits == ["validation"] else
             "final accuracy" + (f" ({', '.join(splits)})" if splits else ""))
    regression = not table["accuracy"].notna().any()
    if not regression:
        def draw_acc(fig):
            axes = fig.subplots(1, n_cols, squeeze=False)[0]
            plots.grid_heatmap(summary=table, value="accuracy", y=ys, ax=axes, label=label)

        pages.append(_Page(
            "Final accuracy over the grid",
            "Final accuracy of each run: " + "; ".join(what[s] for s in splits if s in what)
            + ". Rows: activation / init" + (" / variant" if row else "") + "; columns: "
            "depth; one panel per optimizer. "
            + ("Several runs in a cell (seeds): their median (n = runs, shown where it "
               "varies). " if layout["seeds"] > 1 else "")
            + "Colours: viridis from 0 to 100%." + chance, draw_acc))
    return pages


def remedy_groups(runs) -> list[list]:
    """Groups of runs that differ only in their remedies (docs/remedies.md).

    Runs whose options (as they used them, :func:`run_table`'s) are equal except for
    ``residual``, ``norm``, ``dropout``, ``clip_norm`` and ``clip_value`` (and what those
    add to the configuration) form a group; the seed is part of a run's identity, so runs
    of different seeds are never compared, and options that only change what is logged
    (:data:`LOGGING_KEYS`) are ignored. A group holds two or more different remedy
    settings (a repeated setting keeps its first run), the run with the fewest remedies on
    first. Returns the groups ordered by depth, activation, init, optimizer and seed.
    """
    runs = list(runs)
    groups: dict[str, list] = {}
    for r in runs:
        o = _options(r.config)
        ident = {k: v for k, v in o.items() if k not in REMEDY_KEYS and k not in LOGGING_KEYS}
        groups.setdefault(_key(ident), []).append((r, o))
    out = []
    for members in groups.values():
        seen, keep = set(), []
        for r, o in members:
            k = _key({x: o.get(x) for x in REMEDY_KEYS})
            if k not in seen:
                seen.add(k)
                keep.append((r, o))
        if len(keep) < 2:
            continue
        keep.sort(key=lambda ro: (_remedy_count(ro[1]), runs.index(ro[0])))
        out.append([r for r, _ in keep])
    # in grid order: depth (as a number), activation, init, optimizer, seed
    def order(group):
        o = _options(group[0].config)
        return tuple((v if isinstance(v, (int, float)) else math.inf, str(v))
                     for v in (o.get(k) for k in (*GRID_KEYS, "seed")))

    return sorted(out, key=order)


def _remedy_count(o: dict) -> int:
    return (bool(o.get("residual")) + bool(o.get("norm")) + bool(o.get("dropout"))
            + (o.get("clip_norm") is not None) + (o.get("clip_value") is not None))


def _remedy_value(k: str, v) -> str:
    if k == "residual":
        return "on" if v else "off"
    if k == "norm":
        return v or "none"
    if v in (None, 0, 0.0):
        return "off"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _remedy_pages(groups: list[list]) -> list[_Page]:
    pages = []
    described = []
    for group in groups[:MAX_REMEDY_PAGES]:
        opts = [_options(r.config) for r in group]
        keys = [k for k in REMEDY_KEYS if len({_key(o.get(k)) for o in opts}) > 1]
        flags = [f"--{k.replace('_', '-')}" for k in keys]
        if len(keys) == 1:
            vals = [_remedy_value(keys[0], o.get(keys[0])) for o in opts]
            title = f"Remedy: {flags[0]} ({' vs '.join(vals)})"
        else:
            title = f"Remedies: {', '.join(flags)} ({len(group)} settings)"
        described.append((title, group, opts, keys))
    # groups with the same title: name what sets them apart (depth, activation, ...)
    by_title: dict[str, list] = {}
    for i, (title, *_rest) in enumerate(described):
        by_title.setdefault(title, []).append(i)
    for title, idx in by_title.items():
        if len(idx) < 2:
            continue
        bases = [{k: v for k, v in described[i][2][0].items() if k not in REMEDY_KEYS
                  and k not in LOGGING_KEYS} for i in idx]
        apart = _varying(bases)
        for i, base in zip(idx, bases):
            t, g, o, k = described[i]
            extra = ", ".join(_setting(a, base.get(a)).replace("=", " ") for a in apart[:3])
            described[i] = (f"{t}: {extra}" if extra else t, g, o, k)
    skipped = len(groups) - len(described)
    for n, (title, group, opts, keys) in enumerate(described):
        base = group[0].diagnosis.config_summary
        seed = opts[0].get("seed")
        titles, preds = {}, {}
        for r, o in zip(group, opts):
            setting = ", ".join(f"--{k.replace('_', '-')} {_remedy_value(k, o.get(k))}"
                                for k in keys)
            titles[r.flabel] = f"{setting}: {r.diagnosis.headline}"
            p = _predicted_profile(r)
            if p is not None:
                preds[r.flabel] = p
        data = pd.concat([r.layers.assign(run=r.flabel) for r in group], ignore_index=True)
        chunks = _chunks(group, PANELS_PER_PAGE)
        for chunk in chunks:
            def draw(fig, chunk=chunk, data=data, titles=titles, preds=preds):
                r_, c_ = _grid(len(chunk))
                axes = fig.subplots(r_, c_, squeeze=False, sharey=True).ravel()
                labels = [r.flabel for r in chunk]
                plots.profile_comparison(data=data, runs=labels, titles=titles,
                                         predicted=preds, ax=axes[:len(chunk)])
                for ax, r in zip(axes, chunk):
                    color = {FAILING: "#a50f15", WARNING: "#8c510a"}.get(
                        r.diagnosis.severity, "#005a32")
                    ax.set_title(titles[r.flabel], loc="left", fontsize=11,
                                 fontweight="bold", color=color)
                for ax in axes[len(chunk):]:
                    ax.set_axis_off()
            caption = (
                f"The same network and training ({base}, seed {seed}) with "
                + (f"{', '.join('--' + k.replace('_', '-') for k in keys)} changed" if keys
                   else "different remedies")
                + ": the gradient passed back to each layer, ||delta_l|| = ||dL/dz_l|| (log "
                "scale, one scale for every panel), at the first and the last logged step. Each panel's title: the "
                "setting and the run's verdict (red: an alarm). A line falling towards layer "
                "0 is a gradient that vanishes on its way back; dashed: the mean-field "
                "prediction at initialisation (plain MLP only).")
            if skipped and n == len(described) - 1:
                caption += (f" {skipped} more group{'s' if skipped > 1 else ''} of runs "
                            f"differing only in remedies not shown (at most "
                            f"{MAX_REMEDY_PAGES} pages).")
            pages.append(_Page(title, caption, draw))
    return pages


def _sample_runs(runs: list[RunData], table: pd.DataFrame,
                 k: int = SAMPLE_RUNS) -> list[RunData]:
    """``k`` runs for the per-run pages: one per verdict in turn (alarms first), within a
    verdict the most extreme first (deepest, then the ratio farthest from 1), preferring an
    activation / init not in the sample yet; in the runs' order."""
    if len(runs) <= SAMPLE_ABOVE:
        return list(runs)
    by_verdict: dict[str, list[int]] = {}
    for i, v in enumerate(table["verdict"]):
        by_verdict.setdefault(str(v), []).append(i)

    def extremeness(i):
        r = _float(table["ratio_early"].iloc[i])
        far = abs(math.log10(r)) if math.isfinite(r) and r > 0 else math.inf
        depth = _float(table["depth"].iloc[i])
        return (-(depth if math.isfinite(depth) else 0), -far)

    order = sorted(by_verdict, key=lambda v: (VERDICT_SEVERITY.get(v) is None,
                                              -len(by_verdict[v]), v))
    queues = [sorted(by_verdict[v], key=extremeness) for v in order]
    picked: list[int] = []
    shown: set = set()   # (activation, init) pairs already in the sample
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                # prefer an activation / init not shown yet
                pos = next((n for n, i in enumerate(q) if (table["activation"].iloc[i],
                            table["init"].iloc[i]) not in shown), 0)
                i = q.pop(pos)
                shown.add((table["activation"].iloc[i], table["init"].iloc[i]))
                picked.append(i)
    return [runs[i] for i in sorted(picked)]


# -- the report -----------------------------------------------------------------------------
def _labels(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def make_report(paths, out, *, max_steps: int = MAX_STEPS, title: str | None = None,
                check_advice=None, **thresholds) -> dict:
    """Write a multi-page PDF report of the logs ``paths`` to ``out``.

    ``paths``: log files (see :func:`collect_logs` for directories); ``thresholds``: the
    diagnosis thresholds (``vanishing``, ``exploding``, ``dead_units``, ``saturated``),
    passed to :func:`gradscope.analysis.diagnose.diagnose`. The PDF is written to a temporary file
    beside ``out`` and renamed at the end (:func:`gradscope.files.atomic_file`), so a failed
report leaves no partial file.

    Returns ``{"out": Path, "pages": int, "titles": [page titles], "runs": [labels],
    "diagnoses": [Diagnosis], "configs": [config dicts], "table": run_table(), "sweep": sweep_layout() or None,
    "remedy_groups": [[labels]], "sampled": [labels of the runs with per-run pages],
    "seconds": float}``. Raises :class:`LogError` (one line) for a missing,
    non-HDF5, non-gradscope or truncated file, ``ValueError`` for a bad threshold.

    ``check_advice``: a callable given the loaded runs that returns ``(run, remedy,
    log path)`` triples, a run with a failing verdict, the remedy tried and the log of the
    run retrained with it; the report then ends with before/after pages and the result
    has ``"advice"``: ``[{"run", "change", "command", "before", "after"}]`` (verdicts).
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise LogError("no log given")
    thr = resolve_thresholds(**thresholds)
    out = Path(out)
    labels = _labels(paths)
    runs = [load_run(p, max_steps=max_steps, label=lab, **thresholds)
            for p, lab in zip(paths, labels)]
    diagnoses = [r.diagnosis for r in runs]
    table = run_table(runs)
    layout = sweep_layout(table, from_sweep=_from_sweep_folder(runs))
    groups = remedy_groups(runs)
    sample = _sample_runs(runs, table)
    shorts, short_note = _short_names(labels, width=_FIGURE_NAME_WIDTH)
    if short_note:
        for r, sh in zip(runs, shorts):
            r.short = sh
        short_note = " " + short_note[1:-1].replace("run names", "Run names", 1) + "."

    pages: list[_Page] = []
    pages += _summary_pages(runs, diagnoses, thr)
    if layout is not None:
        pages += _sweep_pages(table, layout, thr)
    pages += _remedy_pages(groups)
    per_run = (_flow_pages(sample) + _profile_pages(sample) + _dead_pages(sample, thr)
               + _activation_pages(sample) + _update_pages(sample) + _learning_page(sample))
    if len(sample) < len(runs):
        note = (f" Showing {len(sample)} of {len(runs)} runs, a sample: one run per verdict "
                "in turn, the deepest and most extreme first (" + ", ".join(
                    r.short or r.label for r in sample) + "). The summary"
                + (", the sweep pages" if layout is not None else "")
                + (" and the run-by-run ratios" if len(runs) <= COMPARISON_MAX_RUNS else "")
                + " cover every run.")
        for p in per_run:
            p.caption += note
    for p in per_run if short_note else ():
        p.caption += short_note
    pages += per_run
    if COMPARISON_MIN_RUNS <= len(runs) <= COMPARISON_MAX_RUNS:
        pages += _comparison_page(runs, thr)
    advice_pairs = []
    if check_advice is not None:
        for before, remedy, after_path in check_advice(runs):
            after = load_run(after_path, max_steps=max_steps, **thresholds)
            advice_pairs.append((before, remedy, after))
        pages += _advice_pages(advice_pairs)
    pages += _how_to_read_page()

    # number the pages of a figure that spans several: "Gradient flow (2 of 3)"
    counts: dict[str, int] = {}
    for p in pages:
        counts[p.title] = counts.get(p.title, 0) + 1
    seen: dict[str, int] = {}
    for p in pages:
        if counts[p.title] > 1:
            seen[p.title] = seen.get(p.title, 0) + 1
            p.title = f"{p.title} ({seen[p.title]} of {counts[p.title]})"

    source = ", ".join(labels) if len(labels) <= 3 else f"{len(labels)} runs"
    if len(source) > 120:
        source = source[:117] + "..."
    meta = {
        "Title": title or f"gradscope report: {source}",
        "Subject": "; ".join(f"{lab}: {d.headline}" for lab, d in
                             zip(labels, diagnoses))[:2000],
        "Keywords": "gradscope, gradient diagnostics",
        "Creator": "gradscope",
    }
    titles = []
    style = sns.axes_style("whitegrid", {"axes.edgecolor": "0.3"})
    with (atomic_file(out) as fh, plt.rc_context({**style, **_RC}),
          PdfPages(fh, metadata=meta) as pdf):
        for i, page in enumerate(pages, 1):
            fig, top = _new_page(page.title, page.caption, layout=page.layout)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*constrained_layout.*")
                    warnings.filterwarnings("ignore", category=UserWarning,
                                            message=".*(Data has no positive values|"
                                            "converting a masked element|No artists).*")
                    page.draw(fig) if page.layout else page.draw(fig, top)
                    _footer(fig, source, i, len(pages))
                    pdf.savefig(fig)
            finally:
                fig.clear()
            titles.append(page.title)
    return {"out": out, "pages": len(pages), "titles": titles, "runs": labels,
            "diagnoses": diagnoses, "configs": [r.config for r in runs], "table": table,
            "sweep": layout, "remedy_groups": [[r.label for r in g] for g in groups],
            "sampled": [r.label for r in sample], "seconds": time.perf_counter() - t0,
            "advice": [{"run": b.label, "change": dict(rem.change), "command": rem.command,
                        "before": b.diagnosis.headline, "after": a.diagnosis.headline,
                        "fixed": [n for n in problems(b.diagnosis)
                                  if not a.diagnosis[n].flagged],
                        "still": [n for n in problems(b.diagnosis) if a.diagnosis[n].flagged]}
                       for b, rem, a in advice_pairs]}

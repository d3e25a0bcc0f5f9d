"""Runs in a Jupyter notebook: ``gradscope.Run(path)`` and ``gradscope.Runs([...])``.

A :class:`Run` displays as a compact HTML summary (configuration, status, final loss and
accuracy, the verdicts with their evidence, and a small gradient-profile figure) and draws
the report's figures as methods that return matplotlib Axes::

    run = gradscope.Run("runs/sigmoid.h5")
    run                      # the summary, in a notebook
    run.plot.profile()       # gradient norm across depth at start / quarter / half / end
    run.plot.flow()          # layer x step heatmap of the back-propagated gradient
    run.plot.dead(); run.plot.activations(); run.plot.updates(); run.plot.learning()

A :class:`Runs` (a list of runs, or a folder) displays as the comparison table, one row per
run (:func:`gradscope.views.report.run_table`), and draws the runs' profiles side by side
on one scale.

Both are views over the reading layer (the report's loader, binned for long logs): they
read the log when first asked and keep what they read (:meth:`Run.reload` reads again,
e.g. for a run still being written).
"""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from pathlib import Path

import pandas as pd

from . import plots
from .report import MAX_STEPS, collect_logs, load_run, predicted_profile, run_table

__all__ = ["Run", "Runs"]

#: columns of the comparison table, in order (those present)
TABLE_COLUMNS = ("run", "status", "depth", "width", "activation", "init", "optimizer", "lr",
                 "remedy", "ratio_early", "predicted_ratio", "dead_frac", "accuracy",
                 "verdict")
_VERDICTS = ("vanishing", "exploding", "dead_units", "saturated", "diverged")


class Run:
    """One run's log, for a notebook. ``thresholds`` override the diagnosis's
    (``vanishing=1e-4``, ...)."""

    def __init__(self, path, *, label: str | None = None, max_steps: int = MAX_STEPS,
                 **thresholds):
        self.path = Path(path)
        self.label = label or self.path.stem
        self.max_steps = max_steps
        self.thresholds = thresholds
        self._data = None
        self.plot = _RunPlots(self)

    # -- what was read -------------------------------------------------------------------
    @property
    def data(self):
        """The report's :class:`~gradscope.views.report.RunData` of this log (read once)."""
        if self._data is None:
            self._data = load_run(self.path, max_steps=self.max_steps, label=self.label,
                                  **self.thresholds)
        return self._data

    def reload(self) -> Run:
        """Read the log again (a run still being written has grown)."""
        self._data = None
        return self

    @property
    def config(self) -> dict:
        return self.data.config

    @property
    def status(self) -> str:
        return str(self.data.status.get("status", ""))

    @property
    def diagnosis(self) -> dict:
        return self.data.diagnosis

    @property
    def verdict(self) -> str:
        return str(self.diagnosis.get("verdict", ""))

    @property
    def steps(self) -> pd.DataFrame:
        return self.data.steps

    @property
    def layers(self) -> pd.DataFrame:
        """The layer table, binned to at most ``max_steps`` time bins."""
        return self.data.layers

    def summary(self) -> dict:
        """The run's row of the comparison table."""
        return run_table([self.data]).iloc[0].to_dict()

    # -- display -------------------------------------------------------------------------
    def __repr__(self) -> str:
        try:
            return f"Run({str(self.path)!r}: {self.status}, {self.verdict})"
        except Exception:  # noqa: BLE001 - a repr must not raise
            return f"Run({str(self.path)!r})"

    def _repr_html_(self) -> str:
        d = self.data
        diag = d.diagnosis
        row = self.summary()
        from ..analysis.diagnose import config_summary

        last = d.steps["step"].iloc[-1] + 1 if len(d.steps) else 0
        loss = d.steps["loss"].iloc[-1] if len(d.steps) else math.nan
        facts = [
            ("configuration", config_summary(d.config)),
            ("status", f"{self.status}, {last:,} steps"
             + (f" ({html.escape(d.status.get('message', ''))})"
                if d.status.get("message") else "")),
            ("final", f"batch loss {_num(loss)}; accuracy {_pct(row.get('accuracy'))}"
             + (f" ({row.get('accuracy_split')})" if row.get("accuracy_split") else "")),
            ("gradient ratio", f"layer 0 / output {_num(row.get('ratio_early'))} "
             "(median, first half of training)"
             + (f"; mean-field theory {_num(row.get('predicted_ratio'))}"
                if _finite(row.get("predicted_ratio")) else "")),
        ]
        verdict = self.verdict
        colour = "#1a7f37" if verdict == "healthy" else "#b42318"
        items = "".join(
            f"<li>{html.escape((diag.get(f'{v}_evidence') or {}).get('message', v))}</li>"
            for v in _VERDICTS if diag.get(v))
        rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                       for k, v in facts)
        img = self._profile_png()
        fig = (f"<img src='data:image/png;base64,{img}' alt='gradient profile' "
               "style='max-width:380px'/>" if img else "")
        return (
            "<div style='display:flex;gap:1.5em;align-items:flex-start'>"
            f"<div><b>{html.escape(self.label)}</b> <code>{html.escape(str(self.path))}</code>"
            f"<table>{rows}</table>"
            f"<p>verdict: <b style='color:{colour}'>{html.escape(verdict)}</b></p>"
            + (f"<ul>{items}</ul>" if items else "")
            + "<p style='color:#666'>figures: run.plot.profile(), .flow(), .dead(), "
            ".activations(), .updates(), .learning()</p></div>"
            f"<div>{fig}</div></div>"
        )

    def _profile_png(self) -> str:
        import matplotlib.pyplot as plt

        if self.layers.empty:
            return ""
        fig, ax = plt.subplots(figsize=(4.2, 2.9), dpi=90)
        try:
            self.plot.profile(ax=ax)
            ax.set_title("gradient profile across depth", fontsize=9, loc="left")
            ax.legend(fontsize=6, loc="best")
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
        finally:
            plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode("ascii")


class _RunPlots:
    """The report's figures of one run, each on ``ax`` (a new figure if None)."""

    def __init__(self, run: Run):
        self._run = run

    def profile(self, ax=None, *, value: str = "delta_norm", theory: bool = True):
        """Gradient norm across depth at start / quarter / half / end (log y); dashed: the
        mean-field prediction at initialisation."""
        d = self._run.data
        pred = predicted_profile(d) if theory and value == "delta_norm" else None
        return plots.gradient_profile(data=d.layers, value=value, ax=ax, predicted=pred)

    def flow(self, ax=None, *, value: str = "delta_norm"):
        """log10 of the gradient norm per layer (rows) and time bin (columns)."""
        return plots.gradient_heatmap(data=self._run.data.layers, value=value, ax=ax,
                                      max_steps=self._run.max_steps)

    def dead(self, ax=None):
        """Share of dead units per hidden layer at the probe steps (ReLU family)."""
        d = self._run.data
        thr = d.diagnosis.get("thresholds", {}).get("dead_units")
        return plots.dead_units(data=d.probes, ax=ax, threshold=thr)

    def activations(self, ax=None):
        """Activation distributions per layer at the first and last probe step."""
        d = self._run.data
        if not len(d.hist) or d.hist["count"].sum() == 0:
            return plots.activation_summary(data=d.layers, ax=ax)
        return plots.activation_distributions(hist=d.hist, ax=_pair(ax))

    def updates(self, ax=None):
        """Update / weight ratio per layer over training, with the 1e-3 guide."""
        return plots.update_ratio(data=self._run.data.layers, ax=ax,
                                  max_steps=self._run.max_steps)

    def learning(self, ax=None):
        """Training and validation loss (and accuracy with a pair of Axes)."""
        d = self._run.data
        return plots.learning_curves(steps=d.steps, epochs=d.epochs if len(d.epochs) else None,
                                     ax=_pair(ax), max_steps=self._run.max_steps)


class Runs(list):
    """Several runs (a list of paths or :class:`Run`, or a folder of logs): displays as the
    comparison table, one row per run."""

    def __init__(self, runs=(), **thresholds):
        if isinstance(runs, (str, Path)):
            runs = collect_logs(runs)
        super().__init__(r if isinstance(r, Run) else Run(r, **thresholds) for r in runs)
        self.plot = _RunsPlots(self)

    def table(self) -> pd.DataFrame:
        """One row per run: options, gradient ratios, dead share, accuracy, verdicts
        (:func:`gradscope.views.report.run_table`)."""
        return run_table([r.data for r in self])

    def _repr_html_(self) -> str:
        if not len(self):
            return "<p>no runs</p>"
        t = self.table()
        cols = [c for c in TABLE_COLUMNS if c in t.columns and t[c].notna().any()]
        fmt = {c: _num for c in ("ratio_early", "predicted_ratio", "lr")}
        fmt.update({c: _pct for c in ("dead_frac", "accuracy")})
        body = t[cols].to_html(index=False, formatters=fmt, na_rep="-", border=0)
        return (f"<p><b>{len(self)} runs</b> (ratio_early: layer 0 / output back-propagated "
                "gradient, median over the first half of training)</p>" + body)

    def __repr__(self) -> str:
        return f"Runs({[str(r.path) for r in self]!r})"


class _RunsPlots:
    def __init__(self, runs: Runs):
        self._runs = runs

    def profile(self, ax=None, *, moments=("start", "end")):
        """The runs' gradient profiles side by side on one log y scale."""
        data = pd.concat([r.layers.assign(run=r.label) for r in self._runs], ignore_index=True)
        titles = {r.label: textwrap.fill(f"{r.label}: {r.verdict}", 34)
                  for r in self._runs}
        n = len(self._runs)
        if ax is None:
            import matplotlib.pyplot as plt

            cols = min(n, 4)
            rows = -(-n // cols)
            fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows + 0.3),
                                     squeeze=False)
            for a in grid.ravel()[n:]:
                a.set_axis_off()
            ax = list(grid.ravel()[:n])
        plots.profile_comparison(data=data, runs=[r.label for r in self._runs],
                                 titles=titles, moments=moments, ax=list(ax))
        from matplotlib.ticker import NullFormatter

        for a in ax:
            a.title.set_fontsize(8)
            a.yaxis.set_minor_formatter(NullFormatter())
        ax[0].figure.tight_layout()
        return ax

    def learning(self, ax=None):
        """Every run's loss (and accuracy) on shared panels."""
        runs = list(self._runs)
        steps = pd.concat([r.steps.assign(run=r.label) for r in runs], ignore_index=True)
        eps = [r.data.epochs.assign(run=r.label) for r in runs if len(r.data.epochs)]
        return plots.learning_curves(steps=steps, epochs=pd.concat(eps, ignore_index=True)
                                     if eps else None, ax=_pair(ax))


def _pair(ax):
    """A loss / accuracy (or start / end) pair of Axes on a new figure when none is given,
    so that every method returns Axes."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    fig.subplots_adjust(wspace=0.3)
    return list(axes)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x) -> str:
    if not _finite(x):
        return "-"
    x = float(x)
    return f"{x:.2g}" if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:.3g}"


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%" if _finite(x) else "-"

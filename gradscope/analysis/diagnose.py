"""Diagnose a run from its log: vanishing or exploding gradients, dead units, saturation,
divergence.

:func:`diagnose` reads a log (or takes already-read tables with ``frames=``) and returns a
plain dict: one boolean per verdict, beside each an evidence dict naming the layers and steps
where the condition holds, the number compared, the threshold and a one-line message, plus a
one-line overall ``verdict`` and, when :mod:`gradscope.analysis.theory` is available, the mean-field
prediction of the gradient ratio set beside the measured one.

Only what :func:`~gradscope.reading.readers.read_steps`, :func:`~gradscope.reading.readers.read_layers`,
:func:`~gradscope.reading.readers.read_config` and :func:`~gradscope.reading.readers.read_status` return is used.
The rules, their default thresholds and the reasons for them are in docs/diagnosis.md.

Building blocks for sweeps: :func:`load_frames`, :func:`evaluate` (DataFrames in, the
same dict out), :func:`diagnose_table` (many logs, one row each), :func:`delta_ratios`,
:func:`config_summary`, :func:`theory_check`, :func:`format_diagnosis`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.activations import get_activation
from ..reading.readers import read_config, read_layers, read_status, read_steps
from ..record.schema import LogError

#: The booleans of a diagnosis, in the order the verdict lists them.
VERDICTS = ("vanishing", "exploding", "dead_units", "saturated", "diverged")

#: Default thresholds; each can be overridden by keyword (``diagnose(path, vanishing=1e-4)``).
DEFAULT_THRESHOLDS = {
    # delta_norm[layer 0] / delta_norm[output layer]: below this is vanishing
    "vanishing": 1e-3,
    # ... above this is exploding
    "exploding": 1e3,
    # share of a hidden layer's units dead on the probe set (ReLU family)
    "dead_units": 0.5,
    # share of a hidden layer's units with phi' < 5% of its maximum (sigmoid, tanh)
    "saturated": 0.5,
}

#: Gradient ratios are judged on the logged steps in this leading share of training.
EARLY_FRACTION = 0.5
#: The mean-field prediction "explains" a measured ratio within this factor.
THEORY_TOLERANCE = 10.0

_SATURATING = ("sigmoid", "tanh")
_RELU_FAMILY = ("relu", "leaky_relu", "elu")


# -- public API ---------------------------------------------------------------------------------
def load_frames(path) -> dict:
    """The tables :func:`evaluate` needs: ``{"steps", "layers", "config", "status"}``."""
    return {
        "steps": read_steps(path),
        "layers": read_layers(path),
        "config": read_config(path),
        "status": read_status(path),
    }


def diagnose(path=None, *, frames: dict | None = None, **thresholds) -> dict:
    """Diagnose one run.

    Parameters
    ----------
    path : the log file. May be omitted when ``frames`` is given (then it only names the run).
    frames : already-read tables ``{"steps": DataFrame, "layers": DataFrame, "config": dict,
        "status": dict}`` as the readers return them; ``layers`` and ``config`` are required,
        ``steps`` and ``status`` optional.
    **thresholds : overrides of :data:`DEFAULT_THRESHOLDS` by verdict name (``vanishing``,
        ``exploding``, ``dead_units``, ``saturated``).

    Returns the dict described in :func:`evaluate`. Raises :class:`~gradscope.reading.readers.LogError`
    for an unreadable file and ``ValueError`` for an unknown or invalid threshold.
    """
    if frames is None:
        if path is None:
            raise ValueError("diagnose needs a log path or frames=")
        frames = load_frames(path)
    missing = [k for k in ("layers", "config") if k not in frames]
    if missing:
        raise ValueError(f"frames needs {', '.join(missing)}; give steps, layers, config, status")
    return evaluate(frames.get("steps"), frames["layers"], frames["config"], frames.get("status"),
                    run=None if path is None else str(path), **thresholds)


def evaluate(steps: pd.DataFrame | None, layers: pd.DataFrame, config: dict,
             status: dict | None = None, *, run: str | None = None, **thresholds) -> dict:
    """Diagnose a run from its tables (``read_steps``, ``read_layers``, ``read_config``,
    ``read_status``).

    Returns a dict with

    - ``run`` (the path, or None), ``status`` (``completed``, ``diverged``, ``running``,
      ``interrupted``, ``failed``, or ``unknown`` without a status), ``status_message``,
      ``config_summary`` (e.g. ``"digits d8w64 sigmoid standard sgd lr=0.01 bs=32"``),
      ``thresholds`` (the values used), ``depth`` (hidden layers), ``logged_steps``;
    - for each name in :data:`VERDICTS` a boolean, and ``<name>_evidence``: a dict with
      ``layers`` (list of layer indices), ``steps`` (list of steps), ``value`` (float, the
      number compared), ``threshold`` (float, or None for ``diverged``), ``rule`` (one
      sentence), ``message`` (one line), ``applicable`` (False when the check does not apply
      to the run, e.g. dead units of tanh, or there was nothing to judge) and further keys
      per verdict (docs/diagnosis.md lists them);
    - ``verdict``: ``"healthy"``, ``"no data"`` (no usable logged step), ``"failed"`` (a run
      whose status is ``failed``, without alarms: never called healthy), or the alarms joined
      with ``", "`` (e.g. ``"vanishing, saturated"``);
    - ``theory``: :func:`theory_check`'s dict, or None when gradscope.analysis.theory is missing or
      cannot describe the run.
    """
    thr = resolve_thresholds(**thresholds)
    ctx = _Context.build(steps, layers, config, status)
    out: dict = {
        "run": run,
        "status": ctx.status,
        "status_message": ctx.status_message,
        "config_summary": config_summary(config),
        "thresholds": thr,
        "depth": ctx.depth,
        "logged_steps": len(ctx.all_steps),
    }
    theory = theory_check(config, layers)
    diverged = _check_diverged(ctx)
    dead = _check_fraction(ctx, "dead_units", thr["dead_units"])
    vanishing = _check_ratio(ctx, "vanishing", thr["vanishing"], theory, dead)
    exploding = _check_ratio(ctx, "exploding", thr["exploding"], theory, dead, diverged)
    saturated = _check_fraction(ctx, "saturated", thr["saturated"])
    for name, (flag, ev) in zip(VERDICTS, (vanishing, exploding, dead, saturated, diverged)):
        out[name] = bool(flag)
        out[f"{name}_evidence"] = ev
    alarms = [v for v in VERDICTS if out[v]]
    if alarms:
        out["verdict"] = ", ".join(alarms)
    elif ctx.status == "failed":
        # the run stopped on an error: what it logged cannot vouch for the rest
        out["verdict"] = "failed"
    elif ctx.ratio.empty and ctx.probe_steps.size == 0:
        out["verdict"] = "no data"
    else:
        out["verdict"] = "healthy"
    out["theory"] = theory
    return out


def diagnose_table(paths, **thresholds) -> pd.DataFrame:
    """One row per log: ``run``, ``status``, ``config_summary``, ``verdict``, each verdict's
    boolean and ``<name>_value``, ``theory_chi1``, ``theory_predicted_ratio``,
    ``theory_measured_ratio``, and ``error`` (the one-line message of an unreadable log)."""
    rows = []
    for p in paths:
        try:
            d = diagnose(p, **thresholds)
        except LogError as e:
            rows.append({"run": str(p), "error": str(e)})
            continue
        row = {"run": d["run"], "status": d["status"], "config_summary": d["config_summary"],
               "verdict": d["verdict"]}
        for v in VERDICTS:
            row[v] = d[v]
            row[f"{v}_value"] = d[f"{v}_evidence"]["value"]
        t = d["theory"] or {}
        row["theory_chi1"] = t.get("chi1", math.nan)
        row["theory_predicted_ratio"] = t.get("predicted_ratio", math.nan)
        row["theory_measured_ratio"] = t.get("measured_ratio", math.nan)
        row["error"] = ""
        rows.append(row)
    return pd.DataFrame(rows)


def resolve_thresholds(**overrides) -> dict:
    """:data:`DEFAULT_THRESHOLDS` with ``overrides`` applied and checked."""
    thr = dict(DEFAULT_THRESHOLDS)
    for k, v in overrides.items():
        if k not in thr:
            raise ValueError(f"unknown threshold {k!r}; accepted: {', '.join(thr)}")
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"threshold {k}={v!r}; accepted: a number") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"threshold {k}={v!r}; accepted: a finite number > 0")
        if k in ("dead_units", "saturated") and v > 1:
            raise ValueError(f"threshold {k}={v!r}; accepted: a share in (0, 1]")
        thr[k] = v
    return thr


def delta_ratios(layers: pd.DataFrame, column: str = "delta_norm") -> pd.DataFrame:
    """``column`` of every layer over the output layer's, one row per logged step.

    Index: step; columns: layer ``0 .. depth`` (the output column is 1). Steps where the
    output layer's value is not finite and positive are left out.
    """
    lay = layers.drop_duplicates(["step", "layer"], keep="last")
    table = lay.pivot(index="step", columns="layer", values=column).sort_index()
    if table.empty:
        return table
    out_col = table.columns.max()
    den = table[out_col]
    ok = np.isfinite(den) & (den > 0)
    return table[ok].div(den[ok], axis=0)


def config_summary(config: dict) -> str:
    """A short description: ``"digits d8w64 sigmoid standard sgd lr=0.01 bs=32"``, followed by
    the remedies that are on (``residual``, ``batchnorm``/``layernorm``, ``dropout=0.2``,
    ``clip_norm=1``, ``clip_value=0.5``)."""
    parts = []
    ds = config.get("dataset")
    if ds:
        ds = str(ds)
        parts.append(Path(ds).stem if Path(ds).suffix else ds)
    widths = config.get("widths")
    if widths is None and config.get("depth") is not None and config.get("width") is not None:
        widths = [config["width"]] * int(config["depth"])
    if widths:
        ws = [int(w) for w in widths]
        parts.append(f"d{len(ws)}w{ws[0]}" if len(set(ws)) == 1 else "w" + "-".join(map(str, ws)))
    if config.get("activation"):
        parts.append(str(config["activation"]))
    if config.get("init"):
        gain = config.get("init_gain")
        parts.append(str(config["init"]) + ("" if gain in (None, 1) else f" gain={gain:g}"))
    if config.get("optimizer"):
        parts.append(str(config["optimizer"]))
    lr = config.get("lr")
    if lr is None:
        lr = (config.get("optimizer_hyper") or {}).get("lr")
    if lr is not None:
        parts.append(f"lr={lr:g}")
    bs = config.get("batch_size")
    if bs is not None:
        parts.append(f"bs={bs}")
    return " ".join(parts + remedy_parts(config))


def remedy_parts(config: dict) -> list[str]:
    """The remedies that are on (docs/remedies.md): ``["residual", "batchnorm", ...]``."""
    parts = []
    if config.get("residual"):
        parts.append("residual")
    norm = config.get("norm")
    if norm:
        parts.append({"batch": "batchnorm", "layer": "layernorm"}.get(norm, f"norm={norm}"))
    if config.get("dropout"):
        parts.append(f"dropout={config['dropout']:g}")
    if config.get("clip_norm") is not None:
        parts.append(f"clip_norm={config['clip_norm']:g}")
    if config.get("clip_value") is not None:
        parts.append(f"clip_value={config['clip_value']:g}")
    return parts


def format_diagnosis(result: dict) -> str:
    """The diagnosis as text: the verdict line, one message per verdict, the theory line."""
    lines = [(f"{result.get('run') or 'run'}: {result['verdict']}"
              f" ({result['config_summary']}; status {result['status']})")]
    for v in VERDICTS:
        lines.append(f"  {'!' if result[v] else ' '} {result[f'{v}_evidence']['message']}")
    if result.get("theory"):
        lines.append(f"    theory: {result['theory']['message']}")
    return "\n".join(lines)


def theory_check(config: dict, layers: pd.DataFrame) -> dict | None:
    """Mean-field prediction of ``delta_norm[0] / delta_norm[depth]`` at initialisation beside
    the measured ratio at the first logged step.

    Returns None when :mod:`gradscope.analysis.theory` is not importable (or lacks the functions) or
    cannot describe the run (unknown activation or init; skip connections, normalisation or
    dropout, which the plain-MLP recursion does not cover). Otherwise a dict: ``activation``,
    ``init``, ``weight_var`` (hidden ``s_w^2``), ``out_weight_var`` (the output matrix's,
    or None), ``q_star``, ``chi1``, ``xi``, ``phase``, ``depth``, ``predicted_ratio``,
    ``chi1_ratio`` (``chi1^(depth/2)``: every step back at ``chi1``), ``measured_ratio``,
    ``measured_step``, ``predicted_profile`` and ``measured_profile`` (per layer
    ``0 .. depth``, over the output layer), ``explains`` (measured within
    :data:`THEORY_TOLERANCE` of predicted) and ``message`` (one line).

    The ratio spans ``depth`` steps back, ``delta_{l-1} = (delta_l W_l^T) * phi'(z_{l-1})``
    for ``l = depth .. 1``, each multiplying the norm by ``sqrt(chi1)``; the first step back
    uses the output matrix's own ``s_w^2`` (``predicted_delta_profile``).
    """
    if config.get("residual_layers") or config.get("norm") or (config.get("dropout") or 0) > 0:
        return None  # the mean-field recursion describes the plain MLP only
    from . import theory
    mean_field = theory.mean_field
    weight_var_from_config = theory.weight_var_from_config
    profile_fn = theory.predicted_delta_profile
    try:
        act = get_activation(str(config["activation"])).name
        init = str(config["init"])
        gain = config.get("init_gain")
        gain = 1.0 if gain is None else float(gain)
        sw2 = float(weight_var_from_config(config))
        mf = mean_field(act, sw2)
    except (KeyError, ValueError, TypeError, ArithmeticError, RuntimeError):
        return None
    depth = _depth(layers, config)
    if depth is None or depth < 1:
        return None
    out_sw2 = None
    try:
        from ..engine.initializers import weight_variance

        widths = config.get("widths") or [config["width"]] * int(config["depth"])
        out_sw2 = float(weight_variance(init, int(widths[-1]), int(config["n_outputs"]), gain))
    except (KeyError, ValueError, TypeError, IndexError):
        out_sw2 = None
    chi1 = float(mf["chi1"])
    chi1_ratio = chi1 ** (depth / 2) if chi1 >= 0 else math.nan
    predicted_profile = None
    if profile_fn is not None:
        try:
            prof = profile_fn(act, sw2, depth, out_weight_var=out_sw2)
            predicted_profile = [float(x) for x in prof]
        except (TypeError, ValueError, ArithmeticError, RuntimeError):
            predicted_profile = None
    if predicted_profile is None:
        predicted_profile = [chi1 ** ((depth - l) / 2) for l in range(depth + 1)]
    predicted = predicted_profile[0]
    ratios = delta_ratios(layers)
    measured, mstep, mprofile = math.nan, None, []
    if not ratios.empty:
        first = ratios.iloc[0]
        mstep = int(ratios.index[0])
        measured = float(first.get(0, math.nan))
        mprofile = [float(first.get(l, math.nan)) for l in range(depth + 1)]
    explains = bool(
        math.isfinite(measured) and math.isfinite(predicted) and measured > 0 and predicted > 0
        and abs(math.log10(measured / predicted)) <= math.log10(THEORY_TOLERANCE)
    )
    gain_txt = "" if gain == 1 else f" (gain {gain:g})"
    head = (f"{act} with {init} init{gain_txt}: chi1 = {_num(chi1)} ({mf['phase']}), "
            f"predicted {_num(predicted)} over {depth} layers")
    if mstep is None:
        msg = f"{head}; no logged step to compare"
    else:
        at = f"at step {mstep}" if mstep == 0 else (
            f"at step {mstep} (the first logged; the theory describes step 0)")
        msg = f"{head}, measured {_num(measured)} {at}"
        if explains:
            msg += ": the mean-field prediction explains the measurement"
        elif measured > 0 and math.isfinite(measured) and predicted > 0:
            orders = abs(math.log10(measured / predicted))
            msg += (f": {orders:.1f} orders of magnitude from the prediction, which it does not "
                    "explain")
    return {
        "activation": act, "init": init, "weight_var": sw2, "out_weight_var": out_sw2,
        "q_star": float(mf["q_star"]), "chi1": chi1, "xi": float(mf["xi"]),
        "phase": str(mf["phase"]), "depth": depth, "predicted_ratio": float(predicted),
        "chi1_ratio": float(chi1_ratio), "measured_ratio": measured, "measured_step": mstep,
        "predicted_profile": predicted_profile, "measured_profile": mprofile,
        "explains": explains, "message": msg,
    }


# -- the run's tables, prepared once ------------------------------------------------------------
def _depth(layers: pd.DataFrame, config: dict) -> int | None:
    if len(layers):
        return int(layers["layer"].max())
    d = config.get("depth")
    if d is None and config.get("widths"):
        d = len(config["widths"])
    return None if d is None else int(d)


@dataclass
class _Context:
    layers: pd.DataFrame
    steps: pd.DataFrame | None
    config: dict
    status: str
    status_message: str
    status_step: int | None
    depth: int
    hidden: list
    activation: str
    all_steps: np.ndarray         # every logged step (layers table)
    bad_steps: np.ndarray         # steps with a non-finite loss or gradient norm
    ratio: pd.DataFrame           # delta_norm ratios over the output layer, finite steps only
    grad_ratio: pd.DataFrame      # the same for grad_norm
    early: np.ndarray             # steps of ``ratio`` in the first EARLY_FRACTION of training
    probe_steps: np.ndarray       # usable probe steps
    excluded_probe_steps: list    # probe steps left out (diverged or non-finite)

    @classmethod
    def build(cls, steps, layers, config, status) -> _Context:
        layers = layers.sort_values(["step", "layer"], kind="stable").reset_index(drop=True)
        status = status or {}
        depth = _depth(layers, config) or 0
        name = str(config.get("activation", ""))
        try:
            name = get_activation(name).name
        except KeyError:
            pass
        all_steps = np.unique(layers["step"].to_numpy()) if len(layers) else np.array([], int)
        bad = set()
        if steps is not None and len(steps) and {"loss", "grad_norm_total"} <= set(steps):
            finite = np.isfinite(steps["loss"].to_numpy(float)) & np.isfinite(
                steps["grad_norm_total"].to_numpy(float))
            bad.update(int(s) for s in steps["step"].to_numpy()[~finite])
        elif len(layers):
            g = layers["grad_norm"].to_numpy(float)
            bad.update(int(s) for s in layers["step"].to_numpy()[~np.isfinite(g)])
        bad_steps = np.array(sorted(bad), dtype=int)

        def clean(r):
            r = r[~r.index.isin(bad_steps)]
            return r[np.isfinite(r[0])] if 0 in r.columns else r.iloc[0:0]

        ratio = clean(delta_ratios(layers)) if len(layers) else pd.DataFrame()
        grad_ratio = clean(delta_ratios(layers, "grad_norm")) if len(layers) else pd.DataFrame()
        early = np.array([], dtype=int)
        if not ratio.empty:
            idx = ratio.index.to_numpy()
            cut = idx[0] + EARLY_FRACTION * (idx[-1] - idx[0])
            early = idx[idx <= cut]

        # probe steps: rows with probe metrics, leaving out diverged steps and steps whose
        # probe activations overflowed (their dead/saturated flags describe broken weights)
        probe_steps, excluded = np.array([], dtype=int), []
        hidden = list(range(depth))
        probe_cols = [c for c in ("probe_act_mean", "probe_saturated_frac", "dead_frac")
                      if c in layers.columns]
        if len(layers) and probe_cols and hidden:
            hid = layers[layers["layer"] < depth]
            has = hid[probe_cols].notna().any(axis=1).groupby(hid["step"]).any()
            cand = has.index[has.to_numpy(bool)].to_numpy()
            stat_cols = [c for c in ("probe_act_mean", "probe_act_std") if c in hid.columns]
            fin = (np.isfinite(hid[stat_cols].to_numpy(float)).all(axis=1) if stat_cols
                   else np.ones(len(hid), bool))
            fin = pd.Series(fin, index=hid.index).groupby(hid["step"]).all()
            keep = []
            for s in cand:
                if s in bad or not fin.get(s, False):
                    excluded.append(int(s))
                else:
                    keep.append(int(s))
            probe_steps = np.array(keep, dtype=int)
        return cls(
            layers=layers, steps=steps, config=config,
            status=str(status.get("status", "unknown")),
            status_message=str(status.get("message", "") or ""),
            status_step=status.get("last_step"),
            depth=depth, hidden=hidden, activation=name, all_steps=all_steps,
            bad_steps=bad_steps, ratio=ratio, grad_ratio=grad_ratio, early=early,
            probe_steps=probe_steps, excluded_probe_steps=excluded,
        )

    def table(self, column: str, step_filter=None) -> pd.DataFrame:
        """Hidden layers' ``column``, one row per step (only ``step_filter`` steps if given)."""
        lay = self.layers[self.layers["layer"] < self.depth]
        if step_filter is not None:
            lay = lay[lay["step"].isin(step_filter)]
        if column not in lay.columns:
            return pd.DataFrame()
        lay = lay.drop_duplicates(["step", "layer"], keep="last")
        return lay.pivot(index="step", columns="layer", values=column).sort_index()


# -- the checks ---------------------------------------------------------------------------------
def _evidence(layers, steps, value, threshold, rule, message, applicable=True, **extra) -> dict:
    ev = {
        "layers": [int(x) for x in layers],
        "steps": [int(x) for x in steps],
        "value": _f(value),
        "threshold": None if threshold is None else float(threshold),
        "rule": rule,
        "message": message,
        "applicable": bool(applicable),
    }
    ev.update(extra)
    return ev


def _check_diverged(ctx: _Context) -> tuple[bool, dict]:
    rule = ("The run diverged if its status is 'diverged' or the loss or the total gradient "
            "norm is non-finite at a logged step.")
    flag = ctx.status == "diverged" or ctx.bad_steps.size > 0
    steps = list(ctx.bad_steps)
    if not steps and ctx.status == "diverged" and ctx.status_step is not None:
        steps = [int(ctx.status_step)]
    value, layers, what = math.nan, [], ""
    if steps and ctx.steps is not None and len(ctx.steps):
        row = ctx.steps[ctx.steps["step"] == steps[0]]
        if len(row):
            loss, g = float(row["loss"].iloc[0]), float(row["grad_norm_total"].iloc[0])
            value, what = (loss, "loss") if not math.isfinite(loss) else (g, "gradient norm")
    if steps:
        at = ctx.layers[ctx.layers["step"] == steps[0]]
        layers = at["layer"][~np.isfinite(at["grad_norm"].to_numpy(float))].tolist()
    if flag:
        if ctx.status_message and ctx.status == "diverged":
            msg = f"diverged: {ctx.status_message}"
        elif steps:
            msg = f"diverged: {what or 'gradient'} became {_num(value)} at step {steps[0]}"
        else:
            msg = "diverged: the run's status is 'diverged'"
    else:
        msg = ("did not diverge: the loss and the gradient norm are finite at every logged step"
               if len(ctx.all_steps) else "did not diverge: no logged step yet")
    return flag, _evidence(layers, steps, value, None, rule, msg, status=ctx.status)


def _check_ratio(ctx: _Context, name: str, thr: float, theory: dict | None,
                 dead: tuple[bool, dict], diverged: tuple[bool, dict] | None = None):
    vanish = name == "vanishing"
    cmp = (lambda x: x < thr) if vanish else (lambda x: x > thr)
    word = "below" if vanish else "above"
    rule = (f"The back-propagated gradient ratio delta_norm[layer 0] / delta_norm[output layer] "
            f"(median over the logged steps in the first half of training) is {word} the "
            "threshold" + ("." if vanish else ", or the run diverged."))
    r = ctx.ratio
    if r.empty:
        flag = bool(diverged and diverged[0])
        msg = (f"{name}: not judged: no logged step has finite, non-zero gradients at the "
               "output layer to compare with")
        if flag:
            msg = f"exploding: {diverged[1]['message']}"
        nan = math.nan
        extra = {"ratio_first": nan, "first_step": None, "ratio_median_early": nan,
                 "early_steps": [], "ratio_median": nan, "ratio_last": nan, "last_step": None,
                 "grad_ratio_first": nan, "grad_ratio_median_early": nan, "layer_ratios": {},
                 "recovered_step": None, "onset_step": None, "since_step": None,
                 "diverged": flag}
        return flag, _evidence(diverged[1]["layers"] if flag else [],
                               diverged[1]["steps"] if flag else [], nan, thr, rule, msg,
                               applicable=False, **extra)
    r0 = r[0]
    early = r.loc[ctx.early]
    value = float(np.median(early[0]))
    flag = cmp(value)
    first_step, first = int(r.index[0]), float(r0.iloc[0])
    med_all, last_step, last = float(np.median(r0)), int(r.index[-1]), float(r0.iloc[-1])
    layers = [l for l in ctx.hidden if l in early.columns and cmp(float(np.median(early[l])))]
    steps = [int(s) for s in r.index[cmp(r0.to_numpy())]]
    gr = ctx.grad_ratio
    g_first = float(gr[0].iloc[0]) if not gr.empty else math.nan
    g_early = float(np.median(gr[0][gr.index.isin(ctx.early)])) if not gr.empty else math.nan
    span = (f"steps {int(ctx.early[0])}-{int(ctx.early[-1])}" if ctx.early.size > 1
            else f"step {int(ctx.early[0])}")
    fmt_thr = _num(thr)
    extra = {
        "ratio_first": first, "first_step": first_step, "ratio_median_early": value,
        "early_steps": [int(ctx.early[0]), int(ctx.early[-1])], "ratio_median": med_all,
        "ratio_last": last, "last_step": last_step,
        "grad_ratio_first": g_first, "grad_ratio_median_early": g_early,
        "layer_ratios": {int(l): float(np.median(early[l])) for l in early.columns},
        "recovered_step": None, "onset_step": None, "diverged": False,
    }
    # did the ratio start on the wrong side and come back (or the reverse)?
    beyond = cmp(r0.to_numpy())
    extra["since_step"] = None
    if beyond[0] and not beyond[-1]:
        # the first step from which the ratio stays on the right side
        extra["recovered_step"] = int(r.index[np.flatnonzero(beyond)[-1] + 1])
    if beyond[-1]:
        # the first step from which the ratio stays beyond the threshold to the end
        ok = np.flatnonzero(~beyond)
        extra["since_step"] = int(r.index[ok[-1] + 1 if ok.size else 0])
    what = "back-propagated gradient at layer 0"
    onset = int(r.index[np.flatnonzero(beyond)[0]]) if beyond.any() else None
    extra["onset_step"] = onset
    if flag and beyond[0]:
        msg = (f"{name}: {what} is {_num(first)} of the output layer's at step {first_step} "
               f"(threshold {fmt_thr}); median over the first half of training {_num(value)} "
               f"({span}), over all training {_num(med_all)}")
    elif flag:
        msg = (f"{name}: {what} is {_num(value)} of the output layer's, median over the first "
               f"half of training ({span}; threshold {fmt_thr}); {_num(first)} at step "
               f"{first_step}, {word} the threshold from step {onset}")
    else:
        msg = (f"no {name}: {what} is {_num(value)} of the output layer's (median over the first "
               f"half of training, {span}; threshold {fmt_thr}), {_num(first)} at step "
               f"{first_step}")
    if flag:
        if len(steps) < len(r0):
            msg += f"; {word} the threshold at {len(steps)} of {len(r0)} logged steps"
        if extra["recovered_step"] is not None:
            msg += (f", back to {_num(last)} by step {last_step}")
        if len(layers) > 1:
            msg += f"; layers {_layer_list(layers)} are {word} it"
        if not gr.empty and set(ctx.early) <= set(gr.index):
            msg += f"; weight-gradient ratio {_num(g_early)}"
    elif beyond[0] and extra["recovered_step"] is not None:
        msg += (f"; it started {word} the threshold and has stayed "
                f"{'above' if vanish else 'below'} it since step {extra['recovered_step']}")
    elif steps:
        msg += f"; {word} the threshold at {len(steps)} of {len(r0)} logged steps"
        if extra["since_step"] is not None:
            msg += (f", at every one since step {extra['since_step']} ({_num(last)} at step "
                    f"{last_step})")
    if (flag and beyond[0] and theory and theory.get("explains")
            and theory.get("measured_step") == first_step
            and cmp(_f(theory.get("predicted_ratio")))):
        msg += (f"; mean-field theory predicts {_num(theory['predicted_ratio'])} "
                f"(chi1 = {_num(theory['chi1'])})")
    if vanish and flag and dead[0]:
        msg += f"; dead units in layers {_layer_list(dead[1]['layers'])} pass no gradient"
    if not vanish and diverged and diverged[0]:
        extra["diverged"] = True
        steps = sorted(set(steps) | set(diverged[1]["steps"]))
        if not flag:
            layers = layers or diverged[1]["layers"]
            msg = (f"exploding: {diverged[1]['message'].removeprefix('diverged: ')}; before "
                   f"that, {what} was {_num(value)} of the output layer's (median over the "
                   f"first half of training; threshold {fmt_thr})")
        else:
            msg += f"; {diverged[1]['message']}"
        flag = True
    return flag, _evidence(layers, steps, value, thr, rule, msg, **extra)


def _check_fraction(ctx: _Context, name: str, thr: float) -> tuple[bool, dict]:
    dead = name == "dead_units"
    act = ctx.activation
    if dead:
        column, fallback = "dead_frac", None
        rule = ("A hidden layer has dead units if at least the threshold share of its units "
                "have a pre-activation <= 0 on every probe example (dead_frac), at the last "
                "usable probe step; ReLU family only.")
        logged = "dead_frac" in ctx.layers.columns and ctx.layers["dead_frac"].notna().any()
        applicable = act in _RELU_FAMILY or (act not in _SATURATING and logged)
        noun, why = "dead units", f"{act or 'this activation'}'s units cannot die"
    else:
        column, fallback = "probe_saturated_frac", "saturated_frac"
        rule = ("A hidden layer is saturated if at least the threshold share of its units have "
                "phi' < 5% of its maximum on the probe set (probe_saturated_frac), at the last "
                "usable probe step (without probe data: median saturated_frac over the second "
                "half of training); sigmoid and tanh only.")
        applicable = act in _SATURATING
        noun, why = "saturation", f"{act or 'this activation'} does not saturate"
    if not applicable:
        return False, _evidence([], [], math.nan, thr, rule, f"{name}: not applicable: {why}",
                                applicable=False)
    if not ctx.hidden:
        return False, _evidence([], [], math.nan, thr, rule,
                                f"{name}: not judged: no hidden layer in the log yet",
                                applicable=False)
    tab = ctx.table(column, ctx.probe_steps) if ctx.probe_steps.size else pd.DataFrame()
    if not tab.empty:
        tab = tab.dropna(how="all")
    source = column
    if tab.empty and fallback is not None:
        # no probe data: the training batch's share, median over the second half
        t = ctx.table(fallback)
        t = t[~t.index.isin(ctx.bad_steps)].dropna(how="all")
        if not t.empty:
            idx = t.index.to_numpy()
            late = t.loc[idx >= idx[0] + (1 - EARLY_FRACTION) * (idx[-1] - idx[0])]
            source = fallback
            tab = late
            at_last = late.median()
            last_step = int(late.index[-1])
    if tab.empty:
        msg = f"{name}: not judged: no usable probe step"
        if ctx.excluded_probe_steps:
            msg += f" (left out: {', '.join(map(str, ctx.excluded_probe_steps))})"
        return False, _evidence([], [], math.nan, thr, rule, msg, applicable=False)
    if source == column:
        last_step = int(tab.index[-1])
        at_last = tab.loc[last_step]
    by_layer = {int(l): _f(at_last.get(l, math.nan)) for l in ctx.hidden}
    finite = {l: v for l, v in by_layer.items() if math.isfinite(v)}
    layers = [l for l, v in finite.items() if v >= thr]
    flag = bool(layers)
    value = max(finite.values()) if finite else math.nan
    worst = max(finite, key=finite.get) if finite else None
    crossed = tab.ge(thr) & tab.notna()
    steps = [int(s) for s in tab.index[crossed.any(axis=1).to_numpy()]]
    since = {}
    for l in layers:
        col = crossed[l].to_numpy()
        below = np.flatnonzero(~col)
        i = below[-1] + 1 if below.size else 0
        since[l] = int(tab.index[i])
    first_step = int(tab.index[0])
    where = (f"probe step {last_step}" if source == column
             else f"the median of {source} over steps {int(tab.index[0])}-{last_step}")
    extra = {"by_layer": by_layer, "since": since, "step": last_step, "source": source,
             "excluded_probe_steps": list(ctx.excluded_probe_steps)}
    label = "dead" if dead else "saturated"
    if flag:
        details = ", ".join(f"{l} ({_pct(by_layer[l])} since step {since[l]})" for l in layers)
        msg = (f"{name}: {_pct(value)} of layer {worst}'s units are {label} at {where} "
               f"(threshold {_pct(thr)}); layers {details}")
        if dead and act in ("leaky_relu", "elu"):
            msg += f" ({act} units still pass a small gradient when off)"
    else:
        msg = (f"no {noun}: at most {_pct(value)} of a hidden layer's units are {label} at "
               f"{where} (layer {worst}; threshold {_pct(thr)})")
        if steps:
            was = [l for l in ctx.hidden if l in crossed.columns and crossed[l].any()]
            msg += (f"; layers {_layer_list(was)} were at or above it at steps "
                    f"{_step_list(steps)} (first {first_step})")
    if ctx.excluded_probe_steps and source == column:
        msg += (f"; probe step{'s' if len(ctx.excluded_probe_steps) > 1 else ''} "
                f"{_step_list(ctx.excluded_probe_steps)} left out (diverged or overflowed)")
    return flag, _evidence(layers, steps, value, thr, rule, msg, **extra)


# -- formatting ---------------------------------------------------------------------------------
def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _num(x) -> str:
    """A ratio for a message: ``2.1e-06``, ``0.91``, ``0``, ``nan``, ``inf``."""
    x = _f(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.2g}"
    return f"{x:.1e}".replace(".0e", "e")


def _pct(x) -> str:
    x = _f(x)
    return "nan" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _layer_list(layers) -> str:
    layers = sorted(int(x) for x in layers)
    if not layers:
        return "none"
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


def _step_list(steps, most: int = 6) -> str:
    steps = [int(s) for s in steps]
    if len(steps) <= most:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[: most - 1])) + f", ... {steps[-1]}"


__all__ = [
    "DEFAULT_THRESHOLDS", "EARLY_FRACTION", "THEORY_TOLERANCE", "VERDICTS", "config_summary",
    "delta_ratios", "diagnose", "diagnose_table", "evaluate", "format_diagnosis",
    "load_frames", "resolve_thresholds", "theory_check",
]

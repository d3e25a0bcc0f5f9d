"""Diagnose a run from its log: is it learning, and if not, why.

:func:`diagnose` reads a log (or takes already-read tables with ``frames=``) and returns a
:class:`Diagnosis`: one overall verdict (:data:`VERDICTS`: ``healthy``, ``warning``,
``not_learning``, ``diverged``, ``no_data``), one :class:`Finding` per check (:data:`CHECKS`)
with its evidence, and for a failing verdict the ranked :class:`Cause` list drawn from those
findings. The verdict comes from the run's own progress (its training loss against its start
and against the chance-level loss, its accuracy against chance); the other checks explain it.

Every name a diagnosis uses (checks, verdicts, severities) is defined here, once; the run
table of :mod:`gradscope.analysis.runs`, the report, the sweep summary and the terminal
table use these names. The rules, their default thresholds and the reasons for them are in
docs/diagnosis.md.

Only what the readers return is used (steps, layers, config, status, and epochs when
given). Building blocks: :func:`load_frames`, :func:`evaluate` (tables in, a Diagnosis
out), :func:`delta_ratios`, :func:`config_summary`, :func:`theory_check`,
:func:`format_diagnosis`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.activations import get_activation
from ..reading.run import Run, read_frames

# -- the names, in one place --------------------------------------------------------------------
#: Severities of a flagged finding and of a verdict.
FAILING, WARNING = "failing", "warning"

#: Every check, in the order a diagnosis reports them, with its words for people. The first
#: two judge the outcome (progress); the others are the causes a failing verdict can name,
#: upstream first: the causes of a failure are ranked in this order (a gradient that explodes
#: or vanishes at initialisation comes before what follows from it; small updates follow from
#: every condition above them, so stalled updates come last).
CHECK_TITLES = {
    "not_learning": "not learning",
    "diverged": "diverged",
    "exploding": "exploding gradients",
    "vanishing": "vanishing gradients",
    "exploding_signal": "exploding forward signal",
    "collapsed_signal": "collapsing forward signal",
    "dead_units": "dead units",
    "saturated": "saturated units",
    "unstable_loss": "oscillating or rising loss",
    "stalled_updates": "stalled updates",
}
CHECKS = tuple(CHECK_TITLES)
#: The checks that can be named as the cause of a failing verdict.
CAUSES = CHECKS[2:]

#: The overall verdicts and their severity: ``healthy`` is a run that learns with no check
#: flagged; ``warning`` one that learns with some flagged; ``not_learning``, ``diverged`` and
#: ``failed`` (the run stopped on an error, status ``failed``) are failures; ``no_data`` has
#: nothing to judge yet.
VERDICT_SEVERITY = {
    "healthy": None,
    "warning": WARNING,
    "not_learning": FAILING,
    "diverged": FAILING,
    "failed": FAILING,
    "no_data": None,
}
VERDICTS = tuple(VERDICT_SEVERITY)

#: Default thresholds, named after their check; each can be overridden by keyword
#: (``diagnose(path, vanishing=1e-4)``). docs/diagnosis.md gives each one's source.
DEFAULT_THRESHOLDS = {
    # progress: the share of the way from chance to a perfect fit the run has come, by loss
    # (fall from min(start, chance loss)) and by accuracy (above chance); below it: not learning
    "not_learning": 0.25,
    # for classification the loss's fall is judged at this looser share (cross-entropy falls
    # slowly while the accuracy already rises)
    "not_learning_loss": 0.05,
    # delta_norm[layer 0] / delta_norm[output layer]: below this is vanishing ...
    "vanishing": 1e-3,
    # ... above this is exploding
    "exploding": 1e3,
    # RMS activation of the last hidden layer over the first's, at the first logged step
    "collapsed_signal": 1e-2,
    "exploding_signal": 1e2,
    # update_norm / weight_norm of the typical layer (median over steps, then over layers);
    # the customary healthy value is about 1e-3
    "stalled_updates": 2e-4,
    # batch-loss swings (interquartile range over the second half) or climb back from the best
    # running median, in units of the chance-level loss
    "unstable_loss": 0.5,
    # share of a hidden layer's units dead on the probe set (ReLU family)
    "dead_units": 0.5,
    # share of a hidden layer's units with phi' < 5% of its maximum (sigmoid, tanh)
    "saturated": 0.5,
}
#: For a failing run, a condition is named as a cause already at these looser bounds (the
#: checks not listed use their threshold): a gradient shrinking twentyfold (growing a
#: hundredfold) across the net slows learning under one learning rate even where it is no
#: alarm on a run that learns (shallow sigmoid nets, whose phi' is at most 1/4).
CAUSE_THRESHOLDS = {"vanishing": 5e-2, "exploding": 1e2}
#: A layer whose back-propagated gradient is below this share of the output layer's at a step
#: is not "reached" by the gradient there (its updates are left out of stalled_updates).
REACH = 1e-2
#: Thresholds that are shares in (0, 1].
_SHARES = ("not_learning", "not_learning_loss", "dead_units", "saturated")

#: Gradient ratios are judged on the logged steps in this leading share of training.
EARLY_FRACTION = 0.5
#: The loss at the end of a run: the median over this trailing share of its logged steps.
END_FRACTION = 0.1
#: The mean-field prediction "explains" a measured ratio within this factor.
THEORY_TOLERANCE = 10.0

_SATURATING = ("sigmoid", "tanh")
_RELU_FAMILY = ("relu", "leaky_relu", "elu")
_BELOW = ("vanishing", "collapsed_signal", "stalled_updates")  # flagged below the threshold


# -- the result ---------------------------------------------------------------------------------
@dataclass
class Finding:
    """One check of a run.

    ``flagged``: the condition holds. ``severity``: ``failing`` for a flag on a run that
    failed (its verdict is failing), ``warning`` for a flag on a run that learns, None when not
    flagged. ``value`` is the number compared with ``threshold``; ``numbers`` holds the other
    measurements (docs/diagnosis.md lists them per check). ``layers`` and ``steps`` name where
    the condition holds. ``applicable`` is False when the check does not apply to the run
    (dead units of tanh) or there was nothing to judge. ``message`` is one line for people;
    ``rule`` one sentence.
    """

    name: str
    flagged: bool
    value: float
    threshold: float | None
    message: str
    rule: str
    applicable: bool = True
    severity: str | None = None
    layers: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        return CHECK_TITLES[self.name]


@dataclass
class Cause:
    """A cause named for a failing verdict: ``name`` (one of :data:`CAUSES`), ``strength``
    (how far beyond its bound: decades for ratios, the share of the way from the bound to 1
    for shares; causes are ranked upstream first, not by it), ``value`` and ``bound`` (the
    number and the bound it crossed), ``message``."""

    name: str
    strength: float
    value: float
    bound: float
    message: str

    @property
    def title(self) -> str:
        return CHECK_TITLES[self.name]


@dataclass
class TheoryCheck:
    """The mean-field prediction of the back-propagated gradient ratio at initialisation
    beside the measured one (:func:`theory_check`); docs/diagnosis.md, "The theory line"."""

    activation: str
    init: str
    weight_var: float
    out_weight_var: float | None
    q_star: float
    chi1: float
    xi: float
    phase: str
    depth: int
    predicted_ratio: float
    chi1_ratio: float
    measured_ratio: float
    measured_step: int | None
    predicted_profile: list
    measured_profile: list
    explains: bool
    message: str


@dataclass
class Diagnosis:
    """The diagnosis of one run. ``verdict`` is one of :data:`VERDICTS`, ``severity`` its
    :data:`VERDICT_SEVERITY`; ``causes`` ranks what the log shows as the reasons for a
    failing verdict (empty when none is found, or when the verdict is not failing);
    ``findings`` holds every check of :data:`CHECKS` by name; ``live`` is True for a run
    still being written (judged so far)."""

    run: str | None
    status: str
    status_message: str
    config_summary: str
    thresholds: dict
    depth: int
    logged_steps: int
    verdict: str
    severity: str | None
    causes: list
    findings: dict
    theory: TheoryCheck | None
    live: bool = False

    def __getitem__(self, name: str) -> Finding:
        if name not in self.findings:   # d["verdict"] and the like, as earlier versions
            return self._legacy(name)
        return self.findings[name]

    @property
    def flags(self) -> list[str]:
        """Names of the flagged checks, in :data:`CHECKS` order."""
        return [n for n in CHECKS if self.findings[n].flagged]

    @property
    def failing(self) -> bool:
        return self.severity == FAILING

    @property
    def cause_names(self) -> list[str]:
        """The causes' names, upstream first (machine-readable: remedies key on these)."""
        return [c.name for c in self.causes]

    @property
    def headline(self) -> str:
        """One line: the verdict and, for a failure, its causes (``not_learning: cause
        vanishing, stalled_updates``), or the warnings (``warning: dead_units``)."""
        if self.verdict == "failed" and not self.causes:
            return f"failed: {self.status_message or 'stopped on an error'}"
        if self.failing:
            if self.causes:
                return f"{self.verdict}: cause {', '.join(self.cause_names)}"
            return f"{self.verdict}: no cause found"
        if self.verdict == "warning":
            return f"warning: {', '.join(self.flags)}"
        return self.verdict

    def to_dict(self) -> dict:
        """Plain data (``json.dumps`` works, NaN as JSON's NaN)."""
        return asdict(self)


# -- public API ---------------------------------------------------------------------------------
def load_frames(path) -> dict:
    """The tables :func:`evaluate` needs, read with one open: ``{"steps", "layers",
    "config", "status", "epochs"}`` (a long log's layers as time bins of medians,
    :func:`~gradscope.reading.run.read_frames`)."""
    return read_frames(path)


def diagnose(path=None, *, frames: dict | None = None, **thresholds) -> Diagnosis:
    """Diagnose one run.

    Parameters
    ----------
    path : the log file, or a run read already (:func:`~gradscope.reading.run.read_run`).
        May be omitted when ``frames`` is given (then it only names the run).
    frames : already-read tables ``{"steps": DataFrame, "layers": DataFrame, "config": dict,
        "status": dict, "epochs": DataFrame}`` as the readers return them; ``layers`` and
        ``config`` are required, the others optional (without ``steps`` progress cannot be
        judged; without ``epochs`` the accuracy is the training batches').
    **thresholds : overrides of :data:`DEFAULT_THRESHOLDS` by check name.

    Returns a :class:`Diagnosis`. Raises :class:`~gradscope.record.schema.LogError` for an
    unreadable file and ``ValueError`` for an unknown or invalid threshold.
    """
    if isinstance(path, Run):
        frames, path = path.frames(), path.path
    if frames is None:
        if path is None:
            raise ValueError("diagnose needs a log path or frames=")
        frames = load_frames(path)
    missing = [k for k in ("layers", "config") if k not in frames]
    if missing:
        raise ValueError(f"frames needs {', '.join(missing)}; give steps, layers, config, status")
    return evaluate(frames.get("steps"), frames["layers"], frames["config"], frames.get("status"),
                    epochs=frames.get("epochs"), run=None if path is None else str(path),
                    **thresholds)


def evaluate(steps: pd.DataFrame | None, layers: pd.DataFrame, config: dict,
             status: dict | None = None, *, epochs: pd.DataFrame | None = None,
             run: str | None = None, **thresholds) -> Diagnosis:
    """Diagnose a run from its tables (``read_steps``, ``read_layers``, ``read_config``,
    ``read_status``, ``read_epochs``); see :func:`diagnose`."""
    thr = resolve_thresholds(**thresholds)
    ctx = _Context.build(steps, layers, config, status, epochs)
    theory = theory_check(config, layers)
    found = {}
    found["diverged"] = _check_diverged(ctx)
    found["not_learning"] = _check_progress(ctx, thr["not_learning"], thr["not_learning_loss"])
    found["dead_units"] = _check_fraction(ctx, "dead_units", thr["dead_units"])
    found["saturated"] = _check_fraction(ctx, "saturated", thr["saturated"])
    found["vanishing"] = _check_ratio(ctx, "vanishing", thr["vanishing"], theory,
                                      found["dead_units"])
    found["exploding"] = _check_ratio(ctx, "exploding", thr["exploding"], theory,
                                      found["dead_units"], found["diverged"])
    found["collapsed_signal"], found["exploding_signal"] = _check_signal(
        ctx, thr["collapsed_signal"], thr["exploding_signal"])
    found["stalled_updates"] = _check_updates(ctx, thr["stalled_updates"])
    found["unstable_loss"] = _check_loss(ctx, thr["unstable_loss"])
    findings = {name: found[name] for name in CHECKS}

    if findings["diverged"].flagged:
        verdict = "diverged"
    elif ctx.status == "failed":
        # the run stopped on an error: what it logged cannot vouch for the rest
        verdict = "failed"
    elif findings["not_learning"].flagged:
        verdict = "not_learning"
    elif not findings["not_learning"].applicable and ctx.ratio.empty and \
            ctx.probe_steps.size == 0:
        verdict = "no_data"
    elif any(findings[n].flagged for n in CAUSES):
        verdict = "warning"
    else:
        verdict = "healthy"
    severity = VERDICT_SEVERITY[verdict]
    for f in findings.values():
        f.severity = (FAILING if severity == FAILING else WARNING) if f.flagged else None
    causes = _rank_causes(findings, thr) if severity == FAILING else []
    return Diagnosis(
        run=run, status=ctx.status, status_message=ctx.status_message,
        config_summary=config_summary(config), thresholds=thr, depth=ctx.depth,
        logged_steps=len(ctx.all_steps), verdict=verdict, severity=severity, causes=causes,
        findings=findings, theory=theory, live=ctx.status == "running",
    )


def diagnose_table(paths, **thresholds) -> pd.DataFrame:
    """The run table (:func:`gradscope.analysis.runs.run_table`) of these logs: one row per
    log, the columns of :data:`gradscope.analysis.runs.RUN_COLUMNS`."""
    from .runs import run_table

    return run_table(paths, **thresholds)


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
        if k in _SHARES and v > 1:
            raise ValueError(f"threshold {k}={v!r}; accepted: a share in (0, 1]")
        thr[k] = v
    return thr


def _rank_causes(findings: dict, thr: dict) -> list[Cause]:
    """The causes of a failing run, upstream first (:data:`CAUSES` order; a gradient that
    vanishes only after initialisation after dead and saturated units): every cause check
    whose value is beyond its bound (:data:`CAUSE_THRESHOLDS`, else its threshold)."""
    out = []
    for name in CAUSES:
        f = findings[name]
        if not f.applicable:
            continue
        value = f.numbers.get("cause_value", f.value)
        bound = CAUSE_THRESHOLDS.get(name, thr[name])
        if name == "exploding" and f.numbers.get("diverged"):
            strength = math.inf   # a run that diverged: exploding whatever the ratio was
        elif not (isinstance(value, float) and not math.isnan(value)):
            if not f.flagged:
                continue
            strength, value = math.inf, _f(value)
        elif name in _BELOW:
            if not value < bound:
                continue
            strength = math.log10(bound / value) if value > 0 else math.inf
        elif name in ("dead_units", "saturated"):
            if not value >= bound:
                continue
            strength = (value - bound) / (1 - bound) if bound < 1 else 0.0
        else:
            if not value > bound:
                continue
            strength = math.log10(value / bound) if math.isfinite(value) else math.inf
        out.append(Cause(name=name, strength=float(strength), value=float(value),
                         bound=float(bound), message=f.numbers.get("cause_message") or f.message))
    # a gradient that vanishes only later in training follows from units that died or
    # saturated: it is ranked after them (one that vanishes at initialisation comes first)
    van = findings["vanishing"].numbers
    late = not (_f(van.get("ratio_first")) < CAUSE_THRESHOLDS["vanishing"])
    order = {n: i for i, n in enumerate(CAUSES)}
    if late:
        order["vanishing"] = order["saturated"] + 0.5
    return sorted(out, key=lambda c: order[c.name])


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


def format_diagnosis(d: Diagnosis) -> str:
    """The diagnosis as text: the headline, the ranked causes of a failure, one line per check
    (``!`` failing, ``?`` warning), the theory line."""
    lines = [f"{d.run or 'run'}: {d.headline} ({d.config_summary}; status {d.status})"]
    for i, c in enumerate(d.causes, 1):
        lines.append(f"  cause {i}: {c.message}")
    for name in CHECKS:
        f = d.findings[name]
        mark = {FAILING: "!", WARNING: "?"}.get(f.severity, " ")
        lines.append(f"  {mark} {f.message}")
    if d.theory:
        lines.append(f"    theory: {d.theory.message}")
    return "\n".join(lines)


def theory_check(config: dict, layers: pd.DataFrame) -> TheoryCheck | None:
    """Mean-field prediction of ``delta_norm[0] / delta_norm[depth]`` at initialisation beside
    the measured ratio at the first logged step.

    Returns None when the theory cannot describe the run (unknown activation or init; skip
    connections, normalisation or dropout, which the plain-MLP recursion does not cover).
    Otherwise a :class:`TheoryCheck`: ``activation``,
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
    if config.get("mean_field_note"):
        return None  # a writer that knows the model is no plain MLP says why (gradscope.torch)
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
    return TheoryCheck(
        activation=act, init=init, weight_var=sw2, out_weight_var=out_sw2,
        q_star=float(mf["q_star"]), chi1=chi1, xi=float(mf["xi"]), phase=str(mf["phase"]),
        depth=depth, predicted_ratio=float(predicted), chi1_ratio=float(chi1_ratio),
        measured_ratio=measured, measured_step=mstep, predicted_profile=predicted_profile,
        measured_profile=mprofile, explains=explains, message=msg)


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
    epochs: pd.DataFrame | None
    loss: pd.Series               # finite batch losses by step
    classification: bool
    n_classes: int | None
    chance_loss: float            # log(classes), or the target's variance (NaN if unknown)

    @classmethod
    def build(cls, steps, layers, config, status, epochs=None) -> _Context:
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
        loss = pd.Series(dtype=float)
        if steps is not None and len(steps) and "loss" in steps:
            st = steps.drop_duplicates("step", keep="last").sort_values("step")
            loss = pd.Series(st["loss"].to_numpy(float), index=st["step"].to_numpy(int))
            loss = loss[np.isfinite(loss.to_numpy()) & ~loss.index.isin(bad_steps)]
        classification = str(config.get("task", "classification")) == "classification"
        n_classes = config.get("n_outputs") if classification else None
        n_classes = int(n_classes) if n_classes else None
        if classification:
            chance = math.log(n_classes) if n_classes and n_classes > 1 else math.nan
        else:
            chance = _f(config.get("target_variance"))
        return cls(
            epochs=epochs, loss=loss, classification=classification, n_classes=n_classes,
            chance_loss=chance,
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
def _finding(name, flag, layers, steps, value, threshold, rule, message, applicable=True,
             **numbers) -> Finding:
    return Finding(name=name, flagged=bool(flag), value=_f(value),
                   threshold=None if threshold is None else float(threshold), message=message,
                   rule=rule, applicable=bool(applicable), layers=[int(x) for x in layers],
                   steps=[int(x) for x in steps], numbers=numbers)


def _check_diverged(ctx: _Context) -> Finding:
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
    return _finding("diverged", flag, layers, steps, value, None, rule, msg, status=ctx.status)


def _check_ratio(ctx: _Context, name: str, thr: float, theory: TheoryCheck | None,
                 dead: Finding, diverged: Finding | None = None) -> Finding:
    vanish = name == "vanishing"
    cmp = (lambda x: x < thr) if vanish else (lambda x: x > thr)
    word = "below" if vanish else "above"
    rule = (f"The back-propagated gradient ratio delta_norm[layer 0] / delta_norm[output layer] "
            f"at the first logged step (the initialisation) or its median over the logged steps in the "
            f"first half of training is {word} the threshold"
            + ("." if vanish else ", or the run diverged."))
    r = ctx.ratio
    if r.empty:
        flag = bool(diverged and diverged.flagged)
        msg = (f"{name}: not judged: no logged step has finite, non-zero gradients at the "
               "output layer to compare with")
        if flag:
            msg = f"exploding: {diverged.message}"
        nan = math.nan
        extra = {"ratio_first": nan, "first_step": None, "ratio_early": nan,
                 "early_steps": [], "ratio_median": nan, "ratio_last": nan, "last_step": None,
                 "grad_ratio_first": nan, "grad_ratio_early": nan, "layer_ratios": {},
                 "recovered_step": None, "onset_step": None, "since_step": None,
                 "diverged": flag, "at_init": False, "cause_value": nan}
        return _finding(name, flag, diverged.layers if flag else [],
                        diverged.steps if flag else [], nan, thr, rule, msg,
                        applicable=flag, **extra)
    r0 = r[0]
    early = r.loc[ctx.early]
    value = float(np.median(early[0]))
    first_step, first = int(r.index[0]), float(r0.iloc[0])
    # judged at the initialisation too: an adaptive optimizer can hide a gradient that
    # vanishes at step 0 within a few steps, and the run may never recover from the start
    at_init = cmp(first) and first_step == int(ctx.all_steps[0])
    flag = cmp(value) or at_init
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
        "ratio_first": first, "first_step": first_step, "ratio_early": value,
        "early_steps": [int(ctx.early[0]), int(ctx.early[-1])], "ratio_median": med_all,
        "ratio_last": last, "last_step": last_step,
        "grad_ratio_first": g_first, "grad_ratio_early": g_early,
        "layer_ratios": {int(l): float(np.median(early[l])) for l in early.columns},
        "recovered_step": None, "onset_step": None, "diverged": False, "at_init": at_init,
        "cause_value": min(first, value) if vanish else max(first, value),
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
    if (flag and beyond[0] and theory is not None and theory.explains
            and theory.measured_step == first_step and cmp(theory.predicted_ratio)):
        msg += (f"; mean-field theory predicts {_num(theory.predicted_ratio)} "
                f"(chi1 = {_num(theory.chi1)})")
    if vanish and flag and dead.flagged:
        msg += f"; dead units in layers {_layer_list(dead.layers)} pass no gradient"
    if not vanish and diverged and diverged.flagged:
        extra["diverged"] = True
        steps = sorted(set(steps) | set(diverged.steps))
        if not flag:
            layers = layers or diverged.layers
            msg = (f"exploding: {diverged.message.removeprefix('diverged: ')}; before "
                   f"that, {what} was {_num(value)} of the output layer's (median over the "
                   f"first half of training; threshold {fmt_thr})")
        else:
            msg += f"; {diverged.message}"
        flag = True
    extra["cause_message"] = (
        f"{CHECK_TITLES[name]}: back-propagated gradient at layer 0 is {_num(first)} of the "
        f"output layer's at step {first_step}, median {_num(value)} over the first half of "
        "training")
    if extra["diverged"]:
        extra["cause_message"] = (f"{CHECK_TITLES[name]}: "
                                  f"{diverged.message.removeprefix('diverged: ')}"
                                  + _gradient_growth(ctx))
    return _finding(name, flag, layers, steps, value, thr, rule, msg, **extra)


def _gradient_growth(ctx: _Context) -> str:
    """``"; the total gradient norm grew from A at step s to B at step t"`` (finite steps)."""
    st = ctx.steps
    if st is None or not len(st) or "grad_norm_total" not in st:
        return ""
    g = pd.Series(st["grad_norm_total"].to_numpy(float), index=st["step"].to_numpy(int))
    g = g[np.isfinite(g.to_numpy())]
    if len(g) < 2:
        return ""
    top = int(g.idxmax())
    return (f"; the total gradient norm grew from {_num(g.iloc[0])} at step {int(g.index[0])} "
            f"to {_num(g.max())} at step {top}")


def _check_fraction(ctx: _Context, name: str, thr: float) -> Finding:
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
        return _finding(name, False, [], [], math.nan, thr, rule,
                        f"{name}: not applicable: {why}", applicable=False)
    if not ctx.hidden:
        return _finding(name, False, [], [], math.nan, thr, rule,
                        f"{name}: not judged: no hidden layer in the log yet", applicable=False)
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
        return _finding(name, False, [], [], math.nan, thr, rule, msg, applicable=False)
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
    extra["cause_message"] = (f"{CHECK_TITLES[name]}: {_pct(value)} of layer {worst}'s units "
                              f"are {label} at {where}")
    return _finding(name, flag, layers, steps, value, thr, rule, msg, **extra)



def _final_accuracy(ctx: _Context) -> tuple[float, str]:
    """The run's accuracy at its end and where it comes from: the last epoch's validation
    accuracy, else its training accuracy, else the median batch accuracy over the last
    :data:`END_FRACTION` of the logged steps."""
    ep = ctx.epochs
    for col, split in (("val_accuracy", "validation"), ("train_accuracy", "training")):
        if ep is not None and len(ep) and col in ep.columns:
            v = pd.to_numeric(ep[col], errors="coerce").dropna()
            if len(v):
                return float(v.iloc[-1]), split
    st = ctx.steps
    if st is not None and len(st) and "accuracy" in st.columns:
        a = pd.to_numeric(st["accuracy"], errors="coerce")
        a = a[~st["step"].isin(ctx.bad_steps)].dropna().to_numpy(float)
        if a.size:
            return float(np.median(a[-_tail(a.size):])), "training batches"
    return math.nan, ""


def _tail(n: int) -> int:
    return max(1, math.ceil(END_FRACTION * n))


def _check_progress(ctx: _Context, thr: float, thr_loss: float) -> Finding:
    name = "not_learning"
    rule = ("The run is not learning if its training loss (median over the last tenth of the "
            "logged steps) has come down less than the threshold share of min(loss at the first "
            "logged step, chance-level loss) (for classification: less than the not_learning_loss "
            "share), or its accuracy has come less than the threshold share of the way from "
            "chance to 1.")
    loss = ctx.loss
    nan = math.nan
    acc, split = _final_accuracy(ctx) if ctx.classification else (nan, "")
    chance_acc = 1.0 / ctx.n_classes if ctx.classification and ctx.n_classes else nan
    numbers = {"loss_start": nan, "loss_end": nan, "chance_loss": ctx.chance_loss,
               "loss_fall": nan, "accuracy": acc, "accuracy_split": split,
               "chance_accuracy": chance_acc, "accuracy_gain": nan, "so_far": False,
               "first_step": None, "last_step": None,
               "total_steps": ctx.config.get("total_steps")}
    if loss.empty:
        msg = ("not_learning: not judged: no logged step with a finite loss"
               if ctx.steps is not None else "not_learning: not judged: no steps table")
        return _finding(name, False, [], [], nan, thr, rule, msg, applicable=False, **numbers)
    vals = loss.to_numpy(float)
    start, end = float(vals[0]), float(np.median(vals[-_tail(vals.size):]))
    chance = ctx.chance_loss
    ref = min(start, chance) if math.isfinite(chance) else start
    fall = (ref - end) / ref if ref > 0 else nan
    gain = (acc - chance_acc) / (1 - chance_acc) if math.isfinite(acc) and chance_acc < 1 \
        else nan
    live = ctx.status == "running"
    numbers.update(loss_start=start, loss_end=end, loss_fall=fall, accuracy_gain=gain,
                   so_far=live, first_step=int(loss.index[0]), last_step=int(loss.index[-1]))
    # cross-entropy falls slowly while the accuracy rises: for classification the accuracy is
    # judged at the threshold and the loss at the looser not_learning_loss
    loss_thr = thr_loss if ctx.classification else thr
    slow_loss = math.isfinite(fall) and fall < loss_thr
    slow_acc = math.isfinite(gain) and gain < thr
    flag = slow_loss or slow_acc
    value = min(x for x in (fall, gain) if math.isfinite(x)) if math.isfinite(fall) or \
        math.isfinite(gain) else nan
    chance_txt = ("log(classes)" if ctx.classification else "the target's variance")
    loss_txt = (f"training loss {_num(start)} at step {int(loss.index[0])} -> {_num(end)} by "
                f"step {int(loss.index[-1])}"
                + (f" (chance level {_num(chance)}, {chance_txt})" if math.isfinite(chance)
                   else " (chance level unknown)")
                + f", {_pct(max(fall, 0) if math.isfinite(fall) else fall)} of the way down")
    acc_txt = (f"; {split} accuracy {_pct(acc)} (chance {_pct(chance_acc)})"
               if math.isfinite(acc) else "")
    when = ""
    if live:
        total = ctx.config.get("total_steps")
        when = (f" so far (step {int(loss.index[-1])}"
                + (f" of {int(total)})" if total else ")"))
    if flag:
        msg = (f"not_learning{when}: {loss_txt}{acc_txt} (thresholds: {_pct(loss_thr)} of the "
               f"way down" + (f", {_pct(thr)} of the way from chance accuracy to 1)"
                              if ctx.classification else ")"))
    else:
        msg = f"learning{when}: {loss_txt}{acc_txt}"
    return _finding(name, flag, [], [int(loss.index[-1])] if flag else [], value, thr, rule,
                    msg, **numbers)


def _rms_profile(ctx: _Context, step) -> pd.Series:
    """Root mean square of each hidden layer's activations at ``step``:
    ``sqrt(act_mean^2 + act_std^2)``."""
    lay = ctx.layers[(ctx.layers["step"] == step) & (ctx.layers["layer"] < ctx.depth)]
    if not {"act_mean", "act_std"} <= set(lay.columns):
        return pd.Series(dtype=float)
    lay = lay.drop_duplicates("layer", keep="last").set_index("layer").sort_index()
    return np.sqrt(lay["act_mean"].astype(float) ** 2 + lay["act_std"].astype(float) ** 2)


def predicted_signal_ratio(config: dict, rms_first: float, depth: int) -> float:
    """Mean-field prediction of the RMS activation of the last hidden layer over the first's
    at initialisation: from the measured first layer, ``q_1 = s_w^2 rms_0^2`` and
    ``q_l = s_w^2 E[phi(sqrt(q_{l-1}) z)^2]`` (no biases at init), RMS ``sqrt(E[phi^2])``.
    NaN when the theory does not describe the run (remedies on, unknown activation or init)."""
    if config.get("residual_layers") or config.get("norm") or (config.get("dropout") or 0) > 0:
        return math.nan
    if depth < 2 or not (math.isfinite(rms_first) and rms_first > 0):
        return math.nan
    from . import theory

    try:
        act = get_activation(str(config["activation"])).name
        sw2 = float(theory.weight_var_from_config(config))
        q = theory.q_trajectory(act, sw2, 0.0, rms_first ** 2, depth - 2)
        m2 = theory.gaussian_moments(act, float(q[-1]))[0]
    except (KeyError, ValueError, TypeError, ArithmeticError, RuntimeError):
        return math.nan
    return math.sqrt(m2) / rms_first if math.isfinite(m2) and m2 >= 0 else math.nan


def _check_signal(ctx: _Context, lo: float, hi: float) -> tuple[Finding, Finding]:
    rule = ("The forward signal collapses (explodes) if the root-mean-square activation of the "
            "last hidden layer over the first hidden layer's, at the first logged step (the "
            "initialisation), is below (above) the threshold.")
    nan = math.nan
    rms = _rms_profile(ctx, ctx.all_steps[0]) if ctx.all_steps.size else pd.Series(dtype=float)
    rms = rms[np.isfinite(rms.to_numpy(float))]
    if ctx.depth < 2 or len(rms) < 2 or not rms.iloc[0] > 0:
        why = ("fewer than two hidden layers" if ctx.depth < 2
               else "no activation statistics at the first logged step")
        return tuple(_finding(n, False, [], [], nan, t, rule, f"{n}: not judged: {why}",
                              applicable=False, signal_ratio=nan, predicted_signal_ratio=nan,
                              rms_by_layer={}, step=None)
                     for n, t in (("collapsed_signal", lo), ("exploding_signal", hi)))
    step = int(ctx.all_steps[0])
    ratio = float(rms.iloc[-1] / rms.iloc[0])
    pred = predicted_signal_ratio(ctx.config, float(rms.iloc[0]), ctx.depth)
    profile = {int(l): float(v) for l, v in rms.items()}
    last = int(rms.index[-1])
    pred_txt = f"; mean-field theory predicts {_num(pred)}" if math.isfinite(pred) else ""
    head = (f"RMS activation of layer {last} is {_num(ratio)} of layer {int(rms.index[0])}'s "
            f"at step {step}")
    out = []
    for name, t, beyond in (("collapsed_signal", lo, ratio < lo),
                            ("exploding_signal", hi, ratio > hi)):
        rel = rms / rms.iloc[0]
        layers = [int(l) for l, v in rel.items() if (v < t if name == "collapsed_signal"
                                                     else v > t)]
        word = "below" if name == "collapsed_signal" else "above"
        if beyond:
            msg = f"{name}: {head} (threshold {_num(t)}){pred_txt}"
        else:
            msg = f"no {name.replace('_', ' ')}: {head} (threshold {_num(t)}){pred_txt}"
        if beyond and len(layers) > 1:
            msg += f"; layers {_layer_list(layers)} are {word} it"
        out.append(_finding(name, beyond, layers if beyond else [], [step] if beyond else [],
                            ratio, t, rule, msg, signal_ratio=ratio,
                            predicted_signal_ratio=pred, rms_by_layer=profile, step=step,
                            cause_message=f"{CHECK_TITLES[name]}: {head}{pred_txt}"))
    return out[0], out[1]


def _check_updates(ctx: _Context, thr: float) -> Finding:
    name = "stalled_updates"
    rule = ("Updates are stalled if the typical layer's update/weight ratio (update_norm / "
            "weight_norm: its median over the logged steps at which the layer's back-propagated "
            "gradient is at least 1e-2 of the output layer's, then the median over the layers) "
            "is below the threshold.")
    nan = math.nan
    if "update_ratio" not in ctx.layers.columns:
        return _finding(name, False, [], [], nan, thr, rule,
                        f"{name}: not judged: no update_ratio in the log", applicable=False,
                        by_layer={}, fastest_layer=None)
    lay = ctx.layers[~ctx.layers["step"].isin(ctx.bad_steps)]
    lay = lay.drop_duplicates(["step", "layer"], keep="last")
    tab = lay.pivot(index="step", columns="layer", values="update_ratio")
    tab = tab.where(np.isfinite(tab))
    all_med = tab.median()
    # layers the gradient does not reach at a step (it vanished, or the units died) do not
    # move whatever the learning rate: that is another check's cause, so they are left out
    if not ctx.ratio.empty:
        reach = ctx.ratio.reindex(index=tab.index, columns=tab.columns)
        tab = tab.where(~(reach < REACH))
    med = tab.median()
    med = med[np.isfinite(med.to_numpy(float))]
    if med.empty:
        return _finding(name, False, [], [], nan, thr, rule,
                        f"{name}: not judged: no finite update ratio logged", applicable=False,
                        by_layer={}, fastest_layer=None)
    by_layer = {int(l): float(v) for l, v in all_med.items() if math.isfinite(v)}
    fastest = int(med.idxmax())
    value = float(med.median())
    flag = value < thr
    slow = [l for l, v in by_layer.items() if v < thr]
    lr = ctx.config.get("lr")
    if lr is None:
        lr = (ctx.config.get("optimizer_hyper") or {}).get("lr")
    opt = ctx.config.get("optimizer")
    what = (f"the typical layer changes its weights by {_num(value)} of their norm per step "
            f"(median over the logged steps at which the gradient reaches it, then over "
            f"{len(med)} layers; threshold {_num(thr)}, "
            f"about 1e-3 is customary; fastest layer {fastest} at {_num(med.max())})")
    setting = f" with {opt} at lr {lr:g}" if opt and lr is not None else ""
    if flag:
        msg = f"{name}: {what}{setting}"
    else:
        msg = f"no stalled updates: {what}"
        if slow:
            msg += f"; layers {_layer_list(slow)} are below it"
    return _finding(name, flag, slow if flag else [], [], value, thr, rule, msg,
                    by_layer=by_layer, fastest_layer=fastest,
                    cause_message=(f"{CHECK_TITLES[name]}: the typical layer changes its weights "
                                   f"by {_num(value)} of their norm per step{setting} "
                                   f"(threshold {_num(thr)}; about 1e-3 is customary)"))


def _check_loss(ctx: _Context, thr: float) -> Finding:
    name = "unstable_loss"
    rule = ("The loss is oscillating or rising if, in units of the larger of the chance-level "
            "loss (else the first loss) and the median loss of the second half of the logged "
            "steps, the batch losses of that half spread over an interquartile range above the "
            "threshold, or the loss's running median ends more than the threshold above its "
            "lowest point.")
    nan = math.nan
    loss = ctx.loss
    numbers = {"spread": nan, "climb": nan, "best": nan, "best_step": None, "scale": nan}
    if loss.size < 4:
        return _finding(name, False, [], [], nan, thr, rule,
                        f"{name}: not judged: fewer than 4 logged steps with a finite loss",
                        applicable=False, **numbers)
    scale = ctx.chance_loss if math.isfinite(ctx.chance_loss) and ctx.chance_loss > 0 \
        else float(loss.iloc[0])
    if not (math.isfinite(scale) and scale > 0):
        return _finding(name, False, [], [], nan, thr, rule,
                        f"{name}: not judged: no loss scale", applicable=False, **numbers)
    vals = loss.to_numpy(float)
    half = vals[vals.size // 2:]
    # a loss far above chance (an exploding net's) is judged against its own level
    scale = max(scale, float(np.median(half)))
    q1, q3 = np.percentile(half, [25, 75])
    spread = float(q3 - q1) / scale
    run_med = loss.rolling(max(3, loss.size // 20), min_periods=1).median()
    best_step = int(run_med.idxmin())
    best = float(run_med.min())
    climb = (float(run_med.iloc[-1]) - best) / scale
    value = max(spread, climb)
    flag = value > thr
    numbers.update(spread=spread, climb=climb, best=best, best_step=best_step, scale=scale)
    what = (f"batch losses of the second half spread over {_num(spread)} x the loss scale "
            f"{_num(scale)} (interquartile range), and the running median ends {_num(climb)} x "
            f"it above its lowest point ({_num(best)} at step {best_step})")
    msg = (f"{name}: {what} (threshold {_num(thr)})" if flag
           else f"no oscillating or rising loss: {what} (threshold {_num(thr)})")
    steps = [int(s) for s in loss.index[vals.size // 2:]] if flag and spread > thr else []
    return _finding(name, flag, [], steps, value, thr, rule, msg,
                    cause_message=f"{CHECK_TITLES[name]}: {what}", **numbers)


# -- formatting ---------------------------------------------------------------------------------
def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _num(x) -> str:
    """A ratio for a message: ``2.1e-06``, ``0.91``, ``< 1e-308 (underflow)``, ``nan``,
    ``inf`` (a ratio of norms is 0 only when the numerator fell below the float range)."""
    x = _f(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "< 1e-308 (underflow)"
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
    "CAUSES", "CAUSE_THRESHOLDS", "CHECKS", "CHECK_TITLES", "DEFAULT_THRESHOLDS",
    "EARLY_FRACTION", "END_FRACTION", "FAILING", "REACH", "THEORY_TOLERANCE", "VERDICTS",
    "VERDICT_SEVERITY", "WARNING", "Cause", "Diagnosis", "Finding", "TheoryCheck",
    "config_summary",
    "delta_ratios", "diagnose", "diagnose_table", "evaluate", "format_diagnosis", "load_frames",
    "predicted_signal_ratio", "resolve_thresholds", "theory_check",
]

"""What to do about a failing verdict: remedies as complete ``gradscope train`` command lines.

:func:`remedies` takes a run's logged config and the names of its failing verdicts and
returns :class:`Remedy` objects, most promising first. Each holds the option changes, one
plain-words reason, where mean-field theory can say it the predicted first-to-output
gradient ratio after the change, and the run's own command line with the change applied
(:func:`command_line`), ready to paste.

How candidates are ranked (vanishing, exploding and saturated runs): by how far the
predicted ratio stays from 1 in decades, plus one decade for changing the activation (a
bigger change than an initialisation) and two for an initialisation that puts a saturating
activation deep into saturation (q* > 4). Structural remedies that theory here does not
predict (``--norm batch``, ``--residual``) follow. Exploding and diverged runs whose
initialisation does not predict the explosion get a smaller learning rate and
``--clip-norm`` first; dead ReLU units get He init, leaky ReLU and wider layers.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .theory import advise

__all__ = ["Remedy", "command_line", "problems", "remedies", "remedies_for_run",
           "VERDICT_ORDER"]

#: The order in which problems (flagged checks of a diagnosis) are addressed when no
#: ranking of causes is given (the first one's remedies come first).
VERDICT_ORDER = ("diverged", "exploding", "exploding_signal", "vanishing", "collapsed_signal",
                 "dead_units", "saturated", "unstable_loss", "stalled_updates", "not_learning")
#: Problems remedied alike: a forward signal that collapses or explodes has the same cure
#: as the gradient that does (the initialisation), as does an unstable loss as divergence.
_ALIKE = {"collapsed_signal": "vanishing", "exploding_signal": "exploding",
          "unstable_loss": "diverged"}

_SATURATING = ("sigmoid", "tanh", "logistic")
_RELU_FAMILY = ("relu", "leaky_relu", "elu")
_INITS = ("standard", "xavier", "he", "lecun", "orthogonal")
#: Decades added to a candidate's score for changing the activation / deep saturation.
_ACTIVATION_PENALTY = 1.0
_SATURATION_PENALTY = 2.0
#: A named init counts as critical when its chi1 is within this of 1.
_CRITICAL_TOL = 0.05

# the order of the options on a command line, and their defaults (left out when equal);
# None as default: always written when set
_OPTIONS = (
    ("dataset", None), ("target", None), ("data_seed", 0), ("standardize", False),
    ("depth", None), ("width", None), ("widths", None), ("activation", None),
    ("init", None), ("init_gain", 1.0), ("optimizer", None), ("lr", None),
    ("momentum", None), ("beta1", None), ("beta2", None), ("eps", None), ("rho", None),
    ("alpha", None), ("weight_decay", None), ("batch_size", 32), ("epochs", None),
    ("steps", None), ("val_fraction", 0.2), ("seed", 0), ("dtype", "float32"),
    ("dropout", 0.0), ("residual", False), ("norm", None), ("clip_norm", None),
    ("clip_value", None),
)
_FLAGS = ("standardize", "residual")


@dataclass
class Remedy:
    """One remedy for one failing verdict."""

    verdict: str                 # the verdict it addresses
    change: dict                 # option -> new value, e.g. {"init": "he"}
    why: str                     # plain words, one line
    predicted_ratio: float | None = None   # mean-field first/output ratio after the change
    command: str = ""            # the complete command line
    options: dict = field(default_factory=dict)  # the run's options with the change applied
    torch: bool = False          # for a PyTorch model's log: said in torch's terms, no command

    @property
    def summary(self) -> str:
        """``--init he (predicted ratio 1.0): why`` (for a PyTorch model: ``in the model:
        kaiming_normal_ init: why``)"""
        if self.torch:
            flags = "in the model: " + torch_words(self.change)
        else:
            flags = " ".join(_option_words(k, v) for k, v in self.change.items()
                             if v is not None)
        pred = ""
        if self.predicted_ratio is not None and math.isfinite(self.predicted_ratio):
            pred = f" (predicted ratio {_num(self.predicted_ratio)})"
        return f"{flags}{pred}: {self.why}"


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if 0 < abs(x) < 1e-308:
        return "< 1e-308 (underflow)"
    return f"{x:.2g}" if 1e-2 <= abs(x) < 1e4 else f"{x:.1e}"


def _option_words(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    if key in _FLAGS:
        return flag if value else ""
    if key == "widths":
        return f"{flag} {','.join(str(int(w)) for w in value)}"
    if isinstance(value, float):
        return f"{flag} {value:g}"
    return f"{flag} {shlex.quote(str(value))}"


#: How a change of gradscope train's options reads for a PyTorch model.
_TORCH_INIT = {"he": "nn.init.kaiming_normal_ (He) on the weights",
               "xavier": "nn.init.xavier_normal_ (Glorot) on the weights",
               "lecun": "normal weights of variance 1/fan_in (LeCun)",
               "orthogonal": "nn.init.orthogonal_ on the weights",
               "standard": "normal weights of variance 1 (standard)"}
_TORCH_ACT = {"relu": "nn.ReLU", "leaky_relu": "nn.LeakyReLU", "tanh": "nn.Tanh",
              "sigmoid": "nn.Sigmoid", "elu": "nn.ELU", "selu": "nn.SELU", "gelu": "nn.GELU",
              "softplus": "nn.Softplus", "swish": "nn.SiLU", "linear": "nn.Identity"}


def torch_words(change: dict) -> str:
    """A remedy's change in PyTorch terms (a PyTorch model's log has no train command)."""
    out = []
    for k, v in change.items():
        if v is None:
            continue
        if k == "activation":
            out.append(f"{_TORCH_ACT.get(v, v)} as the hidden activation")
        elif k == "init":
            out.append(_TORCH_INIT.get(v, f"{v} init"))
        elif k == "init_gain":
            out.append(f"initial weights scaled by {v:g}")
        elif k == "norm":
            out.append("nn.BatchNorm after each hidden layer" if v == "batch"
                       else "nn.LayerNorm after each hidden layer")
        elif k == "residual":
            out.append("skip connections around the hidden layers")
        elif k == "lr":
            out.append(f"the optimizer's lr={v:g}")
        elif k == "optimizer":
            out.append(f"torch.optim.{ {'adam': 'Adam', 'adamw': 'AdamW', 'sgd': 'SGD', 'rmsprop': 'RMSprop', 'momentum': 'SGD(momentum=0.9)', 'nesterov': 'SGD(momentum=0.9, nesterov=True)', 'adagrad': 'Adagrad', 'adadelta': 'Adadelta'}.get(v, v)}")
        elif k == "clip_norm":
            out.append(f"torch.nn.utils.clip_grad_norm_(model.parameters(), {v:g}) before "
                       "each step")
        elif k == "clip_value":
            out.append(f"torch.nn.utils.clip_grad_value_(model.parameters(), {v:g})")
        elif k in ("width", "widths"):
            out.append("wider hidden layers (twice the units)")
        elif k == "depth":
            out.append(f"{v} hidden layers")
        else:
            out.append(f"{k}={v}")
    return "; ".join(out)


def train_options(config: dict) -> dict:
    """The options of ``gradscope train`` that reproduce a run, from its logged config
    (resolved entries such as ``optimizer_hyper`` are not options)."""
    out = {}
    for key, _default in _OPTIONS:
        if key in config:
            out[key] = config[key]
    widths = out.get("widths")
    if widths is not None and len(set(widths)) == 1:
        out["depth"], out["width"], out["widths"] = len(widths), int(widths[0]), None
    if out.get("epochs") is not None:
        out["steps"] = None
    return out


def command_line(options: dict, out: str | Path | None = None) -> str:
    """``gradscope train ...`` with the options that differ from the defaults (the model,
    its initialisation, the optimizer, the learning rate and the length always)."""
    words = ["gradscope", "train"]
    for key, default in _OPTIONS:
        v = options.get(key)
        if v is None or (default is not None and v == default):
            continue
        if key in ("depth", "width") and options.get("widths") is not None:
            continue
        w = _option_words(key, v)
        if w:
            words.append(w)
    if out is not None:
        words += ["--out", shlex.quote(str(out))]
    return " ".join(words)


def _lr(config: dict) -> float | None:
    lr = config.get("lr")
    if lr is None:
        lr = (config.get("optimizer_hyper") or {}).get("lr")
    return float(lr) if lr is not None else None


def _widths(config: dict) -> list[int]:
    w = config.get("widths")
    if w is None:
        w = [config.get("width", 64)] * int(config.get("depth", 3))
    return [int(x) for x in w]


def _predict(act: str, init: str, gain: float, config: dict) -> tuple[float, dict] | None:
    return _predict_cached(act, init, float(gain), tuple(_widths(config)))


@lru_cache(maxsize=4096)
def _predict_cached(act: str, init: str, gain: float, widths: tuple) -> tuple[float, dict] | None:
    # a sweep's runs share most candidates: each is computed once
    try:
        r = advise(act, len(widths), init=init, gain=gain, width=list(widths))
    except (KeyError, ValueError, ZeroDivisionError, OverflowError):
        return None
    ratio = r.get("grad_ratio_from_inputs")
    if ratio is None or not math.isfinite(ratio):
        ratio = r["grad_ratio"]
    return float(ratio), r


def _score(ratio: float) -> float:
    return abs(math.log10(max(ratio, 1e-300)))


def _init_candidates(verdict: str, config: dict) -> list[tuple[float, Remedy]]:
    """Initialisations and activations ranked by the mean-field ratio they predict."""
    act = str(config.get("activation", "relu"))
    init = str(config.get("init", "xavier"))
    gain = float(config.get("init_gain") or 1.0)
    out: list[tuple[float, Remedy]] = []
    seen: set = set()

    def add(change: dict, why: str, a: str, i: str, g: float, penalty: float = 0.0):
        p = _predict(a, i, g, config)
        if p is None:
            return
        ratio, r = p
        key = (a, i, round(g, 3))
        if key in seen or key == (act, init, round(gain, 3)):
            return
        seen.add(key)
        sat = ""
        if a in _SATURATING and r.get("q_star", 0) > 4:
            penalty += _SATURATION_PENALTY
            sat = "; but most units then sit in saturation"
        out.append((_score(ratio) + penalty + 0.01 * len(change),
                    Remedy(verdict, change, why + sat, ratio)))

    # a named init that is critical for this activation at gain 1 (he for relu, xavier for tanh)
    for name in _INITS:
        if name == init:
            continue
        p = _predict(act, name, 1.0, config)
        if p and abs(p[1]["chi1"] - 1) <= _CRITICAL_TOL:
            change = {"init": name} if gain == 1.0 else {"init": name, "init_gain": 1.0}
            add(change, f"{name} init keeps {act}'s gradient scale from layer to layer "
                f"(chi1 = 1, mean-field theory)", act, name, 1.0)
    # the advisor's gain on the current init
    p = _predict(act, init, gain, config)
    if p is not None:
        g = float(p[1]["advised_gain"])
        if math.isfinite(g) and g > 0 and abs(g - gain) > 1e-3 * gain:
            g = float(f"{g:.3g}")
            add({"init_gain": g}, f"the gain mean-field theory advises for {act} with "
                f"{init} init (chi1 = {p[1]['advised_chi1']:.2g})", act, init, g)
    # another activation with its critical init
    others = []
    if act not in _RELU_FAMILY:
        others.append(("relu", "he"))
    if act in ("sigmoid", "logistic"):
        others.append(("tanh", "xavier"))
    for a, i in others:
        add({"activation": a, "init": i, **({"init_gain": 1.0} if gain != 1.0 else {})},
            f"{a} with {i} init passes the gradient back without shrinking it",
            a, i, 1.0, penalty=_ACTIVATION_PENALTY)
    return out


def _structural(verdict: str, config: dict) -> list[Remedy]:
    out = []
    if not config.get("norm"):
        out.append(Remedy(verdict, {"norm": "batch"},
                          "batch normalisation rescales every layer's input, so the gradient "
                          "keeps its scale whatever the init"))
    widths = _widths(config)
    if not config.get("residual") and len(set(widths)) == 1 and len(widths) > 1:
        out.append(Remedy(verdict, {"residual": True},
                          "skip connections give the gradient a path around every layer"))
    return out


def _smaller_steps(verdict: str, config: dict) -> list[Remedy]:
    out = []
    lr = _lr(config)
    if lr is not None and lr > 0:
        new = float(f"{lr / 10:.3g}")
        out.append(Remedy(verdict, {"lr": new},
                          f"a learning rate ten times smaller ({lr:g} -> {new:g}) keeps the "
                          "weights from blowing up"))
    if config.get("clip_norm") is None:
        out.append(Remedy(verdict, {"clip_norm": 1.0},
                          "clipping the gradient norm to 1 caps every step's size"))
    return out


def remedies(config: dict, verdicts, *, exploding: float = 1e3) -> list[Remedy]:
    """Remedies for the failing ``verdicts`` (names from :data:`VERDICT_ORDER`) of a run
    with this logged ``config``, most promising first, without duplicates. Each remedy's
    ``options`` and ``command`` are the run's options with the change applied."""
    verdicts = list(verdicts)
    failing = [v for v in verdicts if v in VERDICT_ORDER]
    act = str(config.get("activation", "relu"))
    found: list[Remedy] = []
    for name in failing:
        v = _ALIKE.get(name, name)
        if v in ("vanishing", "saturated"):
            ranked = sorted(_init_candidates(v, config), key=lambda t: t[0])
            found += [r for _, r in ranked] + _structural(v, config)
        elif v in ("exploding", "diverged"):
            ranked = sorted(_init_candidates(v, config), key=lambda t: t[0])
            now = _predict(act, str(config.get("init", "xavier")),
                           float(config.get("init_gain") or 1.0), config)
            init_caused = now is not None and now[0] > exploding
            init_fix = [r for _, r in ranked if "activation" not in r.change][:1]
            steps = _smaller_steps(v, config)
            found += (init_fix + steps) if init_caused else (steps + init_fix)
            found += _structural(v, config)[:1]
        elif v == "dead_units":
            if act in ("relu",) and config.get("init") != "he":
                gain = float(config.get("init_gain") or 1.0)
                p = _predict(act, "he", 1.0, config)
                found.append(Remedy(v, {"init": "he"} if gain == 1.0 else
                                    {"init": "he", "init_gain": 1.0},
                                    "He init keeps ReLU pre-activations at unit scale, so "
                                    "fewer units start (and stay) off", p[0] if p else None))
            if act != "leaky_relu":
                found.append(Remedy(v, {"activation": "leaky_relu"},
                                    "leaky ReLU passes a little gradient through units that "
                                    "are off, so they can come back"))
            widths = _widths(config)
            if len(set(widths)) == 1:
                found.append(Remedy(v, {"width": 2 * widths[0]},
                                    "wider layers: a deep, narrow ReLU net is often born dead"))
            else:
                found.append(Remedy(v, {"widths": [2 * w for w in widths]},
                                    "wider layers: a deep, narrow ReLU net is often born dead"))
            found += _smaller_steps(v, config)[:1]
        elif v == "stalled_updates" and len(failing) == 1:
            lr = _lr(config)
            if lr:
                new = float(f"{lr * 10:.3g}")
                found.append(Remedy(v, {"lr": new}, f"updates change the weights too little: "
                                    f"a learning rate ten times larger ({lr:g} -> {new:g})"))
        elif v == "not_learning" and len(failing) == 1:
            # no cause in the log: the training may just be too short or too slow
            lr = _lr(config)
            if config.get("optimizer") in ("sgd", "momentum", "nesterov"):
                found.append(Remedy(v, {"optimizer": "adam", "lr": None},
                                    "no cause found in the log; Adam adapts each weight's step "
                                    "size and often learns where plain SGD is slow"))
            if lr:
                new = float(f"{lr * 10:.3g}")
                found.append(Remedy(v, {"lr": new}, f"no cause found in the log; a learning "
                                    f"rate ten times larger ({lr:g} -> {new:g})"))
            if config.get("epochs"):
                found.append(Remedy(v, {"epochs": 3 * int(config["epochs"])},
                                    "no cause found in the log; three times longer training"))
            elif config.get("steps"):
                found.append(Remedy(v, {"steps": 3 * int(config["steps"])},
                                    "no cause found in the log; three times longer training"))
    out, seen = [], set()
    base = train_options(config)
    for r in found:
        key = tuple(sorted((k, str(val)) for k, val in r.change.items()))
        if key in seen:
            continue
        seen.add(key)
        opts = {**base, **r.change}
        if "width" in r.change:
            opts["widths"] = None
        r.options = opts
        r.command = command_line(opts)
        out.append(r)
    return out


def problems(diagnosis) -> list[str]:
    """What to remedy in a diagnosis: a failing run's causes, strongest first (and
    ``diverged`` for a diverged run); a warning's flagged checks; nothing for a healthy
    run (a :class:`~gradscope.analysis.diagnose.Diagnosis`)."""
    if diagnosis.verdict == "failed" and not diagnosis.causes:
        return []  # stopped on an error (its message says which), not a training problem
    if diagnosis.failing:
        out = list(diagnosis.cause_names)
        if diagnosis.verdict == "diverged" and "diverged" not in out:
            out.insert(0, "diverged")
        return out or ["not_learning"]
    if diagnosis.verdict == "warning":
        return [n for n in diagnosis.flags if n in VERDICT_ORDER]
    return []


failing_verdicts = problems


def remedies_for_run(config: dict, diagnosis, path: str | Path | None = None,
                     **thresholds) -> list[Remedy]:
    """:func:`remedies` for a diagnosed run; with ``path`` each command writes its log next
    to the run's (``NAME--CHANGE.h5``)."""
    out = remedies(config, problems(diagnosis),
                   exploding=thresholds.get("exploding", 1e3))
    if config.get("source") == "torch":
        # a PyTorch model: no train command; where the mean field does not describe the
        # model (mean_field_note), no predicted ratio and no gain tuned by it
        plain = not config.get("mean_field_note")
        kept = []
        for r in out:
            if not plain and "init_gain" in r.change:
                continue
            r.torch = True
            r.predicted_ratio = r.predicted_ratio if plain else None
            r.command = "in the model: " + torch_words(r.change)
            kept.append(r)
        return kept
    for r in out:
        target = None
        if path is not None:
            p = Path(path)
            slug = "-".join(_slug(k, v) for k, v in r.change.items() if v is not None)
            target = p.with_name(f"{p.stem}--{slug}.h5")
        r.command = command_line(r.options, target)
    return out


def _slug(key: str, value) -> str:
    if key in _FLAGS:
        return key
    if key == "widths":
        return "widths" + "x".join(str(int(w)) for w in value)
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{key.replace('_', '')}{value}"

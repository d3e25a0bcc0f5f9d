"""What the adapter learns about an ``nn.Module``: its layers, the activation after each,
whether it is a plain MLP (the mean-field overlay applies), and its initialisation.

A *layer* is a module that owns a parameter named ``weight`` (Linear, Conv1d/2d/3d,
normalisation layers, embeddings, ...), in the order the first recorded forward pass
calls them. Activations are the activation *modules* (``nn.ReLU``, ``nn.Sigmoid``, ...)
whose input is a layer's output; functional activations (``torch.relu(x)`` in
``forward``) are not seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..engine.activations import get_activation
from ..engine.initializers import weight_variance
from ..engine.stats import SATURATION

#: activation module classes the adapter knows: gradscope name, and whether the derivative
#: can be taken from the output alone (all of these: in-place activations are fine)
KNOWN = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Sigmoid: "sigmoid",
         nn.Tanh: "tanh", nn.Softplus: "softplus"}
#: activation modules whose output is <= 0 exactly where their input is (dead units)
RELU_FAMILY = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.ReLU6, nn.SELU, nn.CELU, nn.RReLU)
#: other element-wise activation modules: statistics of their output, no saturation
OTHER = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
         nn.Softsign, nn.Tanhshrink, nn.PReLU, *RELU_FAMILY)
ACTIVATION_TYPES = (*KNOWN, *OTHER)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def act_name(module: nn.Module) -> str:
    """The gradscope name of an activation module (its class name, lower case, if unknown)."""
    name = KNOWN.get(type(module))
    if name == "leaky_relu" and module.negative_slope != 0.01:
        return f"leaky_relu({module.negative_slope:g})"
    if name == "elu" and module.alpha != 1.0:
        return f"elu({module.alpha:g})"
    if name == "softplus" and (module.beta != 1.0):
        return f"softplus(beta={module.beta:g})"
    return name or type(module).__name__.lower()


def dphi_from_output(module: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    """``phi'(z)`` of a known activation from its output ``a`` alone (None if unknown)."""
    t = type(module)
    if t is nn.Sigmoid:
        return a * (1 - a)
    if t is nn.Tanh:
        return 1 - a * a
    if t is nn.ReLU:
        return (a > 0).to(a.dtype)
    if t is nn.LeakyReLU:
        return torch.where(a > 0, 1.0, float(module.negative_slope)).to(a.dtype)
    if t is nn.ELU:
        return torch.where(a > 0, torch.ones_like(a), a + float(module.alpha))
    if t is nn.Softplus and module.beta == 1.0:
        return -torch.expm1(-a)  # sigmoid(z) = 1 - exp(-softplus(z))
    return None


def saturated_count(module: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    """How many entries of the activation output ``a`` have ``phi'(z)`` below
    ``SATURATION`` times its maximum (None for an activation without a known derivative).
    The ReLU family in one comparison (phi' is 1 or below the threshold)."""
    tally = saturation_tally(module, a)
    if tally is None:
        return None
    t, complement = tally
    return a.numel() - t if complement else t


def saturation_tally(module: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """``(t, complement)``: the saturated count of ``a`` is ``t``, or ``a.numel() - t``
    where ``complement`` (ReLU: ``t`` counts the outputs > 0; the subtraction is left to
    the host, as an operation on the device it cost as much as the count). None for an
    activation without a known derivative."""
    t = type(module)
    if t is nn.ReLU:  # a >= 0: sign(a) is 1 where phi' = 1, else 0 (the quickest count)
        return torch.sign(a).sum(), True
    n = _saturated_count(module, a)
    return None if n is None else (n, False)


def _saturated_count(module: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    t = type(module)
    if t is nn.LeakyReLU and abs(module.negative_slope) < SATURATION:
        return torch.count_nonzero(a <= 0)
    d = dphi_from_output(module, a)
    if d is None:
        return None
    return torch.count_nonzero(d < saturation_threshold(module))


def df_max(module: nn.Module) -> float:
    return 0.25 if type(module) is nn.Sigmoid else 1.0


def saturation_threshold(module: nn.Module) -> float:
    return SATURATION * df_max(module)


def dead_threshold(module: nn.Module | None) -> float:
    """The output value at or below which the input of phi is <= 0 (the engine's dead flags)."""
    if module is None or isinstance(module, RELU_FAMILY) or type(module) is nn.Tanh:
        return 0.0
    if type(module) is nn.Sigmoid:
        return 0.5
    if type(module) is nn.Softplus and module.beta == 1.0:
        return math.log(2.0)
    return math.nan  # unknown: no dead flags


def output_range(module: nn.Module | None) -> tuple[float, float]:
    if module is not None and type(module) in KNOWN:
        try:
            return get_activation(KNOWN[type(module)]).output_range
        except KeyError:
            pass
    return (-5.0, 5.0)


def layer_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module owning a parameter named ``weight``, in registration order."""
    out = []
    for name, m in model.named_modules():
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if isinstance(w, nn.Parameter):
            out.append((name, m))
    return out


def weight_as_logged(module: nn.Module, w: torch.Tensor) -> np.ndarray:
    """A layer's weight as the log stores it: a Linear's as ``(fan_in, fan_out)`` (the
    engine's convention, so ``read_weights`` gives ``W`` with ``z = a @ W + b``), others in
    torch's own shape."""
    a = w.detach().to("cpu")
    if a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    a = a.numpy().copy()
    return a.T.copy() if isinstance(module, nn.Linear) else a


def units(module: nn.Module) -> int:
    """A layer's unit count (output features, or channels for a convolution)."""
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, CONV_TYPES):
        return int(module.out_channels)
    return int(module.weight.shape[0])


def fans(module: nn.Module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` as torch.nn.init computes them."""
    w = module.weight
    if w.dim() < 2:
        return int(w.shape[0]), int(w.shape[0])
    rf = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
    return int(w.shape[1]) * rf, int(w.shape[0]) * rf


def detect_init(weights: list[np.ndarray], fan_pairs: list[tuple[int, int]]) -> dict:
    """The gradscope initialisation (and gain) that describes these initial weights.

    The family from the distribution's shape (orthogonal: orthonormal columns; uniform:
    excess kurtosis near -1.2; normal: near 0), then within it the init whose variance
    ``s_w^2 = fan_in * Var(W)`` needs the gain closest to 1, the gain rounded to 1 when
    within 5% (sampling error). PyTorch's default Linear init is gradscope's ``standard``
    (U[-1/sqrt(fan_in), 1/sqrt(fan_in)]).
    """
    big = [(w, f) for w, f in zip(weights, fan_pairs) if w.size >= 256]
    if not big:
        return {"init": "unknown", "init_gain": None, "init_note": "too few weights to tell"}
    w, (fi, fo) = max(big, key=lambda t: t[0].size)
    v = w.astype(np.float64).reshape(w.shape[0], -1)
    var = float(v.var())
    if var <= 0:
        return {"init": "unknown", "init_gain": None, "init_note": "constant weights"}
    k = float(((v - v.mean()) ** 4).mean() / var**2 - 3.0)
    m = v if v.shape[0] >= v.shape[1] else v.T
    gram = m.T @ m
    scale = float(np.mean(np.diag(gram)))
    ortho = scale > 0 and np.abs(gram / scale - np.eye(gram.shape[0])).max() < 1e-4
    if ortho:
        family = ["orthogonal"]
    elif abs(k + 1.2) < 0.3:
        family = ["standard", "xavier"]
    elif abs(k) < 0.4:
        family = ["he", "lecun"]
    else:
        return {"init": "unknown", "init_gain": None,
                "init_note": f"the initial weights are neither uniform, normal nor orthogonal "
                             f"(excess kurtosis {k:.2f})"}
    sw2 = fi * var
    best = None
    for name in family:
        gain = math.sqrt(sw2 / weight_variance(name, fi, fo, 1.0))
        if best is None or abs(math.log(gain)) < abs(math.log(best[1])):
            best = (name, gain)
    name, gain = best
    gain = 1.0 if abs(gain - 1) < 0.05 else float(f"{gain:.3g}")
    return {"init": name, "init_gain": gain,
            "init_note": "detected from the initial weights' distribution and variance"}

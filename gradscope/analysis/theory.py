"""Mean-field theory of signal and gradient propagation at initialisation.

Poole et al. (2016), "Exponential expressivity in deep neural networks through transient
chaos"; Schoenholz et al. (2017), "Deep information propagation". For a wide MLP whose
weights have variance ``s_w^2 / fan_in`` and biases variance ``s_b^2``:

- the pre-activation variance follows ``q_{l+1} = s_w^2 E[phi(sqrt(q_l) z)^2] + s_b^2``
  (``z ~ N(0, 1)``), which settles at a fixed point ``q*``;
- back-propagation multiplies the squared gradient norm by
  ``chi1 = s_w^2 E[phi'(sqrt(q*) z)^2]`` per layer, so over ``L`` layers the norm changes
  by ``chi1^(L/2)``;
- the depth scale is ``xi = 1/|ln chi1|`` (infinite at criticality, ``chi1 = 1``): the
  squared norm changes by a factor ``e`` every ``xi`` layers;
- two inputs' correlation follows ``c -> (s_w^2 E[phi(u1) phi(u2)] + s_b^2) / q*`` to its
  fixed point ``c*``, with slope ``chi_c`` there and depth scale ``xi_c = -1/ln chi_c``
  (Schoenholz et al.'s trainability scale; ``= xi`` in the ordered phase, where ``c* = 1``).

Layer convention (the same as :mod:`gradscope.engine.mlp`)
---------------------------------------------------
A net with ``depth`` hidden layers has ``depth + 1`` weight matrices ``W_0 .. W_depth``.
Layer ``l`` computes ``z_l = a_l W_l + b_l`` with ``a_0 = x`` and ``a_{l+1} = phi(z_l)``;
``z_0 .. z_{depth-1}`` are the hidden pre-activations and ``z_depth`` the (linear) output.
``delta_l = dL/dz_l``; ``delta_depth`` is the output layer's delta and

    delta_{l-1} = (delta_l W_l^T) * phi'(z_{l-1}),

so ``E||delta_{l-1}||^2 = s_w,l^2 E[phi'(z_{l-1})^2] E||delta_l||^2`` where
``s_w,l^2 = fan_in(W_l) Var(W_l)``. The widths cancel: ``W_l^T`` spreads ``||delta_l||^2``
over ``fan_in(W_l)`` units, each scaled by ``Var(W_l)``. Between hidden layers the squared
ratio is ``chi1``; the first step back from the output uses the *output* matrix's own
``s_w^2`` (e.g. xavier with a 256 -> 10 output layer has ``s_w^2 = 2*256/266 = 1.92``, not 1).

Gaussian expectations use Gauss-Hermite quadrature (``hermegauss``) where it is exact to
rounding (smooth activations, ``q <= 1``) and a composite Gauss-Legendre rule with a break
at 0 otherwise: at larger ``q``, ``phi'(sqrt(q) z)`` has features narrower than the
Hermite node spacing (200-node Gauss-Hermite is 23% off for ``E[tanh'^2]`` at ``q = 50``).
ReLU, leaky ReLU, linear and ELU use closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import pairwise
from statistics import median

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss
from scipy.optimize import brentq
from scipy.special import erfcx

from ..engine.activations import ACTIVATIONS, LEAKY_SLOPE, Activation, get_activation
from ..engine.initializers import INITIALIZERS, weight_variance

INITS = tuple(INITIALIZERS)

#: ``|chi1 - 1|`` below this counts as critical (``xi = inf``).
CRITICAL_TOL = 1e-9
#: Largest ``q`` examined; a variance map still rising here is reported as divergent.
#: (Beyond ~1e8, ``s_w^2 E[phi^2] - q`` near ``s_w^2 = 2`` for softplus/ELU is below the
#: rounding error of ``E[phi^2]``, so spurious roots would appear.)
Q_MAX = 1e8
#: Smallest positive ``q`` examined; a map still falling here goes to ``q* = 0``.
Q_MIN = 1e-14
#: ``|x|`` at which ``phi'(+-inf)`` is evaluated for the ``q -> inf`` limit.
X_INF = 1e6
#: :func:`advise` calls the current choice critical when ``|chi1 - 1|`` is below this.
ADVISE_TOL = 1e-3
#: Range of ``s_w^2`` scanned for criticality.
SW2_RANGE = (1e-2, 1e4)

_GH_NODES = 160
_GH_MAX_Q = 1.0
_gh_z, _gh_w = hermegauss(_GH_NODES)
_gh_w = _gh_w / math.sqrt(2 * math.pi)
_gl_x, _gl_w = leggauss(10)
# q grid for bracketing fixed points: ten points a decade, containing 1.0 exactly
_Q_GRID = 10.0 ** (np.arange(round(10 * math.log10(Q_MIN)), round(10 * math.log10(Q_MAX)) + 1)
                   / 10.0)
_I_ONE = int(np.argmin(np.abs(_Q_GRID - 1.0)))


def _act(activation: str | Activation) -> Activation:
    return activation if isinstance(activation, Activation) else get_activation(activation)


def _registered(act: Activation, name: str) -> bool:
    return ACTIVATIONS.get(name) is act


def _composite_nodes(q: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``x`` and weights for ``E[g(x)], x ~ N(0, q)``: Gauss-Legendre on panels.

    Panels are ``sqrt(q)/4`` wide over ``|x| <= 12 sqrt(q)`` (the Gaussian's scale) and
    at most 0.5 wide over ``|x| <= 40`` (where activations bend), with a break at 0.
    Exact to rounding for sigmoid, tanh, softplus and ELU from ``q = 1e-14`` to ``1e10``.
    """
    s = math.sqrt(q)
    bp = np.concatenate([s * np.linspace(-12, 12, 97), np.linspace(-40, 40, 161)])
    bp = np.unique(bp[np.abs(bp) <= 12 * s])
    a, b = bp[:-1, None], bp[1:, None]
    x = (0.5 * (b - a) * _gl_x + 0.5 * (a + b)).ravel()
    w = (0.5 * (b - a) * _gl_w).ravel() * np.exp(-x * x / (2 * q)) / math.sqrt(2 * math.pi * q)
    return x, w


def gaussian_expectation(fn: Callable[[np.ndarray], np.ndarray], q: float,
                         smooth: bool = True) -> float:
    """``E[fn(sqrt(q) z)]`` for ``z ~ N(0, 1)`` and ``q >= 0``.

    Gauss-Hermite (160 nodes) when ``smooth`` and ``q <= 1``, else composite Gauss-Legendre
    with a break at 0 (so kinks at 0 are integrated exactly too).
    """
    q = float(q)
    if q < 0 or not math.isfinite(q):
        raise ValueError(f"variance q must be finite and >= 0, got {q!r}")
    if q == 0:
        return float(np.asarray(fn(np.zeros(1)))[0])
    if smooth and q <= _GH_MAX_Q:
        return float(np.dot(_gh_w, fn(math.sqrt(q) * _gh_z)))
    x, w = _composite_nodes(q)
    return float(np.dot(w, fn(x)))


# --------------------------------------------------------------------------------------
# E[phi^2] and E[phi'^2] per activation


class _Moments:
    """``m2(q) = E[phi(sqrt q z)^2]`` and ``d2(q) = E[phi'(sqrt q z)^2]`` for one activation.

    ``homogeneous`` is ``(k, c)`` when ``m2(q) = k q`` and ``d2(q) = c`` exactly (ReLU,
    leaky ReLU, linear: positively homogeneous of degree 1), else ``None``.
    """

    def __init__(self, act: Activation):
        self.act = act
        self.homogeneous: tuple[float, float] | None = None
        self.closed = False
        if _registered(act, "relu"):
            self.homogeneous = (0.5, 0.5)
        elif _registered(act, "leaky_relu"):
            k = 0.5 * (1 + LEAKY_SLOPE**2)
            self.homogeneous = (k, k)
        elif _registered(act, "linear"):
            self.homogeneous = (1.0, 1.0)
        elif _registered(act, "elu"):
            self.closed = True
        self.smooth = not act.relu_family

    def m2(self, q: float) -> float:
        if self.homogeneous:
            return self.homogeneous[0] * q
        if self.closed and q > 1e-2:  # ELU, alpha = 1; quadrature below (cancellation)
            # E[x^2; x>0] + E[(e^x - 1)^2; x<0], E[e^{a x}; x<0] = erfcx(a sqrt(q/2))/2
            s = math.sqrt(q)
            return 0.5 * q + 0.5 * erfcx(math.sqrt(2) * s) - erfcx(s / math.sqrt(2)) + 0.5
        f = self.act.f
        return gaussian_expectation(lambda x: f(x) ** 2, q, self.smooth)

    def d2(self, q: float) -> float:
        if self.homogeneous:
            return self.homogeneous[1]
        if self.closed:
            return 0.5 + 0.5 * erfcx(math.sqrt(2 * q))
        act = self.act
        return gaussian_expectation(lambda x: act.df(x, act.f(x)) ** 2, q, self.smooth)

    def d2_limit(self) -> float:
        """``lim_{q -> inf} E[phi'(sqrt q z)^2] = (phi'(+inf)^2 + phi'(-inf)^2) / 2``."""
        if self.homogeneous:
            return self.homogeneous[1]
        x = np.array([X_INF, -X_INF])
        return float(np.mean(self.act.df(x, self.act.f(x)) ** 2))


@lru_cache(maxsize=64)
def _moments(act: Activation) -> _Moments:
    return _Moments(act)


@lru_cache(maxsize=64)
def _m2_grid(act: Activation) -> np.ndarray:
    mom = _moments(act)
    return np.array([mom.m2(q) for q in _Q_GRID])


def gaussian_moments(activation: str | Activation, q: float) -> tuple[float, float]:
    """``(E[phi(sqrt q z)^2], E[phi'(sqrt q z)^2])`` for ``z ~ N(0, 1)``."""
    mom = _moments(_act(activation))
    return mom.m2(q), mom.d2(q)


# --------------------------------------------------------------------------------------
# fixed point of the variance map


def _fixed_point(act: Activation, weight_var: float, bias_var: float) -> tuple[float, str]:
    """The fixed point of ``q -> s_w^2 m2(q) + s_b^2`` reached by iterating from ``q = 1``.

    Returns ``(q*, kind)`` with kind ``"stable"``, ``"zero"`` (``q* = 0``),
    ``"marginal"`` (every ``q`` is fixed; ``q* = nan``) or ``"divergent"`` (``q* = inf``).
    Assumes ``m2`` increases with ``q`` (true for every registered activation), so that the
    iteration moves monotonically to the nearest fixed point in the direction of
    ``F(1) - 1``; that point is bracketed on a log grid and refined with brentq.
    """
    mom = _moments(act)
    if mom.homogeneous:
        r = weight_var * mom.homogeneous[0]  # the map is q -> r q + s_b^2
        if abs(r - 1) <= 1e-12:
            return (math.nan, "marginal") if bias_var == 0 else (math.inf, "divergent")
        if r > 1:
            return math.inf, "divergent"
        return (bias_var / (1 - r), "stable") if bias_var > 0 else (0.0, "zero")

    def G(q):
        return weight_var * mom.m2(q) + bias_var - q

    g = weight_var * _m2_grid(act) + bias_var - _Q_GRID
    i = _I_ONE
    if g[i] == 0:
        return 1.0, "stable"
    if g[i] > 0:  # rising: first grid point above 1 where G <= 0
        above = np.nonzero(g[i:] <= 0)[0]
        if above.size == 0:
            return math.inf, "divergent"
        j = i + int(above[0])
        return brentq(G, _Q_GRID[j - 1], _Q_GRID[j], xtol=1e-300, rtol=1e-14), "stable"
    below = np.nonzero(g[: i + 1] >= 0)[0]  # falling: last grid point below 1 with G >= 0
    if below.size:
        j = int(below[-1])
        return brentq(G, _Q_GRID[j], _Q_GRID[j + 1], xtol=1e-300, rtol=1e-14), "stable"
    if G(0.0) <= 0:  # phi(0) = 0 and no bias: the trivial fixed point
        return 0.0, "zero"
    return brentq(G, 0.0, _Q_GRID[0], xtol=1e-300, rtol=1e-14), "stable"


def _phase(chi1: float) -> str:
    if abs(chi1 - 1) <= CRITICAL_TOL:
        return "critical"
    return "ordered" if chi1 < 1 else "chaotic"


def _depth_scale(chi1: float) -> float:
    if abs(chi1 - 1) <= CRITICAL_TOL:
        return math.inf
    if chi1 <= 0:
        return 0.0
    return 1.0 / abs(math.log(chi1))


def _chi1_at(act: Activation, weight_var: float, q: float) -> float:
    """``s_w^2 E[phi'(sqrt q z)^2]``; ``q = inf`` gives the limit, ``q = nan`` (any q:
    homogeneous activations only) the constant."""
    mom = _moments(act)
    if mom.homogeneous:
        return weight_var * mom.homogeneous[1]
    if math.isinf(q):
        return weight_var * mom.d2_limit()
    return weight_var * mom.d2(q)


# --------------------------------------------------------------------------------------
# correlation map (Poole et al. 2016; Schoenholz et al. 2017)


def _panel_nodes(bp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and plain weights on the panels between sorted breakpoints
    ``bp`` (any leading shape; panels along the last axis)."""
    a, b = bp[..., :-1, None], bp[..., 1:, None]
    x = 0.5 * (b - a) * _gl_x + 0.5 * (a + b)
    w = 0.5 * (b - a) * _gl_w
    return x.reshape(*bp.shape[:-1], -1), w.reshape(*bp.shape[:-1], -1)


def _breakpoints(s: float) -> np.ndarray:
    """Panel ends for ``x ~ N(0, s^2)``: ``s/2`` apart over ``|x| <= 9 s`` (the Gaussian's
    scale; the tail beyond holds 2e-19) and at most 0.5 apart over ``|x| <= 12`` (where
    activations bend), with a break at 0."""
    bp = np.concatenate([s * np.linspace(-9, 9, 37), np.linspace(-12, 12, 49)])
    return np.unique(bp[np.abs(bp) <= 9 * s])


def bivariate_expectation(f: Callable[[np.ndarray], np.ndarray],
                          g: Callable[[np.ndarray], np.ndarray], q: float, c: float) -> float:
    """``E[f(u1) g(u2)]`` for ``(u1, u2)`` jointly Gaussian, both of variance ``q > 0``,
    correlation ``c`` in ``[-1, 1]``.

    Writes ``u2 = c u1 + v`` with ``v ~ N(0, q (1 - c^2))`` independent of ``u1``; both
    integrals use composite Gauss-Legendre panels, the outer one with a break at ``u1 = 0``
    and the inner one (per ``u1`` node) with a break where ``u2 = 0``, so that kinks and
    jumps of ``f`` and ``g`` at 0 (ReLU, ELU's derivative) are integrated exactly too.
    """
    q, c = float(q), float(c)
    if not (q > 0 and math.isfinite(q)) or not -1 <= c <= 1:
        raise ValueError(f"need q > 0 finite and c in [-1, 1], got q={q!r}, c={c!r}")
    s1 = math.sqrt(q)
    x1, w1 = _panel_nodes(_breakpoints(s1))
    w1 = w1 * np.exp(-x1 * x1 / (2 * q)) / math.sqrt(2 * math.pi * q)
    f1 = f(x1)
    if c == 0:  # independent: a product of two one-dimensional expectations
        return float(np.dot(w1, f1) * np.dot(w1, g(x1)))
    s2 = math.sqrt(max(q * (1 - c * c), 0.0))
    if s2 < 1e-8 * s1:  # |c| = 1 (to rounding): u2 = c u1
        return float(np.dot(w1, f1 * g(c * x1)))
    base = _breakpoints(s2)
    kink = np.clip(-c * x1, base[0], base[-1])[:, None]  # v where u2 = 0
    bp = np.sort(np.concatenate([np.broadcast_to(base, (x1.size, base.size)), kink], axis=1),
                 axis=1)
    v, wv = _panel_nodes(bp)
    wv = wv * np.exp(-v * v / (2 * s2 * s2)) / (math.sqrt(2 * math.pi) * s2)
    inner = np.einsum("ij,ij->i", wv, g(c * x1[:, None] + v))
    return float(np.dot(w1, f1 * inner))


def _corr_map(act: Activation, weight_var: float, bias_var: float, q: float, c: float) -> float:
    """``c_{l+1} = (s_w^2 E[phi(u1) phi(u2)] + s_b^2) / q*`` at the fixed point ``q*``."""
    return (weight_var * bivariate_expectation(act.f, act.f, q, c) + bias_var) / q


def _chi_c_at(act: Activation, weight_var: float, q: float, c: float) -> float:
    """``chi_c = s_w^2 E[phi'(u1) phi'(u2)]``: the slope of the correlation map at ``c``."""
    def d(x):
        return act.df(x, act.f(x))
    return weight_var * bivariate_expectation(d, d, q, c)


@lru_cache(maxsize=1024)
def _correlation_fixed_point(act: Activation, weight_var: float, bias_var: float,
                             q_star: float, kind: str, chi1: float) -> tuple[float, float]:
    """``(c*, chi_c)``; see :func:`mean_field`. Cached: a chaotic-phase call integrates over
    pairs of inputs a dozen times (0.1-0.4 s), and reports call it for every run."""
    if kind != "stable" or not (0 < q_star < math.inf):
        return math.nan, math.nan
    if chi1 <= 1 + CRITICAL_TOL:  # c = 1 is stable: the ordered phase (or critical)
        return 1.0, float(chi1)

    def G(c):
        return _corr_map(act, weight_var, bias_var, q_star, c) - c

    # G(1) = 0 and G'(1) = chi1 - 1 > 0, so G < 0 just below 1; G(0) = (s_w^2 E[phi]^2 +
    # s_b^2)/q* >= 0. The stable fixed point is the root in between.
    g0 = G(0.0)
    if g0 <= 0:
        c_star = 0.0
    else:
        hi = next((1 - 10.0 ** -k for k in range(1, 10) if G(1 - 10.0 ** -k) < 0), None)
        if hi is None:
            return math.nan, math.nan
        c_star = brentq(G, 0.0, hi, xtol=1e-12, rtol=1e-12)
    return float(c_star), float(_chi_c_at(act, weight_var, q_star, c_star))


def correlation_depth_scale(chi_c: float) -> float:
    """``xi_c = -1/ln chi_c`` (``inf`` at ``chi_c = 1``, ``nan`` when ``chi_c`` is nan)."""
    if math.isnan(chi_c):
        return math.nan
    return _depth_scale(chi_c)


def mean_field(activation: str | Activation, weight_var: float, bias_var: float = 0.0) -> dict:
    """Mean-field fixed point and gradient growth factor.

    Parameters
    ----------
    activation : name or :class:`~gradscope.engine.activations.Activation`.
    weight_var : ``s_w^2 = fan_in Var(W)`` (see :func:`gradscope.engine.initializers.weight_variance`).
    bias_var : ``s_b^2``; gradscope starts biases at zero, so 0 for its runs.

    Returns
    -------
    dict with
        ``q_star`` : fixed point of the variance map reached from ``q = 1``; ``0.0``
            when the signal dies out, ``inf`` when it grows without bound, ``nan`` when
            every ``q`` is a fixed point (ReLU at ``s_w^2 = 2``, linear at 1, no bias);
        ``chi1`` : ``s_w^2 E[phi'(sqrt(q*) z)^2]`` (its ``q -> inf`` limit if ``q*`` is inf);
        ``xi`` : ``1/|ln chi1|``, ``inf`` at criticality: the depth scale of gradient
            norms (the squared norm changes by ``e`` every ``xi`` layers);
        ``c_star`` : the stable fixed point of the correlation map
            ``c -> (s_w^2 E[phi(u1) phi(u2)] + s_b^2) / q*`` (``u1, u2`` of variance ``q*``
            and correlation ``c``): 1 in the ordered phase, below 1 in the chaotic phase;
        ``chi_c`` : ``s_w^2 E[phi'(u1) phi'(u2)]`` at ``c*``, the map's slope there
            (``= chi1`` when ``c* = 1``);
        ``xi_c`` : ``-1/ln chi_c``, the depth scale over which two inputs' correlation
            approaches ``c*`` (Schoenholz et al.'s trainability scale: nets train to
            depths of about ``6 xi_c``). Equal to ``xi`` in the ordered phase, larger in
            the chaotic phase. ``c_star``, ``chi_c``, ``xi_c`` are nan unless ``q*`` is
            finite and positive (the derivation linearises around a fixed ``q*``);
        ``phase`` : ``"ordered"`` (chi1 < 1), ``"critical"`` or ``"chaotic"`` (chi1 > 1);
        ``fixed_point`` : ``"stable"``, ``"zero"``, ``"marginal"`` or ``"divergent"``;
        ``note`` : explanation when there is no unique positive fixed point, else ``""``;
        and ``activation``, ``weight_var``, ``bias_var``.
    """
    act = _act(activation)
    weight_var, bias_var = float(weight_var), float(bias_var)
    if weight_var < 0 or bias_var < 0:
        raise ValueError("weight_var and bias_var must be >= 0")
    q_star, kind = _fixed_point(act, weight_var, bias_var)
    chi1 = _chi1_at(act, weight_var, q_star)
    c_star, chi_c = _correlation_fixed_point(act, weight_var, bias_var, q_star, kind, chi1)
    mom = _moments(act)
    note = ""
    if mom.homogeneous:
        k, c = mom.homogeneous
        law = (f"{act.name} is positively homogeneous: the variance map is linear, "
               f"q -> {k:g} s_w^2 q + s_b^2, and chi1 = {c:g} s_w^2 whatever q")
        note = {
            "zero": f"{law}; q* = 0 since {k:g} s_w^2 < 1 (the signal decays geometrically)",
            "marginal": f"{law}; every q is a fixed point at {k:g} s_w^2 = 1",
            "divergent": f"{law}; q grows without bound ({k:g} s_w^2 "
                         f"{'= 1 with s_b^2 > 0' if abs(k * weight_var - 1) <= 1e-12 else '> 1'})",
            "stable": f"{law}; q* = s_b^2 / (1 - {k:g} s_w^2)",
        }[kind]
    elif kind == "zero":
        note = ("q* = 0: phi(0) = 0 and s_b^2 = 0, and the map pulls every q to 0 "
                "(ordered phase); chi1 = s_w^2 phi'(0)^2. The approach to 0 is slow near "
                "criticality")
    elif kind == "divergent":
        note = (f"no finite fixed point: q grows past {Q_MAX:g}; chi1 is the q -> inf "
                "limit of s_w^2 E[phi'^2]")
    elif float(np.asarray(act.f(np.zeros(1)))[0]) != 0 and bias_var == 0:
        note = "phi(0) != 0, so q* > 0 even with s_b^2 = 0"
    return {
        "activation": act.name,
        "weight_var": weight_var,
        "bias_var": bias_var,
        "q_star": float(q_star),
        "chi1": float(chi1),
        "xi": _depth_scale(chi1),
        "c_star": c_star,
        "chi_c": chi_c,
        "xi_c": correlation_depth_scale(chi_c),
        "phase": _phase(chi1),
        "fixed_point": kind,
        "note": note,
    }


# --------------------------------------------------------------------------------------
# layer-by-layer predictions


def q_trajectory(activation: str | Activation, weight_var: float, bias_var: float, q0: float,
                 depth: int, *, in_weight_var: float | None = None,
                 out_weight_var: float | None = None) -> np.ndarray:
    """Pre-activation variances ``q_l = E[z_l^2]`` for ``l = 0 .. depth``.

    ``q0`` is the input's mean square per component (``||x||^2 / n_in``), as in Poole et
    al.: ``q_0 = s_w,0^2 q0 + s_b^2`` and ``q_l = s_w^2 E[phi(sqrt(q_{l-1}) z)^2] + s_b^2``.
    ``q_depth`` is the output layer's. ``in_weight_var`` / ``out_weight_var`` are the
    ``s_w^2`` of the first and the output matrix when they differ from the hidden-to-hidden
    ``weight_var`` (their fans differ; xavier and orthogonal depend on them).
    """
    mom = _moments(_act(activation))
    w_in = weight_var if in_weight_var is None else in_weight_var
    w_out = weight_var if out_weight_var is None else out_weight_var
    q = np.empty(depth + 1)
    q[0] = w_in * q0 + bias_var
    for l in range(1, depth + 1):
        w = w_out if l == depth else weight_var
        q[l] = w * mom.m2(q[l - 1]) + bias_var if math.isfinite(q[l - 1]) else math.inf
    return q


def predicted_delta_profile(activation: str | Activation, weight_var: float, depth: int,
                            bias_var: float = 0.0, q0: float | None = None, *,
                            in_weight_var: float | None = None,
                            out_weight_var: float | None = None) -> np.ndarray:
    """Predicted ``||delta_l|| / ||delta_depth||`` for ``l = 0 .. depth`` (output = 1.0).

    ``depth`` is the number of hidden layers (``depth + 1`` weight matrices; layer
    ``depth`` is the output). Each step back, ``delta_{l-1} = (delta_l W_l^T) phi'(z_{l-1})``,
    multiplies the norm by ``sqrt(s_w,l^2 E[phi'(z_{l-1})^2])``:

    - between hidden layers (``l < depth``) that is ``sqrt(chi1_{l-1})`` with
      ``chi1_l = weight_var E[phi'(sqrt(q_l) z)^2]``;
    - the first step back from the output (``l = depth``) uses ``out_weight_var``, the
      ``s_w^2 = fan_in Var(W_depth)`` of the output matrix (``weight_var`` if None). The
      number of output units does not enter, only that matrix's ``s_w^2``.

    ``q_l`` is the layer's own variance from :func:`q_trajectory` when ``q0`` (the input's
    mean square) is given, otherwise ``q*`` at every layer, so that
    ``profile[0] = chi1^(depth/2)`` when ``out_weight_var`` equals ``weight_var``.
    """
    act = _act(activation)
    w_out = weight_var if out_weight_var is None else out_weight_var
    if q0 is None:
        q_star = mean_field(act, weight_var, bias_var)["q_star"]
        q = np.full(depth, q_star)
    else:
        q = q_trajectory(act, weight_var, bias_var, q0, depth, in_weight_var=in_weight_var)
    prof = np.ones(depth + 1)
    for l in range(depth, 0, -1):
        w = w_out if l == depth else weight_var
        prof[l - 1] = prof[l] * math.sqrt(_chi1_at(act, w, q[l - 1]))
    return prof


# --------------------------------------------------------------------------------------
# criticality and advice


def _chi1_of(act: Activation, weight_var: float, bias_var: float) -> float:
    # without the correlation map's fixed point, which scans of s_w^2 do not need
    return _chi1_at(act, weight_var, _fixed_point(act, weight_var, bias_var)[0])


@lru_cache(maxsize=256)
def _critical(act: Activation, bias_var: float) -> float | None:
    mom = _moments(act)
    if mom.homogeneous:
        return 1.0 / mom.homogeneous[1]
    grid = np.geomspace(*SW2_RANGE, 97)
    h = [_chi1_of(act, s, bias_var) - 1 for s in grid]
    for i in range(1, len(grid)):
        if h[i - 1] < 0 <= h[i]:
            return brentq(lambda s: _chi1_of(act, s, bias_var) - 1, grid[i - 1], grid[i],
                          xtol=1e-12, rtol=1e-12)
    return None


def critical_weight_var(activation: str | Activation, bias_var: float = 0.0) -> float | None:
    """The ``s_w^2`` where ``chi1 = 1`` at the fixed point, or None if there is none.

    The smallest root in ``SW2_RANGE`` (chi1 crossing 1 upwards), found by scanning and
    brentq. Closed form ``1 / E[phi'^2]`` for ReLU (2), leaky ReLU, linear (1). Criticality
    can sit where ``q*`` is 0 (tanh, ELU with ``s_b = 0``: at ``s_w^2 = 1``) or where ``q*``
    is infinite (ReLU with ``s_b > 0``, softplus: ``s_w^2 -> 2`` as ``q* -> inf``).
    """
    return _critical(_act(activation), float(bias_var))


def _fans(fan_in: int | None, fan_out: int | None) -> tuple[int, int]:
    fi = fan_in if fan_in is not None else (fan_out if fan_out is not None else 100)
    return fi, fan_out if fan_out is not None else fi


def criticality_gain(activation: str | Activation, init: str = "xavier", bias_var: float = 0.0,
                     fan_in: int | None = None, fan_out: int | None = None) -> float | None:
    """The ``gain`` for ``init`` that gives the critical ``s_w^2`` (square layers by default).

    ``weight_variance`` is proportional to ``gain^2``, so
    ``gain = sqrt(s_w,crit^2 / weight_variance(init, fan_in, fan_out, 1))``. None when
    :func:`critical_weight_var` is None.
    """
    crit = critical_weight_var(activation, bias_var)
    if crit is None:
        return None
    fi, fo = _fans(fan_in, fan_out)
    return math.sqrt(crit / weight_variance(init, fi, fo, 1.0))


def weight_var_from_config(cfg: dict) -> float:
    """``s_w^2`` of a run's hidden-to-hidden layers from its config.

    ``cfg`` has ``init``, ``init_gain`` (default 1) and ``widths`` (hidden widths; when
    None, ``[width] * depth``). Uniform widths (or a single hidden layer): the square
    ``widths[0] -> widths[0]`` fan. Otherwise the median ``s_w^2`` over the hidden-to-hidden
    matrices ``widths[i] -> widths[i+1]``.
    """
    init = cfg["init"]
    gain = cfg.get("init_gain")
    gain = 1.0 if gain is None else float(gain)
    widths = cfg.get("widths")
    if widths is None:
        widths = [cfg["width"]] * int(cfg["depth"])
    widths = [int(w) for w in widths]
    if not widths:
        raise ValueError("weight_var_from_config needs at least one hidden width")
    if len(set(widths)) == 1:
        return weight_variance(init, widths[0], widths[0], gain)
    return float(median(weight_variance(init, a, b, gain) for a, b in pairwise(widths)))


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "any"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if 1e-2 <= abs(x) < 1e4 or x == 0 else f"{x:.1e}"


def _fans_from_width(width: int | Sequence[int] | None) -> tuple[int, int] | list[int]:
    if width is None:
        return 100, 100
    if isinstance(width, (int, np.integer)):
        return int(width), int(width)
    return [int(w) for w in width]


def advise(activation: str | Activation, depth: int, init: str = "xavier", gain: float = 1.0,
           bias_var: float = 0.0, width: int | Sequence[int] | None = None,
           q0: float | None = 1.0) -> dict:
    """How gradients will scale through ``depth`` hidden layers, and the gain for criticality.

    ``width`` (an int, or the list of hidden widths) sets the fans for xavier and orthogonal;
    None means square layers. Returns ``weight_var``, ``q_star``, ``chi1``, ``phase``,
    ``xi``, ``grad_ratio`` (``chi1^(depth/2)``: the first hidden layer's delta norm over the
    output layer's, with the output step taken at the hidden ``s_w^2``), ``critical`` (is
    there a critical ``s_w^2``), ``advised_weight_var``, ``advised_gain`` (for ``init`` at
    the same fans), ``advised_chi1``, ``advised_grad_ratio``, ``recommendation`` (one
    line) and ``note``. Without a critical point the advice is the ``s_w^2`` in
    ``SW2_RANGE`` with ``chi1`` closest to 1; when the current ``chi1`` is already within
    ``ADVISE_TOL`` of 1 the advice is to keep it.

    ``chi1^(depth/2)`` assumes every layer sits at ``q*``. Where ``q*`` is 0 or infinite
    (tanh and ELU at ``s_w^2 = 1``, softplus and ELU at 2, all with no bias) ``q_l`` only
    creeps toward it and the finite-depth ratio differs a lot (tanh-xavier, depth 50, unit
    inputs: 0.12, not 1). So with ``q0`` (the input's mean square; 1 for standardised data)
    the dict also has ``grad_ratio_from_inputs`` and ``advised_grad_ratio_from_inputs`` from
    :func:`predicted_delta_profile` along the forward trajectory, and the recommendation
    quotes it when it differs from ``chi1^(depth/2)`` by more than 1.5x.
    """
    act = _act(activation)
    fans = _fans_from_width(width)
    if isinstance(fans, list):
        widths = fans
        weight_var = weight_var_from_config({"init": init, "init_gain": gain, "widths": widths})
        unit = weight_var_from_config({"init": init, "init_gain": 1.0, "widths": widths})
    else:
        weight_var = weight_variance(init, *fans, gain)
        unit = weight_variance(init, *fans, 1.0)
    mf = mean_field(act, weight_var, bias_var)
    ratio = mf["chi1"] ** (depth / 2)

    crit = critical_weight_var(act, bias_var)
    already = abs(mf["chi1"] - 1) <= ADVISE_TOL
    if already:  # may differ from crit: ELU/softplus at s_w^2 = 2 are critical as q* -> inf
        advised = weight_var
    elif crit is not None:
        advised = crit
    else:
        grid = np.geomspace(*SW2_RANGE, 97)
        advised = float(grid[np.argmin([abs(math.log(max(_chi1_of(act, s, bias_var), 1e-300)))
                                        for s in grid])])
    adv = mean_field(act, advised, bias_var)
    adv_gain = gain if already else math.sqrt(advised / unit)
    adv_ratio = adv["chi1"] ** (depth / 2)
    if q0 is not None:
        ratio_in = float(predicted_delta_profile(act, weight_var, depth, bias_var, q0)[0])
        adv_ratio_in = float(predicted_delta_profile(act, advised, depth, bias_var, q0)[0])
    else:
        ratio_in = adv_ratio_in = math.nan

    head = f"{act.name}, {init}, depth {depth}: chi1 = {mf['chi1']:.4g}"
    if abs(math.log(max(ratio, 1e-300))) < math.log(1.5):
        change = f"gradient norms stay within 1.5x from output to input (ratio {_fmt(ratio)})"
    elif ratio < 1:
        change = f"gradients shrink to {_fmt(ratio)} of the output layer's by the input layer"
    else:
        change = f"gradients grow {_fmt(ratio)}-fold from the output layer to the input layer"
    if q0 is not None and abs(math.log(max(ratio_in, 1e-300) / max(ratio, 1e-300))) > math.log(1.5):
        change += (f" at q*, but {_fmt(ratio_in)} from inputs of mean square {q0:g}, "
                   "as q_l drifts toward q*")
    if already:
        action = f"gain {gain:.3g} (s_w^2 = {weight_var:.3g}) is critical"
    elif crit is not None:
        action = f"use gain {adv_gain:.3g} (s_w^2 = {advised:.3g}) to sit at criticality"
    else:
        action = (f"no critical point; gain {adv_gain:.3g} (s_w^2 = {advised:.3g}) gives "
                  f"chi1 = {adv['chi1']:.3g}, the closest to 1")
    extra = ""
    if adv["fixed_point"] == "zero":
        extra = " (there q* = 0: forward signals fade, slowly)"
    elif adv["fixed_point"] == "divergent":
        extra = " (there q* = inf: forward signals grow, slowly)"
    elif act.saturating and adv["q_star"] > 4:
        extra = f" (there q* = {adv['q_star']:.3g}: most units sit in saturation)"
    if (q0 is not None and not already
            and abs(math.log(max(adv_ratio_in, 1e-300) / max(adv_ratio, 1e-300))) > math.log(1.5)):
        extra += f"; from inputs of mean square {q0:g} the ratio there is {_fmt(adv_ratio_in)}"
    return {
        "activation": act.name,
        "init": init,
        "depth": depth,
        "gain": gain,
        "bias_var": bias_var,
        "weight_var": weight_var,
        "q_star": mf["q_star"],
        "chi1": mf["chi1"],
        "phase": mf["phase"],
        "xi": mf["xi"],
        "grad_ratio": ratio,
        "grad_ratio_from_inputs": ratio_in,
        "critical": crit is not None,
        "advised_weight_var": advised,
        "advised_gain": adv_gain,
        "advised_chi1": adv["chi1"],
        "advised_q_star": adv["q_star"],
        "advised_grad_ratio": adv_ratio,
        "advised_grad_ratio_from_inputs": adv_ratio_in,
        "recommendation": f"{head}, {change}; {action}{extra}",
        "note": mf["note"],
    }


# --------------------------------------------------------------------------------------
# the table in docs/theory.md


def mean_field_table(activations: Sequence[str] | None = None,
                     inits: Sequence[str] = INITS, gain: float = 1.0,
                     bias_var: float = 0.0, width: int = 256, depth: int = 20,
                     q0: float = 1.0) -> list[dict]:
    """:func:`mean_field` for each activation under each init (square ``width`` layers).

    Each row also has ``ratio_at_q_star = chi1^(depth/2)`` and ``ratio_from_inputs``, the
    first-to-output delta norm ratio along the trajectory from inputs of mean square ``q0``.
    """
    rows = []
    for name in activations or list(ACTIVATIONS):
        for init in inits:
            sw2 = weight_variance(init, width, width, gain)
            mf = mean_field(name, sw2, bias_var)
            prof = predicted_delta_profile(name, sw2, depth, bias_var, q0)
            rows.append({"init": init, **mf, "depth": depth,
                         "ratio_at_q_star": mf["chi1"] ** (depth / 2),
                         "ratio_from_inputs": float(prof[0])})
    return rows


def markdown_table(rows: list[dict] | None = None) -> str:
    """Rows of :func:`mean_field_table` as a markdown table."""
    rows = mean_field_table() if rows is None else rows
    L = rows[0]["depth"] if rows else 0
    header = ("| activation | init | s_w^2 | q* | chi1 | depth scale xi | phase | "
              f"chi1^(L/2), L={L} | from unit inputs, L={L} |")
    lines = [header,
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['activation']} | {r['init']} | {_fmt(r['weight_var'])} | "
                     f"{_fmt(r['q_star'])} | {r['chi1']:.5g} | {_fmt(r['xi'])} | "
                     f"{r['phase']} | {_fmt(r['ratio_at_q_star'])} | "
                     f"{_fmt(r['ratio_from_inputs'])} |")
    return "\n".join(lines)


def criticality_table(bias_var: float = 0.0) -> str:
    """Critical ``s_w^2`` per activation and the gain each init needs (square layers)."""
    lines = ["| activation | critical s_w^2 | " + " | ".join(f"gain ({i})" for i in INITS) + " |",
             "|---|---|" + "---|" * len(INITS)]
    for name in ACTIVATIONS:
        crit = critical_weight_var(name, bias_var)
        gains = [criticality_gain(name, i, bias_var) for i in INITS]
        lines.append(f"| {name} | {'none' if crit is None else f'{crit:.5g}'} | "
                     + " | ".join("-" if g is None else f"{g:.4g}" for g in gains) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
    print()
    print(criticality_table())

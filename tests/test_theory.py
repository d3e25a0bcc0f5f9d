"""Tests for gradscope.analysis.theory: mean-field fixed points, criticality, advice, and measurement.

The references here are computed independently of the module: Gaussian expectations with
scipy.integrate.quad (split at 0, where the ReLU family bends) or Monte Carlo, and fixed
points by plain iteration of the variance map rather than theory.py's bracketing + brentq.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from gradscope.analysis.theory import (
    advise,
    critical_weight_var,
    criticality_gain,
    gaussian_moments,
    markdown_table,
    mean_field,
    predicted_delta_profile,
    q_trajectory,
    weight_var_from_config,
)
from gradscope.engine.activations import ACTIVATIONS, LEAKY_SLOPE, get_activation
from gradscope.engine.initializers import INITIALIZERS, weight_variance
from gradscope.engine.mlp import backward, forward, init_params, layer_sizes

# ---------------------------------------------------------------------------------------
# independent references


def quad_expect(fn, q):
    """E[fn(sqrt(q) z)], z ~ N(0, 1), by adaptive quadrature on each half line."""
    if q == 0:
        return float(fn(np.zeros(1))[0])
    s = math.sqrt(q)

    def g(z):
        return float(fn(np.array([s * z]))[0]) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    lo = integrate.quad(g, -np.inf, 0, epsabs=1e-14, epsrel=1e-12, limit=400)[0]
    hi = integrate.quad(g, 0, np.inf, epsabs=1e-14, epsrel=1e-12, limit=400)[0]
    return lo + hi


def phi2(act):
    return lambda x: act.f(x) ** 2


def dphi2(act):
    return lambda x: act.df(x, act.f(x)) ** 2


def reference_mean_field(name, sw2, sb2, steps=5000):
    """(q*, chi1) by iterating q -> sw2 E[phi^2] + sb2 from q = 1 with quad expectations."""
    act = get_activation(name)
    q = 1.0
    for _ in range(steps):
        new = sw2 * quad_expect(phi2(act), q) + sb2
        if new > 1e8:
            # divergent: chi1 is the q -> inf limit, approached as O(1/sqrt(q))
            return math.inf, sw2 * quad_expect(dphi2(act), 1e14)
        if abs(new - q) <= 1e-14 * max(q, 1e-300) or new < 1e-30:
            q = new if new >= 1e-30 else 0.0
            break
        q = new
    else:
        raise AssertionError(f"reference iteration did not converge for {name} {sw2} {sb2}")
    # chi1 at q* = 0 is the q -> 0+ limit (phi' may jump at 0, as ReLU's does)
    return q, sw2 * quad_expect(dphi2(act), max(q, 1e-20))


CASES = [
    (name, sw2, sb2)
    for name, sws in [
        ("sigmoid", (1.0, 4.0, 16.0)),
        ("tanh", (0.5, 1.5, 3.0)),
        ("softplus", (0.5, 1.5, 3.0)),
        ("relu", (0.5, 1.5, 3.0)),
    ]
    for sw2 in sws
    for sb2 in (0.0, 0.05)
]


@pytest.mark.parametrize("name,sw2,sb2", CASES)
def test_fixed_point_and_chi1_match_quadrature(name, sw2, sb2):
    ref_q, ref_chi1 = reference_mean_field(name, sw2, sb2)
    mf = mean_field(name, sw2, sb2)
    if math.isinf(ref_q):
        assert mf["q_star"] == math.inf and mf["fixed_point"] == "divergent"
        # reference limit evaluated at q = 1e14: off by O(1e-7)
        assert mf["chi1"] == pytest.approx(ref_chi1, rel=1e-5)
    else:
        # Both sides are quadratures good to ~1e-10 and the iteration stops at 1e-14 change
        # per step (contraction factors here are <= 0.9, so q* is within ~1e-13); 1e-7 is
        # far inside any difference that would matter and far outside rounding.
        assert mf["q_star"] == pytest.approx(ref_q, rel=1e-7, abs=1e-12)
        assert mf["chi1"] == pytest.approx(ref_chi1, rel=1e-7)
    assert mf["phase"] == ("ordered" if mf["chi1"] < 1 else "chaotic")
    assert mf["xi"] == pytest.approx(1 / abs(math.log(mf["chi1"])))


@pytest.mark.parametrize("name,sw2,sb2", [
    ("sigmoid", 4.0, 0.0), ("sigmoid", 103.0, 0.05), ("tanh", 1.5, 0.0), ("tanh", 2.5, 0.05),
    ("softplus", 1.5, 0.05), ("relu", 1.5, 0.05), ("elu", 1.5, 0.0), ("leaky_relu", 1.0, 0.1),
])
def test_fixed_point_monte_carlo(name, sw2, sb2):
    """At the returned q*, a 10^6-sample Monte Carlo reproduces the map and chi1.

    Tolerance: 5 standard errors of the Monte Carlo means (computed from the samples),
    i.e. a relative ~1e-3; a wrong fixed point or derivative moves them by far more.
    """
    act = get_activation(name)
    mf = mean_field(name, sw2, sb2)
    q = mf["q_star"]
    z = np.random.default_rng(2024).standard_normal(1_000_000) * math.sqrt(q)
    a = act.f(z)
    p2, d2 = a**2, act.df(z, a) ** 2
    se_p2, se_d2 = (v.std() / math.sqrt(v.size) for v in (p2, d2))
    assert abs(sw2 * p2.mean() + sb2 - q) <= 5 * sw2 * se_p2
    assert abs(sw2 * d2.mean() - mf["chi1"]) <= 5 * sw2 * se_d2 + 1e-12


def test_closed_forms_match_quadrature():
    for name in ("elu", "leaky_relu", "relu", "linear"):
        act = get_activation(name)
        for q in (1e-3, 0.3, 1.0, 7.0, 60.0):
            m2, d2 = gaussian_moments(name, q)
            assert m2 == pytest.approx(quad_expect(phi2(act), q), rel=1e-9)
            assert d2 == pytest.approx(quad_expect(dphi2(act), q), rel=1e-9)


def test_cases_without_a_unique_fixed_point():
    # ReLU: linear map q -> sw2/2 q; chi1 = sw2/2 regardless
    mf = mean_field("relu", 1.0)
    assert (mf["q_star"], mf["chi1"], mf["phase"], mf["fixed_point"]) == (0.0, 0.5, "ordered",
                                                                            "zero")
    mf = mean_field("relu", 2.0)
    assert math.isnan(mf["q_star"]) and mf["chi1"] == 1.0 and mf["xi"] == math.inf
    assert mf["phase"] == "critical" and "every q" in mf["note"]
    mf = mean_field("relu", 3.0)
    assert mf["q_star"] == math.inf and mf["chi1"] == 1.5 and mf["phase"] == "chaotic"
    assert mf["xi"] == pytest.approx(1 / math.log(1.5))
    assert mean_field("relu", 1.0, 0.1)["q_star"] == pytest.approx(0.2)
    # leaky ReLU: chi1 = sw2 (1 + a^2) / 2, so He init is (barely) chaotic
    assert mean_field("leaky_relu", 2.0)["chi1"] == pytest.approx(1 + LEAKY_SLOPE**2)
    # linear: chi1 = sw2
    assert mean_field("linear", 0.7)["chi1"] == pytest.approx(0.7)
    assert mean_field("linear", 1.0)["phase"] == "critical"
    # tanh without bias, ordered: q* = 0 and chi1 = sw2 phi'(0)^2 = sw2
    mf = mean_field("tanh", 0.8)
    assert mf["q_star"] == 0.0 and mf["chi1"] == pytest.approx(0.8) and mf["note"]
    assert mean_field("tanh", 1.0)["phase"] == "critical"
    # sigmoid and softplus have phi(0) != 0: q* > 0 without any bias
    for name in ("sigmoid", "softplus"):
        mf = mean_field(name, 1.0)
        assert mf["q_star"] > 0.1 and mf["fixed_point"] == "stable"
    # an Activation object is accepted as well as a name
    assert mean_field(ACTIVATIONS["tanh"], 1.5) == mean_field("tanh", 1.5)


def test_q_trajectory_follows_the_map():
    q = q_trajectory("tanh", 1.5, 0.05, q0=2.0, depth=30)
    assert q.shape == (31,)
    assert q[0] == pytest.approx(1.5 * 2.0 + 0.05)
    m2 = gaussian_moments("tanh", q[4])[0]
    assert q[5] == pytest.approx(1.5 * m2 + 0.05)
    assert q[-2] == pytest.approx(mean_field("tanh", 1.5, 0.05)["q_star"], rel=1e-6)
    q = q_trajectory("tanh", 1.5, 0.0, q0=1.0, depth=3, in_weight_var=0.5, out_weight_var=4.0)
    assert q[0] == pytest.approx(0.5)
    assert q[3] == pytest.approx(4.0 * gaussian_moments("tanh", q[2])[0])


def test_delta_profile_conventions():
    depth = 12
    mf = mean_field("tanh", 1.5)
    prof = predicted_delta_profile("tanh", 1.5, depth)
    assert prof.shape == (depth + 1,) and prof[-1] == 1.0
    assert prof[0] == pytest.approx(mf["chi1"] ** (depth / 2))
    assert prof[3] / prof[4] == pytest.approx(math.sqrt(mf["chi1"]))
    # the output matrix's own s_w^2 enters only the first step back from the output
    out = predicted_delta_profile("tanh", 1.5, depth, out_weight_var=3.0)
    assert out[-2] == pytest.approx(math.sqrt(3.0 / 1.5 * mf["chi1"]))
    assert out[:-1] / out[-2] == pytest.approx(prof[:-1] / prof[-2])
    # with q0 each layer uses its own q_l
    q = q_trajectory("tanh", 1.5, 0.0, 4.0, depth)
    prof = predicted_delta_profile("tanh", 1.5, depth, q0=4.0)
    assert prof[0] / prof[1] == pytest.approx(math.sqrt(1.5 * gaussian_moments("tanh", q[0])[1]))


# ---------------------------------------------------------------------------------------
# criticality and the advisor


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_critical_weight_var_gives_chi1_one(name):
    crit = critical_weight_var(name)
    assert crit is not None  # every registered activation has one with s_b = 0
    assert mean_field(name, crit)["chi1"] == pytest.approx(1, rel=1e-2)
    for init in INITIALIZERS:
        adv = advise(name, depth=30, init=init)
        assert adv["critical"]
        assert adv["advised_chi1"] == pytest.approx(1, rel=1e-2)
        sw2 = adv["advised_weight_var"]
        assert mean_field(name, sw2)["chi1"] == pytest.approx(1, rel=1e-2)
        assert weight_variance(init, 100, 100, adv["advised_gain"]) == pytest.approx(sw2)
        if "is critical" not in adv["recommendation"]:
            # ELU and softplus are also critical at s_w^2 = 2 (He), in the q* -> inf limit
            assert sw2 == pytest.approx(crit)
            assert adv["advised_gain"] == pytest.approx(criticality_gain(name, init))
        assert isinstance(adv["recommendation"], str) and name in adv["recommendation"]


def test_sigmoid_criticality_independently():
    """Sigmoid reaches chi1 = 1 only at s_w^2 ~ 103, where q* ~ 46 (checked with quad)."""
    crit = critical_weight_var("sigmoid")
    assert 95 < crit < 110
    _, chi1 = reference_mean_field("sigmoid", crit, 0.0)
    assert chi1 == pytest.approx(1, rel=1e-2)
    assert criticality_gain("sigmoid", "standard") == pytest.approx(math.sqrt(3 * crit))


@pytest.mark.parametrize("sb2", [0.05, 0.3])
def test_critical_with_bias(sb2):
    for name in ("tanh", "sigmoid", "elu"):
        crit = critical_weight_var(name, sb2)
        _, chi1 = reference_mean_field(name, crit, sb2)
        assert chi1 == pytest.approx(1, rel=1e-2)
    assert critical_weight_var("tanh", sb2) > 1  # bias pushes the edge of chaos out


def test_advise_values_and_text():
    adv = advise("tanh", 50, "xavier")
    assert adv["phase"] == "critical" and adv["grad_ratio"] == pytest.approx(1)
    assert "is critical" in adv["recommendation"]
    # at q* = 0 the ratio is 1 only asymptotically; from unit inputs q_l creeps toward 0
    assert adv["grad_ratio_from_inputs"] == pytest.approx(
        predicted_delta_profile("tanh", 1.0, 50, q0=1.0)[0])
    assert 0.05 < adv["grad_ratio_from_inputs"] < 0.3
    adv = advise("relu", 20, "xavier", width=256)
    assert adv["chi1"] == pytest.approx(0.5)
    assert adv["grad_ratio"] == pytest.approx(0.5**10)
    assert adv["advised_gain"] == pytest.approx(math.sqrt(2))
    assert "shrink" in adv["recommendation"] and "1.41" in adv["recommendation"]
    adv = advise("tanh", 20, "he")
    assert adv["chi1"] > 1 and "grow" in adv["recommendation"]
    assert adv["advised_gain"] == pytest.approx(math.sqrt(0.5))
    adv = advise("tanh", 10, "xavier", width=[256, 128, 128, 64])
    # median over 256->128, 128->128, 128->64 (s_w^2 = 4/3, 1, 4/3)
    assert adv["weight_var"] == pytest.approx(4 / 3)
    for name in ACTIVATIONS:
        for init in INITIALIZERS:
            for gain in (0.5, 1.0, 3.0):
                adv = advise(name, 40, init, gain)
                assert np.isfinite(adv["chi1"]) and np.isfinite(adv["advised_gain"])


def test_weight_var_from_config():
    cfg = {"init": "xavier", "init_gain": 2.0, "widths": [64, 64, 64]}
    assert weight_var_from_config(cfg) == pytest.approx(4.0)
    assert weight_var_from_config({"init": "he", "init_gain": 1.0, "widths": [32]}) == 2.0
    cfg = {"init": "xavier", "init_gain": 1.0, "widths": [100, 300, 300, 100]}
    # matrices 100->300 (0.5), 300->300 (1), 300->100 (1.5): median 1
    assert weight_var_from_config(cfg) == pytest.approx(1.0)
    cfg = {"init": "orthogonal", "init_gain": 1.0, "widths": None, "width": 50, "depth": 4}
    assert weight_var_from_config(cfg) == pytest.approx(1.0)


def test_markdown_table_covers_everything():
    table = markdown_table()
    for name in ACTIVATIONS:
        for init in INITIALIZERS:
            assert f"| {name} | {init} |" in table


# ---------------------------------------------------------------------------------------
# measurement against theory: a deep, wide net at initialisation


def measure_deltas(name, init, depth=20, width=256, batch=256, n_out=10, q_in=1.0, seed=0):
    rng = np.random.default_rng(seed)
    act = get_activation(name)
    params = init_params(layer_sizes(width, [width] * depth, n_out), init, rng,
                         dtype=np.float64)
    X = rng.normal(0.0, math.sqrt(q_in), size=(batch, width))
    out, cache = forward(params, X, act)
    grads = backward(params, cache, rng.normal(size=out.shape), act)
    return np.array([np.sum(d * d) for d in grads.deltas])  # ||delta_l||^2, l = 0..depth


@pytest.mark.parametrize("name,init", [("tanh", "standard"), ("sigmoid", "standard"),
                                       ("relu", "he")])
def test_measured_gradient_ratio_matches_chi1(name, init):
    """Median over hidden layers of ||delta_{l-1}||^2/||delta_l||^2 within 10% of chi1.

    20 hidden layers of 256 units, batch 256. Inputs have the variance that puts the first
    layer at q* (tanh-standard: q* = 0, so small inputs, q_0 = 1/300; ReLU-He: any q).
    Over 20 seeds the worst deviation was 2% (tanh), 1.5% (sigmoid), 3.3% (ReLU).
    """
    depth, width = 20, 256
    sw2 = weight_variance(init, width, width)
    mf = mean_field(name, sw2)
    q = mf["q_star"]
    q_in = q / sw2 if 0 < q < math.inf else (1e-2 if q == 0 else 1.0)
    n2 = measure_deltas(name, init, depth, width, q_in=q_in, seed=7)
    ratios = n2[:-2] / n2[1:-1]  # l = 1 .. depth-1: both deltas in hidden layers
    assert np.median(ratios) == pytest.approx(mf["chi1"], rel=0.10)


def test_measured_profile_matches_trajectory_and_output_fan():
    """The whole profile, with q_l from the trajectory and the output layer's own s_w^2.

    tanh, xavier, 256 -> 10 output: the output matrix has s_w^2 = 2*256/266 = 1.92, not 1,
    so the first step back multiplies the squared norm by 1.92 E[phi'^2]. Inputs of unit
    variance: q_l falls slowly toward q* = 0, and the per-layer ratios rise toward 1.
    """
    depth, width, n_out = 20, 256, 10
    sw2, out = weight_variance("xavier", width, width), weight_variance("xavier", width, n_out)
    n2 = measure_deltas("tanh", "xavier", depth, width, n_out=n_out, q_in=1.0, seed=3)
    pred = predicted_delta_profile("tanh", sw2, depth, q0=1.0, out_weight_var=out)
    q = q_trajectory("tanh", sw2, 0.0, 1.0, depth)
    step = n2[-2] / n2[-1]
    assert step == pytest.approx(out * gaussian_moments("tanh", q[-2])[1], rel=0.15)
    # per-layer log-norm noise ~0.05 (sd over seeds); 0.2 is four of those
    assert np.max(np.abs(np.log(np.sqrt(n2 / n2[-1]) / pred))) < 0.2


# --------------------------------------------------------------------------------------
# the correlation map: c*, chi_c, xi_c (Schoenholz et al. 2017)


def dblquad_bivariate(f, g, q, c):
    """E[f(u1) g(u2)] for unit-correlation-c Gaussians of variance q, by scipy dblquad over
    independent standard normals (z1, z2), u2 = sqrt(q)(c z1 + sqrt(1-c^2) z2)."""
    s, r = math.sqrt(q), math.sqrt(1 - c * c)
    dens = 1 / (2 * math.pi)

    def integrand(z2, z1):
        return f(s * z1) * g(s * (c * z1 + r * z2)) * dens * math.exp(-(z1 * z1 + z2 * z2) / 2)

    val, _ = integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-12, epsrel=1e-10)
    return val


def _scalar(fn):
    return lambda x: float(np.asarray(fn(np.array([x])))[0])


@pytest.mark.parametrize("sw2,sb2", [(2.5, 0.05), (4.0, 0.05)])
def test_correlation_fixed_point_matches_dblquad(sw2, sb2):
    act = get_activation("tanh")
    mf = mean_field("tanh", sw2, sb2)
    q, c = mf["q_star"], mf["c_star"]
    assert mf["phase"] == "chaotic" and 0 < c < 1
    f = _scalar(act.f)
    d = _scalar(lambda x: act.df(x, act.f(x)))
    # c* is a fixed point of the correlation map computed independently
    mapped = (sw2 * dblquad_bivariate(f, f, q, c) + sb2) / q
    assert mapped == pytest.approx(c, abs=1e-7)
    # and the stable one: the map pulls a lower and a higher correlation towards it
    lo, hi = c - 0.1, min(c + 0.1, 0.99)
    assert (sw2 * dblquad_bivariate(f, f, q, lo) + sb2) / q > lo
    assert (sw2 * dblquad_bivariate(f, f, q, hi) + sb2) / q < hi
    chi_c = sw2 * dblquad_bivariate(d, d, q, c)
    assert mf["chi_c"] == pytest.approx(chi_c, rel=1e-7)
    assert mf["xi_c"] == pytest.approx(-1 / math.log(chi_c), rel=1e-6)
    # in the chaotic phase the correlation scale is not the gradient scale
    assert mf["xi_c"] > mf["xi"] * 1.2


def test_correlation_fixed_point_by_monte_carlo():
    """The issue's worked case (tanh, s_w^2 = 2.5, s_b^2 = 0.05: c* = 0.447, xi_c = 11.8
    against 1/|ln chi1| = 7.98) by iterating the correlation map of sampled wide layers."""
    mf = mean_field("tanh", 2.5, 0.05)
    assert mf["c_star"] == pytest.approx(0.447, abs=5e-4)
    assert mf["xi_c"] == pytest.approx(11.8, abs=0.05)
    assert mf["xi"] == pytest.approx(7.98, abs=0.01)
    rng = np.random.default_rng(0)
    q, c = mf["q_star"], 0.6
    z = rng.standard_normal((2, 500_000))
    # the map contracts by chi_c = 0.92 a step: 0.15 * 0.92^80 = 2e-4 from the start; the
    # sampling error of the mean is about 2e-3 in c
    for _ in range(80):
        u1 = math.sqrt(q) * z[0]
        u2 = math.sqrt(q) * (c * z[0] + math.sqrt(1 - c * c) * z[1])
        c = (2.5 * np.mean(np.tanh(u1) * np.tanh(u2)) + 0.05) / q
    assert c == pytest.approx(mf["c_star"], abs=6e-3)


def test_correlation_scale_in_ordered_phase_is_xi():
    for name, sw2, sb2 in [("tanh", 1.5, 0.05), ("relu", 1.5, 0.05), ("sigmoid", 4.0, 0.0)]:
        mf = mean_field(name, sw2, sb2)
        assert mf["c_star"] == 1.0 and mf["chi_c"] == mf["chi1"] and mf["xi_c"] == mf["xi"]


def test_correlation_scale_undefined_without_finite_fixed_point():
    for name, sw2, sb2 in [("relu", 3.0, 0.0), ("relu", 1.0, 0.0), ("tanh", 0.8, 0.0)]:
        mf = mean_field(name, sw2, sb2)
        assert math.isnan(mf["c_star"]) and math.isnan(mf["xi_c"])


@pytest.mark.parametrize("c", [-0.7, 0.0, 0.3, 0.95])
def test_bivariate_expectation_relu_arc_cosine(c):
    """ReLU's kink at 0 against Cho & Saul's closed form (the arc-cosine kernel)."""
    from gradscope.analysis.theory import bivariate_expectation

    q = 2.0
    relu = get_activation("relu")
    theta = math.acos(c)
    ref = q / (2 * math.pi) * (math.sin(theta) + (math.pi - theta) * c)
    assert bivariate_expectation(relu.f, relu.f, q, c) == pytest.approx(ref, rel=1e-9)
    step = (math.pi - theta) / (2 * math.pi)
    d = lambda x: relu.df(x, relu.f(x))
    assert bivariate_expectation(d, d, q, c) == pytest.approx(step, rel=1e-9)


def test_odd_activation_without_bias_decorrelates_fully_in_chaotic_phase():
    """tanh, s_b = 0, chaotic: the map sends c = 0 to 0, so c* = 0 and
    chi_c = s_w^2 E[phi'(u)]^2 (independent inputs), by one-dimensional quad."""
    act = get_activation("tanh")
    mf = mean_field("tanh", 2.0)
    q = mf["q_star"]
    mean_d = quad_expect(lambda x: act.df(x, act.f(x)), q)
    assert mf["c_star"] == 0.0
    assert mf["chi_c"] == pytest.approx(2.0 * mean_d**2, rel=1e-8)

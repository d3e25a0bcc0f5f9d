"""Reductions in gradscope.engine.stats against float64 numpy."""

import math

import numpy as np
import pytest

from gradscope.engine.activations import ACTIVATIONS
from gradscope.engine.stats import SATURATION, mean_std, norm, saturated_fraction


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("scale", [1.0, 1e-10, 1e-19, 1e-22, 1e-25, 1e-30, 1e-40, 1e15, 1e25])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_of_vanishing_and_large_arrays_against_float64(rng, scale, dtype):
    # float32 squares underflow below ~1e-19 and overflow above ~1e19: a vanishing
    # gradient's norm must be as accurate as a healthy one's
    x = (rng.standard_normal((256, 64)) * scale).astype(dtype)
    ref = float(np.sqrt(np.sum(x.astype(np.float64) ** 2)))
    assert ref > 0
    assert norm(x) == pytest.approx(ref, rel=1e-6)


def test_norm_of_zeros_non_finite_and_integers():
    assert norm(np.zeros((3, 4), np.float32)) == 0.0
    assert norm(np.array([3, 4])) == 5.0
    assert math.isnan(norm(np.array([1.0, np.nan], np.float32)))
    assert norm(np.array([np.inf, 1.0], np.float32)) == math.inf
    # one tiny entry among zeros
    assert norm(np.array([0.0, 1e-30, 0.0], np.float32)) == pytest.approx(1e-30, rel=1e-6)


def test_mean_std_of_vanishing_activations(rng):
    a = (rng.uniform(0.5, 1.5, (64, 32)) * 1e-25).astype(np.float32)
    ref = a.astype(np.float64)
    mean, std = mean_std(a)
    assert mean == pytest.approx(ref.mean(), rel=1e-6)
    assert std == pytest.approx(ref.std(), rel=1e-4)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu"])
def test_saturated_fraction_counts_below_five_percent_of_the_maximum(name):
    act = ACTIVATIONS[name]
    top = act.df_max
    d = np.array([0.0, 0.049 * top, 0.05 * top, 0.5 * top, top, np.nan])
    # 0 and 4.9% are saturated; 5% is not; NaN compares false
    assert saturated_fraction(d, act) == 2 / 6
    assert SATURATION == 0.05
    assert math.isnan(saturated_fraction(np.zeros(0), act))

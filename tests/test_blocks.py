"""The block codec of log format 2: every value back bit for bit, whatever it is."""

import numpy as np
import pytest

from gradscope.record import blocks


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("period", [1, 3, 7])
def test_floats_round_trip_bit_for_bit(period):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1000) * 10.0 ** rng.integers(-300, 300, 1000)
    a[::17] = np.nan
    a[5] = -0.0
    a[6] = np.inf
    a[7] = np.frombuffer(np.uint64(0x7FF8DEADBEEF0001).tobytes(), np.float64)[0]  # a NaN payload
    a[8] = 5e-324  # subnormal
    enc = blocks.encode("grad_norm", a, period)
    back = blocks.decode("grad_norm", enc, a.dtype, a.shape, period)
    np.testing.assert_array_equal(_bits(back), _bits(a))


def test_predicted_column_round_trips_where_the_rule_holds_and_where_it_does_not():
    rng = np.random.default_rng(1)
    cols = {"update_norm": rng.random(500), "weight_norm": rng.random(500) + 0.5}
    ratio = cols["update_norm"] / cols["weight_norm"]
    ratio[::10] = rng.random(50)  # not the ratio: still exact
    ratio[3] = np.nan
    cols["update_ratio"] = ratio
    enc = blocks.encode("update_ratio", ratio, 4, cols)
    dec = {k: cols[k] for k in ("update_norm", "weight_norm")}
    back = blocks.decode("update_ratio", enc, ratio.dtype, ratio.shape, 4, dec)
    np.testing.assert_array_equal(_bits(back), _bits(ratio))
    # where the rule holds the column costs almost nothing
    exact = cols["update_norm"] / cols["weight_norm"]
    assert len(blocks.encode("update_ratio", exact, 4, {**cols, "update_ratio": exact})) < 100


@pytest.mark.parametrize("dtype,shape", [(np.int64, (300,)), (np.int64, (40, 5)),
                                         (np.uint8, (40, 9)), (np.float32, (6, 4, 3)),
                                         (np.float64, (20, 2))])
def test_integers_and_row_arrays_round_trip(dtype, shape):
    rng = np.random.default_rng(2)
    a = (rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, shape, dtype=np.int64)
         .astype(dtype) if np.dtype(dtype).kind in "iu"
         else rng.standard_normal(shape).astype(dtype))
    enc = blocks.encode("x", a)
    back = blocks.decode("x", enc, a.dtype, a.shape)
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(_bits(back), _bits(a))


def test_a_changed_byte_changes_the_checksum():
    a = np.arange(1000.0)
    enc = bytearray(blocks.encode("x", a))
    c = blocks.crc(bytes(enc))
    enc[len(enc) // 2] ^= 0x10
    assert blocks.crc(bytes(enc)) != c

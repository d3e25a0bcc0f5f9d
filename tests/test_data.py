"""Datasets (data.py): built-ins with their documented shapes, files, and one-line errors."""

import math

import h5py
import numpy as np
import pytest

from gradscope.engine.data import (
    BUILTIN,
    DataError,
    epoch_batches,
    is_classification,
    load_dataset,
    split,
)

# documented in data.py: (rows, features, classes or None for regression)
SHAPES = {
    "digits": (1797, 64, 10),
    "spirals": (900, 2, 3),
    "moons": (1000, 2, 2),
    "blobs": (1000, 2, 4),
    "parity": (1024, 10, 2),
    "teacher": (2000, 10, None),
}


def test_every_builtin_is_documented_here():
    assert set(BUILTIN) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_builtin_shapes_and_dtypes(name):
    n, d, k = SHAPES[name]
    X, y = load_dataset(name)
    assert X.shape == (n, d) and X.dtype == np.float64
    assert y.shape == (n,)
    assert np.isfinite(X).all()
    if k is None:
        assert y.dtype == np.float64 and not is_classification(y)
        assert np.isfinite(y).all() and y.std() > 0
    else:
        assert y.dtype == np.int64 and is_classification(y)
        assert sorted(np.unique(y)) == list(range(k))


def test_digits_is_the_uci_test_set_scaled_to_unit_interval():
    X, y = load_dataset("digits")
    assert X.min() == 0.0 and X.max() == 1.0
    # pixels were integers 0..16
    np.testing.assert_array_equal(X * 16, np.round(X * 16))
    # the first image of the UCI/scikit-learn copy (a zero) and the class sizes
    np.testing.assert_array_equal(X[0, :8] * 16, [0, 0, 5, 13, 9, 1, 0, 0])
    assert y[0] == 0
    assert list(np.bincount(y)) == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # the seed does not change a real data set
    X2, y2 = load_dataset("digits", seed=5)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("name", ["spirals", "moons", "blobs", "parity", "teacher"])
def test_synthetic_sets_are_reproducible_by_seed(name):
    X1, y1 = load_dataset(name, seed=7)
    X2, y2 = load_dataset(name, seed=7)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X3, y3 = load_dataset(name, seed=8)
    assert not (np.array_equal(X1, X3) and np.array_equal(y1, y3))


def test_synthetic_sets_have_their_documented_geometry():
    # moons: class 0 on the unit upper half circle, class 1 on the shifted lower one, noise 0.1
    X, y = load_dataset("moons")
    r0 = np.hypot(X[y == 0, 0], X[y == 0, 1])
    r1 = np.hypot(X[y == 1, 0] - 1, X[y == 1, 1] - 0.5)
    assert np.median(np.abs(r0 - 1)) < 0.15 and np.median(np.abs(r1 - 1)) < 0.15
    assert np.bincount(y).tolist() == [500, 500]
    # parity: every 10-bit pattern exactly once, label = number of ones mod 2
    X, y = load_dataset("parity")
    codes = (X * 2 ** np.arange(10)).sum(axis=1).astype(int)
    assert sorted(codes) == list(range(1024))
    assert set(np.unique(X)) == {0.0, 1.0}
    np.testing.assert_array_equal(y, X.sum(axis=1).astype(int) % 2)
    # spirals: three arms of 300 points within radius ~1
    X, y = load_dataset("spirals")
    assert np.bincount(y).tolist() == [300, 300, 300]
    assert np.hypot(X[:, 0], X[:, 1]).max() <= 1.0 + 1e-12
    # blobs: 4 clusters with unit std around centres in [-5, 5]^2
    X, y = load_dataset("blobs")
    for k in range(4):
        c = X[y == k].mean(axis=0)
        assert np.all(np.abs(c) < 5.3)
        assert X[y == k].std(axis=0) == pytest.approx([1, 1], abs=0.15)


def test_unknown_name_and_target_with_builtin():
    with pytest.raises(DataError, match="unknown dataset 'mnist'; accepted: digits"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="--target applies to CSV files"):
        load_dataset("moons", target="y")


# -- files ------------------------------------------------------------------------------------


def test_csv_with_header_default_and_named_target(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label,b\n1,cat,2.5\n3,dog,4\n5,cat,6\n7,ant,8\n")
    X, y = load_dataset(p, target="label")
    np.testing.assert_array_equal(X, [[1, 2.5], [3, 4], [5, 6], [7, 8]])
    assert X.dtype == np.float64
    # text labels -> codes in sorted order: ant 0, cat 1, dog 2
    np.testing.assert_array_equal(y, [1, 2, 1, 0])
    assert y.dtype == np.int64
    # default target: the last column (floats -> regression)
    q = tmp_path / "r.csv"
    q.write_text("a,b,t\n1,2,0.5\n3,4,1.5\n5,6,-2\n")
    X, y = load_dataset(q)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(y, [0.5, 1.5, -2])
    assert y.dtype == np.float64 and not is_classification(y)


def test_csv_integer_labels_are_recoded(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("x1,x2,y\n0,1,7\n1,0,3\n1,1,7\n0,0,3\n")
    X, y = load_dataset(p)
    assert X.shape == (4, 2)
    np.testing.assert_array_equal(y, [1, 0, 1, 0])
    assert is_classification(y)


def test_csv_errors(tmp_path):
    p = tmp_path / "nn.csv"
    p.write_text("a,b,label\n1,x,0\n2,y,1\n")
    with pytest.raises(DataError, match="feature column 'b' .* is not numeric"):
        load_dataset(p)
    with pytest.raises(DataError, match="target column 'zz' is not in .*columns: a, b, label"):
        load_dataset(p, target="zz")
    one = tmp_path / "one.csv"
    one.write_text("a\n1\n2\n")
    with pytest.raises(DataError, match="at least two columns"):
        load_dataset(one)
    nanf = tmp_path / "nanf.csv"
    nanf.write_text("a,b,y\n1,,0\n2,3,1\n")
    with pytest.raises(DataError, match="features .* missing or non-finite"):
        load_dataset(nanf)
    with pytest.raises(DataError, match="--target applies to CSV files"):
        np.savez(tmp_path / "t.npz", X=np.zeros((2, 2)), y=np.arange(2))
        load_dataset(tmp_path / "t.npz", target="y")


def test_csv_missing_label_is_refused(tmp_path):
    p = tmp_path / "ml.csv"
    p.write_text("a,b,label\n1,2,cat\n2,3,\n4,5,dog\n")
    with pytest.raises(DataError, match="missing"):
        load_dataset(p)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5"])
def test_array_files_with_X_and_y(tmp_path, suffix, rng):
    X = rng.normal(size=(12, 3)).astype(np.float32)
    y_int = np.array([5, 2, 9] * 4)
    y_float = rng.normal(size=12)
    for y, regression in ((y_int, False), (y_float, True)):
        p = tmp_path / f"d{int(regression)}{suffix}"
        if suffix == ".npz":
            np.savez(p, X=X, y=y)
        else:
            with h5py.File(p, "w") as f:
                f["X"], f["y"] = X, y
        Xl, yl = load_dataset(p)
        assert Xl.dtype == np.float64
        np.testing.assert_array_equal(Xl, X.astype(np.float64))
        if regression:
            assert yl.dtype == np.float64 and not is_classification(yl)
            np.testing.assert_array_equal(yl, y_float)
        else:
            assert yl.dtype == np.int64
            np.testing.assert_array_equal(yl, [1, 0, 2] * 4)  # 2 -> 0, 5 -> 1, 9 -> 2


def test_one_dimensional_X_is_one_feature(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, X=np.arange(4.0), y=np.array([0, 1, 0, 1]))
    X, _ = load_dataset(p)
    assert X.shape == (4, 1)


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.arange(3)}, "has no array 'X'"),
    ({"X": np.zeros((3, 2))}, "has no array 'y'"),
    ({"X": np.zeros((4, 2)), "y": np.arange(3)}, "X and y in .* have 4 and 3 rows"),
    ({"X": np.array([[1.0, np.nan], [2, 3]]), "y": np.arange(2)}, "missing or non-finite"),
    ({"X": np.array([[1.0, np.inf], [2, 3]]), "y": np.arange(2)}, "missing or non-finite"),
    ({"X": np.zeros((2, 2)), "y": np.array([1.0, np.nan])}, "targets .* missing or non-finite"),
    ({"X": np.zeros((2, 2, 2)), "y": np.arange(2)}, "must be a non-empty 2-D array"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, "must be a non-empty 2-D array"),
    ({"X": np.zeros((2, 2)), "y": np.zeros((2, 2), dtype=int)}, "class labels .* must be 1-D"),
])
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_array_file_errors(tmp_path, arrays, message, suffix):
    p = tmp_path / f"bad{suffix}"
    if suffix == ".npz":
        np.savez(p, **arrays)
    else:
        with h5py.File(p, "w") as f:
            for k, v in arrays.items():
                f[k] = v
    with pytest.raises(DataError, match=message) as e:
        load_dataset(p)
    assert "\n" not in str(e.value) and "bad" in str(e.value)


@pytest.mark.parametrize("name, content", [
    ("garbage.npz", b"this is not a zip archive\x00\x01\x02"),
    ("garbage.h5", b"hello, I am not HDF5"),
    ("empty.csv", b""),
])
def test_unreadable_files(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=f"cannot read data file .*{name}") as e:
        load_dataset(p)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="data file .*nope.csv' does not exist"):
        load_dataset(tmp_path / "nope.csv")
    p = tmp_path / "d.txt"
    p.write_text("1,2\n")
    with pytest.raises(DataError, match="unknown dataset .*d.txt"):
        load_dataset(p)


# -- splitting and batching --------------------------------------------------------------------


def test_split_sizes_and_partition(rng):
    X = np.arange(20.0)[:, None]
    y = np.arange(20)
    Xt, yt, Xv, yv = split(X, y, 0.25, rng)
    assert (len(Xt), len(Xv)) == (15, 5)
    assert sorted(np.r_[yt, yv]) == list(range(20))
    np.testing.assert_array_equal(Xt[:, 0], yt)  # rows stay paired
    Xt, yt, Xv, yv = split(X, y, 0.0, rng)
    assert (len(Xt), len(Xv)) == (20, 0)
    with pytest.raises(DataError, match="leaves no training data"):
        split(X[:1], y[:1], 0.9, rng)


def test_epoch_batches_cover_every_row_once(rng):
    batches = list(epoch_batches(10, 4, rng))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))
    assert math.ceil(10 / 4) == len(batches)

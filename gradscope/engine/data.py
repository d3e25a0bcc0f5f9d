"""Datasets: the shipped digits, seeded synthetic sets, and CSV/NPZ/HDF5 files.

:func:`load_dataset` returns exactly the ``(X, y)`` the trainer uses before it
splits off validation data. ``X`` is float64 ``(n, features)``; ``y`` is int64
class labels ``0..K-1`` for classification or float64 ``(n,)``/``(n, outputs)``
for regression. Preprocessing: digits pixels (0..16) are divided by 16 so they
lie in [0, 1]; everything else is returned as given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line for the user."""


def _digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """UCI optical recognition of handwritten digits (1797 x 64, 10 classes)."""
    path = DATA_DIR / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"the digits data file {path} is missing; reinstall gradscope from its repository")
    raw = np.loadtxt(path, delimiter=",")
    return raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64)


def _spirals(seed: int, n: int = 900, arms: int = 3, noise: float = 0.2):
    """``arms`` interleaved spirals in 2-D (the classic CS231n toy problem)."""
    rng = np.random.default_rng(seed)
    per = n // arms
    X, y = [], []
    for k in range(arms):
        r = np.linspace(0.0, 1.0, per)
        t = np.linspace(k * 4.0, (k + 1) * 4.0, per) + rng.normal(0, noise, per)
        X.append(np.c_[r * np.sin(t), r * np.cos(t)])
        y.append(np.full(per, k))
    return np.concatenate(X), np.concatenate(y).astype(np.int64)


def _moons(seed: int, n: int = 1000, noise: float = 0.1):
    """Two interleaving half circles in 2-D."""
    rng = np.random.default_rng(seed)
    n1 = n // 2
    t1 = rng.uniform(0, np.pi, n1)
    t2 = rng.uniform(0, np.pi, n - n1)
    X = np.r_[np.c_[np.cos(t1), np.sin(t1)], np.c_[1 - np.cos(t2), 0.5 - np.sin(t2)]]
    X += rng.normal(0, noise, X.shape)
    y = np.r_[np.zeros(n1), np.ones(n - n1)].astype(np.int64)
    return X, y


def _blobs(seed: int, n: int = 1000, centers: int = 4, features: int = 2, std: float = 1.0):
    """Isotropic Gaussian clusters with centres drawn uniformly in [-5, 5]^features."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-5, 5, (centers, features))
    y = rng.integers(0, centers, n)
    X = c[y] + rng.normal(0, std, (n, features))
    return X, y.astype(np.int64)


def _parity(seed: int, bits: int = 10):
    """Every ``bits``-bit pattern (inputs 0/1), label = parity of its ones; order shuffled."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(2**bits)
    X = ((idx[:, None] >> np.arange(bits)) & 1).astype(np.float64)
    return X, (X.sum(axis=1).astype(np.int64) % 2)


def _teacher(seed: int, n: int = 2000, features: int = 10, depth: int = 4, width: int = 32):
    """Regression: targets from a random deep tanh teacher network (LeCun-normal weights)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    a = X
    for fan_in in [features] + [width] * (depth - 1):
        a = np.tanh(a @ rng.normal(0, 1 / np.sqrt(fan_in), (fan_in, width)))
    y = a @ rng.normal(0, 1 / np.sqrt(width), width)
    return X, y


BUILTIN = {
    "digits": _digits,
    "spirals": _spirals,
    "moons": _moons,
    "blobs": _blobs,
    "parity": _parity,
    "teacher": _teacher,
}

FILE_SUFFIXES = (".csv", ".npz", ".h5", ".hdf5")


def load_dataset(
    name_or_path: str | Path, target: str | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Load a built-in dataset by name, or a CSV / NPZ / HDF5 file.

    Parameters
    ----------
    name_or_path : a key of ``BUILTIN`` or a path ending in .csv, .npz, .h5 or .hdf5.
    target : CSV only: the column holding the target (default: the last column).
    seed : seeds the synthetic sets (the data, not the training).

    Returns
    -------
    X : (n, features) float64
    y : (n,) int64 labels 0..K-1 (classification) or float64 (regression).
        Integer or text targets are classes (text is mapped to codes in sorted order);
        floating-point targets are regression targets.
    """
    name = str(name_or_path)
    if name in BUILTIN:
        if target is not None:
            raise DataError(f"--target applies to CSV files, not the built-in dataset {name!r}")
        X, y = BUILTIN[name](seed)
        return np.asarray(X, dtype=np.float64), y
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(
            f"unknown dataset {name!r}; accepted: {', '.join(BUILTIN)} or a file ending in "
            f"{', '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"data file {name!r} does not exist")
    if target is not None and suffix != ".csv":
        raise DataError(f"--target applies to CSV files, not {name!r} (which needs arrays X and y)")
    try:
        if suffix == ".csv":
            X, y = _read_csv(path, target)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                X, y = _xy(f, path)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                X, y = _xy(f, path)
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e):  # numpy's view of a file that is no .npz of plain arrays
            raise DataError(f"cannot read data file {name!r}: not an .npz of numeric arrays X and y") from None
        raise DataError(f"cannot read data file {name!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 -- unreadable, corrupt, wrong format: say so in one line
        raise DataError(f"cannot read data file {name!r}: {str(e).splitlines()[0]}") from None
    return _clean(X, y, name)


def _xy(container, path):
    missing = [k for k in ("X", "y") if k not in container]
    if missing:
        raise DataError(f"data file {str(path)!r} has no array {missing[0]!r}; it needs arrays X and y")
    for k in ("X", "y"):
        if not hasattr(container[k], "shape"):  # an HDF5 group, not an array
            raise DataError(f"{k} in {str(path)!r} is a group, not an array; it needs arrays "
                            f"X and y")
    return np.asarray(container["X"][()]), np.asarray(container["y"][()])


def _read_csv(path: Path, target: str | None):
    import pandas as pd

    df = pd.read_csv(path)
    if df.shape[1] < 2:
        raise DataError(f"CSV file {str(path)!r} needs a header and at least two columns")
    if df.shape[0] == 0:
        raise DataError(f"CSV file {str(path)!r} has a header but no rows of data")
    target = df.columns[-1] if target is None else target
    if target not in df.columns:
        raise DataError(
            f"target column {target!r} is not in {str(path)!r}; columns: {', '.join(map(str, df.columns))}"
        )
    feats = df.drop(columns=[target])
    bad = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    if bad:
        raise DataError(f"feature column {bad[0]!r} of {str(path)!r} is not numeric")
    if df[target].isna().any():
        raise DataError(f"target column {target!r} of {str(path)!r} has empty cells")
    return feats.to_numpy(dtype=np.float64), df[target].to_numpy()


def _clean(X, y, name):
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"X in {name!r} must be a non-empty 2-D array, got shape {X.shape}")
    if X.shape[1] == 0:
        raise DataError(f"X in {name!r} has no feature columns (shape {X.shape})")
    if np.iscomplexobj(X) or np.iscomplexobj(y):
        raise DataError(f"{'X' if np.iscomplexobj(X) else 'y'} in {name!r} is complex; "
                        f"accepted: real numbers")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"X and y in {name!r} have {X.shape[0]} and {y.shape[0]} rows")
    if not np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_:
        X = X.astype(np.float64) if X.dtype == np.bool_ else X
        if not np.issubdtype(X.dtype, np.number):
            raise DataError(f"features in {name!r} are not numeric (dtype {X.dtype})")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise DataError(f"features in {name!r} contain missing or non-finite values")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)):
            raise DataError(f"targets in {name!r} contain missing or non-finite values")
        return X, y.astype(np.float64)
    if y.ndim != 1:
        raise DataError(f"class labels in {name!r} must be 1-D, got shape {y.shape}")
    _, codes = np.unique(y.astype(str) if y.dtype == object else y, return_inverse=True)
    return X, codes.astype(np.int64)


def is_classification(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.integer)


def split(X, y, val_fraction: float, rng: np.random.Generator):
    """Shuffle once and hold out ``round(val_fraction * n)`` rows for validation."""
    n = X.shape[0]
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n - n_val < 1:
        raise DataError(f"--val-fraction {val_fraction} leaves no training data out of {n} rows")
    perm = rng.permutation(n)
    val, tr = perm[:n_val], perm[n_val:]
    return X[tr], y[tr], X[val], y[val]


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays for one epoch: a fresh permutation cut into batches (last may be short)."""
    perm = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]

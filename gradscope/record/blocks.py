"""The block codec of log format version 2: lossless compression and checksums of rows.

A table's rows are stored a block at a time. Each column of a block is encoded on its own
(so a reader can decode the columns it needs) and checksummed with CRC-32:

- integer columns: differences from the previous row (the first row as is);
- float columns: the bits XOR-ed with those of the row ``period`` rows before (``period``
  is the number of layers in the per-layer tables, so a layer is compared with itself at
  the previous step); a column that a rule predicts (``update_ratio`` is
  ``update_norm / weight_norm``) is stored as the XOR of its bits with the prediction's,
  which is zero wherever the prediction holds;
- then the bytes of every value are regrouped by significance (byte shuffle) and the
  whole deflated with zlib.

Every step is a bijection on the bits, so decoding gives back each value bit for bit
(NaN payloads and signed zeros included). The CRC-32 is taken of the encoded bytes: a
reader checks it before decoding and refuses a block whose bytes changed.
"""

from __future__ import annotations

import zlib

import numpy as np

LEVEL = 6  # zlib level: 1 is about 1% larger on the layer table

#: columns predicted from others in the same block: name -> (numerator, denominator)
PREDICTED = {"update_ratio": ("update_norm", "weight_norm")}


def crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _uint_view(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _prediction(cols: dict, name: str, n: int) -> np.ndarray | None:
    rule = PREDICTED.get(name)
    if rule is None or any(c not in cols for c in rule):
        return None
    num, den = (np.asarray(cols[c][:n], dtype=np.float64) for c in rule)
    with np.errstate(all="ignore"):
        return num / den


def _shuffle(u: np.ndarray) -> bytes:
    k = u.dtype.itemsize
    return np.ascontiguousarray(u.reshape(-1).view(np.uint8).reshape(-1, k).T).tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    k = dtype.itemsize
    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size != count * k:
        raise ValueError(f"decoded {b.size} bytes, expected {count * k}")
    return np.ascontiguousarray(b.reshape(k, count).T).view(dtype).reshape(-1)


def encode(name: str, a: np.ndarray, period: int = 1, cols: dict | None = None) -> bytes:
    """The encoded bytes of column ``name`` holding rows ``a`` (any row shape)."""
    a = np.ascontiguousarray(a)
    n = a.shape[0]
    if a.dtype.kind == "f":
        u = _uint_view(a).reshape(n, -1).copy()
        pred = _prediction(cols or {}, name, n) if a.ndim == 1 else None
        if pred is not None:
            u[:, 0] ^= _uint_view(pred.astype(a.dtype))
        else:
            p = max(1, min(period, n)) if a.ndim == 1 else 1
            u[p:] ^= _uint_view(a).reshape(n, -1)[:-p]
    elif a.dtype.kind in "iu" and a.dtype.itemsize > 1:
        u = a.reshape(n, -1).copy()
        u[1:] -= a.reshape(n, -1)[:-1]  # wraps around on overflow: still invertible
        u = _uint_view(u)
    else:
        u = a.reshape(n, -1).view(np.uint8)
    return zlib.compress(_shuffle(u), LEVEL)


def decode(name: str, data: bytes, dtype, shape: tuple, period: int = 1,
           cols: dict | None = None) -> np.ndarray:
    """Inverse of :func:`encode`: the rows, ``shape`` = (rows, *row shape).

    ``cols`` holds the already decoded columns a predicted column needs.
    """
    dtype = np.dtype(dtype)
    n = shape[0]
    per = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    udt = np.dtype(f"u{dtype.itemsize}") if dtype.itemsize > 1 or dtype.kind == "f" else np.dtype(np.uint8)
    u = _unshuffle(zlib.decompress(data), udt, n * per).reshape(n, per)
    if dtype.kind == "f":
        pred = _prediction(cols or {}, name, n) if len(shape) == 1 else None
        if pred is not None:
            u[:, 0] ^= _uint_view(pred.astype(dtype))
        else:
            p = max(1, min(period, n)) if len(shape) == 1 else 1
            # undo the XOR with the row p before: a running XOR down each residue class
            m = -(-n // p) * p
            full = np.zeros((m, per), dtype=udt)
            full[:n] = u
            full = np.bitwise_xor.accumulate(full.reshape(m // p, p, per), axis=0)
            u = full.reshape(m, per)[:n]
        return np.ascontiguousarray(u).view(dtype).reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize > 1:
        return np.cumsum(u.view(dtype), axis=0, dtype=dtype).reshape(shape)
    return u.view(dtype).reshape(shape)


def predicted_needs(names) -> list[str]:
    """The columns that must be decoded before ``names`` (for the predicted ones)."""
    out = []
    for n in names:
        for dep in PREDICTED.get(n, ()):
            if dep not in out and dep not in names:
                out.append(dep)
    return out

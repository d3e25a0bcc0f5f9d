"""The floor under the 64-run grid: its bare training arithmetic in numpy, against the sweeps.

Issue 13 asks for the grid of bench_sweep.py (8 seeds x 8 init gains of an 8 x 64 ReLU MLP,
10 epochs of digits, batch 32, Adam, float32; 64 runs of 450 steps) at least 5x faster than
the sweep of b4b4348. This script measures what no numpy implementation of that training
can go below on this machine, and compares it with the sweeps in the same round:

- ``floor``: two processes at once (one per core, as ``--jobs 2``), each training 32 of the
  runs as one stack with nothing but the arithmetic: one fancy index for the batch, per
  layer one batched product, the bias and the ReLU forward, the softmax cross-entropy
  gradient, per layer the two batched products, the bias gradient and the ReLU mask
  backward, Adam over one flat (runs, parameters) array in the fewest numpy calls (in
  cache-sized chunks or whole, whichever is faster, chosen in a warm-up), and the
  validation pass once an epoch. No statistics, probe passes, logs, summary or data
  checks; no Python beyond the loop. Wall-clock from the start of the two processes
  (interpreter and numpy start-up included, as every sweep pays them) to the end of the
  last; "arithmetic" is the slower process's own time in the loop.
- ``stacked``: this checkout's ``gradscope sweep`` of the grid (bench_sweep.py's command).
- ``baseline``: the same command with ``PYTHONPATH`` a checkout given by ``--baseline``.

The ratio baseline / floor is the most any rewrite in numpy could gain over the baseline on
this machine; the goal of 5x is reachable only if it is above 5.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_floor.py \\
        [--rounds 3] [--baseline /path/to/checkout]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

DEPTH, WIDTH, N_IN, N_OUT = 8, 64, 64, 10
BATCH, EPOCHS = 32, 10


def _worker(runs: int, chunk: int | None) -> None:
    """Train ``runs`` nets of the grid as one stack, arithmetic only; print the loop's time."""
    import gzip

    t_start = time.perf_counter()
    raw = np.loadtxt(gzip.open(ROOT / "data" / "digits.csv.gz", "rt"), delimiter=",",
                     dtype=np.float32)
    X_all, y_all = raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X_all))
    n_val = int(round(0.2 * len(X_all)))
    X, y = X_all[order[n_val:]], y_all[order[n_val:]]
    X_val, y_val = X_all[order[:n_val]], y_all[order[:n_val]]
    n = len(X)
    R = runs
    sizes = [N_IN] + [WIDTH] * DEPTH + [N_OUT]
    shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    offs, k = [], 0
    for a, b in shapes:  # weights then bias of each layer, in one flat (runs, P) array
        offs.append((k, k + a * b))
        k += a * b + b
    P = k
    f32 = np.float32
    params = np.empty((R, P), f32)
    grads = np.zeros((R, P), f32)
    m = np.zeros((R, P), f32)
    v = np.zeros((R, P), f32)
    tmp = np.empty((R, P), f32)
    W, b, gW, gb = [], [], [], []
    for (a, c), (w0, b0) in zip(shapes, offs):
        W.append(params[:, w0:b0].reshape(R, a, c))
        b.append(params[:, b0:b0 + c].reshape(R, 1, c))
        gW.append(grads[:, w0:b0].reshape(R, a, c))
        gb.append(grads[:, b0:b0 + c].reshape(R, 1, c))
        W[-1][...] = rng.standard_normal((R, a, c), dtype=f32) * np.sqrt(2.0 / (a + c))
        b[-1][...] = 0
    hs = [np.empty((R, BATCH, c), f32) for _, c in shapes]
    ds = [np.empty((R, BATCH, c), f32) for _, c in shapes]
    ones = np.ones((R, 1, BATCH), f32)
    perms = np.stack([np.random.default_rng(s).permutation(n) for s in range(R)])
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    flat = [(params, grads, m, v, tmp)]
    if chunk:
        flat = [tuple(a.reshape(-1)[i:i + chunk] for a in (params, grads, m, v, tmp))
                for i in range(0, R * P, chunk)]

    parts = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "adam": 0.0}
    clock = time.perf_counter

    def step(idx, count):
        t = clock()
        B = idx.shape[1]
        h = X[idx]  # (R, B, N_IN)
        acts = [h]
        for i in range(len(shapes)):
            z = np.matmul(h, W[i], out=hs[i][:, :B])
            z += b[i]
            if i < len(shapes) - 1:
                np.maximum(z, 0, out=z)
            acts.append(z)
            h = z
        t, parts["forward"] = clock(), parts["forward"] + clock() - t
        z = acts[-1]  # softmax cross-entropy gradient
        z -= z.max(axis=2, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=2, keepdims=True)
        z[np.arange(R)[:, None], np.arange(B), y[idx]] -= 1
        z *= 1.0 / B
        d = z
        t, parts["loss"] = clock(), parts["loss"] + clock() - t
        for i in range(len(shapes) - 1, -1, -1):
            np.matmul(acts[i].transpose(0, 2, 1), d, out=gW[i])
            np.matmul(ones[:, :, :B], d, out=gb[i])
            if i:
                dp = np.matmul(d, W[i].transpose(0, 2, 1), out=ds[i - 1][:, :B])
                dp *= acts[i] > 0
                d = dp
        t, parts["backward"] = clock(), parts["backward"] + clock() - t
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count
        t0_adam = clock()
        for p, g, mm, vv, t in flat:  # Adam, as torch.optim.Adam
            mm *= b1
            np.multiply(g, 1 - b1, out=t)
            mm += t
            vv *= b2
            np.square(g, out=t)
            t *= 1 - b2
            vv += t
            np.sqrt(vv, out=t)
            t *= 1 / np.sqrt(c2)
            t += eps
            np.divide(mm, t, out=t)
            t *= -lr / c1
            p += t
        parts["adam"] += clock() - t0_adam

    def validate():
        for s in range(0, len(X_val), 512):
            h = np.broadcast_to(X_val[s:s + 512], (R, *X_val[s:s + 512].shape))
            for i in range(len(shapes)):
                h = np.matmul(h, W[i]) + b[i]
                if i < len(shapes) - 1:
                    np.maximum(h, 0, out=h)

    t0 = time.perf_counter()
    count = 0
    for _ in range(EPOCHS):
        for s in range(0, n, BATCH):
            count += 1
            step(perms[:, s:s + BATCH], count)
        validate()
    t1 = time.perf_counter()
    assert np.isfinite(params).all()
    print(f"{t1 - t0:.4f} {t1 - t_start:.4f} {count}",
          " ".join(f"{k}={v:.3f}" for k, v in parts.items()), flush=True)


ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # one BLAS thread a process, as the sweep


def _small(spec: str, steps: int, probe_every: int = 100, probe_size: int = 1024) -> dict:
    """One small net (``DEPTHxWIDTH/BATCH``, 512 random inputs, 10 classes, Adam, float32,
    as bench_recording.py): the bare step, and the least numpy that yields a step's
    per-layer numbers and a probe pass's products, in microseconds a step (medians)."""
    net, batch = spec.split("/")
    depth, width = (int(v) for v in net.split("x"))
    B = int(batch)
    rng = np.random.default_rng(0)
    f32 = np.float32
    X = rng.standard_normal((4096, 512), dtype=f32)
    y = rng.integers(0, 10, 4096)
    sizes = [512] + [width] * depth + [10]
    shapes = list(zip(sizes[:-1], sizes[1:]))
    L = len(shapes)
    # every parameter in one flat array (weights, then biases), the gradients and the
    # updates likewise; the passes write into stacked buffers
    counts = [a * c for a, c in shapes] + [c for _, c in shapes]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    P = int(sum(counts))
    params, grads, upd, m, v, tmp = (np.zeros(P, f32) for _ in range(6))

    def view(flat, i):
        return flat[starts[i]:starts[i] + counts[i]]
    W = [view(params, i).reshape(shapes[i]) for i in range(L)]
    b = [view(params, L + i) for i in range(L)]
    gW = [view(grads, i).reshape(shapes[i]) for i in range(L)]
    gb = [view(grads, L + i) for i in range(L)]
    for w, (a, c) in zip(W, shapes):
        w[...] = rng.standard_normal((a, c), dtype=f32) * np.sqrt(2.0 / (a + c))
    H = np.empty((depth, B, width), f32)   # hidden activations
    D = np.empty((depth, B, width), f32)   # deltas at the hidden layers' outputs
    ones = np.ones(B, f32)
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    out = np.empty((B, 10), f32)

    def step(idx, count):
        x = X[idx]
        h = x
        for i in range(L):
            z = np.matmul(h, W[i], out=H[i] if i < depth else out)
            z += b[i]
            if i < depth:
                np.maximum(z, 0, out=z)
            h = z
        z = out
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[np.arange(B), y[idx]] -= 1
        z *= 1.0 / B
        d = z
        for i in range(L - 1, -1, -1):
            np.matmul((H[i - 1] if i else x).T, d, out=gW[i])
            np.matmul(ones, d, out=gb[i])
            if i:
                dp = np.matmul(d, W[i].T, out=D[i - 1])
                dp *= H[i - 1] > 0
                d = dp
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count
        np.multiply(m, b1, out=m)
        np.multiply(grads, 1 - b1, out=tmp)
        np.add(m, tmp, out=m)
        np.multiply(v, b2, out=v)
        np.square(grads, out=tmp)
        np.multiply(tmp, 1 - b2, out=tmp)
        np.add(v, tmp, out=v)
        np.sqrt(v, out=upd)
        np.multiply(upd, 1 / np.sqrt(c2), out=upd)
        np.add(upd, eps, out=upd)
        np.divide(m, upd, out=upd)
        np.multiply(upd, -lr / c1, out=upd)
        np.add(params, upd, out=params)

    seg = starts  # the rows of each array, for reduceat
    n_el = float(B * width)

    def record():
        # per layer: gradient, bias gradient, weight and update norms (squares of each
        # flat array, summed per array), delta norm, activation mean, std and the
        # ReLU's share of zeros; assembled into one (layers, 9) block of float64
        g = np.add.reduceat(np.square(grads, out=tmp), seg, dtype=np.float64)
        w = np.add.reduceat(np.square(params, out=tmp), seg, dtype=np.float64)
        u = np.add.reduceat(np.square(upd, out=tmp), seg, dtype=np.float64)
        Hf, Df = H.reshape(depth, -1), D.reshape(depth, -1)
        a2 = np.vecdot(Hf, Hf)
        a1 = Hf.sum(axis=1)
        d2 = np.vecdot(Df, Df)
        zero = n_el - np.count_nonzero(Hf, axis=1)
        block = np.empty((L, 9))
        np.sqrt(g[:L], out=block[:, 0])
        np.sqrt(g[L:], out=block[:, 1])
        block[:depth, 2] = np.sqrt(d2)
        np.sqrt(w[:L], out=block[:, 3])
        np.sqrt(u[:L], out=block[:, 4])
        np.divide(block[:, 4], block[:, 3], out=block[:, 5])
        mean = a1 / n_el
        block[:depth, 6] = mean
        block[:depth, 7] = np.sqrt(np.maximum(a2 / n_el - mean * mean, 0))
        block[:depth, 8] = zero / n_el
        return block

    def reads():
        # the least any recording does: read each flat array and stacked buffer once
        np.vecdot(grads, grads), np.vecdot(params, params), np.vecdot(upd, upd)
        Hf, Df = H.reshape(depth, -1), D.reshape(depth, -1)
        np.vecdot(Hf, Hf), np.vecdot(Df, Df)

    Xp = X[:probe_size]

    def probe():
        h = Xp
        for i in range(L):
            h = h @ W[i]
            h += b[i]
            if i < depth:
                np.maximum(h, 0, out=h)

    clock = time.perf_counter
    t_step, t_rec, t_reads, t_probe = [], [], [], []
    perm = rng.permutation(4096)
    for t in range(1, steps + 1):
        s = (t * B) % (4096 - B)
        idx = perm[s:s + B]
        t0 = clock()
        step(idx, t)
        t1 = clock()
        record()
        t2 = clock()
        step(idx, t)  # a second step, so that the reads find the caches as a step leaves them
        t3 = clock()
        reads()
        t_step.append(t1 - t0)
        t_rec.append(t2 - t1)
        t_reads.append(clock() - t3)
        if t % 25 == 0:  # the probe pass: timed more often than it runs, for a median
            t3 = clock()
            probe()
            t_probe.append(clock() - t3)
    med = {k: float(np.median(a)) * 1e6 for k, a in
           (("step", t_step), ("record", t_rec), ("reads", t_reads), ("probe", t_probe))}
    med["probe_per_step"] = med["probe"] / probe_every
    return med


def _pick_chunk(runs: int) -> int | None:
    """Whole arrays or chunks of some size: whichever trains a short stack fastest."""
    best = None
    for chunk in (None, 16384, 65536):
        cmd = [sys.executable, __file__, "--worker", str(runs), "--chunk", str(chunk or 0),
               "--epochs", "1"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env=ENV).stdout.split()
        t = float(out[0])
        if best is None or t < best[0]:
            best = (t, chunk)
    return best[1]


def floor(runs_each: int, workers: int, chunk: int | None) -> dict:
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(runs_each),
                               "--chunk", str(chunk or 0)], stdout=subprocess.PIPE, text=True,
                              env=ENV)
             for _ in range(workers)]
    outs = [p.communicate()[0].split() for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit("floor: a worker failed")
    return {"wall": wall, "loop": max(float(o[0]) for o in outs)}


def _engine_plain(spec: str, steps: int = 400) -> float:
    """The engine's median step recording every 1000 steps, in microseconds (the
    denominator of the issue's share), as bench_recording.py times it."""
    from bench_recording import _config, step_times
    from bench_train import make_data
    from gradscope.training.loop import prepare

    net, batch = spec.split("/")
    depth, width = (int(v) for v in net.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        prep = prepare(_config(data, depth, width, int(batch), steps, 1000))
        t = step_times(prep, Path(tmp) / "run.h5")
    return float(np.median(t[6:-1])) * 1e3


def small(nets: list[str], rounds: int, steps: int) -> None:
    from gradscope._blas import blas_threads

    print("\nThe least that recording every step reads and computes on a small net, in us a "
          "step (medians): each flat array (parameters, gradients, updates) and stacked "
          "buffer (activations, deltas) read once (`reads`), and the probe pass's products "
          "(1024 examples through the net, 9 more passes in 1000 steps than recording "
          "every 1000: `probe / 111`); against the bare step of this script and the "
          "engine's step recording every 1000 (`gradscope.train`, same process, in turn). "
          "`record` is this script's whole per-layer row, for comparison.\n")
    print("| round | net | bare step | engine step | reads | probe pass | probe / 111 | "
          "least cost | share of the engine's recorded step | of a bare one | record |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in range(rounds):
        for net in nets:
            eng = _engine_plain(net)
            with blas_threads(1):  # as the engine trains a small net
                f = _small(net, steps)
            least = f["reads"] + 0.009 * f["probe"]
            print(f"| {r + 1} | {net} | {f['step']:.0f} | {eng:.0f} | {f['reads']:.1f} | "
                  f"{f['probe']:.0f} | {0.009 * f['probe']:.1f} | {least:.1f} | "
                  f"{least / (eng + least):.1%} | {least / (f['step'] + least):.1%} | "
                  f"{f['record']:.0f} |", flush=True)


def main() -> None:
    global EPOCHS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout whose sweep to time as well (e.g. b4b4348)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=EPOCHS, help=argparse.SUPPRESS)
    ap.add_argument("--small", action="store_true",
                    help="the small nets' floor of recording every step instead of the grid")
    ap.add_argument("--net", action="append", default=None, metavar="DEPTHxWIDTH/BATCH")
    args = ap.parse_args()
    EPOCHS = args.epochs
    if args.worker is not None:
        _worker(args.worker, args.chunk or None)
        return
    from bench_sweep import blas_line
    from bench_sweep import run as sweep

    print(blas_line())
    if args.small:
        small(args.net or ["8x64/32", "20x32/32", "8x128/64"], args.rounds, 1500)
        return
    chunk = _pick_chunk(32)
    print(f"# Adam over {'whole arrays' if chunk is None else f'chunks of {chunk} elements'}")
    print("\n| round | command | wall-clock (s) | note |")
    print("|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            fl = floor(32, 2, chunk)
            print(f"| {r + 1} | floor: 2 processes x 32 runs, arithmetic only | "
                  f"{fl['wall']:.2f} | the slower loop {fl['loop']:.2f} s |", flush=True)
            st = sweep("stacked", ROOT, [], Path(tmp) / f"s{r}")
            print(f"| {r + 1} | stacked sweep (this checkout) | {st['wall']:.2f} | "
                  f"CPU {st['cpu']:.1f} s |", flush=True)
            row = {"floor": fl["wall"], "stacked": st["wall"]}
            if args.baseline is not None:
                base = sweep("baseline", args.baseline.resolve(), [], Path(tmp) / f"b{r}")
                print(f"| {r + 1} | baseline sweep ({args.baseline}) | {base['wall']:.2f} | "
                      f"CPU {base['cpu']:.1f} s |", flush=True)
                row["baseline"] = base["wall"]
            ratios.append(row)
    print("\nwithin each round:\n")
    print("| round | stacked / floor | baseline / floor (the most numpy could gain) |"
          " baseline / stacked |")
    print("|---|---|---|---|")
    for r, row in enumerate(ratios):
        b = row.get("baseline")
        fl, st = row["floor"], row["stacked"]
        cells = ["", ""] if b is None else [f"{b / fl:.2f}x", f"{b / st:.2f}x"]
        print(f"| {r + 1} | {st / fl:.2f}x | {cells[0]} | {cells[1]} |")

if __name__ == "__main__":
    main()

"""Training throughput of gradscope, with and without per-step recording, against PyTorch.

The MLP: 8 hidden layers of 512 ReLU units, 512 inputs, 10 classes, batch 256, Adam,
float32, on random data (16384 examples). Prints a Markdown table; docs/performance.md
holds the measured one.

    python benchmarks/bench_train.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import gradscope
from gradscope.train import TrainConfig, prepare, train

DEPTH, WIDTH, BATCH, N, FEATURES, CLASSES = 8, 512, 256, 16384, 512, 10


def make_data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    path = folder / "bench.npz"
    np.savez(path, X=X, y=y)
    return path


def gradscope_rate(data: Path, folder: Path, steps: int, log_every: int) -> float:
    cfg = TrainConfig(dataset=str(data), depth=DEPTH, width=WIDTH, activation="relu",
                      init="he", optimizer="adam", batch_size=BATCH, steps=steps,
                      val_fraction=0.0, log_every=log_every, seed=0)
    prep = prepare(cfg)
    out = folder / f"run-{log_every}.h5"
    t0 = time.perf_counter()
    train(prep, out)
    dt = time.perf_counter() - t0
    return steps / dt


def torch_rate(data: Path, steps: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    with np.load(data) as f:
        X, y = torch.from_numpy(f["X"]), torch.from_numpy(f["y"])
    layers = []
    sizes = [FEATURES] + [WIDTH] * DEPTH
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    step = 0
    while step < steps:
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, BATCH):
            if step >= steps:
                break
            idx = perm[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = make_data(folder)
        rows = {"gradscope, recording every step (default)": [],
                "gradscope, recording every 1000 steps": [], "PyTorch (CPU), no recording": []}
        for _ in range(args.repeats):  # interleaved, so that drift hits every variant alike
            rows["gradscope, recording every step (default)"].append(
                gradscope_rate(data, folder, args.steps, 1))
            rows["gradscope, recording every 1000 steps"].append(
                gradscope_rate(data, folder, args.steps, 1000))
            r = torch_rate(data, args.steps)
            if r is not None:
                rows["PyTorch (CPU), no recording"].append(r)
    best = {k: max(v) for k, v in rows.items() if v}
    base = best["gradscope, recording every 1000 steps"]
    torch_best = best.get("PyTorch (CPU), no recording")
    print(f"gradscope {gradscope.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} cores, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    try:
        import torch

        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    except ImportError:
        print("torch not installed")
    print(f"MLP {DEPTH}x{WIDTH} ReLU, {FEATURES} inputs, batch {BATCH}, Adam, float32, "
          f"{args.steps} steps, best of {args.repeats}\n")
    print("| variant | steps/s (best) | all runs | vs recording every 1000 | vs PyTorch |")
    print("|---|---|---|---|---|")
    for k, v in rows.items():
        if not v:
            continue
        vs_t = f"{best[k] / torch_best:.2f}x" if torch_best else "n/a"
        print(f"| {k} | {best[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | "
              f"{best[k] / base:.3f} | {vs_t} |")


if __name__ == "__main__":
    main()

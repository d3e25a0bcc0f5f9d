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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gradscope
from gradscope._blas import THREAD_TIMEOUT

DEPTH, WIDTH, BATCH, N, FEATURES, CLASSES = 8, 512, 256, 16384, 512, 10


def make_data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    path = folder / "bench.npz"
    np.savez(path, X=X, y=y)
    return path


def gradscope_rate(data: Path, folder: Path, steps: int, log_every: int) -> float:
    """Steps per second of ``gradscope train`` in a process of its own (as a user runs it):
    the training time is the log's ``time`` of the last step, so start-up, data loading and
    closing the log are not counted."""
    out = folder / f"run-{log_every}.h5"
    cmd = [sys.executable, "-m", "gradscope", "train", "--dataset", str(data),
           "--depth", str(DEPTH), "--width", str(WIDTH), "--activation", "relu", "--init", "he",
           "--optimizer", "adam", "--batch-size", str(BATCH), "--steps", str(steps),
           "--val-fraction", "0", "--log-every", str(log_every), "--seed", "0", "-q",
           "--force", "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    last = gradscope.read_steps(out).iloc[-1]
    return (int(last["step"]) + 1) / float(last["time"])


def torch_rate(data: Path, steps: int) -> float | None:
    """Steps per second of the same MLP in PyTorch, in a process of its own."""
    try:
        import torch  # noqa: F401 -- only whether it is installed
    except ImportError:
        return None
    out = subprocess.run([sys.executable, __file__, "--torch-worker", str(data), str(steps)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def _torch_worker(data: Path, steps: int) -> float:
    import torch

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
    ap.add_argument("--torch-worker", nargs=2, metavar=("DATA", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        print(_torch_worker(Path(args.torch_worker[0]), int(args.torch_worker[1])))
        return
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
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', '(unset)')} "
          f"(gradscope sets {THREAD_TIMEOUT} when unset)")
    try:
        import torch

        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    except ImportError:
        print("torch not installed")
    print(f"MLP {DEPTH}x{WIDTH} ReLU, {FEATURES} inputs, batch {BATCH}, Adam, float32, "
          f"{args.steps} steps, best of {args.repeats}\n")
    print("Each round runs the three variants one after the other; the ratios are the median "
          "over rounds of the ratio within a round (steady against the machine's drift), and "
          "the ratio of the best runs.\n")
    print("| variant | steps/s (best) | all runs | vs recording every 1000: median (best) "
          "| vs PyTorch: median (best) |")
    print("|---|---|---|---|---|")
    base_runs = rows["gradscope, recording every 1000 steps"]
    torch_runs = rows["PyTorch (CPU), no recording"]
    for k, v in rows.items():
        if not v:
            continue
        vs_b = f"{_median_ratio(v, base_runs):.3f} ({best[k] / base:.3f})"
        vs_t = (f"{_median_ratio(v, torch_runs):.2f}x ({best[k] / torch_best:.2f}x)"
                if torch_best else "n/a")
        print(f"| {k} | {best[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {vs_b} | {vs_t} |")


def _median_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median([x / y for x, y in zip(a, b)]))

if __name__ == "__main__":
    main()

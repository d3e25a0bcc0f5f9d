"""Many runs in one process: a stack of networks against the same runs one after another.

Trains the runs of a seeds x init-gains grid (default: 4 seeds x 8 gains of an 8 x 64 ReLU
MLP on digits, 10 epochs, Adam, recording every step: half of the sweep of
bench_sweep.py, what one of its two worker processes trains) in this process, alternately
as separate ``train()`` calls and as one ``train_stack()`` call, and reports wall-clock and
CPU time of each, and their ratio within each round. BLAS is limited to one thread, as in
a sweep's worker process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_stack.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

# isort: off
import gradscope  # noqa: F401 -- first: sets OpenBLAS's thread timeout before numpy loads it
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from gradscope.training.loop import TrainConfig, train
from gradscope.training.stack import train_stack
# isort: on

GAINS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)


def timed(f) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    threadpool_limits(1)
    for lib in threadpool_info():
        print(f"# {lib['internal_api']} {lib.get('version')} {lib.get('architecture')} "
              f"threads={lib['num_threads']}")
    configs = [TrainConfig(dataset="digits", depth=args.depth, width=args.width, seed=s,
                           init_gain=g, optimizer=args.optimizer, epochs=args.epochs)
               for s in range(args.seeds) for g in GAINS]
    print(f"# {len(configs)} runs of {args.depth} x {args.width}, {args.epochs} epochs of "
          f"digits, {args.optimizer}, recording every step\n")
    print("| round | separate: wall s (CPU s) | stack: wall s (CPU s) | separate / stack: wall "
          "| CPU |")
    print("|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"run{i}.h5" for i in range(len(configs))]
        for r in range(args.rounds):
            sep = timed(lambda: [train(c, o) for c, o in zip(configs, outs)])
            stk = timed(lambda: train_stack(configs, outs))
            ratios.append((sep[0] / stk[0], sep[1] / stk[1]))
            print(f"| {r + 1} | {sep[0]:.2f} ({sep[1]:.2f}) | {stk[0]:.2f} ({stk[1]:.2f}) | "
                  f"{ratios[-1][0]:.2f}x | {ratios[-1][1]:.2f}x |", flush=True)
    med = np.median(np.array(ratios), axis=0)
    print(f"\nmedian ratio: {med[0]:.2f}x wall, {med[1]:.2f}x CPU")


if __name__ == "__main__":
    main()

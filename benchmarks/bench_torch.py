"""What gradscope.torch costs a PyTorch training loop, measured inside one run.

The benchmark MLP of bench_train.py in PyTorch (8 x 512 ReLU, 512 inputs, 10 classes,
batch 256, Adam, float32, CPU) three times over, with the same weights and batches:

- ``plain``: no gradscope;
- ``every``: under ``gst.watch(..., log_every=1)`` (the default: every step recorded,
  probe statistics every 100 steps);
- ``every100``: under ``gst.watch(..., log_every=100)``.

Their steps alternate (plain, every, every100, plain, ...) so that the machine's drift
touches all three alike; each step is timed from ``zero_grad`` to the end of ``run.log``.
The cost of recording is the ratio of median step times to the plain loop's, and its
spread the range of that ratio over blocks of ``--block`` steps. The same for the CPU
time of the training thread (``time.thread_time``: on a loaded machine less noisy than
the wall clock, as time spent waiting for a core is not counted; with several torch
threads the other OpenMP threads' time is not in it); the log writer's threads (HDF5
writes) and watch's background threads (the step's norms, where a core is free) are
timed apart: their CPU time per recorded step after the warm-up (Linux only). Work that
a background thread does after a recorded step overlaps the next step, here the
``every100`` loop's: its ratio shows that spill-over.

    nice -n 10 env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_torch.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradscope.torch as gst

DEPTH, WIDTH, BATCH, FEATURES, CLASSES = 8, 512, 256, 512, 10
WARMUP = 10


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers, a = [], FEATURES
    for _ in range(DEPTH):
        layers += [nn.Linear(a, WIDTH), nn.ReLU()]
        a = WIDTH
    layers.append(nn.Linear(a, CLASSES))
    return nn.Sequential(*layers)


def writer_cpu_seconds(name: str = "gradscope-log-writer") -> float:
    """CPU time so far of the threads called ``name`` (the log writers, or the background
    threads of the step's numbers; user + system; NaN where /proc is not)."""
    total = 0.0
    for t in threading.enumerate():
        if t.name != name or t.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="steps of each of the three loops")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--block", type=int, default=60, help="steps per block for the spread")
    ap.add_argument("--background", choices=("auto", "on", "off"), default="auto",
                    help="watch's background thread (auto: where torch leaves a core free)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(16 * BATCH, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (16 * BATCH,), generator=g)
    kinds = ("plain", "every", "every100")
    bg = {"auto": None, "on": True, "off": False}[args.background]
    models = {k: make_model() for k in kinds}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    times = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "plain": None,
            "every": gst.watch(models["every"], Path(tmp) / "every.h5",
                               optimizer=opts["every"], log_every=1, background=bg),
            "every100": gst.watch(models["every100"], Path(tmp) / "every100.h5",
                                  optimizer=opts["every100"], log_every=100, background=bg),
        }
        for t in range(args.steps + WARMUP):
            i = (t % 16) * BATCH
            xb, yb = X[i:i + BATCH], y[i:i + BATCH]
            for k in kinds:
                model, opt, run = models[k], opts[k], runs[k]
                t0, c0 = time.perf_counter(), time.thread_time()
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                if run is not None:
                    run.log(loss=loss)
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.thread_time() - c0)
            if t == WARMUP - 1:
                writer_cpu0 = writer_cpu_seconds()  # the files are created by now
                stats_cpu0 = writer_cpu_seconds("gradscope-torch-stats")
            if t % 50 == 0:
                print(f"step {t} of {args.steps + WARMUP}", flush=True)
        # before closing (the threads end with the runs; closing writes the final weights)
        writer_cpu = writer_cpu_seconds() - writer_cpu0
        stats_cpu = writer_cpu_seconds("gradscope-torch-stats") - stats_cpu0
        used = runs["every"]._bg is not None
        for run in runs.values():
            if run is not None:
                run.close()
        rows = len(__import__("gradscope").read_steps(Path(tmp) / "every.h5"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps of each loop, interleaved; {rows} rows in every.h5; "
          f"background thread: {'on' if used else 'off'}")
    n = args.block
    for title, data in (("wall clock", times), ("CPU time of the training thread", cpu)):
        ms = {k: np.array(v[WARMUP:]) * 1e3 for k, v in data.items()}
        base = np.median(ms["plain"])
        blocks = len(ms["plain"]) // n
        print(f"{title}:")
        print(f"{'loop':<10} {'median ms':>10} {'ratio':>7} {'block ratios (min-max)':>24}")
        for k in kinds:
            med = np.median(ms[k])
            br = [np.median(ms[k][b * n:(b + 1) * n]) / np.median(ms["plain"][b * n:(b + 1) * n])
                  for b in range(blocks)]
            spread = f"{min(br):.3f}-{max(br):.3f}" if br else "-"
            print(f"{k:<10} {med:>10.2f} {med / base:>7.3f} {spread:>24}")
    # the steps recorded after the warm-up: every.h5's and every100.h5's
    recorded = args.steps + sum(1 for t in range(WARMUP, WARMUP + args.steps) if t % 100 == 0)
    print(f"log writer threads after the warm-up: {writer_cpu * 1e3 / recorded:.2f} ms CPU "
          f"per recorded step ({recorded} steps of both runs; clock ticks of /proc)")
    if used:
        print(f"background threads of the step's numbers: {stats_cpu * 1e3 / recorded:.2f} ms "
              "CPU per recorded step (not in the training thread's CPU time above)")


if __name__ == "__main__":
    main()

"""Whole small-net runs of several checkouts of gradscope, interleaved: steps per second.

This machine's speed drifts within minutes, so the checkouts take turns: each round runs
every checkout once (a process of its own, ``PYTHONPATH`` the checkout), and the ratios are
taken within a round. A process trains each net given (the MLPs and random data of
bench_recording.py: 512 inputs, 10 classes, ReLU, He, Adam, float32) for ``--steps`` steps
recording every step and then recording every 1000 steps, after a short warm-up run, and
reports the steps per second of each (the log's ``time`` of the last step: training only).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_versions.py \\
        CHECKOUT [CHECKOUT ...] [--rounds 5] [--steps 1500] [--net 8x64/32 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import gradscope
from bench_train import make_data
from bench_recording import _config
from gradscope.training.loop import prepare, train
steps, nets = int(sys.argv[2]), sys.argv[3].split(",")
out = {"version": gradscope.__file__}
with tempfile.TemporaryDirectory() as tmp:
    data = make_data(Path(tmp))
    for net in nets:
        shape, batch = net.split("/")
        depth, width = map(int, shape.split("x"))
        train(prepare(_config(data, depth, width, int(batch), 200, 1)), Path(tmp) / "w.h5")
        for every in (1, 1000):
            path = Path(tmp) / f"{every}.h5"
            train(prepare(_config(data, depth, width, int(batch), steps, every)), path)
            t = float(gradscope.read_steps(path)["time"].iloc[-1])  # every version has it
            out[f"{net} {every}"] = (steps - 1) / t
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--net", action="append", default=None, metavar="DEPTHxWIDTH/BATCH")
    args = ap.parse_args()
    nets = args.net or ["8x64/32", "20x32/32", "8x128/64"]
    names = [str(c) for c in args.checkouts]
    res: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for c, name in zip(args.checkouts, names):
            env = dict(os.environ, PYTHONPATH=str(c.resolve()))
            p = subprocess.run([sys.executable, "-c", CHILD, str(HERE), str(args.steps),
                                ",".join(nets)], env=env, capture_output=True, text=True,
                               check=False, cwd=tempfile.gettempdir())  # not a checkout
            if p.returncode:
                raise SystemExit(f"{name}: {p.stderr.strip().splitlines()[-1]}")
            got = json.loads(p.stdout)
            if not got["version"].startswith(str(c.resolve())):
                raise SystemExit(f"{name}: imported {got['version']}")
            res[name].append(got)
        print(f"round {r + 1}: " + "; ".join(
            f"{Path(n).name} " + ", ".join(f"{net} {res[n][-1][f'{net} 1']:.0f}" for net in nets)
            for n in names), flush=True)
    first = names[0]
    print(f"\nsteps/s recording every step (every 1000), median over {args.rounds} rounds; "
          f"and the median within-round ratio to {first}:\n")
    print("| net | checkout | every step | every 1000 | recording's cost | every step / "
          f"{Path(first).name} |")
    print("|---|---|---|---|---|---|")
    for net in nets:
        for n in names:
            a = np.array([x[f"{net} 1"] for x in res[n]])
            b = np.array([x[f"{net} 1000"] for x in res[n]])
            ratio = np.median(a / np.array([x[f"{net} 1"] for x in res[first]]))
            cost = np.median(b / a - 1)
            print(f"| {net} | {n} | {np.median(a):.0f} | {np.median(b):.0f} | +{cost:.1%} | "
                  f"{ratio:.2f}x |")


if __name__ == "__main__":
    main()

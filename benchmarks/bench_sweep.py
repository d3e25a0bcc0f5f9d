"""The 64-run grid of issue 13 through `gradscope sweep`: stacked against run by run.

8 seeds x 8 init gains of an 8 x 64 ReLU MLP, 10 epochs of digits (Adam, recording every
step), on ``--jobs 2``. Each round runs the sweep command in a fresh folder, in turn:
with ``--no-stack`` (every run trained on its own, as before stacked training existed),
with the default (runs of one shape trained as stacks), and, given ``--baseline PATH``,
the code of another checkout (``PYTHONPATH=PATH``, e.g. the main branch before this
change). Reported per command: wall-clock seconds of the whole command, of its training
(from the start to the last run's progress line; the rest is writing summary.csv, which
reads the logs back where the workers did not diagnose them), and the CPU seconds of its
processes. The machine's speed drifts, so compare the ratios within a round. After each
sweep of this checkout, summary.csv is checked byte for byte against ``summarize`` reading
every log again.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_sweep.py \\
        [--rounds 3] [--baseline /path/to/checkout]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRID = ["--depth", "8", "--width", "64", "--seeds", "0:7",
        "--init-gain", "0.25,0.5,0.75,1,1.25,1.5,2,3", "--epochs", "10", "--jobs", "2"]
ROOT = Path(__file__).resolve().parent.parent


def run(label: str, path: Path, extra: list[str], out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(path))
    cmd = [sys.executable, "-m", "gradscope", "sweep", *GRID, *extra, "--out-dir", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    last = None
    for line in proc.stderr:
        if re.match(r"\[\d+/\d+\]", line):
            last = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(f"{label}: the sweep failed")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if path == ROOT:  # the rows the workers took are those of the logs read again
        check = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from gradscope.training.sweep import summarize; o = Path(sys.argv[1]); "
             "sys.exit((o / 'summary.csv').read_bytes() != "
             "summarize(o).to_csv(index=False).encode())", str(out)], env=env, check=False)
        if check.returncode != 0:
            raise SystemExit(f"{label}: summary.csv differs from the logs read again")
    return {"wall": wall, "train": (last or time.perf_counter()) - t0, "cpu": cpu}


def blas_line() -> str:
    """The BLAS numpy loads in a fresh process (threadpoolctl) and the cores: a header."""
    blas = subprocess.run([sys.executable, "-c",
                           "import numpy; from threadpoolctl import threadpool_info as i; "
                           "print(*[(d['internal_api'], d.get('version'), "
                           "d.get('architecture')) for d in i()])"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return f"# BLAS: {blas or 'threadpoolctl not installed'}; cores: {os.cpu_count()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout whose sweep to time as well (e.g. the main branch)")
    args = ap.parse_args()
    print(blas_line())
    variants = [("run by run (--no-stack)", ROOT, ["--no-stack"]), ("stacked", ROOT, [])]
    if args.baseline is not None:
        variants.insert(0, (f"baseline {args.baseline}", args.baseline.resolve(), []))
    print("\n| round | command | whole command (s) | training (s) | CPU (s) |")
    print("|---|---|---|---|---|")
    rows: dict[str, list[dict]] = {v[0]: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (label, path, extra) in enumerate(variants):
                res = run(label, path, extra, Path(tmp) / f"r{r}-{i}")
                rows[label].append(res)
                print(f"| {r + 1} | {label} | {res['wall']:.1f} | {res['train']:.1f} | "
                      f"{res['cpu']:.1f} |", flush=True)
    stacked = rows["stacked"]
    print("\nratios to the stacked sweep, median over rounds (each ratio within one round):\n")
    print("| command | whole command | training | CPU |")
    print("|---|---|---|---|")
    for label, res in rows.items():
        if label == "stacked":
            continue
        med = {k: float(np.median([a[k] / b[k] for a, b in zip(res, stacked)]))
               for k in ("wall", "train", "cpu")}
        print(f"| {label} | {med['wall']:.2f}x | {med['train']:.2f}x | {med['cpu']:.2f}x |")


if __name__ == "__main__":
    main()

"""What reading a long log costs: diagnose and the report on logs of 1M to 100M layer rows.

The logs are written with the LogWriter directly (a training run of 10M steps would take
hours): a ReLU network of 9 hidden layers of 64 units (10 layer rows a logged step), a
probe every 100 steps, plausible values (gradient norms shrinking towards the input by a
factor 0.7 a layer, with noise). Each measurement runs in a fresh process, which reports
its time, its peak resident memory (``VmHWM``) and its resident memory after the imports
(``VmRSS``); "over the imports" below is the peak minus that baseline.

    python benchmarks/bench_reading.py --rows 1e6,1e7,1e8 [--dir /tmp/gradscope-bench]
    python benchmarks/bench_reading.py --log LOG.h5|DIR --jobs report [--repeat 3]
        [--pythonpath CHECKOUT]   (another gradscope, e.g. an older commit, on the same logs)

Results: docs/performance.md ("Reading long logs").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# isort: off
import gradscope  # noqa: F401 -- first: sets OpenBLAS's thread timeout before numpy loads it
import numpy as np
from gradscope.record.writer import LogWriter
from gradscope.training.loop import TRAIN_OPTIONS
import itertools
# isort: on

HIDDEN, WIDTH, N_IN, N_OUT = 9, 64, 64, 10
PROBE_EVERY = 100
HIST_BINS = 50
BLOCK_STEPS = 50_000  # logged steps written per block


def write_log(path: Path, layer_rows: int, seed: int = 0) -> float:
    """Write a completed log of ``layer_rows`` layer rows; returns the seconds it took."""
    t0 = time.perf_counter()
    n_layers = HIDDEN + 1
    n_steps = layer_rows // n_layers
    sizes = [N_IN, *[WIDTH] * HIDDEN, N_OUT]
    rng = np.random.default_rng(seed)
    params = []
    for a, b in itertools.pairwise(sizes):
        params += [rng.normal(0, (2 / a) ** 0.5, (a, b)).astype(np.float32),
                   np.zeros(b, np.float32)]
    config = {"dataset": "synthetic", "depth": HIDDEN, "width": WIDTH, "widths": [WIDTH] * HIDDEN,
              "activation": "relu", "relu_family": True, "init": "he", "init_gain": 1.0,
              "optimizer": "sgd", "lr": 0.01, "batch_size": 32, "steps": n_steps,
              "log_every": 1, "probe_every": PROBE_EVERY, "hist_bins": HIST_BINS, "seed": seed,
              "n_outputs": N_OUT, "sizes": sizes, "total_steps": n_steps,
              "train_options": TRAIN_OPTIONS, "optimizer_hyper": {"lr": 0.01}}
    edges = np.linspace(-1, 5, HIST_BINS + 1)
    w = LogWriter(path, config, params, edges, flush_interval=1e9, fsync_interval=1e9)
    scale = 0.7 ** np.arange(n_layers)[::-1]  # smaller towards the input
    for lo in range(0, n_steps, BLOCK_STEPS):
        hi = min(n_steps, lo + BLOCK_STEPS)
        k = hi - lo
        steps = np.arange(lo, hi)
        noise = np.exp(rng.normal(0, 0.2, (k, n_layers)))
        g = (scale * noise).ravel()
        w.append("steps", k, step=steps, epoch=steps // 1000, loss=2.3 * np.exp(-steps / n_steps),
                 accuracy=np.minimum(0.99, 0.1 + steps / n_steps), lr=0.01,
                 grad_norm_total=np.sqrt((scale**2 * noise**2).sum(axis=1)),
                 time=steps * 1e-3, clipped=0)
        w.append("layers", k * n_layers, step=np.repeat(steps, n_layers),
                 layer=np.tile(np.arange(n_layers), k), grad_norm=g, bias_grad_norm=0.1 * g,
                 delta_norm=1.3 * g, weight_norm=8.0, update_norm=0.01 * g,
                 update_ratio=0.00125 * g, act_mean=0.4, act_std=0.6, saturated_frac=0.0)
        probe = steps[steps % PROBE_EVERY == 0]
        if len(probe):
            p = len(probe)
            w.append("probes", p * n_layers, step=np.repeat(probe, n_layers),
                     layer=np.tile(np.arange(n_layers), p), dead_frac=0.05,
                     probe_act_mean=0.4, probe_act_std=0.6, probe_saturated_frac=0.0)
            dead = np.zeros((p, WIDTH), np.uint8)
            dead[:, :3] = 1
            hist = np.tile(np.bincount(np.minimum(rng.integers(0, HIST_BINS, 512),
                                                  HIST_BINS - 1), minlength=HIST_BINS), (p, 1))
            w.units.append(p, {"step": probe, **{f"dead_{l}": dead for l in range(HIDDEN)},
                               **{f"hist_{l}": hist for l in range(HIDDEN)}})
        w.end_step()
        w.flush()
    w.close("completed", "synthetic log for the reading benchmark", params=params)
    return time.perf_counter() - t0


_CHILD = """
import json, sys, time
import gradscope
{imports}

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # MB
base = status("VmRSS:")
t0 = time.perf_counter()
{work}
secs = time.perf_counter() - t0
print(json.dumps({{"seconds": secs, "peak_mb": status("VmHWM:"), "base_mb": base,
                  "gradscope": gradscope.__file__}}))
"""

JOBS = {
    "diagnose": ("", "d = gradscope.diagnose(sys.argv[1])"),
    "report": ("from gradscope.views.report import collect_logs, make_report",
               "make_report(collect_logs(sys.argv[1]), sys.argv[2])"),
    # the report's reading and diagnosis without the drawing
    "load": ("from gradscope.views.report import collect_logs, load_run",
             "runs = [load_run(p) for p in collect_logs(sys.argv[1])]"),
}


def measure(job: str, log: Path, pythonpath: str | None = None) -> dict:
    imports, work = JOBS[job]
    env = None
    if pythonpath:
        import os
        env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(imports=imports, work=work), str(log),
         str(log.with_suffix(".pdf"))],
        check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1e6,1e7,1e8")
    ap.add_argument("--dir", default="/tmp/gradscope-bench")
    ap.add_argument("--jobs", default="diagnose,report")
    ap.add_argument("--keep", action="store_true", help="keep the logs")
    ap.add_argument("--log", default=None, help="measure this log (or folder of logs) only")
    ap.add_argument("--pythonpath", default=None, help="the gradscope to measure")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    logs = []
    if a.log:
        logs.append((None, Path(a.log)))
    else:
        for r in (int(float(x)) for x in a.rows.split(",")):
            path = d / f"bench-{r}.h5"
            if not path.exists():
                secs = write_log(path, r)
                print(f"wrote {path} ({r} layer rows, {path.stat().st_size / 1e9:.2f} GB) "
                      f"in {secs:.0f} s", flush=True)
            logs.append((r, path))
    for rows, path in logs:
        for job in a.jobs.split(","):
            res = [measure(job, path, a.pythonpath) for _ in range(a.repeat)]
            secs = sorted(r["seconds"] for r in res)
            peak = max(r["peak_mb"] for r in res)
            added = max(r["peak_mb"] - r["base_mb"] for r in res)
            where = Path(res[0]["gradscope"]).parent.parent
            print(f"{job:9s} {path.name:22s} rows={rows or '-'} ({where}): "
                  f"{' / '.join(f'{s:.2f}' for s in secs)} s, peak {peak:.0f} MB "
                  f"(+{added:.0f} MB over the imports)", flush=True)
        if rows and not a.keep and path.stat().st_size > 2e9:
            path.unlink()


if __name__ == "__main__":
    main()

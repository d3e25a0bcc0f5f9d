"""What watching a run live (``gradscope watch``, ``train --watch``) costs the training run.

One run of ``train()`` (the default ``gradscope train`` net: digits, 3 x 64 ReLU, batch 32,
Adam, recording every step: the log grows fastest relative to the work of a step, the worst
case for a reader) is followed by a ``gradscope watch`` process refreshing every ``--every``
seconds and drawing to a terminal (rich, forced terminal, output thrown away). The viewer
runs the whole time but is paused (SIGSTOP) and resumed (SIGCONT) in alternate windows of
``--window`` seconds, so that the machine's drift touches both states alike. Every step is
timed from the progress callback; steps within 0.3 s after a switch are not counted. The
cost is 1 - (steps/s while watched) / (steps/s while not), per pair of windows, and the
median over the pairs.

    python benchmarks/bench_watch.py [--seconds 60] [--window 3] [--every 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# isort: off
import gradscope  # noqa: F401 -- first: sets OpenBLAS's thread timeout before numpy loads it
import numpy as np
from gradscope.training.loop import TrainConfig, prepare, train
# isort: on

SETTLE = 0.3

VIEWER = """
import os, sys
from rich.console import Console
from gradscope.views.watch import watch
console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120, height=40)
watch([sys.argv[1]], every=float(sys.argv[2]), console=console)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the run")
    ap.add_argument("--window", type=float, default=3.0, help="seconds watched / not watched")
    ap.add_argument("--every", type=float, default=1.0, help="the viewer's refresh interval")
    args = ap.parse_args()

    out = Path(tempfile.mkdtemp()) / "watched.h5"
    prep = prepare(TrainConfig(dataset="digits", steps=10_000_000))
    stamps: list[float] = []
    switches: list[tuple[float, bool]] = []
    state = {"viewer": None, "stop": False}

    def control():
        watched = True
        t_end = time.perf_counter() + args.seconds
        while time.perf_counter() < t_end:
            switches.append((time.perf_counter(), watched))
            time.sleep(args.window)
            watched = not watched
            os.kill(state["viewer"].pid, signal.SIGCONT if watched else signal.SIGSTOP)
        os.kill(state["viewer"].pid, signal.SIGCONT)
        state["stop"] = True

    cpu: list[float] = []

    def progress(step, total, loss):
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        if state["viewer"] is None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            state["viewer"] = subprocess.Popen([sys.executable, "-c", VIEWER, str(out),
                                                str(args.every)], env=env)
            time.sleep(2.0)   # the viewer's start-up (imports) is not what is measured
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            threading.Thread(target=control, daemon=True).start()
        if state["stop"]:
            raise KeyboardInterrupt

    try:
        train(prep, out, progress=progress)
    except KeyboardInterrupt:
        pass
    viewer = state["viewer"]
    viewer.wait(timeout=30)   # it sees the run end (interrupted) and exits by itself
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    viewer_cpu = ru.ru_utime + ru.ru_stime

    t = np.array(stamps)
    dt, at = np.diff(t), t[1:]
    dcpu = np.diff(np.array(cpu))
    ratios, rows = [], []
    bounds = [s for s, _ in switches] + [t[-1]]
    rates = []
    for (start, watched), end in zip(switches, bounds[1:]):
        sel = (at > start + SETTLE) & (at <= end)
        sel[0] = False
        rate = sel.sum() / dt[sel].sum() if sel.any() else float("nan")
        per_step = 1e3 * dcpu[sel].sum() / sel.sum() if sel.any() else float("nan")
        rates.append((watched, rate, int(sel.sum()), per_step))
    cpu_ratios = []
    for (w1, r1, _, c1), (w2, r2, _, c2) in zip(rates[::2], rates[1::2]):
        on, off = (r1, r2) if w1 else (r2, r1)
        ratios.append(1 - on / off)
        con, coff = (c1, c2) if w1 else (c2, c1)
        cpu_ratios.append(con / coff - 1)
    for watched, rate, n, c in rates:
        rows.append(f"  {'watched' if watched else 'not watched':12s} {rate:8.0f} steps/s  "
                    f"{c:6.3f} ms CPU a step  ({n} steps)")
    print(f"run of {args.seconds:.0f} s, windows of {args.window:g} s, viewer refresh every "
          f"{args.every:g} s; log: {out.stat().st_size / 1e6:.1f} MB, "
          f"{gradscope.read_status(out)['rows']['steps']} steps")
    print("\n".join(rows))
    r = np.array(ratios)
    print(f"cost of watching: median {100 * np.median(r):.1f}% of steps/s over {len(r)} window "
          f"pairs (min {100 * r.min():.1f}%, max {100 * r.max():.1f}%)")
    on = np.mean([x for w, x, _, _ in rates if w])
    off = np.mean([x for w, x, _, _ in rates if not w])
    print(f"mean steps/s watched {on:.0f}, not watched {off:.0f}: {100 * (1 - on / off):.1f}%")
    c = np.array(cpu_ratios)
    print(f"training's CPU time a step, watched over not: median {100 * np.median(c):+.1f}% "
          f"(min {100 * c.min():+.1f}%, max {100 * c.max():+.1f}%)")
    watched_s = args.window * sum(w for w, *_ in rates)
    print(f"the viewer's own CPU: {viewer_cpu:.1f} s in total (with its start-up), "
          f"{100 * viewer_cpu / max(watched_s, 1e-9):.1f}% of one core over the "
          f"{watched_s:.0f} s it ran")


if __name__ == "__main__":
    main()

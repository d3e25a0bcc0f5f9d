"""What recording every step costs, measured step by step inside one run.

`bench_train.py` compares whole runs in processes of their own; this machine's speed drifts
by a third within seconds to minutes, so its ratios scatter by +-10%. Here one run of
``train()`` (the MLP of bench_train.py: 8 x 512 ReLU, batch 256, Adam, float32) records
every third step, and every step is timed from the progress callback. Its steps come in
three kinds that alternate, so the drift touches them alike:

- ``t % 3 == 1``: nothing recorded (the step of ``--log-every 1000``);
- ``t % 3 == 2``: the next step is recorded, so the optimizer's threads also take the norms
  of the updates and new parameters (the weight norms the next row reports);
- ``t % 3 == 0``: recorded (the passes measure each layer, the row is written, and the
  norms as above): a step of ``--log-every 1`` (the default);
- probe steps (``t % 99 == 0`` here) also run the probe set through the network.

Recording every step costs (recorded - plain) per step, plus the probe pass's cost for every
probe step that recording every 1000 steps would not take: in runs of 300 steps
(bench_train.py) two in 300 steps (0, 100, 200, 299 against 0, 299); in long runs nine in
1000. A probe pass's cost is what the steps from a probe step on took more than as many
steps of the same kinds half-way to the next probe step (``WINDOW`` steps each): the probe
step's own excess, and, when the pass runs on a worker thread (small nets), what it slows
the steps it overlaps (the GIL, the shared caches). The medians of the step kinds leave out
the writer's flushes, which fall on a few steps; the whole runs below count everything.

Then ``--whole`` rounds of whole runs, in turn recording every step (``--log-every 1``)
and every 1000 steps: the wall-clock and CPU time of ``train()`` (the CPU time of every
thread of the process, the probe worker's included), and their ratios within a round.

    python benchmarks/bench_recording.py [--steps 900] [--runs 3] [--whole 3]
        [--net 8x64/32 ...] [--sync-probes]

``--net DEPTHxWIDTH/BATCH`` (repeatable) measures other nets on the same data: the four of
the benchmark table of issue 13 are 8x512/256 (the default), 8x64/32, 20x32/32 and 8x128/64.
A closing table gives each net's recorded step in steps per second (``--log-every 1``,
probe passes included), to compare code versions run one after the other
(``PYTHONPATH=other/checkout python benchmarks/bench_recording.py ...``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

# isort: off
import gradscope  # noqa: F401 -- first: sets OpenBLAS's thread timeout before numpy loads it
import numpy as np
from bench_train import BATCH, DEPTH, WIDTH, make_data  # the same MLP and data
from gradscope.training.loop import TrainConfig, prepare, train
# isort: on

WARMUP = 6  # the first steps warm caches and threads: not counted
WINDOW = 30  # steps from a probe step on that its pass may slow (a multiple of 3)
CONTROL = 48  # where the window of comparison starts, after the probe step (a multiple of 3)


def step_times(prep, out: Path) -> np.ndarray:
    """Milliseconds of each step of one run (from one progress call to the next)."""
    stamps = [time.perf_counter()]
    train(prep, out, progress=lambda step, total, loss: stamps.append(time.perf_counter()))
    return np.diff(stamps) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--whole", type=int, default=3,
                    help="rounds of whole runs recording every step and every 1000 (0: none)")
    ap.add_argument("--net", action="append", default=None, metavar="DEPTHxWIDTH/BATCH")
    ap.add_argument("--sync-probes", action="store_true",
                    help="probe passes in the training thread (no worker thread)")
    args = ap.parse_args()
    if args.sync_probes:
        from gradscope.training import loop

        loop.background_probes = False
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            print(f"# {lib['internal_api']} {lib.get('version')} {lib.get('architecture')} "
                  f"threads={lib['num_threads']}")
    except ImportError:
        pass
    summary = []
    for net in args.net or [f"{DEPTH}x{WIDTH}/{BATCH}"]:
        shape, batch = net.split("/")
        depth, width = map(int, shape.split("x"))
        print(f"\n## {depth} x {width}, batch {batch}\n")
        summary.append((net, *measure(depth, width, int(batch), args.steps, args.runs),
                        whole(depth, width, int(batch), args.steps, args.whole)))
    print("\n| net | step not recorded (ms) | recording every step: cost (ms) | share | "
          "share (means) | steps/s recording every step | whole runs: wall, every step / "
          "every 1000 | CPU | steps/s, every step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for net, plain, cost, share, mshare, (wall, cpu, rate) in summary:
        print(f"| {net} | {plain:.3f} | {cost:.3f} | {share:.1%} | {mshare:.1%} "
              f"| {1e3 / (plain + cost):.0f} | {wall} | {cpu} | {rate} |")


def _config(data: Path, depth: int, width: int, batch: int, steps: int, log_every: int):
    return TrainConfig(
        dataset=str(data), depth=depth, width=width, activation="relu", init="he",
        optimizer="adam", batch_size=batch, steps=steps, val_fraction=0.0,
        log_every=log_every, seed=0)


def whole(depth: int, width: int, batch: int, steps: int, rounds: int):
    """Whole runs recording every step and every 1000, in turn: prints the table, returns
    the medians of the two ratios (wall, CPU: as text) and the steps per second of the
    runs recording every step."""
    if rounds < 1:
        return "", "", ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        preps = {k: prepare(_config(data, depth, width, batch, steps, k)) for k in (1, 1000)}
        for r in range(rounds):
            got = {}
            for k, prep in preps.items():
                w, c = time.perf_counter(), time.process_time()
                train(prep, Path(tmp) / f"whole{k}.h5")
                got[k] = (time.perf_counter() - w, time.process_time() - c)
            rows.append(got)
    print(f"\nwhole runs of {steps} steps, recording every step and every 1000 in turn:\n")
    print("| round | every step: wall s (CPU s) | every 1000: wall s (CPU s) | wall ratio "
          "| CPU ratio |")
    print("|---|---|---|---|---|")
    for r, got in enumerate(rows):
        (w1, c1), (wk, ck) = got[1], got[1000]
        print(f"| {r + 1} | {w1:.3f} ({c1:.3f}) | {wk:.3f} ({ck:.3f}) | {w1 / wk:.3f} "
              f"| {c1 / ck:.3f} |")
    wall = float(np.median([g[1][0] / g[1000][0] for g in rows]))
    cpu = float(np.median([g[1][1] / g[1000][1] for g in rows]))
    rate = steps / float(np.median([g[1][0] for g in rows]))
    print(f"\nrecording every step, medians: {wall - 1:+.1%} wall-clock, {cpu - 1:+.1%} CPU "
          f"time; {rate:.0f} steps/s")
    return f"{wall - 1:+.1%}", f"{cpu - 1:+.1%}", f"{rate:.0f}"


def measure(depth: int, width: int, batch: int, steps: int, runs: int):
    """Prints the tables of one net; returns (plain ms, cost ms of recording every step in
    long runs, its share of the recorded step)."""
    args = argparse.Namespace(steps=steps, runs=runs)
    kinds: dict[str, list[float]] = {"plain": [], "norms": [], "recorded": [], "probe": []}
    probe_costs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        prep = prepare(_config(data, depth, width, batch, args.steps, 3))
        probe_every = prep.resolved["probe_every"]
        for r in range(args.runs):
            t = step_times(prep, Path(tmp) / "run.h5")
            steps = np.arange(len(t))
            keep = (steps >= WARMUP) & (steps < len(t) - 1)  # the last step is probed too
            probe = keep & (steps % probe_every == 0)
            rest = keep & ~probe
            kinds["plain"] += t[rest & (steps % 3 == 1)].tolist()
            kinds["norms"] += t[rest & (steps % 3 == 2)].tolist()
            kinds["recorded"] += t[rest & (steps % 3 == 0)].tolist()
            kinds["probe"] += t[probe].tolist()
            for p in np.flatnonzero(probe):
                if p + CONTROL + WINDOW < min(p + probe_every, len(t) - 1):
                    probe_costs.append(float(t[p : p + WINDOW].sum()
                                             - t[p + CONTROL : p + CONTROL + WINDOW].sum()))
            print(f"run {r + 1}: median plain {np.median(t[rest & (steps % 3 == 1)]):.3f} ms, "
                  f"recorded {np.median(t[rest & (steps % 3 == 0)]):.3f} ms", flush=True)

    med = {k: float(np.median(v)) for k, v in kinds.items()}
    # means of the fastest 99%: the few flushes left out, but not the steps that append a
    # batch of rows (one recorded step in ROW_BATCH), which the medians leave out too
    trim = {k: float(np.mean(np.sort(v)[: max(1, int(0.99 * len(v)))])) for k, v in kinds.items()}
    plain, rec = med["plain"], med["recorded"]
    probe_excess = float(np.median(probe_costs)) if probe_costs else med["probe"] - rec
    print(f"\n{args.runs} runs of {args.steps} steps recording every third step; medians "
          f"over {len(kinds['plain'])} plain, {len(kinds['recorded'])} recorded and "
          f"{len(kinds['probe'])} probe steps\n")
    print("| step | ms |")
    print("|---|---|")
    print(f"| not recorded | {plain:.3f} |")
    print(f"| norms of updates and new parameters only | {med['norms']:.3f} "
          f"(+{med['norms'] - plain:.3f}) |")
    print(f"| recorded | {rec:.2f} (+{rec - plain:.2f}) |")
    print(f"| means of the fastest 99%: not recorded, recorded | {trim['plain']:.3f}, "
          f"{trim['recorded']:.3f} (+{trim['recorded'] - trim['plain']:.3f}) |")
    print(f"| recorded, with the probe pass | {med['probe']:.2f} (+{med['probe'] - rec:.2f} "
          f"over a recorded step) |")
    print(f"| the probe pass's cost: {WINDOW} steps from a probe step on, minus {WINDOW} "
          f"steps {CONTROL} later (median of {len(probe_costs)}) | {probe_excess:.2f} |")
    print("\n| recording every step, against every 1000 | cost per step (ms) | share of the "
          "recorded step |")
    print("|---|---|---|")
    for what, extra_probes in (("runs of 300 steps (bench_train.py)", 2 / 300),
                               ("long runs", 9 / 1000)):
        cost = rec - plain + extra_probes * probe_excess
        mcost = trim["recorded"] - trim["plain"] + extra_probes * probe_excess
        print(f"| {what} | {cost:.3f} | {cost / (plain + cost):.1%} |")
    print(f"| long runs, from the means above | {mcost:.3f} | "
          f"{mcost / (trim['plain'] + mcost):.1%} |")
    return plain, cost, cost / (plain + cost), mcost / (trim["plain"] + mcost)


if __name__ == "__main__":
    main()

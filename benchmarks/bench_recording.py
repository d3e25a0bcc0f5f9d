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

Recording every step costs (recorded - plain) per step, plus the probe pass's excess over a
recorded step for every probe step that recording every 1000 steps would not take: in runs
of 300 steps (bench_train.py) two in 300 steps (0, 100, 200, 299 against 0, 299); in long
runs nine in 1000.

    python benchmarks/bench_recording.py [--steps 900] [--runs 3]
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


def step_times(prep, out: Path) -> np.ndarray:
    """Milliseconds of each step of one run (from one progress call to the next)."""
    stamps = [time.perf_counter()]
    train(prep, out, progress=lambda step, total, loss: stamps.append(time.perf_counter()))
    return np.diff(stamps) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    kinds: dict[str, list[float]] = {"plain": [], "norms": [], "recorded": [], "probe": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        prep = prepare(TrainConfig(
            dataset=str(data), depth=DEPTH, width=WIDTH, activation="relu", init="he",
            optimizer="adam", batch_size=BATCH, steps=args.steps, val_fraction=0.0,
            log_every=3, seed=0))
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
            print(f"run {r + 1}: median plain {np.median(t[rest & (steps % 3 == 1)]):.2f} ms, "
                  f"recorded {np.median(t[rest & (steps % 3 == 0)]):.2f} ms", flush=True)

    med = {k: float(np.median(v)) for k, v in kinds.items()}
    plain, rec = med["plain"], med["recorded"]
    probe_excess = med["probe"] - rec
    print(f"\n{args.runs} runs of {args.steps} steps recording every third step; medians "
          f"over {len(kinds['plain'])} plain, {len(kinds['recorded'])} recorded and "
          f"{len(kinds['probe'])} probe steps\n")
    print("| step | ms |")
    print("|---|---|")
    print(f"| not recorded | {plain:.2f} |")
    print(f"| norms of updates and new parameters only | {med['norms']:.2f} "
          f"(+{med['norms'] - plain:.2f}) |")
    print(f"| recorded | {rec:.2f} (+{rec - plain:.2f}) |")
    print(f"| recorded, with the probe pass | {med['probe']:.2f} (+{probe_excess:.2f} over a "
          f"recorded step) |")
    print("\n| recording every step, against every 1000 | cost per step (ms) | share of the "
          "recorded step |")
    print("|---|---|---|")
    for what, extra_probes in (("runs of 300 steps (bench_train.py)", 2 / 300),
                               ("long runs", 9 / 1000)):
        cost = rec - plain + extra_probes * probe_excess
        print(f"| {what} | {cost:.2f} | {cost / (plain + cost):.1%} |")


if __name__ == "__main__":
    main()

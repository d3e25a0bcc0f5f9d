"""Verdict quality: the confusion of diagnose's verdicts against how the runs ended.

Trains a grid of short runs on digits (several activations, inits, optimizers, depths and
learning rates; 5 epochs each) into a folder (kept, so a second call only re-diagnoses),
diagnoses every log and prints, as Markdown:

- the confusion of verdicts (healthy, warning, not_learning, diverged, failed, no_data) against the
  outcome, the final validation accuracy in three bands (< 30%, 30-90%, >= 90%; chance 10%);
- the goals of docs/diagnosis.md: no run below 30% called healthy, at most 1 in 10 runs
  at or above 90% flagged failing, and the runs that miss them;
- how often each cause is named first for a failing run.

    nice -n 10 python benchmarks/bench_verdicts.py [--out-dir DIR] [--grid bench|issue]

``--grid issue`` is the 72-run grid of the verdict issue (depth 2,4,8,16 x sigmoid, tanh,
relu x standard, xavier, he x sgd, adam at their default learning rates).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from gradscope.analysis.runs import run_table
from gradscope.training.sweep import expand_grid, run_sweep

OUTCOMES = ("< 30%", "30-90%", ">= 90%")

#: Learning rates per optimizer: the default (None) and decades around it.
BENCH_LRS = {"sgd": [1e-3, 1e-2, 1e-1, 1.0], "momentum": [1e-2, 1e-1], "adam": [1e-4, 1e-3, 1e-2]}
BENCH = {"activation": ["sigmoid", "tanh", "relu"], "init": ["standard", "xavier", "he"],
         "depth": [2, 6, 12]}
ISSUE = {"depth": [2, 4, 8, 16], "activation": ["sigmoid", "tanh", "relu"],
         "init": ["standard", "xavier", "he"], "optimizer": ["sgd", "adam"]}


def configs(grid: str):
    if grid == "issue":
        return expand_grid({**ISSUE, "epochs": [5]})
    out = []
    for opt, lrs in BENCH_LRS.items():
        out += expand_grid({**BENCH, "optimizer": [opt], "lr": lrs, "epochs": [5]})
    return out


def outcome(acc: float) -> str:
    if not acc >= 0.3:   # NaN (diverged before an epoch ended) counts as failed
        return OUTCOMES[0]
    return OUTCOMES[1] if acc < 0.9 else OUTCOMES[2]


def report(table: pd.DataFrame) -> str:
    from gradscope.analysis.diagnose import VERDICTS

    t = table.assign(outcome=[outcome(a) for a in table["final_val_accuracy"]])
    conf = pd.crosstab(t["outcome"], t["verdict"]).reindex(index=list(OUTCOMES),
                                                            columns=list(VERDICTS), fill_value=0)
    lines = ["| final validation accuracy | runs | " + " | ".join(VERDICTS) + " |",
             "|---|---|" + "---|" * len(VERDICTS)]
    for o in OUTCOMES:
        lines.append(f"| {o} | {int(conf.loc[o].sum())} | "
                     + " | ".join(str(int(conf.loc[o, v])) for v in VERDICTS) + " |")
    low = t[t["outcome"] == OUTCOMES[0]]
    high = t[t["outcome"] == OUTCOMES[2]]
    missed = low[low["verdict"] == "healthy"]
    false = high[high["severity"] == "failing"]
    lines += ["", (f"runs: {len(t)}; below 30% called healthy: {len(missed)} of {len(low)} "
                   f"(goal 0); at or above 90% flagged failing: {len(false)} of {len(high)} "
                   f"({100 * len(false) / max(len(high), 1):.0f}%, goal <= 10%)")]
    for name, rows in (("below 30% called healthy", missed),
                       ("at or above 90% flagged failing", false)):
        for _, r in rows.iterrows():
            lines.append(f"  {name}: {Path(r['run']).stem} ({r['final_val_accuracy']:.2f}): "
                         f"{r['verdict']} {r['causes']}")
    failing = t[t["severity"] == "failing"]
    first = failing["causes"].str.split(",").str[0].replace("", "no cause found")
    lines += ["", "| first cause of a failing run | runs |", "|---|---|"]
    for name, n in first.value_counts().items():
        lines.append(f"| {name} | {n} |")
    for _, r in failing[failing["causes"] == ""].iterrows():
        lines.append(f"  no cause found: {Path(r['run']).stem} ({r['final_val_accuracy']:.2f})")
    warn = t[t["verdict"] == "warning"]["flags"].str.split(",").explode().value_counts()
    if len(warn):
        lines += ["", "warnings on runs that learn: "
                  + ", ".join(f"{k} {v}" for k, v in warn.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", help="folder for the logs (kept; default: a temporary one)")
    ap.add_argument("--grid", choices=("bench", "issue"), default="bench")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--csv", help="also write the run table here")
    args = ap.parse_args(argv)
    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name)
    else:
        out = Path(args.out_dir)
    cfgs = configs(args.grid)
    t0 = time.monotonic()
    run_sweep(cfgs, out, jobs=args.jobs)
    t1 = time.monotonic()
    table = run_table(sorted(out.glob("*.h5")))
    t2 = time.monotonic()
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(f"{args.grid} grid: {len(cfgs)} runs, trained in {t1 - t0:.0f} s, diagnosed in "
          f"{t2 - t1:.0f} s\n")
    print(report(table))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

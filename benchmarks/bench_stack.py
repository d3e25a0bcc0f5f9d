"""Many runs in one process: a stack of networks against the same runs one after another.

Trains the runs of a seeds x init-gains grid (default: 4 seeds x 8 gains of an 8 x 64 ReLU
MLP on digits, 10 epochs, Adam, recording every step: half of the sweep of
bench_sweep.py, what one of its two worker processes trains) in this process, alternately
as separate ``train()`` calls and as one ``train_stack()`` call, and reports wall-clock and
CPU time of each, and their ratio within each round. BLAS is limited to one thread, as in
a sweep's worker process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_stack.py [--rounds 3]

``--writer CHECKOUT`` measures instead what creating and closing the logs costs: 32 logs of
the grid's runs (8 x 64, 450 logged steps, 6 probe steps) with this checkout's LogWriter
and, alternately in the same process, with the writer module of CHECKOUT (its
``gradscope/record/writer.py`` loaded beside this one, on this checkout's schema and block
codec), process time per log.
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


def _writer_module(checkout: Path):
    """The LogWriter module of another checkout, on this checkout's schema and blocks."""
    import types

    src = (checkout / "gradscope" / "record" / "writer.py").read_text()
    src = (src.replace("from .._version import", "from gradscope._version import")
              .replace("from . import blocks", "from gradscope.record import blocks")
              .replace("from .schema import", "from gradscope.record.schema import"))
    mod = types.ModuleType("baseline_writer")
    exec(compile(src, str(checkout / "gradscope/record/writer.py"), "exec"), mod.__dict__)
    return mod


def writer_cost(checkout: Path, rounds: int) -> None:
    from gradscope.record import writer as ours
    from gradscope.record.probes import STEP_METRICS

    theirs = _writer_module(checkout)
    rng = np.random.default_rng(0)
    sizes = [64] * 9 + [10]
    params = []
    for a, b in zip(sizes, sizes[1:]):
        params += [rng.normal(size=(a, b)).astype(np.float32), np.zeros(b, np.float32)]
    L, steps = len(sizes) - 1, 450
    M = {c: rng.random((steps, L)) for c in STEP_METRICS}
    edges = np.linspace(0, 5, 41)

    def one(mod, folder: Path) -> dict:
        t = {}
        c = time.process_time()
        ws = [mod.LogWriter(folder / f"{i}.h5", {"dataset": "digits"}, params, edges,
                            flush_interval=8.0) for i in range(32)]
        t["create"] = time.process_time() - c
        c = time.process_time()
        for w in ws:  # the rows as a stack gives them: a batch of steps at a time
            for lo in range(0, steps, 45):
                hi = min(steps, lo + 45)
                st = np.arange(lo, hi)
                w.append("steps", hi - lo, step=st, epoch=st // 45, loss=1.0, accuracy=0.5,
                         lr=1e-3, grad_norm_total=1.0, time=0.1, clipped=0)
                w.append("layers", (hi - lo) * L, step=np.repeat(st, L),
                         layer=np.tile(np.arange(L), hi - lo),
                         **{k: v[lo:hi].ravel() for k, v in M.items()})
                for s in st[st % 100 == 0]:
                    w.append("probes", L, step=s, layer=np.arange(L), dead_frac=M["act_mean"][s],
                             probe_act_mean=M["act_mean"][s], probe_act_std=M["act_std"][s],
                             probe_saturated_frac=M["saturated_frac"][s])
                    w.append_units(s, [np.zeros(64, np.uint8)] * (L - 1),
                                   [np.ones(40, np.int64)] * (L - 1))
                w.end_step()
        t["rows"] = time.process_time() - c
        c = time.process_time()
        for w in ws:
            w.close("completed", "", params)
        t["close"] = time.process_time() - c
        return {k: v / 32 * 1e3 for k, v in t.items()}

    print(f"# 32 logs of 8 x 64 runs, {steps} logged steps; ms of process time per log\n")
    print("| round | writer | create | rows | close | create + close |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for label, mod in ((f"{checkout}", theirs), ("this checkout", ours)):
                folder = Path(tmp) / f"{r}-{label.replace('/', '_')}"
                folder.mkdir()
                t = one(mod, folder)
                print(f"| {r + 1} | {label} | {t['create']:.1f} | {t['rows']:.1f} | "
                      f"{t['close']:.1f} | {t['create'] + t['close']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writer", type=Path, default=None, metavar="CHECKOUT",
                    help="measure creating and closing logs against CHECKOUT's writer")
    args = ap.parse_args()
    threadpool_limits(1)
    if args.writer is not None:
        return writer_cost(args.writer, args.rounds)
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

"""Random overwrites of a log: does any reader return a wrong value without an error, or hang?

Each trial copies an intact log, writes ``--bytes`` random bytes at a random offset of the
copy (anywhere in the file), and calls every reader in a forked child with a time limit.
A trial's outcome is

- ``same``: every reader returned exactly what it returns on the intact log (the bytes hit
  unused space, or something no reader looks at);
- ``refused``: some reader raised LogError (one line) and every other reader returned the
  intact values;
- ``silent``: a reader returned something different without an error (a defect);
- ``crash``: a reader raised something other than LogError, or the child died (a defect);
- ``hang``: the readers did not finish within ``--timeout`` seconds (a defect).

    python benchmarks/bench_corruption.py --trials 200            # the figures in docs/reliability.md
    python benchmarks/bench_corruption.py --trials 12 --json      # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradscope  # noqa: E402
from gradscope.reading import readers  # noqa: E402
from gradscope.record.schema import LogError  # noqa: E402
from gradscope.training.loop import TrainConfig, train  # noqa: E402

READS = {
    "read_status": lambda p: readers.read_status(p),
    "read_config": lambda p: readers.read_config(p),
    "read_steps": lambda p: readers.read_steps(p),
    "read_layers": lambda p: readers.read_layers(p),
    "read_epochs": lambda p: readers.read_epochs(p),
    "read_dead_units": lambda p: readers.read_dead_units(p),
    "read_histograms": lambda p: readers.read_histograms(p),
    "read_weights_initial": lambda p: readers.read_weights(p, 0),
    "read_weights_final": lambda p: readers.read_weights(p, "final"),
    "read_weights_snapshot": lambda p: readers.read_weights(p, 40),
}


def make_base(path: Path, epochs: int = 3) -> None:
    train(TrainConfig(dataset="digits", epochs=epochs, snapshot_every=40, seed=0), path)


def _canon(x):
    """A value as bytes, so that 'identical' means bit for bit (NaN included)."""
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        return pickle.dumps([(c, str(x[c].dtype), np.ascontiguousarray(x[c].to_numpy()).tobytes()
                              if x[c].dtype != object else tuple(x[c])) for c in x.columns])
    if isinstance(x, np.ndarray):
        return pickle.dumps((x.dtype.str, x.shape, x.tobytes()))
    if isinstance(x, (list, tuple)):
        return pickle.dumps([_canon(v) for v in x])
    if isinstance(x, dict):
        return pickle.dumps(sorted((k, _canon(v)) for k, v in x.items()))
    return pickle.dumps(x)


def read_all(path) -> dict:
    out = {}
    for name, fn in READS.items():
        try:
            out[name] = ("ok", _canon(fn(path)))
        except LogError as e:
            msg = str(e)
            out[name] = ("logerror", msg if "\n" not in msg else "MULTILINE " + msg)
        except Exception as e:  # noqa: BLE001 -- what the trial is looking for
            out[name] = ("crash", f"{type(e).__name__}: {str(e)[:200]}")
    return out


def run_child(path, timeout: float):
    """read_all(path) in a forked child, or ("hang" | "died", None)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            data = pickle.dumps(read_all(path))
        except BaseException as e:  # noqa: BLE001
            data = pickle.dumps({"child": ("crash", repr(e))})
        with os.fdopen(w, "wb") as fh:
            fh.write(data)
        os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    os.set_blocking(r, False)
    while True:
        try:
            b = os.read(r, 1 << 16)
            if b:
                chunks.append(b)
                continue
            break  # end of file: the child is done
        except BlockingIOError:
            pass
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", None
        time.sleep(0.01)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not chunks or status != 0:
        return "died", None
    return "ok", pickle.loads(b"".join(chunks))


def trial(base: Path, intact: dict, seed: int, n_bytes: int, work: Path, timeout: float) -> dict:
    rng = np.random.default_rng(seed)
    p = work / f"t{seed}.h5"
    shutil.copyfile(base, p)
    size = p.stat().st_size
    off = int(rng.integers(0, max(1, size - n_bytes)))
    with open(p, "r+b") as fh:
        fh.seek(off)
        fh.write(rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    t0 = time.monotonic()
    how, got = run_child(p, timeout)
    took = time.monotonic() - t0
    p.unlink()
    res = {"seed": seed, "offset": off, "seconds": round(took, 3)}
    if how != "ok":
        return {**res, "outcome": how}
    silent = [k for k, (kind, v) in got.items() if kind == "ok" and v != intact[k][1]]
    crash = [f"{k}: {v}" for k, (kind, v) in got.items()
             if kind == "crash" or (kind == "logerror" and v.startswith("MULTILINE"))]
    refused = {k: v for k, (kind, v) in got.items() if kind == "logerror"}
    if silent:
        outcome = "silent"
    elif crash:
        outcome = "crash"
    elif refused:
        outcome = "refused"
    else:
        outcome = "same"
    return {**res, "outcome": outcome, "silent": silent, "crash": crash,
            "refused_by": sorted(refused), "message": next(iter(refused.values()), "")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--bytes", type=int, default=4096)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gradscope-corrupt-") as d:
        work = Path(d)
        base = work / "base.h5"
        make_base(base, args.epochs)
        intact = read_all(base)
        bad = [k for k, (kind, _) in intact.items() if kind != "ok"]
        if bad:
            raise SystemExit(f"the intact log is not readable by {bad}")
        t0 = time.monotonic()
        results = [trial(base, intact, s, args.bytes, work, args.timeout)
                   for s in range(args.trials)]
        wall = time.monotonic() - t0
        size = base.stat().st_size
    counts = {k: sum(r["outcome"] == k for r in results)
              for k in ("same", "refused", "silent", "crash", "hang", "died")}
    summary = {"trials": args.trials, "bytes": args.bytes, "log_bytes": size,
               "counts": counts, "max_seconds": max(r["seconds"] for r in results),
               "wall_seconds": round(wall, 1), "gradscope": gradscope.__version__}
    if args.json:
        print(json.dumps({"summary": summary, "results": results}))
    else:
        print(json.dumps(summary, indent=1))
        for r in results:
            if r["outcome"] not in ("same", "refused"):
                print(r)
        msgs = {}
        for r in results:
            if r["outcome"] == "refused":
                key = r["message"].split(": ", 1)[-1][:70]
                msgs[key] = msgs.get(key, 0) + 1
        print("most common refusals:")
        for m, c in sorted(msgs.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {c:4d}  {m}")
    return 0 if counts["silent"] + counts["crash"] + counts["hang"] + counts["died"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

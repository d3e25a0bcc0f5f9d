"""Random overwrites of a log: does any reader return a wrong value without an error, or hang?

Each trial copies an intact log, writes ``--bytes`` random bytes at a random offset of the
copy (anywhere in the file), and calls every reader in a forked child with a time limit:
the whole-table readers, the selections of ``read_layers`` (columns, a step range, a step
list, ``every``), the binned windows (``read_layers_binned`` with ``max_steps=10``: the log
is binned), ``read_run`` (with and without figures), ``gradscope.diagnose``, and the
commands ``gradscope report`` and ``gradscope watch --once`` (run as the console script
runs them; their output and the report's PDF compared byte for byte). A trial's outcome is

- ``same``: every reader returned exactly what it returns on the intact log (the bytes hit
  unused space, or something no reader looks at);
- ``refused``: some reader raised LogError (one line; a command: exit non-zero with one
  line ``gradscope: error: ...`` and no file written; ``watch`` shows the log
  ``unreadable`` with its one-line reason) and every other reader returned the intact values;
- ``silent``: a reader returned something different without an error (a defect);
- ``crash``: a reader raised something other than LogError, a command printed a traceback
  or more than one line, or the log's bytes changed while it was read (a defect);
- ``hang``: the readers did not finish within ``--timeout`` seconds (a defect).

    python benchmarks/bench_corruption.py --trials 200            # the figures in docs/reliability.md
    python benchmarks/bench_corruption.py --trials 16 --no-commands --json   # what the test suite runs
"""

from __future__ import annotations

import argparse
import importlib
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
from gradscope.reading import binned, readers, run  # noqa: E402
from gradscope.record.schema import LogError  # noqa: E402
from gradscope.training.loop import TrainConfig, train  # noqa: E402

def _run_fields(r) -> dict:
    """A Run's fields (its path left out: trials read a copy at another path)."""
    from dataclasses import fields

    return {f.name: getattr(r, f.name) for f in fields(r) if f.name != "path"}


def _diagnosis(p):
    d = gradscope.diagnose(p).to_dict()
    d.pop("run", None)
    return d


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
    # the selections, the binned windows and the one-open run (only the blocks they need)
    "read_layers_columns": lambda p: readers.read_layers(p, columns=["grad_norm", "dead_frac"]),
    "read_layers_range": lambda p: readers.read_layers(p, steps=(20, 90)),
    "read_layers_list": lambda p: readers.read_layers(p, steps=[0, 40, 41, 134, 10_000]),
    "read_layers_every": lambda p: readers.read_layers(p, every=7),
    "read_layers_range_every": lambda p: readers.read_layers(
        p, columns=["update_ratio", "epoch"], steps=(10, 120), every=3),
    "read_layers_binned": lambda p: binned.read_layers_binned(p, max_steps=10, per_bin=2),
    "read_run": lambda p: _run_fields(run.read_run(p, max_steps=10, per_bin=2)),
    "read_run_no_figures": lambda p: _run_fields(run.read_run(p, figures=False)),
    "diagnose": _diagnosis,
}

#: the commands, run in the child as the console script runs them (exit code, stdout, stderr)
COMMANDS = {
    "cli_report": lambda p, out: ["report", str(p), "--out", str(out / "r.pdf"),
                                  "--max-steps", "10"],
    "cli_watch_once": lambda p, out: ["watch", "--once", str(p)],
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


def read_all(path, commands: bool = True) -> dict:
    out = {}
    for name, fn in READS.items():
        try:
            out[name] = ("ok", _canon(fn(path)))
        except LogError as e:
            msg = str(e)
            out[name] = ("logerror", msg if "\n" not in msg else "MULTILINE " + msg)
        except Exception as e:  # noqa: BLE001 -- what the trial is looking for
            out[name] = ("crash", f"{type(e).__name__}: {str(e)[:200]}")
    for name, argv in COMMANDS.items() if commands else ():
        out[name] = run_command(name, argv, Path(path))
    return out


def _fixed_clock() -> None:
    """The report prints the time it was made on a page: a fixed one here, so that the
    same figures are the same PDF bytes."""
    import datetime
    import types

    from gradscope.views import report

    class Fixed(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 0, 0, tzinfo=tz)

    report._dt = types.SimpleNamespace(datetime=Fixed)


def run_command(name: str, argv, path: Path):
    """A command as the console script runs it, here (already imported; the child is
    forked): ("ok", what it printed and wrote) for exit 0, ("logerror", line) for a
    non-zero exit with one line on stderr, ("crash", ...) for a traceback or more lines.
    ``gradscope watch`` shows a log it cannot read as ``unreadable`` with the error's line
    (exit 0): that is its refusal."""
    import io
    import traceback

    from gradscope.cli import main as cli_main

    _fixed_clock()

    out_dir = path.parent.parent / "out"
    out_dir.mkdir(exist_ok=True)
    pdf = out_dir / "r.pdf"
    pdf.unlink(missing_ok=True)
    files = [io.open(out_dir / f"fd{i}", "w+b") for i in (1, 2)]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(files[0].fileno(), 1)
    os.dup2(files[1].fileno(), 2)
    try:
        try:
            cli_main.main(argv(path, out_dir), prog_name="gradscope")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 -- the console script would print this traceback
            traceback.print_exc()
            code = "traceback"
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    text = []
    for fh in files:
        fh.seek(0)
        text.append(fh.read().decode("utf-8", "replace").replace(str(path.parent), "<dir>"))
        fh.close()
    stdout, stderr = text
    lines = stderr.strip().splitlines()
    if code == 0:
        if lines:
            return ("crash", f"exit 0 with stderr: {stderr[:300]}")
        if name == "cli_watch_once" and "unreadable" in stdout:
            return ("logerror", " ".join(stdout.split())[:300])
        written = pdf.read_bytes() if pdf.exists() else b""
        return ("ok", _canon((stdout, written)))
    if code != "traceback" and len(lines) == 1 and lines[0].startswith("gradscope: error: "):
        if pdf.exists():
            return ("crash", f"refused but wrote {pdf.name}: {lines[0]}")
        return ("logerror", lines[0])
    return ("crash", f"exit {code}: {stderr[-300:]}")


def run_child(path, timeout: float, commands: bool = True):
    """read_all(path) in a forked child, or ("hang" | "died", None)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            data = pickle.dumps(read_all(path, commands))
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


def trial(base: Path, intact: dict, seed: int, n_bytes: int, work: Path, timeout: float,
          commands: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    p = work / "trial" / base.name  # the same name as the intact log: the same labels
    p.parent.mkdir(exist_ok=True)
    shutil.copyfile(base, p)
    size = p.stat().st_size
    off = int(rng.integers(0, max(1, size - n_bytes)))
    with open(p, "r+b") as fh:
        fh.seek(off)
        fh.write(rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    damaged = p.read_bytes()
    t0 = time.monotonic()
    how, got = run_child(p, timeout, commands)
    took = time.monotonic() - t0
    changed = p.read_bytes() != damaged  # a reader must never write the log
    p.unlink()
    res = {"seed": seed, "offset": off, "seconds": round(took, 3)}
    if how != "ok":
        return {**res, "outcome": how}
    silent = [k for k, (kind, v) in got.items() if kind == "ok" and v != intact[k][1]]
    crash = [f"{k}: {v}" for k, (kind, v) in got.items()
             if kind == "crash" or (kind == "logerror" and v.startswith("MULTILINE"))]
    if changed:
        crash.append("the log's bytes changed while it was read")
    refused = {k: v for k, (kind, v) in got.items() if kind == "logerror"}
    if silent:
        outcome = "silent"
    elif crash:
        outcome = "crash"
    elif refused:
        outcome = "refused"
    else:
        outcome = "same"
    per_path = {k: ("silent" if k in silent else "same" if kind == "ok" else
                    "refused" if kind == "logerror" and not v.startswith("MULTILINE")
                    else "crash") for k, (kind, v) in got.items()}
    return {**res, "outcome": outcome, "silent": silent, "crash": crash,
            "refused_by": sorted(refused), "message": next(iter(refused.values()), ""),
            "per_path": per_path}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--bytes", type=int, default=4096)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-commands", action="store_true",
                    help="leave out gradscope report and watch --once (the readers only)")
    args = ap.parse_args(argv)
    commands = not args.no_commands
    # a report's PDF is the same bytes for the same figures (no creation date); a fixed
    # terminal width for the watch view
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    os.environ["COLUMNS"] = "100"
    if commands:  # imported once here, not in every forked child
        for mod in ("gradscope.cli.main", "gradscope.cli.watch", "gradscope.views.report",
                    "gradscope.views.watch"):
            importlib.import_module(mod)
    with tempfile.TemporaryDirectory(prefix="gradscope-corrupt-") as d:
        work = Path(d)
        base = work / "base" / "run.h5"
        base.parent.mkdir()
        make_base(base, args.epochs)
        how, intact = run_child(base, args.timeout, commands)
        again = run_child(base, args.timeout, commands)[1]
        if how != "ok":
            raise SystemExit(f"reading the intact log: {how}")
        bad = [k for k, (kind, _) in intact.items() if kind != "ok"]
        if bad:
            raise SystemExit(f"the intact log is not readable by {bad}: "
                             f"{[intact[k][1] for k in bad]}")
        unstable = [k for k in intact if again[k] != intact[k]]
        if unstable:
            for k in unstable:
                a, b = (pickle.loads(x[k][1]) for x in (intact, again))
                print(k, [i for i, (u, v) in enumerate(zip(a, b)) if u != v],
                      [pickle.loads(u)[:2000] if i == 0 else len(u) for i, (u, v)
                       in enumerate(zip(a, b)) if u != v], file=sys.stderr)
            raise SystemExit(f"two reads of the intact log differ: {unstable}")
        t0 = time.monotonic()
        results = [trial(base, intact, s, args.bytes, work, args.timeout, commands)
                   for s in range(args.trials)]
        wall = time.monotonic() - t0
        size = base.stat().st_size
    counts = {k: sum(r["outcome"] == k for r in results)
              for k in ("same", "refused", "silent", "crash", "hang", "died")}
    summary = {"trials": args.trials, "bytes": args.bytes, "log_bytes": size,
               "counts": counts, "max_seconds": max(r["seconds"] for r in results),
               "wall_seconds": round(wall, 1), "gradscope": gradscope.__version__,
               "per_path": {k: {o: sum(r.get("per_path", {}).get(k) == o for r in results)
                                for o in ("same", "refused", "silent", "crash")}
                            for k in intact}}
    if args.json:
        print(json.dumps({"summary": summary, "results": results}))
    else:
        per_path = summary.pop("per_path")
        print(json.dumps(summary, indent=1))
        print("per path (same / refused / silent / crash):")
        for k, c in per_path.items():
            print(f"  {k:24s} {c['same']:4d} {c['refused']:4d} {c['silent']:4d} {c['crash']:4d}")
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

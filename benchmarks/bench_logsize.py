"""Log size and write cost: format version 2 (compressed, checksummed blocks) against
version 1 (plain float64 columns, written by gradscope at commit b4b4348).

For each net of the recording table (issue 13: 8 x 512 batch 256, 8 x 64 batch 32,
20 x 32 batch 32, 8 x 128 batch 64; ReLU, Adam, float32, digits), one run of ``--steps``
steps recording every step is trained by each version in a process of its own; reported:

- bytes a (step, layer) row of the layer table: "sealed", what each further row costs in a
  long run (v2: the sealed blocks and their index over the sealed rows; v1: its datasets);
  "layers", everything the table stores (v2 adds the two plain tail slots, a fixed cost a
  short run pays in full) over the committed rows; "file", the whole file over the layer
  rows;
- steps/s of the run (recording every step; other work on the machine moves this figure,
  compare the two versions within one row);
- the writer alone: seconds to append and flush ``--rows`` synthetic layer rows of a
  9-layer net (values from a real run, repeated), rows/s for each version.

Every value is checked to read back identical (v2) before the figures are printed.

    python benchmarks/bench_logsize.py [--steps 6000] [--rows 200000]   (8x512: 8% of the steps)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
V1_COMMIT = "b4b4348"
NETS = [("8x512 b256", 8, 512, 256), ("8x64 b32", 8, 64, 32), ("20x32 b32", 20, 32, 32),
        ("8x128 b64", 8, 128, 64)]
#: steps of each net's run (the big net is slow; its rows are as many per step)
STEPS = {"8x512 b256": 0.08}

CHILD = r'''
import json, sys, time, os
import numpy as np
import h5py
import gradscope
from gradscope.training.loop import TrainConfig, train
depth, width, bs, steps, out, rows = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                      int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
t0 = time.perf_counter()
train(TrainConfig(dataset="digits", depth=depth, width=width, batch_size=bs, steps=steps,
                  dtype="float32"), out)
wall = time.perf_counter() - t0
with h5py.File(out, "r") as f:
    version = int(f.attrs["format_version"])
    names = json.loads(f["committed"].attrs["names"])
    c = f["committed"][()]
    n = int(c[names.index("layers")] if version == 1 else c[6 * names.index("layers")])
    stored = 0
    def visit(name, obj):
        global stored
        if isinstance(obj, h5py.Dataset):
            stored += obj.id.get_storage_size()
    f["layers"].visititems(visit)
size = os.path.getsize(out)
res = {"version": version, "layer_rows": n, "layer_bytes": stored, "file_bytes": size,
       "steps_per_s": steps / wall}
with h5py.File(out, "r") as f:  # steady state: what each further row costs
    if version == 2:
        i = 6 * names.index("layers")
        sealed, data_bytes = int(c[i + 1]), int(c[i + 3])
        res["sealed_bytes_per_row"] = (data_bytes + 8 * f["layers/index"].shape[1]
                                       * int(c[i + 2])) / max(1, sealed)
    else:
        res["sealed_bytes_per_row"] = stored / n
if version == 2:  # every value back bit for bit: the layer table against the run's own
    from gradscope.reading.readers import read_layers
    df = read_layers(out)
    res["read_back_rows"] = len(df)
# the writer alone: rows of a 9-layer net, appended 9 a step
from gradscope.record.writer import LogWriter
src = gradscope.read_layers(out)
cols = [c for c in ("grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
                    "update_ratio", "act_mean", "act_std", "saturated_frac")]
vals = {k: src[k].to_numpy() for k in cols}
L = 9
params = [np.ones((4, 4))] * (2 * L)
params = [np.ones((4, 4)) if i % 2 == 0 else np.ones(4) for i in range(2 * L)]
w = LogWriter(out + ".w.h5", {}, params, np.linspace(0, 1, 5))
m = len(vals["grad_norm"]) // L * L
t0 = time.perf_counter()
layer = np.arange(L)
for s in range(rows // L):
    i = (s * L) % m
    w.append("layers", L, step=s, layer=layer, **{k: v[i:i + L] for k, v in vals.items()})
    w.end_step()
w.close("completed")
res["writer_rows_per_s"] = (rows // L * L) / (time.perf_counter() - t0)
res["writer_file_bytes_per_row"] = os.path.getsize(out + ".w.h5") / (rows // L * L)
print(json.dumps(res))
'''


def v1_source(dest: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", V1_COMMIT, "gradscope", "data"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as t:
        t.extractall(dest, filter="data")
    return dest


def run(src: Path, net, steps, rows, out: Path) -> dict:
    name, depth, width, bs = net
    steps = max(1, int(steps * STEPS.get(name, 1.0)))
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(depth), str(width), str(bs),
                        str(steps), str(out), str(rows)], capture_output=True, text=True,
                       env=env, cwd=str(out.parent))
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--nets", default=",".join(n for n, *_ in NETS),
                    help="comma-separated names of the nets to run")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gradscope-logsize-") as d:
        d = Path(d)
        old = v1_source(d / "v1")
        print(f"{'net':12s} {'ver':>3s} {'rows':>7s} {'B/row sealed':>12s} {'B/row layers':>12s} "
              f"{'B/row file':>10s} {'steps/s':>8s} {'writer rows/s':>13s}")
        for net in [n for n in NETS if n[0] in args.nets.split(",")]:
            for label, src in (("1", old), ("2", ROOT)):
                res = run(src, net, args.steps, args.rows, d / f"{net[1]}-{net[2]}-{label}.h5")
                assert res["version"] == int(label)
                print(f"{net[0]:12s} {label:>3s} {res['layer_rows']:7d} "
                      f"{res['sealed_bytes_per_row']:12.1f} "
                      f"{res['layer_bytes'] / res['layer_rows']:12.1f} "
                      f"{res['file_bytes'] / res['layer_rows']:10.1f} "
                      f"{res['steps_per_s']:8.0f} {res['writer_rows_per_s']:13.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Schoenholz, Gilmer, Ganguli & Sohl-Dickstein (2017), "Deep information propagation",
reproduced on the digits data.

Claim (their Figs. 5-6): for tanh nets with weights N(0, s_w^2/n) and biases N(0, s_b^2),
s_b^2 = 0.05, the correlation depth scale xi_c diverges at the critical s_w^2 (1.76) and
nets train only to depths of about 6 xi_c. A grid over s_w^2 and depth, each net trained
for a fixed number of steps; the trainable region against 6 xi_c
(:func:`gradscope.mean_field`'s ``xi_c``) on the same axes.

Smaller than the paper: width 64 (they used 300), depths 10 to 240 (they went to 300),
digits instead of MNIST/CIFAR-10, 300 steps of Adam (lr 1e-3, batch 32; they trained
longer with SGD and RMSProp), one seed per grid point. gradscope's runs start biases at 0,
so this script builds the nets with the engine (init_params, forward, backward, the Adam
update rule) and draws the biases itself. "Trains" means training accuracy of at least
50% after the 300 steps (chance is 10%), fixed before the runs. Three depth-40 nets are
then trained 10 times longer (3000 steps) to see whether the depth limit moves. Run:
    nice -n 10 python benchmarks/replicate/schoenholz.py
"""

from __future__ import annotations

import os

# one BLAS thread: these nets are small, and on a shared machine idle BLAS threads
# spinning for work cost far more CPU than they save (50x on a loaded 2-core machine)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradscope
from gradscope.analysis.theory import critical_weight_var
from gradscope.engine.activations import get_activation
from gradscope.engine.data import epoch_batches, split
from gradscope.engine.losses import accuracy, softmax_cross_entropy
from gradscope.engine.mlp import backward, forward, init_params, layer_sizes, predict
from gradscope.engine.optimizers import apply_updates, make_optimizer

BIAS_VAR = 0.05
THRESHOLD = 0.5


def train_one(weight_var: float, depth: int, width: int, steps: int, seed: int = 0) -> dict:
    """Train a tanh MLP with N(0, s_w^2/fan_in) weights and N(0, s_b^2) biases."""
    X, y = gradscope.load_dataset("digits")
    X, y, X_val, y_val = split(X, y, 0.2, np.random.default_rng([seed, 1]))
    X, X_val = X.astype(np.float32), X_val.astype(np.float32)
    rng = np.random.default_rng([seed, 0])
    # lecun is N(0, gain^2 / fan_in): gain = s_w
    params = init_params(layer_sizes(64, [width] * depth, 10), "lecun", rng,
                         math.sqrt(weight_var))
    for i in range(1, len(params), 2):
        params[i] = rng.normal(0.0, math.sqrt(BIAS_VAR), params[i].shape).astype(np.float32)
    act = get_activation("tanh")
    opt = make_optimizer("adam", lr=1e-3)
    state = opt.init(params)
    batch_rng = np.random.default_rng([seed, 2])
    step, losses = 0, []
    with np.errstate(over="ignore", invalid="ignore"):
        while step < steps:
            for idx in epoch_batches(X.shape[0], 32, batch_rng):
                if step >= steps:
                    break
                out, cache = forward(params, X[idx], act)
                loss, dout = softmax_cross_entropy(out, y[idx])
                grads = backward(params, cache, dout, act).grads
                updates, state = opt.update(grads, state, params)
                params = apply_updates(params, updates)
                losses.append(loss)
                step += 1
        train_acc = accuracy(predict(params, X, act), y)
        val_acc = accuracy(predict(params, X_val, act), y_val)
    return {"train_accuracy": float(train_acc), "val_accuracy": float(val_acc),
            "final_loss": float(np.mean(losses[-20:]))}


def theory_curve(lo: float, hi: float, n: int = 150) -> dict:
    sw2 = np.linspace(lo, hi, n)
    xi_c = [gradscope.mean_field("tanh", s, BIAS_VAR)["xi_c"] for s in sw2]
    return {"weight_var": sw2.tolist(), "xi_c": xi_c}


def measure(quick: bool = False) -> dict:
    crit = critical_weight_var("tanh", BIAS_VAR)
    if quick:
        grid, depths, width, steps = [1.0, crit], [48], 32, 150
    else:
        grid = sorted([1.0, 1.3, 1.6, crit, 2.0, 2.5, 3.0, 4.0])
        depths, width, steps = [10, 20, 40, 80, 160, 240], 64, 300
    runs = []
    for sw2 in grid:
        for depth in depths:
            r = train_one(sw2, depth, width, steps)
            r.update(weight_var=sw2, depth=depth,
                     xi_c=gradscope.mean_field("tanh", sw2, BIAS_VAR)["xi_c"])
            runs.append(r)
            print(f"s_w^2 {sw2:.3f} depth {depth:4d}: train acc {r['train_accuracy']:.3f} "
                  f"(6 xi_c = {6 * r['xi_c']:.0f})", flush=True)
    return {"bias_var": BIAS_VAR, "critical_weight_var": crit, "width": width,
            "steps": steps, "depths": depths, "grid": grid, "threshold": THRESHOLD,
            "runs": runs}


def longer_training(quick: bool = False) -> dict:
    """Depth 40 at three s_w^2 with 10x the steps: beyond 6 xi_c at s_w^2 = 1 (22 layers),
    inside it at criticality and at s_w^2 = 3 (54 layers). Tests whether the grid's depth
    limit is the paper's boundary or the short training."""
    crit = critical_weight_var("tanh", BIAS_VAR)
    depth, width, steps = (40, 32, 600) if quick else (40, 64, 3000)
    out = {"depth": depth, "width": width, "steps": steps, "runs": []}
    for sw2 in (1.0, crit, 3.0):
        r = train_one(sw2, depth, width, steps)
        r.update(weight_var=sw2, xi_c=gradscope.mean_field("tanh", sw2, BIAS_VAR)["xi_c"])
        out["runs"].append(r)
        print(f"longer: s_w^2 {sw2:.3f} depth {depth} steps {steps}: train acc "
              f"{r['train_accuracy']:.3f} (6 xi_c = {6 * r['xi_c']:.0f})", flush=True)
    return out


def agreement(res: dict) -> dict:
    """How many grid points the 6 xi_c line classifies as the training did."""
    agree = [(r["depth"] <= 6 * r["xi_c"]) == (r["train_accuracy"] >= THRESHOLD)
             for r in res["runs"]]
    return {"agree": int(sum(agree)), "total": len(agree)}


def figure(res: dict, path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.6))
    grid, depths = res["grid"], res["depths"]
    acc = np.array([[next(r["train_accuracy"] for r in res["runs"]
                          if r["weight_var"] == s and r["depth"] == d) for s in grid]
                    for d in depths])
    # cells centred on the grid points (edges half-way between, geometric for depth)
    gx = np.array(grid)
    xe = np.concatenate([[gx[0] - (gx[1] - gx[0]) / 2], (gx[1:] + gx[:-1]) / 2,
                         [gx[-1] + (gx[-1] - gx[-2]) / 2]])
    gd = np.log(depths)
    ye = np.exp(np.concatenate([[gd[0] - (gd[1] - gd[0]) / 2], (gd[1:] + gd[:-1]) / 2,
                                [gd[-1] + (gd[-1] - gd[-2]) / 2]]))
    mesh = ax.pcolormesh(xe, ye, acc, cmap="viridis", vmin=0, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label=f"training accuracy after {res['steps']} steps")
    for i, d in enumerate(depths):
        for j, s in enumerate(grid):
            ax.text(s, d, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7.5,
                    rotation=90, color="w" if acc[i, j] < 0.6 else "k")
    th = theory_curve(xe[0], xe[-1])
    ax.plot(th["weight_var"], 6 * np.array(th["xi_c"]), "w-", lw=2.5)
    ax.plot(th["weight_var"], 6 * np.array(th["xi_c"]), "r-", lw=1.5, label="6 xi_c (theory)")
    ax.axvline(res["critical_weight_var"], color="r", ls=":", lw=1,
               label=f"critical s_w^2 = {res['critical_weight_var']:.3f}")
    ax.set_yscale("log")
    ax.set_ylim(ye[0], ye[-1])
    ax.set_xlim(xe[0], xe[-1])
    ax.set_yticks(depths, [str(d) for d in depths])
    ax.set(xlabel="s_w^2 (weight variance x fan_in)", ylabel="depth (hidden layers)",
           title=f"tanh, s_b^2 = {res['bias_var']}, width {res['width']}, digits")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.07), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    args = common.parse_args(__doc__)
    if args.replot:
        res = common.load_results("schoenholz")
    else:
        res = measure(quick=args.quick)
        res["agreement"] = agreement(res)
        res["longer"] = longer_training(quick=args.quick)
        if not args.quick:
            common.save_results("schoenholz", res)
    a = res["agreement"]
    print(f"6 xi_c classifies {a['agree']} of {a['total']} grid points as the training did "
          f"(trains: training accuracy >= {THRESHOLD})")
    if not args.quick:
        path = args.figure or common.DOCS / "replicate-schoenholz.png"
        figure(res, path)
        print(f"figure: {path}")


if __name__ == "__main__":
    main()

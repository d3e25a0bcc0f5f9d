"""He, Zhang, Ren & Sun (2015), "Delving deep into rectifiers", reproduced on the digits data.

Claim (their Sec. 2.2 and Figs. 2-3): with ReLU, Xavier's init (Var[W] = 1/n) halves the
signal's variance at every layer, so a 30-layer net stalls, while He init (2/n) keeps it
constant and trains; at 22 layers both train (Xavier more slowly).

Smaller than the paper: plain MLPs of width 64 (they used conv nets of 22 and 30 layers on
ImageNet), digits, SGD with momentum 0.9 as they used, lr 0.01 and batch 32, 40 epochs,
3 seeds. The forward signal is also checked against theory: Var[z] per layer at init falls
by 1/2 a layer under Xavier (s_w^2 = 1) and stays level under He (s_w^2 = 2). Run:
    nice -n 10 python benchmarks/replicate/he.py
"""

from __future__ import annotations

import os

# one BLAS thread: these nets are small, and on a shared machine idle BLAS threads
# spinning for work cost far more CPU than they save (50x on a loaded 2-core machine)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradscope
from gradscope.engine.activations import get_activation
from gradscope.engine.mlp import forward, init_params, layer_sizes

INITS = ("xavier", "he")


def signal_at_init(depth: int, width: int, seeds: int) -> dict:
    """Mean square of each layer's pre-activations z_l over the data, at initialisation,
    relative to the first layer's (the engine's forward pass on all of digits)."""
    X, _ = gradscope.load_dataset("digits")
    relu = get_activation("relu")
    out = {}
    for init in INITS:
        rows = []
        for s in range(seeds):
            params = init_params(layer_sizes(64, [width] * depth, 10), init,
                                 np.random.default_rng([s, 0]), dtype=np.float64)
            _, cache = forward(params, X, relu)
            q = np.array([float(np.mean(z**2)) for z in cache.pre[:depth]])
            rows.append(q / q[0])
        # the arithmetic mean over seeds: theory predicts E[z^2] (in a narrow net the
        # typical, log-averaged, signal falls below it: log q performs a random walk)
        out[init] = np.mean(rows, axis=0).tolist()
    return out


def measure(quick: bool = False) -> dict:
    depths = (22, 30)
    width = 32 if quick else 64
    epochs = 4 if quick else 40
    seeds = 1 if quick else 3
    res = {"depths": depths, "width": width, "epochs": epochs, "seeds": seeds,
           "runs": {}, "signal": signal_at_init(30, width, 3 if quick else 20)}
    with common.scratch() as d:
        for depth in depths:
            for init in INITS:
                curves = []
                for s in range(seeds):
                    cfg = gradscope.TrainConfig(
                        dataset="digits", depth=depth, width=width, activation="relu",
                        init=init, optimizer="momentum", lr=0.01, batch_size=32,
                        epochs=epochs, log_every=100, seed=s)
                    run = gradscope.train(cfg, Path(d) / f"{depth}-{init}-{s}.h5")
                    ep = gradscope.read_epochs(run.path)
                    err = (1 - ep["val_accuracy"]).tolist()
                    curves.append(err + [float("nan")] * (epochs - len(err)))
                c = np.array(curves)
                res["runs"][f"{depth}-{init}"] = {
                    "val_error": c.tolist(), "final": c[:, -1].tolist(),
                    "best": np.nanmin(c, axis=1).tolist()}
    return res


def figure(res: dict, path: Path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    epochs = np.arange(1, res["epochs"] + 1)
    colors = {"xavier": "C3", "he": "C0"}
    for depth, ls in zip(res["depths"], ("--", "-"), strict=True):
        for init in INITS:
            r = res["runs"][f"{depth}-{init}"]
            c = np.array(r["val_error"], dtype=float)
            ax.plot(epochs, np.nanmean(c, axis=0), ls, color=colors[init], lw=2,
                    label=f"{depth} layers, {init}")
    ax.axhline(0.9, color="k", lw=0.8, ls=":")
    ax.text(epochs[-1], 0.9, "chance ", ha="right", va="bottom", fontsize=9)
    ax.set_ylim(0, 1)
    ax.set(xlabel="epoch", ylabel=f"validation error (mean of {res['seeds']} seeds)",
           title=f"ReLU MLP, width {res['width']}, SGD momentum 0.9, lr 0.01")
    ax.legend()
    ax = axes[1]
    for init in INITS:
        q = np.array(res["signal"][init])
        layers = np.arange(len(q))
        ax.plot(layers, q, "o", color=colors[init], ms=4, label=f"{init} (measured)")
        factor = 0.5 if init == "xavier" else 1.0
        ax.plot(layers, factor**layers, "-", color=colors[init], lw=1,
                label=f"{init}: theory, x{factor:g} a layer")
    ax.set_yscale("log")
    ax.set(xlabel="hidden layer l", ylabel="mean square of z_l / that of z_0 (at init, 20 seeds)",
           title="forward signal at initialisation, 30 layers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    args = common.parse_args(__doc__)
    if args.replot:
        res = common.load_results("he")
    else:
        res = measure(quick=args.quick)
        if not args.quick:
            common.save_results("he", res)
    for k, r in res["runs"].items():
        print(f"{k}: final val error {np.round(r['final'], 3).tolist()}, "
              f"best {np.round(r['best'], 3).tolist()}")
    for init in INITS:
        q = res["signal"][init]
        print(f"signal {init}: layer 29 / layer 0 = {q[-1]:.3g} "
              f"(per layer {q[-1] ** (1 / (len(q) - 1)):.3f})")
    if not args.quick:
        path = args.figure or common.DOCS / "replicate-he.png"
        figure(res, path)
        print(f"figure: {path}")


if __name__ == "__main__":
    main()

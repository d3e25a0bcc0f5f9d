"""Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward neural
networks", reproduced on the digits data.

(a) sigmoid, standard init: the top hidden layer's mean activation falls towards 0 early in
    training while the lower layers stay near 0.5 (their Fig. 2);
(b) tanh at initialisation: standard init's back-propagated gradients (delta = dL/dz) shrink
    going down the layers, by about n Var[W] = 1/3 in variance per layer (their Eq. 14),
    while normalised (xavier) init keeps them of similar size (their Fig. 7);
(c) tanh: normalised init trains faster than standard init (their Table 1 ordering).

Smaller than the paper: 4-5 hidden layers of 256 units (they used 1000), digits (1437
training images of 8x8) instead of Shapeset/MNIST, and 10 epochs. Run:
    nice -n 10 python benchmarks/replicate/glorot.py
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
from gradscope.analysis.theory import predicted_delta_profile
from gradscope.engine.initializers import weight_variance


def saturation(tmp: Path, quick: bool) -> dict:
    """(a): the probe set's mean activation per hidden layer through training."""
    cfg = gradscope.TrainConfig(
        dataset="digits", depth=4, width=64 if quick else 256, activation="sigmoid",
        init="standard", optimizer="sgd", lr=0.1, batch_size=10,
        **({"steps": 300} if quick else {"epochs": 10}),
        log_every=10, probe_every=10, seed=0)
    run = gradscope.train(cfg, tmp / "sigmoid.h5")
    lay = gradscope.read_layers(run.path)
    lay = lay[lay["layer"] < cfg.depth]  # hidden layers only (the output layer is linear)
    table = lay.pivot(index="step", columns="layer", values="probe_act_mean").dropna()
    spread = lay.pivot(index="step", columns="layer", values="probe_act_std").dropna()
    ep = gradscope.read_epochs(run.path)
    top = table[cfg.depth - 1]
    below = top[top < 0.1]
    return {
        "config": {"depth": cfg.depth, "width": cfg.width, "lr": cfg.lr, "batch": 10},
        "steps": table.index.tolist(),
        "mean": {int(l): table[l].tolist() for l in table.columns},
        "std": {int(l): spread[l].tolist() for l in spread.columns},
        "top_min": float(top.min()),
        "top_first_below_0.1": int(below.index[0]) if len(below) else None,
        "top_final": float(top.iloc[-1]),
        "lower_range": [float(table[list(table.columns[:-1])].values.min()),
                        float(table[list(table.columns[:-1])].values.max())],
        "steps_per_epoch": math.ceil(1437 / 10),
        "final_val_accuracy": float(ep["val_accuracy"].iloc[-1]),
    }


def gradients_at_init(tmp: Path, quick: bool) -> dict:
    """(b): ||delta_l|| / ||delta_output|| at step 0, standard against xavier, with theory."""
    depth, width = 5, 64 if quick else 256
    seeds = range(2 if quick else 5)
    X, _ = gradscope.load_dataset("digits")
    q0 = float(np.mean(X**2))  # the input's mean square per component
    out = {"depth": depth, "width": width, "q0": q0}
    for init in ("standard", "xavier"):
        ratios = []
        for s in seeds:
            cfg = gradscope.TrainConfig(dataset="digits", depth=depth, width=width,
                                        activation="tanh", init=init, optimizer="sgd",
                                        lr=0.01, batch_size=256, steps=1, seed=s)
            run = gradscope.train(cfg, tmp / f"grad-{init}-{s}.h5")
            lay = gradscope.read_layers(run.path)
            d = lay[lay["step"] == 0].sort_values("layer")["delta_norm"].to_numpy()
            ratios.append(d / d[-1])
        ratios = np.array(ratios)
        # geometric mean over seeds; the per-layer variance factor between hidden layers
        prof = np.exp(np.log(ratios).mean(axis=0))
        factor = float((prof[0] / prof[depth - 1]) ** (2 / (depth - 1)))
        theory = predicted_delta_profile(
            "tanh", weight_variance(init, width, width), depth, 0.0, q0,
            in_weight_var=weight_variance(init, 64, width),
            out_weight_var=weight_variance(init, width, 10))
        out[init] = {"measured": prof.tolist(), "seeds": ratios.tolist(),
                     "theory": theory.tolist(), "variance_factor_per_layer": factor,
                     "n_var_w": weight_variance(init, width, width)}
    return out


def training_speed(tmp: Path, quick: bool) -> dict:
    """(c): validation error through training, standard against xavier (tanh)."""
    seeds = range(2 if quick else 5)
    epochs = 3 if quick else 10
    out = {"epochs": epochs, "seeds": len(seeds)}
    for init in ("standard", "xavier"):
        curves = []
        for s in seeds:
            cfg = gradscope.TrainConfig(dataset="digits", depth=5, width=64 if quick else 256,
                                        activation="tanh", init=init, optimizer="sgd",
                                        lr=0.01, batch_size=10, epochs=epochs,
                                        log_every=50, seed=s)
            run = gradscope.train(cfg, tmp / f"speed-{init}-{s}.h5")
            ep = gradscope.read_epochs(run.path)
            curves.append((1 - ep["val_accuracy"]).tolist())
        c = np.array(curves)
        out[init] = {"val_error": c.tolist(), "mean": c.mean(axis=0).tolist(),
                     "final_mean": float(c[:, -1].mean())}
    return out


def measure(quick: bool = False) -> dict:
    with common.scratch() as d:
        tmp = Path(d)
        return {"saturation": saturation(tmp, quick),
                "gradients": gradients_at_init(tmp, quick),
                "speed": training_speed(tmp, quick)}


def figure(res: dict, path: Path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    sat = res["saturation"]
    steps = np.array(sat["steps"])
    for l, m in sat["mean"].items():
        m, s = np.array(m), np.array(sat["std"][l])
        line, = ax.plot(steps, m, label=f"hidden layer {int(l) + 1}" + (" (top)" if int(l) == len(sat["mean"]) - 1 else ""))
        ax.fill_between(steps, m - s, m + s, color=line.get_color(), alpha=0.12)
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set(xlabel="training step", ylabel="mean sigmoid activation (probe set; band: ±1 std)",
           title="(a) sigmoid, standard init", ylim=(0, 1))
    ax.legend(loc="upper right")

    ax = axes[1]
    g = res["gradients"]
    layers = np.arange(g["depth"] + 1)
    for init, color in (("standard", "C3"), ("xavier", "C0")):
        ax.plot(layers, g[init]["measured"], "o-", color=color,
                label=f"{init} (measured, {len(g[init]['seeds'])} seeds)")
        ax.plot(layers, g[init]["theory"], "--", color=color, label=f"{init} (mean-field theory)")
    ax.set_yscale("log")
    ax.set(xlabel="layer l (0 = first, 5 = output)",
           ylabel="||delta_l|| / ||delta_output|| at step 0",
           title="(b) tanh: back-propagated gradients at init")
    ax.set_xticks(layers)
    ax.legend(loc="lower right")

    ax = axes[2]
    sp = res["speed"]
    epochs = np.arange(1, sp["epochs"] + 1)
    for init, color in (("standard", "C3"), ("xavier", "C0")):
        for c in sp[init]["val_error"]:
            ax.plot(epochs, c, color=color, alpha=0.25, lw=0.8)
        ax.plot(epochs, sp[init]["mean"], "o-", color=color,
                label=f"{init} (mean of {sp['seeds']} seeds)")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="validation error", title="(c) tanh: training speed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    args = common.parse_args(__doc__)
    if args.replot:
        res = common.load_results("glorot")
    else:
        res = measure(quick=args.quick)
        if not args.quick:
            common.save_results("glorot", res)
    sat, g, sp = res["saturation"], res["gradients"], res["speed"]
    print(f"(a) top layer: min mean {sat['top_min']:.3f}, first below 0.1 at step "
          f"{sat['top_first_below_0.1']}, final {sat['top_final']:.3f}; lower layers' means in "
          f"[{sat['lower_range'][0]:.3f}, {sat['lower_range'][1]:.3f}]; val acc "
          f"{sat['final_val_accuracy']:.3f}")
    for init in ("standard", "xavier"):
        print(f"(b) {init}: delta ratios {np.round(g[init]['measured'], 4).tolist()} "
              f"theory {np.round(g[init]['theory'], 4).tolist()}; variance factor per "
              f"hidden layer {g[init]['variance_factor_per_layer']:.3f} (n Var W = "
              f"{g[init]['n_var_w']:.3f})")
        print(f"(c) {init}: mean val error by epoch {np.round(sp[init]['mean'], 4).tolist()}")
    if not args.quick:
        path = args.figure or common.DOCS / "replicate-glorot.png"
        figure(res, path)
        print(f"figure: {path}")


if __name__ == "__main__":
    main()

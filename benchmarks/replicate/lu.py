"""Lu, Shin, Su & Karniadakis (2019), "Dying ReLU and initialization: theory and numerical
examples", reproduced on the digits data.

Claim: a deep ReLU net whose weights (and biases) start from distributions symmetric about
0 is "born dead" -- a constant function of its input -- with a probability that grows
with depth at fixed width and tends to 1; the narrower the net, the faster.

Here: He init (normal, symmetric; biases 0 as gradscope starts them), widths 2, 3, 4 and
depths 1 to 50, 1000 seeds per point. A net is born dead when some hidden layer has every
unit at z <= 0 for every training example (1437 digits): its output is then constant.
That is what gradscope's dead-unit probe records (read_dead_units: a unit dead on every
probe example); the seed sweep uses the engine's forward pass on the same parameters
(gradscope.train takes about a second a run here, 21 000 runs would take hours), and a
subset of seeds is checked against gradscope.train + read_dead_units run by run.

The line drawn is 1 - (1 - 2^-N)^L for width N and L hidden layers: the probability that
one given input is blocked by some layer (with zero biases each layer, given a nonzero
input, zeroes all its N units with probability exactly 2^-N, independently of the layers
before). A net dead on the whole data set is blocked on each of its inputs, so this is an
upper bound on the born-dead probability, which the measured curve should approach as deep
narrow nets map all inputs onto a few directions. Lu et al.'s own bounds are of this
(1/2)^N-per-layer form; their exact expressions are not reproduced here. Run:
    nice -n 10 python benchmarks/replicate/lu.py
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
from gradscope.engine.data import split
from gradscope.engine.mlp import forward, init_params, layer_sizes

RELU = get_activation("relu")


def training_rows(seed: int) -> np.ndarray:
    """The training split gradscope.train uses for ``seed`` (val fraction 0.2)."""
    X, y = gradscope.load_dataset("digits")
    return split(X, y, 0.2, np.random.default_rng([seed, 1]))[0].astype(np.float32)


def born_dead(X: np.ndarray, depth: int, width: int, seed: int) -> bool:
    """Whether the He-initialised net of ``seed`` has a hidden layer dead on all of ``X``
    (the parameters gradscope.train draws for that seed)."""
    params = init_params(layer_sizes(X.shape[1], [width] * depth, 10), "he",
                         np.random.default_rng([seed, 0]), dtype=np.float32)
    _, cache = forward(params, X, RELU)
    return any(bool(np.all(z <= 0)) for z in cache.pre[:depth])


def bound(depth, width):
    return 1 - (1 - 0.5 ** np.asarray(width, float)) ** np.asarray(depth, float)


def cross_check(tmp: Path, depth: int, width: int, seeds) -> dict:
    """gradscope.train + read_dead_units against born_dead, seed by seed."""
    same = 0
    for s in seeds:
        cfg = gradscope.TrainConfig(dataset="digits", depth=depth, width=width,
                                    activation="relu", init="he", optimizer="sgd", steps=1,
                                    probe_size=1437, seed=s)
        run = gradscope.train(cfg, tmp / f"{s}.h5")
        _, dead = gradscope.read_dead_units(run.path)
        logged = any(bool(d[0].all()) for d in dead)
        same += logged == born_dead(training_rows(s), depth, width, s)
    return {"depth": depth, "width": width, "seeds": len(seeds), "agree": same}


def measure(quick: bool = False) -> dict:
    widths = (2, 3, 4)
    depths = (1, 2, 5, 10, 20) if quick else (1, 2, 5, 10, 20, 30, 50)
    n_seeds = 150 if quick else 1000
    splits = {}
    res = {"widths": widths, "depths": depths, "seeds": n_seeds, "frac": {}, "bound": {}}
    for width in widths:
        fr = []
        for depth in depths:
            dead = 0
            for s in range(n_seeds):
                key = s  # the split depends on the seed only
                if key not in splits:
                    splits[key] = training_rows(s)
                dead += born_dead(splits[key], depth, width, s)
            fr.append(dead / n_seeds)
        res["frac"][width] = fr
        res["bound"][width] = bound(depths, width).tolist()
    with common.scratch() as d:
        res["cross_check"] = cross_check(Path(d), 10, 2, range(4 if quick else 30))
    return res


def figure(res: dict, path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    depths = np.array(res["depths"])
    fine = np.arange(1, depths.max() + 1)
    n = res["seeds"]
    for i, width in enumerate(res["widths"]):
        p = np.array(res["frac"][width])
        err = np.sqrt(np.maximum(p * (1 - p), 1 / n) / n)
        ax.errorbar(depths, p, yerr=err, fmt="o", color=f"C{i}", capsize=3,
                    label=f"width {width}: measured ({n} seeds)")
        ax.plot(fine, bound(fine, width), "-", color=f"C{i}", lw=1,
                label=f"width {width}: 1 - (1 - 2^-{width})^L")
    ax.set(xlabel="depth L (hidden layers)", ylabel="probability the net is born dead",
           title="ReLU, He init, digits: born dead at initialisation", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    args = common.parse_args(__doc__)
    if args.replot:
        res = common.load_results("lu")
    else:
        res = measure(quick=args.quick)
        if not args.quick:
            common.save_results("lu", res)
    for width in res["widths"]:
        print(f"width {width}: born dead {res['frac'][width]} at depths {list(res['depths'])}; "
              f"bound {np.round(res['bound'][width], 3).tolist()}")
    c = res["cross_check"]
    print(f"gradscope.train + read_dead_units agree with the engine count on {c['agree']} of "
          f"{c['seeds']} seeds (depth {c['depth']}, width {c['width']})")
    if not args.quick:
        path = args.figure or common.DOCS / "replicate-lu.png"
        figure(res, path)
        print(f"figure: {path}")


if __name__ == "__main__":
    main()

"""A deeper CNN on the digits images (8 x 8), recorded with gradscope.torch.

With sigmoid activations and PyTorch's default initialisation the gradient vanishes on its
way back through the convolutions (the report says so); the same net with ReLU and He
initialisation does not::

    python examples/digits_cnn.py --activation sigmoid --out runs/cnn-sigmoid.h5
    python examples/digits_cnn.py --activation relu --out runs/cnn-relu.h5
    gradscope report runs/cnn-sigmoid.h5 runs/cnn-relu.h5 -o runs/cnn.pdf

The data are the digits shipped with gradscope (data/digits.csv.gz); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

import gradscope
import gradscope.torch as gst


def make_cnn(activation: str = "sigmoid", channels: int = 16, convs: int = 6) -> nn.Sequential:
    """``convs`` 3x3 convolutions (padding 1, ``channels`` each) with the activation after
    each, then a linear classifier: ``features.0, features.2, ...`` and ``classifier.1``.
    ReLU nets get He (kaiming normal) weights; sigmoid nets keep PyTorch's default."""
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    feats = []
    c_in = 1
    for _ in range(convs):
        feats += [nn.Conv2d(c_in, channels, 3, padding=1), act()]
        c_in = channels
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*feats))
    model.add_module("classifier", nn.Sequential(nn.Flatten(), nn.Linear(channels * 64, 10)))
    if activation == "relu":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return model


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = gradscope.load_dataset("digits")
    return (torch.tensor(np.asarray(X, np.float32).reshape(-1, 1, 8, 8)),
            torch.tensor(np.asarray(y), dtype=torch.long))


def run(activation: str, out, steps: int = 300, batch_size: int = 64, lr: float = 0.05,
        seed: int = 0, log_every: int = 1, overwrite: bool = True) -> None:
    torch.manual_seed(seed)
    X, y = digits_images()
    model = make_cnn(activation)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    with gst.watch(model, out, optimizer=opt, log_every=log_every, overwrite=overwrite,
                   config={"dataset": "digits (8x8 images)", "batch_size": batch_size,
                           "total_steps": steps}) as rec:
        step, epoch = 0, 0
        while step < steps:
            for idx in torch.randperm(len(X), generator=gen).split(batch_size):
                if step >= steps:
                    break
                opt.zero_grad()
                logits = model(X[idx])
                loss = nn.functional.cross_entropy(logits, y[idx])
                loss.backward()
                opt.step()
                rec.log(loss=loss, accuracy=(logits.argmax(1) == y[idx]).float().mean(),
                        epoch=epoch)
                step += 1
            epoch += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", choices=["sigmoid", "relu", "tanh"], default="sigmoid")
    ap.add_argument("--out", default=None, help="log file (default runs/cnn-<activation>.h5)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = a.out or f"runs/cnn-{a.activation}.h5"
    run(a.activation, out, a.steps, a.batch_size, a.lr, a.seed)
    print(f"wrote {out}; see it with: gradscope report {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gradscope.torch.LightningCallback: a Trainer's run recorded as with watch()."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")
from torch import nn

import gradscope
import gradscope.torch as gst


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 16),
                                  nn.Sigmoid(), nn.Linear(16, 3))
        self.grads = []

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("accuracy", (out.argmax(1) == y).float().mean())
        return nn.functional.cross_entropy(out, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def on_before_optimizer_step(self, optimizer):
        self.grads.append(float(self.body[0].weight.grad.norm()))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_lightning_callback_records_the_steps(tmp_path):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    path = tmp_path / "pl.h5"
    net = Net()
    trainer = pl.Trainer(max_epochs=2, callbacks=[gst.LightningCallback(path)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(net, loader, loader)
    steps = gradscope.read_steps(path)
    assert list(steps.step) == list(range(8))
    assert list(steps.epoch) == [0] * 4 + [1] * 4
    assert np.isfinite(steps.loss).all() and np.isfinite(steps.accuracy).all()
    lay = gradscope.read_layers(path)
    # gradients read after Lightning's closure ran the backward pass, before the update
    np.testing.assert_allclose(lay[lay.layer == 0].grad_norm, net.grads, rtol=1e-6)
    assert np.isfinite(lay.delta_norm).all() and (lay.update_norm > 0).all()
    cfg = gradscope.read_config(path)
    assert cfg["layer_names"] == ["body.0", "body.2", "body.4"]
    assert cfg["activation"] == "sigmoid" and cfg["optimizer"] == "adam"
    assert gradscope.read_status(path)["status"] == "completed"


class ClipNet(Net):
    """Net, keeping what the gradients were before Lightning's clipping (the global norm of
    all parameters' gradients, as clip_grad_norm_ measures it)."""

    def __init__(self):
        super().__init__()
        self.totals = []

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.totals.append(float(torch.linalg.vector_norm(torch.stack(
            [p.grad.detach().double().norm() for p in self.parameters()]))))


@pytest.mark.parametrize("clip, accumulate", [(1e-3, 1), (1e3, 1), (1e-3, 2)])
def test_lightning_callback_logs_the_gradients_before_clipping_and_where_it_clipped(
        tmp_path, clip, accumulate):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    path = tmp_path / "clip.h5"
    net = ClipNet()
    trainer = pl.Trainer(max_epochs=2, callbacks=[gst.LightningCallback(path)],
                         gradient_clip_val=clip, gradient_clip_algorithm="norm",
                         accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(net, loader, loader)
    steps = gradscope.read_steps(path)
    n = 8 // accumulate
    assert list(steps.step) == list(range(n)) and len(net.totals) == n
    # the gradients the backward passes left (summed over the accumulated batches), not
    # the clipped ones; `clipped` where the clipping changed them
    np.testing.assert_allclose(steps.grad_norm_total, net.totals, rtol=1e-6)
    assert list(steps.clipped) == [int(t > clip) for t in net.totals]
    assert min(net.totals) > 1e-3 and max(net.totals) < 1e3  # both kinds of case are real
    lay = gradscope.read_layers(path)
    np.testing.assert_allclose(lay[lay.layer == 0].grad_norm, net.grads, rtol=1e-6)

"""gradscope.torch: gradscope's per-layer diagnostics, log and report for any PyTorch model.

::

    import gradscope.torch as gst

    with gst.watch(model, "runs/mymodel.h5", optimizer=opt) as run:
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()                 # the optimizer's step hooks record this step's rows
            run.log(loss=loss)         # optional: the steps table's loss / accuracy

then ``gradscope report runs/mymodel.h5``. :class:`LightningCallback` does the same for a
PyTorch Lightning ``Trainer``. What is measured, and how: docs/torch.md.
This package imports torch; ``import gradscope`` does not import it.
"""

from __future__ import annotations

from .watch import Run, WatchError, watch

__all__ = ["LightningCallback", "Run", "WatchError", "watch"]


def __getattr__(name):
    if name == "LightningCallback":  # pytorch_lightning is optional: imported when asked for
        from .lightning import LightningCallback

        return LightningCallback
    raise AttributeError(f"module 'gradscope.torch' has no attribute {name!r}")

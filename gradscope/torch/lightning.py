"""A PyTorch Lightning callback that records a ``Trainer``'s run as a gradscope log.

::

    trainer = pl.Trainer(callbacks=[gst.LightningCallback("runs/x.h5")])

Lightning runs the forward and backward passes inside ``optimizer.step(closure)``, after
the optimizer's step pre-hooks; :func:`gradscope.torch.watch`'s pre-hook then takes the
step's numbers when that closure returns, which is after Lightning's
``on_before_optimizer_step`` and its gradient clipping (under a GradScaler, Lightning runs
the closure and clips before ``scaler.step``, whose pre-hook takes them). The gradients'
norms are taken at the end of the backward pass as with ``watch`` (accumulated,
all-reduced, before the clipping, divided by the scale of Lightning's GradScaler), so
``clipped`` says where Lightning's clipping changed them; the update is read by the
optimizer's post-hook.
"""

from __future__ import annotations

import pytorch_lightning as pl

from .watch import Run


class LightningCallback(pl.Callback):
    """Record the first optimizer's steps of ``trainer.fit`` into ``path``.

    The keywords are :func:`gradscope.torch.watch`'s (``log_every``, ``probe_every``,
    ``overwrite``, ``ranks``, ``config``, ...). The training step's loss (what
    ``training_step`` returns) is logged each step, and ``accuracy`` when the module
    logs a metric of that name (``self.log("accuracy", ...)``).
    """

    def __init__(self, path, **watch_kwargs):
        super().__init__()
        self.path = path
        self.kwargs = watch_kwargs
        self.run: Run | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0] if trainer.optimizers else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        kw = dict(self.kwargs)
        kw.setdefault("scaler", scaler)
        # a Trainer without an optimizer is let through, as before (nothing is stepped)
        self.run = Run(pl_module, self.path, opt, _external_pre=opt is None, **kw)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.run
        if run is None or run.closed:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        values = {"epoch": trainer.current_epoch}
        if loss is not None:
            values["loss"] = loss
        acc = trainer.callback_metrics.get("accuracy")
        if acc is not None:
            values["accuracy"] = acc
        run.log(**values)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.run is not None:
            self.run.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.run is not None and not self.run.closed:
            kind = "interrupted" if isinstance(exception, KeyboardInterrupt) else None
            self.run.close(kind or "interrupted",
                           f"{type(exception).__name__} at step {self.run.step}")

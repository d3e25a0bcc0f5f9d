"""``watch``: record gradscope's per-layer diagnostics from any PyTorch training loop.

How each number is taken (docs/torch.md has the full account):

- an autograd callback at the end of each backward pass reads the gradients' norms as the
  backward pass left them (accumulated, all-reduced by DDP; before the loop clips them);
  the optimizer's step pre-hook reads the weight norms and keeps a copy of the weights (with
  ``step(closure)``: once the closure's first call returned); its post-hook takes the
  update's norm, gathers every number of the step into one tensor and moves it to the host
  once;
- a forward hook on each layer places a tensor hook on the layer's output (``delta``, the
  gradient at the module's output, safe with in-place activations) and, for the activation
  module that follows the layer, takes the statistics of its output;
- hooks exist only while a logged step runs: nothing is computed on other steps;
- the rows go to a :class:`~gradscope.record.writer.LogWriter` on a thread of its own.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import queue
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..record.probes import STEP_METRICS
from ..record.schema import STATUSES
from ..record.writer import LogWriter
from . import model as M

HIST_BINS = 50
_UNDERFLOW = 1e-15  # norms below this (or 0 with non-zero entries) are taken again in float64


class WatchError(ValueError):
    """Bad use of :func:`watch`; the message is one line naming the value and the fix."""


def watch(model: nn.Module, path, optimizer: torch.optim.Optimizer | None = None, *,
          log_every: int = 1, probe_every: int = 100, scaler=None, overwrite: bool = False,
          ranks="zero", probe=None, config: dict | None = None, hist_bins: int = HIST_BINS,
          flush_interval: float = 1.0, background: bool | None = None) -> Run:
    """Record ``model``'s training into the gradscope log ``path``; use as a context manager.

    ``optimizer``: the one whose ``step()`` ends a training step (its hooks record the
    rows). ``log_every``: record every this many steps (always step 0). ``probe_every``: a
    multiple of ``log_every``; probe statistics (dead units, activation histograms) at those
    steps, on the training batch, or on ``probe`` (inputs run through the model in
    evaluation mode, without gradients, before the update) when given. ``scaler``: the
    ``torch.amp.GradScaler`` in use, so steps it skips are flagged and the gradients and
    deltas of the backward pass (of the scaled loss) are divided by its scale (without it,
    a scaler's unscaling is found from the gradients where the loop does not also clip
    them). ``overwrite``: replace
    an existing file. ``ranks``: under ``torch.distributed``, ``"zero"`` (rank 0 writes
    ``path``), ``"all"`` (every rank writes ``<stem>.rank<r><suffix>``), or a list of
    ranks. ``config``: extra entries for the logged configuration (e.g. ``dataset``,
    ``batch_size``); they override what the adapter found. ``background``: take the
    step's norms and statistics on a thread of their own, beside the training thread
    (None: where the model is on the CPU and torch leaves a core free,
    ``torch.get_num_threads()`` below the cores this process may use).
    """
    return Run(model, path, optimizer, log_every=log_every, probe_every=probe_every,
               scaler=scaler, overwrite=overwrite, ranks=ranks, probe=probe, config=config,
               hist_bins=hist_bins, flush_interval=flush_interval, background=background)


def _fail(msg: str):
    raise WatchError(f"gradscope.torch.watch: {msg}")


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        _fail(f"{name}={v!r}; accepted: a whole number >= {low}")


def _rank_info() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_path(path: Path, ranks, rank: int, world: int) -> Path | None:
    """The file this rank writes (None: this rank does not write)."""
    ok = ranks in ("zero", "all", 0) or (isinstance(ranks, (list, tuple, set)) and all(
        isinstance(r, int) and not isinstance(r, bool) for r in ranks))
    if not ok:
        _fail(f"ranks={ranks!r}; accepted: 'zero', 'all' or a list of ranks")
    if world == 1:
        return path
    if ranks == "zero" or ranks == 0:
        return path if rank == 0 else None
    if ranks == "all":
        chosen = range(world)
    elif isinstance(ranks, (list, tuple, set)) and all(isinstance(r, int) for r in ranks):
        chosen = set(ranks)
    else:
        _fail(f"ranks={ranks!r}; accepted: 'zero', 'all' or a list of ranks")
    if rank not in chosen:
        return None
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


class _Layer:
    __slots__ = ("act", "act_out", "defer", "index", "last", "module", "name", "out_ref")

    def __init__(self, name, module):
        self.name, self.module = name, module
        self.act = None       # the activation module after it, if any
        self.index = -1
        self.last = False
        self.out_ref = None   # this forward's output (while a logged step runs)
        self.act_out = None   # the first recorded forward's activation output
        # its activation statistics taken on the background thread: None until a logged
        # step showed that nothing changes the tensor in place after the hook (then True)
        self.defer = None


class Run:
    """A recording in progress (returned by :func:`watch`). ``run.log(loss=..., accuracy=...)``
    adds the steps table's values; ``run.close()`` (or leaving the ``with`` block) ends it."""

    def __init__(self, model, path, optimizer=None, *, log_every=1, probe_every=100,
                 scaler=None, overwrite=False, ranks="zero", probe=None, config=None,
                 hist_bins=HIST_BINS, flush_interval=1.0, background=None,
                 _external_pre=False):
        if not isinstance(model, nn.Module):
            _fail(f"model is a {type(model).__name__}; accepted: a torch.nn.Module")
        if type(model).__name__ == "OptimizedModule" or hasattr(model, "_orig_mod"):
            _fail("the model is compiled with torch.compile, whose graphs ignore hooks added "
                  "afterwards; watch the uncompiled model (model._orig_mod) and train it "
                  "uncompiled while recording")
        inner = model.module if isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
        if not any(True for _ in inner.parameters()):
            _fail(f"the model ({type(inner).__name__}) has no parameters; accepted: a module "
                  "with at least one layer that has a weight")
        layers = M.layer_modules(inner)
        if not layers:
            _fail(f"the model ({type(inner).__name__}) has no module with a 'weight' "
                  "parameter (Linear, Conv, ...); gradscope records one row per such layer")
        if optimizer is None and not _external_pre:
            _fail("optimizer=None; accepted: the torch.optim.Optimizer whose step() ends each "
                  "training step (its hooks record the rows)")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            _fail(f"optimizer is a {type(optimizer).__name__}; accepted: a torch.optim.Optimizer")
        _check_int("log_every", log_every, 1)
        _check_int("probe_every", probe_every, 1)
        if probe_every % log_every:
            _fail(f"probe_every={probe_every}; accepted: a multiple of log_every ({log_every})")
        _check_int("hist_bins", hist_bins, 2)
        if background not in (None, True, False):
            _fail(f"background={background!r}; accepted: None (automatic), True or False")
        on_cpu = all(l.weight.device.type == "cpu" for _, l in layers)
        if background and not on_cpu:
            _fail("background=True needs the layers' weights on the CPU (a device's work is "
                  "already asynchronous); accepted there: None or False")
        p = Path(path)
        if p.suffix == "":
            _fail(f"path {str(path)!r} has no suffix; accepted: a file name such as run.h5")
        rank, world = _rank_info()
        mine = _rank_path(p, ranks, rank, world)
        if mine is not None and mine.exists() and not overwrite:
            _fail(f"{str(mine)!r} exists; pass overwrite=True to replace it, or another path")
        if mine is not None and mine.is_dir():
            _fail(f"{str(mine)!r} is a directory; accepted: a file path")
        if mine is not None and not mine.parent.exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
        self.model, self.inner, self.optimizer, self.scaler = model, inner, optimizer, scaler
        self.path = mine
        self.rank, self.world = rank, world
        self.log_every, self.probe_every, self.hist_bins = log_every, probe_every, hist_bins
        self.probe_input = probe
        self.user_config = dict(config or {})
        self.step = 0                # the next step's index (steps taken so far)
        self.closed = False
        self.status, self.message = "completed", ""
        self._layers = [_Layer(n, m) for n, m in layers]
        self._by_module = {id(l.module): l for l in self._layers}
        self._ordered = False
        self._handles: list = []     # hooks that exist during logged steps only
        self._fixed: list = []       # hooks that exist for the whole run
        self._acc = None             # the current logged step's device-side numbers
        self._probing = False
        self._forward_seen = False
        self._pending = None         # the last recorded step's steps row, until run.log
        self._next_values: dict = {}
        self._pre_done = False
        # inside optimizer.step(closure) after the closure's first call: later calls (LBFGS
        # evaluates it again at other weights) are not the recorded pass
        self._stepping = False
        self._on_cpu = on_cpu
        self._buffers = None
        self._flush_interval = float(flush_interval)
        self._batch = None
        self._t0 = time.perf_counter()
        self._writer_thread = None
        self._external_pre = _external_pre
        # the background thread: a core left free by torch's threads does the step's
        # reductions while the training thread goes on (CPU tensors only)
        if background is None:
            background = on_cpu and torch.get_num_threads() < _cores()
        self._bg = None
        self._initial = {id(m): (M.weight_as_logged(m, m.weight),
                                 _np(m.bias) if isinstance(getattr(m, "bias", None), torch.Tensor)
                                 else np.zeros(0, dtype=_np_dtype(m.weight)))
                         for _, m in layers}
        if self.path is None:  # this rank does not write: no hooks at all
            self.closed = True
            return
        if background:
            self._bg = _Background()
        self._fixed.append(inner.register_forward_pre_hook(self._root_pre))
        if optimizer is not None:
            if not _external_pre:
                self._fixed.append(optimizer.register_step_pre_hook(self._opt_pre))
            self._fixed.append(optimizer.register_step_post_hook(self._opt_post))
        if scaler is not None:
            self._wrap_scaler(scaler)
        self._arm()
        _OPEN.add(self)

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self

    def __exit__(self, typ, exc, tb) -> None:
        if typ is None:
            self.close()
        elif issubclass(typ, KeyboardInterrupt):
            self.close("interrupted", f"interrupted at step {self.step}")
        else:
            failed = "failed" if "failed" in STATUSES else "interrupted"
            text = str(exc).splitlines()[0] if str(exc) else ""
            self.close(failed, f"{typ.__name__} at step {self.step}" + (f": {text}" if text
                                                                         else ""))

    # -- public ---------------------------------------------------------------------------
    def log(self, **values) -> None:
        """Values of the steps table (``loss``, ``accuracy``, ``epoch``) for the step just
        taken (called after ``optimizer.step()``), or for the step under way when its
        forward pass has run but its ``optimizer.step()`` not yet. Tensors are accepted;
        values of steps that are not logged are ignored without reading them."""
        if self.closed and self.path is None:
            return
        if self.closed:
            raise WatchError("gradscope.torch: run.log() after the run was closed; log "
                             "inside the `with watch(...)` block")
        bad = set(values) - {"loss", "accuracy", "epoch"}
        if bad:
            raise WatchError(f"gradscope.torch: run.log({min(bad)}=...); accepted: "
                             "loss, accuracy, epoch")
        self._check_writer()
        if self._forward_seen:  # the step under way: its optimizer.step() comes later
            if self._logged(self.step):
                self._next_values.update(values)
        elif self._pending is not None and self._pending["step"] == self.step - 1:
            self._pending["values"].update(values)  # the step just taken

    def close(self, status: str | None = None, message: str = "") -> None:
        """Write what is pending and the final parameters, then close the log."""
        if self.closed:
            return
        self.closed = True
        _OPEN.discard(self)
        for h in self._handles + self._fixed:
            h.remove()
        self._handles, self._fixed = [], []
        if self.scaler is not None and "step" in vars(self.scaler):
            del self.scaler.step
        error = None
        try:
            self._commit_pending()
            if self._bg is not None:
                self._bg.wait()
        except WatchError as e:  # the background thread failed: recorded, then raised
            error = e
        if self._bg is not None:
            self._bg.stop()
            self._bg = None
        if status is not None:
            self.status, self.message = status, message
        if error is not None:
            if status is None:
                self.status = "failed" if "failed" in STATUSES else "interrupted"
                self.message = f"{error} (at step {self.step})"
            else:
                self.message = f"{self.message}; {error}" if self.message else str(error)
        if self._writer_thread is None:  # no step was recorded: the file still describes the model
            self._start_writer()
        final = [a for l in self._layers for a in (
            M.weight_as_logged(l.module, l.module.weight),
            _np(l.module.bias) if isinstance(getattr(l.module, "bias", None), torch.Tensor)
            else np.zeros(0, dtype=_np_dtype(l.module.weight)))]
        self._send(("close", self.status, self.message, final))
        self._writer_thread.join()
        self._check_writer()
        if error is not None and status is None:
            raise error

    # -- hooks ----------------------------------------------------------------------------
    def _root_pre(self, module, args):
        if torch.is_grad_enabled() and not self._probing:
            self._forward_seen = True
            if self._batch is None and args and isinstance(args[0], torch.Tensor):
                self._batch = list(args[0].shape)

    def _logged(self, step: int) -> bool:
        return step % self.log_every == 0

    def _arm(self) -> None:
        """Place the per-layer forward hooks for the coming step if it is logged."""
        want = self._logged(self.step)
        if want and not self._handles:
            self._acc = _Acc(len(self._layers))
            for l in self._layers:
                self._handles.append(l.module.register_forward_hook(self._layer_hook(l)))
            for m in self.inner.modules():
                if isinstance(m, M.ACTIVATION_TYPES):
                    self._handles.append(m.register_forward_hook(self._act_hook))
        elif want:
            self._acc = _Acc(len(self._layers))
        elif not want and self._handles:
            for h in self._handles:
                h.remove()
            self._handles, self._acc = [], None

    def _layer_hook(self, layer: _Layer):
        def hook(module, args, out):
            if not isinstance(out, torch.Tensor):
                return
            acc = self._acc
            if acc is None or not (torch.is_grad_enabled() or self._probing) or self._stepping:
                return  # evaluation passes under no_grad are not the training step's
            if not self._ordered and not self._probing and layer.index < 0:
                layer.index = acc.order_next()
                acc.first_inputs[id(module)] = args[0] if args else None
            layer.out_ref = out
            if self._ordered and layer.act is None and not layer.last:
                # a hidden layer with no activation module after it: its own output
                acc.add_act(layer, None, out, self._probing or self._probe_from_batch(), self)
            if self._probing:
                return
            if out.requires_grad and torch.is_grad_enabled():
                out.register_hook(lambda g, l=layer: self._on_delta(acc, l, g))
        return hook

    def _on_delta(self, acc, layer: _Layer, g: torch.Tensor) -> None:
        """A layer's delta in the backward pass; the first of a backward pass also asks
        for the gradients' norms at its end (see _after_backward)."""
        acc.add_delta(layer, g, self._bg)
        if acc.bw_queued or self.optimizer is None:
            return
        try:
            engine = torch.autograd.Variable._execution_engine
            # callbacks run in the order queued, those queued while they run last: the
            # inner one runs after DDP's (queued when its first gradient is ready, after
            # this first delta), so it sees the all-reduced gradients
            engine.queue_callback(lambda: engine.queue_callback(
                lambda: self._after_backward(acc)))
            acc.bw_queued = True
        except (AttributeError, RuntimeError):  # no such engine: the pre-hook's gradients
            pass

    def _after_backward(self, acc) -> None:
        """At the end of a backward pass of a logged step: the norms of the gradients as
        the backward pass left them (accumulated, all-reduced by DDP, of the scaled loss
        under a GradScaler), before the loop clips or unscales them; each backward pass of
        the step replaces the previous one's. The pre-hook uses them."""
        acc.bw_queued = False
        if acc is not self._acc or self._pre_done or self.closed:
            return
        self._order_once(acc)  # the norms are kept by layer number
        ws = [l.module.weight for l in self._layers]
        biases = [b if isinstance(b, torch.Tensor) else None
                  for b in (getattr(l.module, "bias", None) for l in self._layers)]
        mine = {id(p) for p in (*ws, *biases)}
        rest = [p for g in self.optimizer.param_groups for p in g["params"]
                if id(p) not in mine]
        gs = [w.grad for w in ws]
        bgs = [b.grad if b is not None else None for b in biases]
        others = [p.grad for p in rest if p.grad is not None]
        n = len(ws)
        acc.g_norm = [None] * n
        bg = self._bg
        with torch.no_grad():
            if bg is not None:
                k = max(1, (2 * n) // 3) if n > 1 else n
                bg.submit(_grad_norms_bg, acc, gs[:k], bgs, others, [])
                fixed = _grad_norms(acc, gs[k:], [], [], [], k) if k < n else {}
                bg.wait()
                fixed.update(acc.fixed_bg)
            else:
                # the float64 retakes of tiny norms read the values: free on the CPU; on a
                # device that would be a copy to the host here, so they are not retaken
                # (docs/torch.md, Cost)
                fixed = _grad_norms(acc, gs, bgs, others, [], retake=self._on_cpu)
        # what to compare in the pre-hook: each gradient tensor and its version counter
        params = [*ws, *(b for b in biases if b is not None), *rest]
        acc.raw = ([(p, p.grad, None if p.grad is None else p.grad._version)
                    for p in params], fixed)

    def _act_hook(self, module, args, out):
        acc = self._acc
        if acc is None or not args or not isinstance(out, torch.Tensor) or self._stepping:
            return
        if not (torch.is_grad_enabled() or self._probing):
            return
        x = args[0]
        layer = None
        for l in self._layers:
            if l.out_ref is x or (l.out_ref is out):  # in-place: the same tensor
                layer = l
                break
        if layer is None:
            return
        if not self._ordered and layer.act is None:
            layer.act = module
            layer.act_out = out
        if layer.act is not module:
            return
        acc.add_act(layer, module, out, self._probing or self._probe_from_batch(), self)

    def _probe_from_batch(self) -> bool:
        return self.probe_input is None and self.step % self.probe_every == 0

    def _opt_pre(self, optimizer, args, kwargs):
        # args[0] is the optimizer itself, args[1] the closure if given by position
        closure = kwargs["closure"] if "closure" in kwargs else (
            args[1] if len(args) > 1 else None)
        if closure is None or not self._logged(self.step) or self._acc is None:
            self._pre_step()
            return None
        # step(closure): the closure computes this step's gradients inside step(), after
        # this hook; the step's numbers are taken when its first call returns (before any
        # update: LBFGS calls it again at other weights, which are not recorded)
        first = [True]

        def recorded():
            loss = closure()
            if first[0]:
                first[0] = False
                self._pre_step()
                self._stepping = True
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": recorded}
        return (args[0], recorded, *args[2:]), kwargs

    def _pre_step(self) -> None:
        """Before update ``self.step``: gradient and weight norms, a copy of the weights."""
        self._commit_pending()
        if not self._logged(self.step) or self._acc is None:
            return
        acc = self._acc
        # the backward pass ran on the scaled loss: its deltas are divided by the scale in
        # use (update() changes it only after the step)
        acc.delta_scale = (float(self.scaler.get_scale())
                           if self.scaler is not None and self.scaler.is_enabled() else 1.0)
        self._order_once(acc)
        for l in self._layers:
            l.out_ref = l.act_out = None
        bg = self._bg
        if bg is not None:
            bg.wait()  # this step's activation statistics
            acc.check_unchanged()
        ws = [l.module.weight for l in self._layers]
        biases = [getattr(l.module, "bias", None) for l in self._layers]
        n = len(ws)
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        mine = {id(p) for p in (*ws, *biases)}
        others = [p.grad for g in groups for p in g["params"]
                  if p.grad is not None and id(p) not in mine]
        # the gradients' norms taken at the end of the backward pass (acc.raw): if the loop
        # changed the gradients since (clip_grad_norm_, a GradScaler's unscale_), those of
        # the step are taken too, for the steps table's `clipped`
        raw = acc.raw
        if raw is not None and any(p.grad is not g for p, g, _ in raw[0]):
            # gradients assigned since (p.grad = ..., from torch.autograd.grad; or set to
            # None): not the backward pass's, which are not the step's; those of the step
            raw = acc.raw = None
        post, fp = [], []
        if raw is not None and any(g is not None and g._version != v for _, g, v in raw[0]):
            post = [*(w.grad for w in ws),
                    *(b.grad if isinstance(b, torch.Tensor) else None for b in biases),
                    *others]
        elif raw is not None and self.scaler is None:
            # a GradScaler's unscale_ moves no version counter: the biases' gradients (few
            # numbers; else the output layer's weights') show whether a scaler not given
            # as `scaler` divided the gradients since the backward pass (see _finish)
            fp = [b.grad if isinstance(b, torch.Tensor) else None for b in biases]
            acc.fp_bias = any(g is not None for g in fp)
            if not acc.fp_bias:
                fp = [None] * (n - 1) + [ws[-1].grad]
        if acc.delta_bg:  # norms taken in the background, unless changed since
            deltas = []
            for key, (g, version, norm) in acc.delta_bg:
                if norm is not None and g._version == version:
                    acc.delta.setdefault(key, []).append(norm)
                else:
                    deltas.append((key, g))
        else:
            deltas = [(id(l), g) for l in self._layers for g in acc.delta_t.get(id(l), ())]
        if raw is not None:
            with torch.no_grad():
                if bg is not None:
                    bg.submit(_post_norms, acc, post, fp, deltas)
                    bufs = self._weight_buffers(ws)
                    for b, w in zip(bufs, ws):
                        b.copy_(w)
                    acc.before = bufs
                    bg.wait()
                    acc.fixed = {}
                    bg.submit(_weight_norms, acc, bufs)  # waited for before the subtraction
                else:
                    _post_norms(acc, post, fp, deltas)
                    bufs = self._weight_buffers(ws)
                    acc.w_norm = [_norm(b.copy_(w)) for b, w in zip(bufs, ws)]
                    acc.before = bufs
                self._probe_if_due()
            self._pre_done = True
            return
        if bg is not None:
            with torch.no_grad():
                # the gradients' norms on the background thread while this one copies the
                # weights and then takes the last few layers' gradient norms (about a
                # balance of the two threads' work); all done before the optimizer may
                # touch either (an optimizer may change the gradients in place: SGD with
                # nesterov=True does)
                gs = [w.grad for w in ws]
                k = max(1, (2 * n) // 3) if n > 1 else n
                acc.g_norm = [None] * n
                bg.submit(_grad_norms_bg, acc, gs[:k],
                          [b.grad if isinstance(b, torch.Tensor) else None for b in biases],
                          others, deltas)
                bufs = self._weight_buffers(ws)
                for b, w in zip(bufs, ws):
                    b.copy_(w)
                acc.before = bufs
                fixed = _grad_norms(acc, gs[k:], [], [], [], k) if k < n else {}
                bg.wait()
                acc.fixed = {**acc.fixed_bg, **fixed}
                bg.submit(_weight_norms, acc, bufs)  # waited for before the subtraction
                self._probe_if_due()
            self._pre_done = True
            return
        with torch.no_grad():
            # the gradients' norms in one call: the weights', the biases', the other
            # parameters' (for the global norm), and the deltas kept in the backward pass
            norms = _norms([*(w.grad for w in ws),
                            *(b.grad if isinstance(b, torch.Tensor) else None for b in biases),
                            *others, *(g for _, g in deltas)])
            acc.g_norm, acc.b_norm = norms[:n], norms[n:2 * n]
            k = 2 * n + len(others)
            acc.others = norms[2 * n:k]  # the global norm is taken from these on the host
            for (key, _), d in zip(deltas, norms[k:]):
                acc.delta.setdefault(key, []).append(d)
            # the weights before the update, in buffers kept from step to step (fresh
            # memory every step cost more than the copy itself: page faults); each layer's
            # norm taken from its copy right after copying it, while it is in cache (one
            # pass less over the weights than a norm and a copy of all of them)
            bufs = self._weight_buffers(ws)
            acc.w_norm = [_norm(b.copy_(w)) for b, w in zip(bufs, ws)]
            acc.before = bufs
            self._probe_if_due()
        self._pre_done = True

    def _order_once(self, acc) -> None:
        """The layers in the order of the first recorded forward pass (once, at the end of
        its backward pass or in the pre-hook, whichever comes first)."""
        if self._ordered:
            return
        self._fix_order()
        for l in self._layers[:-1]:  # found only now: hidden layers with no activation
            if l.act is None and isinstance(l.out_ref, torch.Tensor):
                acc.add_act(l, None, l.out_ref, self._probe_from_batch(), self, watch=False)

    def _weight_buffers(self, ws):
        bufs = self._buffers
        if bufs is None or any(b.shape != w.shape or b.dtype != w.dtype
                               or b.device != w.device for b, w in zip(bufs, ws)):
            bufs = self._buffers = [torch.empty_like(w) for w in ws]
        return bufs

    def _probe_if_due(self) -> None:
        """The probe inputs through the model at a probe step (given ``probe=``)."""
        if self.probe_input is not None and self.step % self.probe_every == 0:
            self._run_probe()

    def _run_probe(self) -> None:
        was = self.inner.training
        self._probing = True
        try:
            self.inner.eval()
            x = self.probe_input
            self.model(*x) if isinstance(x, (tuple, list)) else self.model(x)
        finally:
            self.inner.train(was)
            self._probing = False

    def _opt_post(self, optimizer, args, kwargs):
        self._post_step(skipped=False)

    def _post_step(self, skipped: bool) -> None:
        step = self.step
        acc = self._acc if self._pre_done else None
        self._pre_done = False
        if acc is not None and self._logged(step):
            self._record(step, acc, skipped)
        elif skipped:
            self._commit_pending()
            self._pending = {"step": step, "values": dict(self._next_values), "skipped": True,
                             "time": time.perf_counter() - self._t0, "lr": self._lr(),
                             "total": math.inf, "layers": None, "probe": None}
        self._next_values = {}
        self._forward_seen = False
        self._stepping = False
        self.step += 1
        self._arm()

    def _wrap_scaler(self, scaler) -> None:
        original = scaler.step
        run = weakref.ref(self)

        def step(optimizer, *args, **kwargs):
            r = run()
            before = r.step if r is not None else None
            out = original(optimizer, *args, **kwargs)
            if r is not None and not r.closed and optimizer is r.optimizer and r.step == before:
                r._post_step(skipped=True)  # the scaler found inf/NaN: no update was applied
            return out
        scaler.step = step

    # -- one step's numbers ---------------------------------------------------------------
    def _fix_order(self) -> None:
        seen = sorted((l for l in self._layers if l.index >= 0), key=lambda l: l.index)
        rest = [l for l in self._layers if l.index < 0]
        self._layers = seen + rest
        for i, l in enumerate(self._layers):
            l.index = i
        self._layers[-1].last = True
        self._plain = self._plain_mlp(self._acc)
        self._ordered = True

    def _plain_mlp(self, acc) -> str | None:
        """None when the model is a plain MLP of one activation, else why it is not."""
        kinds = {type(l.module).__name__ for l in self._layers}
        if kinds != {"Linear"}:
            other = sorted(kinds - {"Linear"})
            return f"not a plain MLP: it has {', '.join(other)} layers"
        hidden = self._layers[:-1]
        if not hidden:
            return "not a deep network: a single layer"
        acts = [l.act for l in hidden]
        if any(a is None for a in acts):
            return "not a plain MLP: a hidden layer has no activation module after it"
        names = {M.act_name(a) for a in acts}
        if len(names) > 1:
            return f"not a plain MLP of one activation: {', '.join(sorted(names))}"
        try:
            from ..engine.activations import get_activation
            get_activation(next(iter(names)))
        except KeyError:
            return f"no mean-field theory for the activation {next(iter(names))}"
        for m in self.inner.modules():
            if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                return f"not a plain MLP: it has a {type(m).__name__} module"
        # each layer's input must be the previous activation's output (no skip, no other code)
        for prev, l in zip(hidden, self._layers[1:]):
            x = acc.first_inputs.get(id(l.module))
            if x is None or x is not prev.act_out:
                return ("not a plain MLP: a layer's input is not the previous activation's "
                        "output (a skip connection or other code between layers)")
        return None

    def _lr(self) -> float:
        try:
            return float(self.optimizer.param_groups[0]["lr"])
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return math.nan

    def _record(self, step: int, acc, skipped: bool) -> None:
        layers = self._layers
        ws = [l.module.weight for l in layers]
        pending = {"step": step, "values": dict(self._next_values), "skipped": skipped,
                   "time": None, "lr": self._lr(), "total": None, "layers": None,
                   "probe": None, "clipped": 0}
        bg = self._bg
        if bg is not None:
            bg.wait()  # the weight norms, read from the buffers the subtraction overwrites
            if not skipped:
                with torch.no_grad():
                    # before - after = -update (same norm), in the buffer of the weights
                    # before: taken now, as the weights may change once the step returns
                    # (half of it on the background thread: memory-bound, two cores
                    # move more bytes than one); the norms and the rest on the background
                    # thread, which the next step's pre-hook (or close) waits for
                    pairs = list(zip(acc.before, ws))
                    k = (len(pairs) * 3 + 4) // 5  # the other starts later: a smaller part
                    if k < len(pairs):
                        bg.submit(_subtract, pairs[k:])
                    _subtract(pairs[:k])
                    bg.wait()
            pending["time"] = time.perf_counter() - self._t0
            self._pending = pending
            bg.submit(self._finish, acc, skipped, pending, None)
            return
        with torch.no_grad():
            if skipped:
                u_norm = [None] * len(layers)
            else:
                # each layer's norm while its difference is in cache
                u_norm = [_norm(d.sub_(w_)) for d, w_ in zip(acc.before, ws)]
        self._finish(acc, skipped, pending, u_norm)
        pending["time"] = time.perf_counter() - self._t0
        self._pending = pending

    def _finish(self, acc, skipped: bool, pending: dict, u_norm) -> None:
        """The step's numbers from its device tensors, into ``pending`` (on the background
        thread when there is one: then ``acc.before`` holds the differences, and the
        gradient and weight norms were retaken, where needed, while their tensors were
        as the step saw them)."""
        layers = self._layers
        n = len(layers)
        ws = [l.module.weight for l in layers]
        with torch.no_grad():
            if u_norm is None:
                u_norm = [None] * n if skipped else _norms(acc.before)
            flat, index = _flatten([acc.g_norm, acc.b_norm, acc.w_norm, u_norm, acc.others,
                                    acc.post or [], acc.fp or []])
            stats, st_index = acc.device_stats(layers)
            lo_hi = self._hist_edges()
            probe, pr_index = acc.device_probe(layers, self.hist_bins, lo_hi)
            host = _to_host(flat + stats + probe)  # the one device-to-host copy
        k0 = len(flat)  # 0-d tensors
        k1 = k0 + len(stats)
        values = host[:k1].tolist()  # Python floats: quicker than numpy's for a few numbers
        g, bg, w, u, _, _, _ = _unflatten(values, index)  # the others: in the global norm only
        # the global norm from the float32 (or wider) norms, in float64, as before the
        # retakes below (an overflowing float32 norm leaves it infinite: diverged)
        # each parameter once: a weight tied to another layer's (an embedding and the output
        # layer) has two layers' rows, and one gradient in the global norm
        first = _first_uses(layers)

        def once():
            return itertools.chain(first, itertools.repeat(True))
        parts = [values[i] for i, k in zip((*index[0], *index[1], *index[4]), once())
                 if i is not None and k]
        total = math.sqrt(math.fsum(x * x for x in parts)) if parts else math.nan
        raw = acc.raw
        if acc.fixed is not None:  # retaken on the background thread
            if raw is None:
                g = [acc.fixed.get(("g", i), v) for i, v in enumerate(g)]
                bg = [acc.fixed.get(("b", i), v) for i, v in enumerate(bg)]
            w = [acc.fixed.get(("w", i), v) for i, v in enumerate(w)]
        else:
            if raw is None:
                g = self._retake(g, lambda i: ws[i].grad)
                bias = [getattr(l.module, "bias", None) for l in layers]
                bg = self._retake(bg, lambda i: bias[i].grad
                                  if isinstance(bias[i], torch.Tensor) else None)
            # the weights before the update: after + (before - after) once it was taken
            w = self._retake(w, lambda i: acc.before[i] if skipped
                             else ws[i].detach().double() + acc.before[i].double())
        u = self._retake(u, lambda i: None if skipped else acc.before[i])
        if raw is not None:
            # the backward pass's gradients (retaken then where tiny), of the scaled loss
            # under a GradScaler: divided by its scale, as the deltas
            fixed, s = raw[1], acc.delta_scale
            if acc.fp:
                # the same gradients after the backward pass and at the step, their version
                # counters unmoved: divided since by a power of two, they were unscaled by
                # a GradScaler not given as `scaler`, whose scale that is (exactly: scaling
                # by a power of two commutes with every rounding here); another change is
                # the loop's (the backward pass's gradients stand, and `clipped` says so)
                ref = index[1] if acc.fp_bias else index[0]
                pairs = [(values[i], values[j]) for i, j in zip(ref, index[6])
                         if i is not None and j is not None]
                a = math.sqrt(math.fsum(x * x for x, _ in pairs))
                b = math.sqrt(math.fsum(y * y for _, y in pairs))
                if (a > 0 and b > 0 and math.isfinite(a)
                        and not math.isclose(a, b, rel_tol=1e-6)):
                    if math.frexp(a / b)[0] == 0.5:
                        s = acc.delta_scale = a / b
                    else:
                        pending["clipped"] = 1
            g = [fixed.get(("g", i), v) / s for i, v in enumerate(g)]
            bg = [fixed.get(("b", i), v) / s for i, v in enumerate(bg)]
            total /= s
            if acc.post:  # changed before the step: clipped where its norm differs
                p = [values[i] for i, k in zip(index[5], once()) if i is not None and k]
                after = math.sqrt(math.fsum(x * x for x in p)) if p else math.nan
                pending["clipped"] = int(not (after == total
                                              or math.isclose(after, total, rel_tol=1e-6)))
        delta = acc.delta_norms(values[k0:], st_index, layers)
        mean, std, sat = acc.act_values(values[k0:], st_index, layers)
        if skipped:
            u = ratio = [math.nan] * n
        else:
            ratio = [ui / wi if wi > 0 else (math.inf if ui > 0 else math.nan)
                     for ui, wi in zip(u, w)]
        pending["layers"] = dict(zip(STEP_METRICS, (g, bg, delta, w, u, ratio, mean, std,
                                                     sat)))
        pending["probe"] = (acc.probe_values(host[k1:], pr_index, layers, self.hist_bins)
                            if pr_index else None)
        pending["total"] = total
        acc.before = None

    def _retake(self, values, tensor_of):
        """Norms that may have underflowed (or overflowed) in float32 are taken again in
        float64; ``tensor_of(i)`` gives the i-th tensor (None: nothing to retake)."""
        out = list(values)
        for i, v in enumerate(values):
            if not (v < _UNDERFLOW or math.isinf(v)):
                continue
            t = tensor_of(i)
            if t is None or (t.dtype == torch.float64 and not math.isnan(v)):
                continue
            out[i] = float(torch.linalg.vector_norm(_dense(t).double()))
        return out

    def _hist_edges(self) -> tuple[float, float]:
        acts = [l.act for l in self._layers[:-1] if l.act is not None]
        return M.output_range(acts[0] if acts else None)

    def _commit_pending(self) -> None:
        p = self._pending
        if p is None:
            return
        self._pending = None
        if self._bg is not None:
            self._bg.wait()  # the step's numbers (a failure there is raised here)
        if self._writer_thread is None:
            self._start_writer()
        loss = _number(p["values"].get("loss"))
        acc = _number(p["values"].get("accuracy"))
        epoch = p["values"].get("epoch")
        epoch = int(epoch) if epoch is not None else 0
        # as the engine: a non-finite loss or gradient norm is a diverged run (a step the AMP
        # scaler skipped is not: it is flagged, and the scaler lowers its scale)
        if self.status == "completed" and not p["skipped"]:
            bad_loss = "loss" in p["values"] and not math.isfinite(loss)
            if bad_loss or not math.isfinite(p["total"]):
                what, value = ("loss", loss) if bad_loss else ("gradient norm", p["total"])
                self.status = "diverged"
                self.message = f"{what} became {value} at step {p['step']}"
        self._send(("step", p, loss, acc, epoch))

    # -- the writer thread ----------------------------------------------------------------
    def _config(self) -> dict:
        layers = self._layers
        hidden = layers[:-1]
        acts = [M.act_name(l.act) if l.act is not None else None for l in layers]
        hidden_acts = {a for a in acts[:-1] if a is not None}
        activation = (next(iter(hidden_acts)) if len(hidden_acts) == 1
                      else ("mixed" if hidden_acts else "none"))
        w0 = layers[0].module.weight
        fans = [M.fans(l.module) for l in layers]
        init = M.detect_init([self._initial[id(l.module)][0] for l in hidden[1:] or layers],
                             fans[1:len(hidden)] or fans)
        opt = self.optimizer
        hyper = {}
        if opt is not None and opt.param_groups:
            hyper = {k: _jsonable(v) for k, v in opt.param_groups[0].items() if k != "params"}
        n_params = sum(p.numel() for p in self.inner.parameters())
        tree = str(self.inner)
        cfg = {
            "source": "torch",
            "model": type(self.inner).__name__,
            "module_tree": tree if len(tree) <= 20000 else tree[:20000] + "\n...",
            "layer_names": [l.name or type(l.module).__name__ for l in layers],
            "layer_types": [type(l.module).__name__ for l in layers],
            "layer_shapes": [list(l.module.weight.shape) for l in layers],
            "layer_activations": acts,
            "n_parameters": int(n_params),
            "activation": activation,
            "depth": len(hidden),
            "widths": [M.units(l.module) for l in hidden],
            "n_outputs": M.units(layers[-1].module),
            "init": init["init"], "init_gain": init["init_gain"], "init_note": init["init_note"],
            "optimizer": type(opt).__name__.lower() if opt is not None else None,
            "optimizer_class": type(opt).__name__ if opt is not None else None,
            "optimizer_hyper": hyper,
            "lr": hyper.get("lr"),
            "dtype": str(w0.dtype).replace("torch.", ""),
            "device": str(w0.device),
            "log_every": self.log_every, "probe_every": self.probe_every,
            "probe": "probe inputs, evaluation mode" if self.probe_input is not None
                     else "the training batch of the probe step",
            "batch_size": self._batch[0] if self._batch else None,
            "input_shape": self._batch,
            "torch_version": torch.__version__, "gradscope_version": __version__,
            "rank": self.rank, "world_size": self.world,
            "amp_scaler": self.scaler is not None,
        }
        if isinstance(layers[0].module, nn.Linear):
            cfg["sizes"] = [int(layers[0].module.in_features), *cfg["widths"], cfg["n_outputs"]]
            cfg["n_features"] = int(layers[0].module.in_features)
        drop = [m.p for m in self.inner.modules() if isinstance(m, nn.Dropout)]
        if drop:
            cfg["dropout"] = float(drop[0])
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.inner.modules()):
            cfg["norm"] = "batch"
        elif any(isinstance(m, nn.LayerNorm) for m in self.inner.modules()):
            cfg["norm"] = "layer"
        note = getattr(self, "_plain", "no forward pass was recorded")
        if note:
            cfg["mean_field_note"] = note
        cfg.update(self.user_config)
        return cfg

    def _start_writer(self) -> None:
        if not self._ordered:
            self._plain = "no forward pass was recorded"
            for i, l in enumerate(self._layers):
                l.index = i
            self._layers[-1].last = True
            self._ordered = True
        params = []
        for l in self._layers:
            params += list(self._initial[id(l.module)])
        widths = [M.units(l.module) for l in self._layers[:-1]]
        lo, hi = self._hist_edges()
        edges = np.linspace(lo, hi, self.hist_bins + 1)
        cfg = self._config()
        self._queue: queue.Queue = queue.Queue()
        self._writer_error = None
        self._writer_thread = threading.Thread(
            target=_writer_loop, name="gradscope-log-writer", daemon=True,
            args=(self, self.path, cfg, params, edges, widths, len(self._layers),
                  self._queue, self._flush_interval))
        self._writer_thread.start()


    def _send(self, item) -> None:
        self._queue.put(item)

    def _check_writer(self) -> None:
        err = getattr(self, "_writer_error", None)
        if err is not None:
            self._writer_error = None
            raise WatchError(f"gradscope.torch: writing {str(self.path)!r} failed: {err}")


# runs left open when the program ends are closed, their status saying so
_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_runs() -> None:
    for r in list(_OPEN):
        try:
            r.close("interrupted", f"the program ended at step {r.step} without run.close()")
        except Exception:  # noqa: BLE001 - at exit, never raise
            pass


def _writer_loop(run, path, cfg, params, edges, widths, n_layers, q, flush_interval):
    """The log writer's thread: creates the file, writes each step's rows, closes it."""
    try:
        writer = LogWriter(path, cfg, params, edges, widths=widths,
                           flush_interval=flush_interval)
    except Exception as e:  # noqa: BLE001 - reported on the training thread
        run._writer_error = str(e).splitlines()[0] if str(e) else type(e).__name__
        while True:  # drain until close, so the training thread never blocks
            item = q.get()
            if item[0] == "close":
                return
    idx = np.arange(n_layers)
    dirty = False
    while True:
        try:
            item = q.get(timeout=flush_interval)
        except queue.Empty:
            if dirty:
                writer.flush()
                dirty = False
            continue
        try:
            if item[0] == "step":
                _, p, loss, acc, epoch = item
                writer.append("steps", step=p["step"], epoch=epoch, loss=loss, accuracy=acc,
                              lr=p["lr"], grad_norm_total=p["total"], time=p["time"],
                              clipped=p.get("clipped", 0), skipped=int(p["skipped"]))
                if p["layers"] is not None:
                    writer.append("layers", n_layers, step=p["step"], layer=idx, **p["layers"])
                if p["probe"] is not None:
                    metrics, dead, hist = p["probe"]
                    writer.append("probes", n_layers, step=p["step"], layer=idx, **metrics)
                    writer.append_units(p["step"], dead, hist)
                writer.end_step()
                dirty = True
            elif item[0] == "close":
                _, status, message, final = item
                writer.close(status, message, final)
                return
        except Exception as e:  # noqa: BLE001 - reported on the training thread
            run._writer_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            if item[0] == "close":
                try:
                    writer.close("interrupted", run._writer_error)
                except Exception:  # noqa: BLE001
                    pass
                return


# -- the device-side accumulator of one logged step ------------------------------------------
class _Acc:
    """The device tensors of one logged step, gathered for a single transfer."""

    def __init__(self, n: int):
        self.n = n
        self._order = 0
        self.first_inputs: dict = {}
        self.act_inputs: dict = {}
        self.layer_out: dict = {}
        self.delta: dict[int, list] = {}      # id(layer) -> [norm tensors]
        self.delta_t: dict[int, list] = {}    # id(layer) -> the delta tensors of the step
        self.delta_bg: list = []  # (id(layer), [delta, its version, norm]): background
        self.delta_scale = 1.0  # a GradScaler's scale: the deltas are of the scaled loss
        # id(layer) -> [(numel, sum, sum of squares, saturation tally, output, complement)]
        self.act: dict[int, list] = {}
        self.probe: dict[int, list] = {}      # layer index -> [(a, module)] probe outputs
        self.w_norm = self.g_norm = self.b_norm = None
        self.others = None
        self.before = None
        self.fixed = None  # background thread: retaken norms, {("g"|"b"|"w", layer): value}
        self.fixed_bg = None
        # the gradients' norms were taken at the end of the backward pass: ([(param, its
        # gradient then, the gradient's version)], {retaken norms}); None: in the pre-hook
        self.raw = None
        self.bw_queued = False  # the end-of-backward callback is queued
        self.post = None  # the norms of the gradients the step received, where changed
        self.fp = None  # a few of them, where unchanged by version (see Run._finish)
        self.fp_bias = True
        self.watched: list = []  # (layer, output, its version, row or None) to check

    def order_next(self) -> int:
        self._order += 1
        return self._order - 1

    def add_delta(self, layer: _Layer, g: torch.Tensor, bg=None) -> None:
        # kept, not reduced here: the pre-hook takes all the step's norms in one call;
        # with a background thread its norm is taken there now, and taken again in the
        # pre-hook if the tensor was changed in place since (its version counter)
        self.delta_t.setdefault(id(layer), []).append(g)
        if bg is not None:
            slot = [g, g._version, None]
            self.delta_bg.append((id(layer), slot))
            bg.submit(_delta_norm, slot)

    def add_act(self, layer: _Layer, module, out: torch.Tensor, probe: bool, run,
                watch: bool = True) -> None:
        a = out.detach()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        if probe:
            self.probe.setdefault(id(layer), []).append((a, module))
            if run._probing:
                return
        # [count, sum, sum of squares, saturation tally, output, complement, valid]
        row = [a.numel(), None, None, None, a, False, True]
        self.act.setdefault(id(layer), []).append(row)
        bg = run._bg
        if bg is None:
            _act_sums(row, module)
            return
        if watch:
            # the output is read later (background: now or a little later; the variance
            # retake: after the step): whether anything changed it in place is checked
            # by its version counter before the optimizer's step
            self.watched.append((layer, out, out._version, row if layer.defer else None))
        if layer.defer:
            bg.submit(_act_sums, row, module)
        else:
            _act_sums(row, module)

    def check_unchanged(self) -> None:
        """After the forward passes, with the background thread idle: a layer whose output
        was left unchanged has its statistics taken in the background from then on; one
        changed in place keeps them on the training thread (its forward hook), and a
        background row read from such a changed tensor is dropped (NaN, not a wrong
        number); the variance retake never reads a changed tensor."""
        seen = {}
        for layer, out, version, row in self.watched:
            same = out._version == version
            seen[id(layer)] = (layer, seen.get(id(layer), (layer, True))[1] and same)
            if not same:
                for r in self.act.get(id(layer), ()):
                    if r[4] is not None and r[4].data_ptr() == out.data_ptr():
                        r[4] = None  # no retake from it
                        if r is row:  # read on the background thread: maybe changed
                            r[6] = False
        for layer, same in seen.values():
            if not same:
                layer.defer = False
            elif layer.defer is None:
                layer.defer = True
        self.watched = []

    def device_stats(self, layers):
        """Delta norms and activation statistics as one flat list of tensors, and where
        each layer's entries are in it."""
        flat, index = [], {}
        for l in layers:
            norms = self.delta.get(id(l))
            if norms:
                index[("d", id(l))] = (len(flat), len(norms))
                flat += norms
            rows = self.act.get(id(l))
            if rows:
                index[("a", id(l))] = (len(flat), len(rows))
                for _, mean, second, sat, _, _, _ in rows:
                    flat += [mean, second] if sat is None else [mean, second, sat]
                index[("a", id(l))] += (tuple(r[3] is not None for r in rows),)
        return flat, index

    def delta_norms(self, host: list, index, layers) -> list[float]:
        out = []
        for l in layers:
            if ("d", id(l)) not in index:
                out.append(math.nan)
                continue
            k, m = index[("d", id(l))]
            v = math.sqrt(math.fsum(x * x for x in host[k:k + m]))
            ts = self.delta_t.get(id(l), [])
            if (v < _UNDERFLOW or not math.isfinite(v)) and ts and ts[0].dtype != torch.float64:
                v = math.sqrt(sum(float(torch.linalg.vector_norm(t.double())) ** 2 for t in ts))
            out.append(v / self.delta_scale)
        return out

    def act_values(self, host: list, index, layers):
        mean, std, sat = [], [], []
        for l in layers:
            rows = self.act.get(id(l))
            if l.last or not rows or ("a", id(l)) not in index:
                mean.append(math.nan), std.append(math.nan), sat.append(math.nan)
                continue
            k, _, has_sat = index[("a", id(l))]
            vals = []  # per forward: (count, mean, variance, saturated count)
            for r, h in zip(rows, has_sat):
                n = float(r[0])
                mu, e2 = host[k] / n, host[k + 1] / n  # sums -> mean, E[a^2]
                c = host[k + 2] if h else math.nan
                if r[5]:  # the count of the others (ReLU: outputs > 0)
                    c = n - c
                k += 2 + h
                if not r[6]:  # read while the forward pass changed it: not known
                    mu = e2 = c = math.nan
                var = e2 - mu * mu
                if not (math.isfinite(var) and var >= 0.1 * e2) and r[6] and r[4] is not None:
                    mu, var = _mean_var64(r[4])  # cancellation: two passes
                vals.append((n, mu, var, c))
            N = sum(v[0] for v in vals)
            mu = sum(n * m for n, m, _, _ in vals) / N
            var = sum(n * (v + (m - mu) ** 2) for n, m, v, _ in vals) / N
            mean.append(mu)
            std.append(math.sqrt(max(var, 0.0)))
            sat.append(sum(v[3] for v in vals) / N)
        return mean, std, sat

    def device_probe(self, layers, bins, edges):
        """Per hidden layer on the probe data: alive flags per unit, histogram counts,
        mean, variance, saturated count, as flat tensors."""
        lo, hi = edges
        flat, index = [], {}
        for l in layers[:-1]:
            rows = self.probe.get(id(l))
            if not rows:
                continue
            alive = counts = None
            n_el, sums = 0, []
            for a, module in rows:
                thr = M.dead_threshold(module)
                dims = [d for d in range(a.dim()) if d != 1] if a.dim() > 1 else []
                flags = (a > thr) if not math.isnan(thr) else torch.ones_like(a, dtype=torch.bool)
                al = flags.any(dim=dims) if dims else flags
                alive = al if alive is None else alive | al
                t = (a - lo) * (bins / (hi - lo))
                t = torch.nan_to_num(t, nan=0.0).clamp_(0, bins - 1)
                c = torch.bincount(t.to(torch.int64).reshape(-1), minlength=bins)
                counts = c if counts is None else counts + c
                v64 = a.reshape(-1).double()  # probe steps only: two passes, on the device
                mu = v64.mean()
                var = ((v64 - mu) ** 2).mean()
                n_sat = M.saturated_count(module, a) if module is not None else None
                s = (n_sat.to(a.dtype) if n_sat is not None
                     else torch.full((), math.nan, dtype=a.dtype, device=a.device))
                sums.append((a.numel(), mu, var, s))
                n_el += a.numel()
            index[id(l)] = (len(flat), alive.numel(), len(sums), rows[0][1])
            flat.append(alive.to(torch.float64).reshape(-1))
            flat.append(counts.to(torch.float64))
            for _, mu, var, s in sums:
                flat += [mu.reshape(1), var.reshape(1), s.reshape(1)]
        return flat, index

    def probe_values(self, host, index, layers, bins):
        """The probes table's columns and the per-unit arrays, from the host copy."""
        n = len(layers)
        metrics = {k: np.full(n, np.nan) for k in (
            "dead_frac", "probe_act_mean", "probe_act_std", "probe_saturated_frac")}
        dead, hist = [], []
        pos = 0
        sizes = []
        for l in layers[:-1]:
            if id(l) in index:
                _, width, m, module = index[id(l)]
                sizes.append((l, width, m, module))
        for l in layers[:-1]:
            width = M.units(l.module)
            if id(l) not in index:
                dead.append(np.zeros(width, dtype=np.uint8))
                hist.append(np.zeros(bins, dtype=np.int64))
                continue
            _, w, m, module = index[id(l)]
            alive = host[pos:pos + w]
            pos += w
            counts = host[pos:pos + bins]
            pos += bins
            vals = host[pos:pos + 3 * m].reshape(-1, 3)
            pos += 3 * m
            ns = np.array([a.numel() for a, _ in self.probe[id(l)]], dtype=float)
            N = ns.sum()
            mu = float((ns * vals[:, 0]).sum() / N)
            var = float((ns * (vals[:, 1] + (vals[:, 0] - mu) ** 2)).sum() / N)
            d = (alive == 0)
            if w != width:  # a layer whose output is not (batch, units, ...): no unit flags
                d = np.zeros(width, dtype=bool)
            dead.append(d.astype(np.uint8))
            hist.append(counts.astype(np.int64))
            i = l.index
            if module is not None and isinstance(module, M.RELU_FAMILY):
                metrics["dead_frac"][i] = float(d.mean())
            metrics["probe_act_mean"][i] = mu
            metrics["probe_act_std"][i] = math.sqrt(max(var, 0.0))
            metrics["probe_saturated_frac"][i] = float(vals[:, 2].sum() / N)
        return metrics, dead, hist


def _act_sums(row: list, module) -> None:
    """The sums of an activation row: mean and E[a^2] from one sum and one dot product
    (torch.var_mean is ten times slower on CPU; where the spread is below a tenth of E[a^2]
    the variance is taken again in two passes, see act_values), and the saturation tally."""
    a = row[4]
    v = a.reshape(-1)
    row[1] = v.sum()  # divided by the count on the host
    row[2] = torch.dot(v, v)
    tally = M.saturation_tally(module, a) if module is not None else None
    sat, complement = tally if tally is not None else (None, False)
    if sat is not None and sat.dtype != a.dtype:
        sat = sat.to(a.dtype)
    row[3], row[5] = sat, complement


def _subtract(pairs) -> None:
    with torch.no_grad():
        for d, w in pairs:
            d.sub_(w)


def _delta_norm(slot: list) -> None:
    with torch.no_grad():
        slot[2] = _norm(slot[0])


def _post_norms(acc: _Acc, post, fp, deltas) -> None:
    """The pre-hook's norms when the gradients' were taken after the backward pass: the
    deltas', and (``post``) the gradients' where the loop changed them since, or (``fp``)
    a few of them to see whether an unseen GradScaler unscaled them."""
    with torch.no_grad():
        k = len(post) + len(fp)
        norms = _norms([*post, *fp, *(g for _, g in deltas)])
        acc.post = norms[:len(post)] or None
        acc.fp = norms[len(post):k] or None
        for (key, _), d in zip(deltas, norms[k:]):
            acc.delta.setdefault(key, []).append(d)


def _grad_norms(acc: _Acc, gs, bgs, others, deltas, start: int = 0,
                retake: bool = True) -> dict:
    """Gradient norms of the pre-hook (``gs``: the weights' from layer ``start`` on,
    ``bgs``: the biases'), in one call, into ``acc``; the weights' and biases' retaken in
    float64 where they may have underflowed: returned as {(kind, layer): value}."""
    with torch.no_grad():
        norms = _norms([*gs, *bgs, *others, *(g for _, g in deltas)])
        n, m = len(gs), len(bgs)
        acc.g_norm[start:start + n] = norms[:n]
        if m:
            acc.b_norm = norms[n:n + m]
        k = n + m + len(others)
        if others or m:
            acc.others = norms[n + m:k]
        for (key, _), d in zip(deltas, norms[k:]):
            acc.delta.setdefault(key, []).append(d)
        if not retake:
            return {}
        fixed = _retaken("g", gs, norms[:n], start)
        fixed.update(_retaken("b", bgs, norms[n:n + m]))
        return fixed


def _grad_norms_bg(acc: _Acc, gs, bgs, others, deltas) -> None:
    acc.fixed_bg = _grad_norms(acc, gs, bgs, others, deltas)


def _weight_norms(acc: _Acc, bufs) -> None:
    """The weights' norms from their copies (background thread, waited for before the
    post-hook overwrites the copies with the differences)."""
    with torch.no_grad():
        acc.w_norm = _norms(bufs)
        fixed = acc.fixed if acc.fixed is not None else {}
        fixed.update(_retaken("w", bufs, acc.w_norm))
        acc.fixed = fixed


def _retaken(kind: str, tensors, norms, start: int = 0) -> dict:
    """Norms that may have underflowed (or overflowed) in float32, taken again in float64
    from their tensors: {(kind, i): value}."""
    live = [(i, r) for i, r in enumerate(norms) if r is not None]
    if not live:
        return {}
    vals = torch.stack([r.to(torch.float64) for _, r in live]).tolist()
    out = {}
    for (i, _), v in zip(live, vals):
        t = tensors[i]
        if (v < _UNDERFLOW or math.isinf(v)) and not (t.dtype == torch.float64
                                                     and not math.isnan(v)):
            out[(kind, start + i)] = float(torch.linalg.vector_norm(_dense(t).double()))
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Background:
    """One thread that runs the recording's reductions in order (torch releases the GIL in
    its operations, so they overlap the training thread's). ``wait()`` returns once all
    submitted work is done, and raises on the training thread what failed there."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._cv = threading.Condition()
        # counts written by one thread each (submitted: the training thread; done: this
        # one), so a submission costs a queue put and an idle wait returns at once
        self._sent = self._done = 0
        self._waiting = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="gradscope-torch-stats",
                                         daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        self._sent += 1
        self._q.put((fn, args))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args = item
            try:
                if self._error is None:  # after a failure the step's numbers are void
                    fn(*args)
            except BaseException as e:  # noqa: BLE001 - raised on the training thread
                self._error = e
            finally:
                self._done += 1
                if self._waiting:
                    with self._cv:
                        self._cv.notify_all()

    def wait(self) -> None:
        if self._done != self._sent:
            with self._cv:
                self._waiting = True
                while self._done != self._sent:
                    self._cv.wait(0.05)
                self._waiting = False
        e, self._error = self._error, None
        if e is not None:
            text = str(e).splitlines()[0] if str(e) else ""
            raise WatchError(f"gradscope.torch: taking a step's numbers failed: "
                             f"{type(e).__name__}" + (f": {text}" if text else "")) from e

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join()


def _mean_var64(a: torch.Tensor) -> tuple[float, float]:
    """Mean and population variance of all of ``a`` in float64, in two passes."""
    v = a.detach().reshape(-1).double()
    if not v.numel():
        return math.nan, math.nan
    m = v.mean()
    return float(m), float(((v - m) ** 2).mean())


def _np(t: torch.Tensor) -> np.ndarray:
    a = t.detach().to("cpu")
    if a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    return a.numpy().copy()


def _np_dtype(t: torch.Tensor):
    return np.float32 if t.dtype in (torch.float16, torch.bfloat16) else _np(t.flatten()[:0]).dtype


def _norm(t: torch.Tensor) -> torch.Tensor:
    """The norm of one tensor (half precision accumulated in float32)."""
    half = t.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(t, dtype=torch.float32 if half else None)


def _first_uses(layers):
    """For the weights, then the biases of ``layers``: whether it is the parameter's first
    appearance."""
    seen: set = set()
    out = []
    for p in [l.module.weight for l in layers] + [getattr(l.module, "bias", None)
                                                  for l in layers]:
        out.append(not isinstance(p, torch.Tensor) or id(p) not in seen)
        if isinstance(p, torch.Tensor):
            seen.add(id(p))
    return out


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A tensor whose norm is ``t``'s: a sparse gradient's (``nn.Embedding(sparse=True)``)
    coalesced values (torch has no norm of a sparse tensor; duplicate indices are summed)."""
    t = t.detach()
    return t.coalesce().values() if t.is_sparse else t


def _norms(tensors: list) -> list:
    """Norms of the tensors (None for a missing one), grouped by device and dtype for
    ``torch._foreach_norm``; half-precision tensors accumulate in float32."""
    out: list = [None] * len(tensors)
    groups: dict = {}
    for i, t in enumerate(tensors):
        if t is None:
            continue
        groups.setdefault((t.device, t.dtype), []).append(i)
    for (_, dtype), idx in groups.items():
        ts = [_dense(tensors[i]) for i in idx]
        if dtype in (torch.float16, torch.bfloat16):
            res = [torch.linalg.vector_norm(t, dtype=torch.float32) for t in ts]
        else:
            res = torch._foreach_norm(ts)
        for i, r in zip(idx, res):
            out[i] = r
    return out


def _flatten(parts):
    """The tensors of lists ``parts`` in one list, and each one's position (None: missing)."""
    flat, index = [], []
    for part in parts:
        pos = []
        for t in part:
            pos.append(None if t is None else len(flat))
            if t is not None:
                flat.append(t)
        index.append(pos)
    return flat, index


def _unflatten(host, index):
    return [[math.nan if i is None else host[i] for i in pos] for pos in index]


def _to_host(tensors: list) -> np.ndarray:
    """The tensors' values, flattened, in order, as one float64 array: one device-to-host
    copy (0-d tensors of one dtype stacked at once; a conversion per tensor cost ~100
    copies)."""
    if not tensors:
        return np.zeros(0)
    dev = tensors[0].device
    groups: dict = {}
    for i, t in enumerate(tensors):  # 0-d tensors by dtype and device; others one by one
        groups.setdefault((t.dtype, t.device) if t.dim() == 0 else i, []).append(i)
    if (len(groups) == 1 and tensors[0].dim() == 0
            and tensors[0].dtype in (torch.float32, torch.float64)):  # the usual step
        return torch.stack(tensors).cpu().numpy().astype(np.float64)
    parts, order = [], []
    for key, idx in groups.items():
        if isinstance(key, tuple):
            parts.append(torch.stack([tensors[i] for i in idx]).to(dev, torch.float64))
            order += [(i, 1) for i in idx]
        else:
            parts.append(tensors[key].reshape(-1).to(dev, torch.float64))
            order.append((key, tensors[key].numel()))
    host = torch.cat(parts).cpu().numpy()
    # back into the callers' order
    pieces, pos = {}, 0
    for i, k in order:
        pieces[i] = host[pos:pos + k]
        pos += k
    return np.concatenate([pieces[i] for i in range(len(tensors))])


def _number(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return float(v.float().mean()) if v.numel() != 1 else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _jsonable(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return str(v)


"""Many runs of one shape trained together: a stack of networks in one process.

Runs that differ only in their seed, initialisation (scheme and gain) and optimizer (name
and hyper-parameters) have arrays of the same shapes. :func:`train_stack` keeps each
parameter array of all of them in one array with a leading run axis and does every pass
with one numpy call for the whole stack (batched matrix products, elementwise work and the
recorded statistics over all runs at once), where separate runs make one call per run:
on small nets those calls, not the arithmetic, are what a step costs.

Each run still gets its own data order, probe set, validation split (all from its seed,
as :func:`gradscope.training.loop.train` draws them) and its own log, with the rows a
separate run writes: equal to rounding (the batched products may add in another order;
1e-6 relative in float64, tested against separate runs for every optimizer). The
optimizer runs on each group of runs that share the optimizer and its hyper-parameters,
over the group's slice of the stack (its update rules are elementwise, so every element
gets the arithmetic of a separate run). A run that diverges is logged and closed as a
separate run would be, and leaves the stack.

Stacks are for the plain MLP: the remedies (dropout, residual, normalisation, clipping)
train run by run (:func:`stack_key` is None for them).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .._blas import MIN_THREADED_WORK, blas_threads
from ..engine import data as data_mod
from ..engine.activations import get_activation
from ..engine.mlp import init_params
from ..engine.optimizers import make_optimizer
from ..engine.stats import (
    stack_column_sums,
    stack_mean_std,
    stack_norms,
    stack_saturated_fraction,
)
from ..record.probes import STEP_METRICS, bin_counts, histogram_edges
from ..record.writer import LogWriter, one_line
from ._malloc import keep_freed_memory
from ._signals import StopRequest
from .loop import OPTIMIZER_OPTIONS, Prepared, RunResult, TrainConfig, prepare

#: the options in which the runs of one stack may differ
PER_RUN = ("seed", "init", "init_gain", "optimizer", *OPTIMIZER_OPTIONS)
#: logged steps (or seconds) after which the stack gives the rows it holds to the logs
HAND_OVER_STEPS, HAND_OVER_SECONDS = 64, 1.0


def stack_key(config: TrainConfig) -> tuple | None:
    """What runs must share to train in one stack (None: this run trains alone).

    Everything but :data:`PER_RUN`; runs with a remedy (dropout, residual, norm,
    clipping) train alone.
    """
    if config.arch() is not None or config.clipping:
        return None
    d = asdict(config)
    d.pop("extra", None)
    for k in PER_RUN:
        d.pop(k)
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def stacks_of(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped into stacks (in order of first appearance); a run
    that cannot be stacked is a stack of its own."""
    groups: dict = {}
    out: list[list[int]] = []
    for i, c in enumerate(configs):
        key = stack_key(c)
        if key is None:
            out.append([i])
        elif key in groups:
            groups[key].append(i)
        else:
            groups[key] = [i]
            out.append(groups[key])
    return out


class _Group:
    """The runs of the stack (a contiguous slice) that share one optimizer."""

    def __init__(self, opt, start: int, stop: int, params: list[np.ndarray]):
        self.opt, self.start, self.stop = opt, start, stop
        self.state = opt.init([p[start:stop] for p in params])
        self.out = [np.empty_like(p[start:stop]) for p in params]

    def step(self, grads, params) -> None:
        s = slice(self.start, self.stop)
        self.state = self.opt.update_inplace([g[s] for g in grads], self.state,
                                             [p[s] for p in params], self.out)
        for p, u in zip(params, self.out):
            p[s] += u

    def drop(self, k: int) -> None:
        """Remove the group's run ``k`` (an index in the group) from its state."""
        self.state = type(self.state)(*[
            [np.delete(a, k, axis=0) for a in f] if isinstance(f, list) else f
            for f in self.state])
        self.out = [np.delete(u, k, axis=0) for u in self.out]
        self.stop -= 1


def _opt_key(cfg: TrainConfig):
    return cfg.optimizer, tuple(sorted(cfg.optimizer_overrides().items()))


def _prepare_all(configs) -> list[Prepared]:
    """:func:`prepare` each configuration, loading the dataset once for the stack."""
    from ..engine.data import load_dataset

    loaded: dict = {}
    out = []
    for c in configs:
        if isinstance(c, Prepared):
            out.append(c)
            continue
        c.check()
        key = (c.dataset, c.target, c.data_seed)
        if key not in loaded:
            loaded[key] = load_dataset(c.dataset, target=c.target, seed=c.data_seed)
        out.append(prepare(c, loaded[key]))
    return out


def _check_same(preps: list[Prepared]) -> None:
    keys = {stack_key(p.config) for p in preps}
    if None in keys or len(keys) != 1:
        raise ValueError("train_stack: the runs of a stack may differ only in "
                         f"{', '.join(PER_RUN)}, and use no remedy")


def train_stack(
    configs: Sequence[TrainConfig | Prepared],
    outs: Sequence[str | Path],
    progress: Callable[[int, int], None] | None = None,
    on_end: Callable[[int, RunResult], None] | None = None,
) -> list[RunResult]:
    """Train ``configs`` (runs of one :func:`stack_key`) together; run ``i`` logs to
    ``outs[i]`` exactly what ``train(configs[i], outs[i])`` would log, to rounding.

    ``progress(step, total)`` is called after every step of the stack; ``on_end(i,
    result)`` when run ``i`` ends (diverged runs end early). Ctrl-C or SIGTERM end every
    run that is still training ``interrupted``, between two steps. Returns the results in
    the order of ``configs``.
    """
    if len(configs) != len(outs):
        raise ValueError(f"{len(configs)} configurations but {len(outs)} log paths")
    if not configs:
        return []
    preps = _prepare_all(configs)
    _check_same(preps)
    keep_freed_memory()
    # runs that share an optimizer next to each other: each group steps on one slice
    order = sorted(range(len(preps)), key=lambda i: repr(_opt_key(preps[i].config)))
    preps = [preps[i] for i in order]
    outs = [Path(outs[i]) for i in order]
    results: list[RunResult | None] = [None] * len(preps)

    p0, r0 = preps[0], preps[0].resolved
    cfg0 = p0.config
    act = get_activation(cfg0.activation)
    dtype = np.dtype(cfg0.dtype)
    sizes = r0["sizes"]
    L = len(sizes) - 1
    S = len(preps)
    runs = list(range(S))  # the original (sorted) index of each run still in the stack

    per_run = [init_params(sizes, p.config.init, np.random.default_rng([p.config.seed, 0]),
                           p.config.init_gain, dtype) for p in preps]
    params = [np.stack([pr[i] for pr in per_run]) for i in range(2 * L)]
    groups: list[_Group] = []
    start = 0
    while start < S:
        stop = start
        key = _opt_key(preps[start].config)
        while stop < S and _opt_key(preps[stop].config) == key:
            stop += 1
        cfg = preps[start].config
        groups.append(_Group(make_optimizer(cfg.optimizer, **cfg.optimizer_overrides()),
                             start, stop, params))
        start = stop
    lrs = [float(g.opt.hyper.get("lr", float("nan"))) for g in groups
           for _ in range(g.stop - g.start)]

    classification = p0.classification
    X = np.stack([p.X for p in preps])
    y = np.stack([p.y for p in preps])
    X_val = np.stack([p.X_val for p in preps])
    y_val = np.stack([p.y_val for p in preps])
    n = X.shape[1]
    probe_size = r0["probe_size"]
    X_probe = np.stack([
        p.X[np.sort(np.random.default_rng([p.config.seed, 3]).choice(n, probe_size,
                                                                      replace=False))]
        for p in preps])
    edges = histogram_edges(act, cfg0.hist_bins)
    lo, hi, nb = float(edges[0]), float(edges[-1]), len(edges) - 1
    batch_rngs = [np.random.default_rng([p.config.seed, 2]) for p in preps]
    total, bs = r0["total_steps"], r0["batch_size_resolved"]
    log_every, probe_every = cfg0.log_every, r0["probe_every"]
    snap_every = cfg0.snapshot_every
    layer_idx = np.arange(L)

    # each log takes S times longer per step than a separate run's: flushing it after as
    # many steps keeps the writes from costing S times as much (rows stay at most this
    # many seconds in memory)
    flush_interval = min(10.0, max(1.0, S / 4))
    writers = []
    # Ctrl-C and SIGTERM stop the stack between steps (see _signals), from before the first
    # log exists: every log this creates is closed with a status
    stop_req = StopRequest().__enter__()
    try:
        for p, out, pr in zip(preps, outs, per_run):
            writers.append(LogWriter(out, p.resolved, pr, edges, snapshots=snap_every > 0,
                                     norm_params=[], norm_state=None,
                                     flush_interval=flush_interval))
    except BaseException:
        for w in writers:
            w.close("interrupted", "could not create every log of the stack")
        stop_req.__exit__()
        raise

    def end(k: int, status: str, message: str, step: int, loss: float) -> None:
        """Close run ``k`` (a position in the stack) with its final parameters (a failed
        run's may be half updated: they stay NaN)."""
        i = runs[k]
        if status == "failed":
            writers[i].close(status, message)
        else:
            writers[i].close(status, message, [p[k] for p in params], [], None)
        results[i] = RunResult(outs[i], status, message, step, float(loss))
        if on_end is not None:
            on_end(order[i], results[i])

    def write_rows(k: int, probed: bool) -> None:
        """Run ``k``'s rows of this step (the metrics ``M`` of every run, (runs, layers))."""
        w = writers[runs[k]]
        w.append("steps", step=step, epoch=epoch, loss=float(loss[k]), accuracy=float(acc[k]),
                 lr=lrs[runs[k]], grad_norm_total=float(gnorm[k]), time=now, clipped=0)
        w.append("layers", L, step=step, layer=layer_idx, **{c: M[c][k] for c in STEP_METRICS})
        if probed:
            pm, dead, hist = probe
            w.append("probes", L, step=step, layer=layer_idx, **{c: v[k] for c, v in pm.items()})
            w.append_units(step, [d[k] for d in dead], [h[k] for h in hist])
        w.end_step()

    # the logged steps' rows wait here and are given to the logs a batch at a time (one
    # append per table and log, instead of one per step): every epoch, every
    # HAND_OVER_STEPS logged steps or HAND_OVER_SECONDS, before a run leaves the stack and
    # before the logs close. Only whole steps wait; a log gets them in step order.
    pending: list[tuple] = []
    given: set[int] = set()  # runs (positions) that have the pending rows already
    last_hand = [time.perf_counter()]
    names = tuple(STEP_METRICS)

    def hand_over() -> None:
        if not pending:
            return
        n = len(pending)
        steps = np.array([r[0] for r in pending], dtype=np.int64)
        epochs = np.array([r[1] for r in pending], dtype=np.int64)
        times = np.array([r[2] for r in pending], dtype=np.float64)
        loss_, acc_, gn_ = (np.stack([r[j] for r in pending], axis=1) for j in (3, 4, 5))
        block = np.stack([np.stack([r[6][c] for c in names], axis=-1) for r in pending],
                         axis=1)  # (runs, steps, layers, metrics)
        lsteps, layers = np.repeat(steps, L), np.tile(layer_idx, n)
        probes = [(r[0], r[7]) for r in pending if r[7] is not None]
        failed = None
        for k, i in enumerate(runs):
            if k in given:
                continue
            w = writers[i]
            try:
                w.append("steps", n, step=steps, epoch=epochs, loss=loss_[k], accuracy=acc_[k],
                         lr=lrs[i], grad_norm_total=gn_[k], time=times, clipped=0)
                w.append_block("layers", n * L, names, block[k].reshape(n * L, len(names)),
                               step=lsteps, layer=layers)
                for st, (pm, dead, hist) in probes:
                    w.append("probes", L, step=st, layer=layer_idx,
                             **{c: v[k] for c, v in pm.items()})
                    w.append_units(st, [d[k] for d in dead], [h[k] for h in hist])
                given.add(k)
                w.end_step()
            except Exception as e:  # noqa: BLE001 -- the other logs get their rows first
                failed = failed or e
        pending.clear()
        given.clear()
        last_hand[0] = time.perf_counter()
        if failed is not None:
            raise failed

    status_all, done, error = "completed", False, None
    step, epoch = 0, 0
    losses = np.full(S, np.nan)
    t0 = time.perf_counter()
    quiet = np.errstate(over="ignore", invalid="ignore", divide="ignore")
    quiet.__enter__()
    # each product of the stack is one small net's (a batched product loops over them)
    blas = blas_threads(1) if bs * sum(p[0].size for p in params) < MIN_THREADED_WORK \
        else contextlib.nullcontext()
    blas.__enter__()
    try:
        while step < total and runs:
            ep_loss = np.zeros(len(runs))
            ep_acc = np.zeros(len(runs))
            ep_n = 0
            epoch_idx = [data_mod.epoch_batches(n, bs, batch_rngs[i]) for i in runs]
            for _ in range(math.ceil(n / bs)):
                if step >= total or not runs:
                    break
                idx = np.stack([next(g) for g in epoch_idx])
                sel = np.array(runs)[:, None]
                Xb, yb = X[sel, idx], y[sel, idx]
                logged = step % log_every == 0 or step == total - 1
                outp, inputs, pre = _forward(params, Xb, act)
                if classification:
                    loss, dout, acc = _cross_entropy(outp, yb)
                else:
                    loss, dout = _mse(outp, yb)
                    acc = np.full(len(runs), np.nan)
                grads, deltas, dphi = _backward(params, inputs, pre, dout, act)
                gn = np.stack([stack_norms(g) for g in grads], axis=1)  # (runs, 2L)
                gnorm = np.sqrt((gn * gn).sum(axis=1))
                diverged = ~(np.isfinite(loss) & np.isfinite(gnorm))
                probed = step % probe_every == 0 or step == total - 1
                if probed or diverged.any():
                    probe = _probe(params, X_probe[runs], act, lo, hi, nb)
                if logged or diverged.any():
                    M = _step_metrics(params, inputs, deltas, dphi, gn, act)
                    now = time.perf_counter() - t0
                if snap_every and step % snap_every == 0:
                    hand_over()  # a snapshot is committed with its step's rows, not before
                    for k, i in enumerate(runs):
                        writers[i].append_snapshot(step, [p[k] for p in params], [], None)
                if diverged.any():
                    hand_over()
                    # the row a separate run writes, then the run leaves the stack
                    for k in np.flatnonzero(diverged)[::-1]:
                        write_rows(k, True)
                        bad = not math.isfinite(loss[k])
                        what = "loss" if bad else "gradient norm"
                        value = float(loss[k]) if bad else float(gnorm[k])
                        end(k, "diverged", f"{what} became {value} at step {step} "
                            f"(epoch {epoch})", step, loss[k])
                        for g in groups:
                            if g.start <= k < g.stop:
                                g.drop(k - g.start)
                            elif g.start > k:
                                g.start -= 1
                                g.stop -= 1
                    keep = np.flatnonzero(~diverged)
                    groups = [g for g in groups if g.stop > g.start]
                    runs = [runs[k] for k in keep]
                    if not runs:
                        break
                    params, grads, gn, gnorm, loss, acc, idx, ep_loss, ep_acc = _take(
                        (params, grads, gn, gnorm, loss, acc, idx, ep_loss, ep_acc), keep)
                    M, probe = _take((M, probe), keep)
                    epoch_idx = [epoch_idx[k] for k in keep]
                    diverged = diverged[keep]
                for g in groups:
                    g.step(grads, params)
                if logged:
                    u = M["update_norm"] = np.concatenate(
                        [np.stack([stack_norms(u) for u in g.out[0::2]], axis=1)
                         for g in groups])
                    w = M["weight_norm"]
                    M["update_ratio"] = np.divide(u, w, out=np.full(u.shape, np.inf),
                                                  where=w > 0)
                    pending.append((step, epoch, now, loss, acc, gnorm, M,
                                    probe if probed else None))
                    if (len(pending) >= HAND_OVER_STEPS
                            or time.perf_counter() - last_hand[0] >= HAND_OVER_SECONDS):
                        hand_over()
                ep_loss += loss * idx.shape[1]
                ep_acc += acc * idx.shape[1]
                ep_n += idx.shape[1]
                losses = loss
                step += 1
                if progress is not None:
                    progress(step, total)
                stop_req.check()
            if not runs:
                break
            hand_over()  # an epoch's row is committed after its steps' rows
            if ep_n:
                _log_epochs(writers, runs, params, X_val[runs], y_val[runs], act,
                            classification, epoch, step, ep_loss / ep_n,
                            ep_acc / ep_n if classification else None,
                            time.perf_counter() - t0)
            epoch += 1
        done = True
    except KeyboardInterrupt:
        done = True
        status_all = "interrupted"
    except BaseException as e:  # noqa: BLE001 -- recorded as every open run's status, raised
        error = e
    finally:
        quiet.__exit__(None, None, None)
        blas.__exit__(None, None, None)
        # closing the logs takes a moment per run: a further signal (the one that makes a
        # user's second Ctrl-C raise at once, or a process pool terminating its workers)
        # must not leave some of them unclosed
        _hold_signals()
        try:
            try:  # every finished step's rows, whatever stopped the stack
                hand_over()
            except Exception as e:  # noqa: BLE001 -- a write error: the runs end failed
                if error is None:
                    error = e
            where = f"at step {step} (epoch {epoch})"
            if error is not None:  # the runs still training failed with it
                status_all = "failed"
                msg = (f"out of memory {where}: {one_line(error)}"
                       if isinstance(error, MemoryError) else f"{one_line(error)} {where}")
            elif not done:
                status_all = "interrupted"
                msg = f"interrupted {where}"
            else:
                msg = "" if status_all == "completed" else f"interrupted {where}"
            for k in range(len(runs) - 1, -1, -1):
                end(k, status_all, msg, step, losses[k] if k < len(losses) else np.nan)
        finally:
            stop_req.__exit__()
    if error is not None:
        raise error
    back = [None] * len(results)
    for i, r in zip(order, results):
        back[i] = r
    return back


def _step_metrics(params, inputs, deltas, dphi, gn, act) -> dict[str, np.ndarray]:
    """:func:`gradscope.record.probes.step_metrics` of every run, each a (runs, layers)
    array; the update norms and ratios are NaN (no update applied yet)."""
    S, L = gn.shape[0], len(params) // 2
    M = {c: np.full((S, L), np.nan) for c in STEP_METRICS}
    M["grad_norm"], M["bias_grad_norm"] = gn[:, 0::2], gn[:, 1::2]
    M["delta_norm"] = np.stack([stack_norms(d) for d in deltas], axis=1)
    M["weight_norm"] = np.stack([stack_norms(p) for p in params[0::2]], axis=1)
    for l in range(L - 1):
        M["act_mean"][:, l], M["act_std"][:, l] = stack_mean_std(inputs[l + 1])
        M["saturated_frac"][:, l] = stack_saturated_fraction(dphi[l], act)
    return M


def _hold_signals() -> None:
    """Ignore SIGINT and SIGTERM where they are handled (StopRequest.__exit__ restores the
    handlers that were there before it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, signal.SIG_IGN)


def _take(obj, keep):
    """``obj`` with only the runs ``keep`` (arrays indexed on their first axis)."""
    if isinstance(obj, np.ndarray):
        return obj[keep]
    if isinstance(obj, dict):
        return {k: _take(v, keep) for k, v in obj.items()}
    return type(obj)(_take(v, keep) for v in obj)


def _forward(params, X, act):
    """The plain MLP on a stack: ``X`` (runs, batch, n_in); returns the output, each layer's
    input and each layer's pre-activation (as :func:`gradscope.engine.mlp.forward`)."""
    inputs, pre = [], []
    a = X
    L = len(params) // 2
    for l in range(L):
        z = np.matmul(a, params[2 * l])
        z += params[2 * l + 1][:, None, :]
        inputs.append(a)
        pre.append(z)
        if l < L - 1:
            a = act.f(z)
    return pre[-1], inputs, pre


def _backward(params, inputs, pre, dout, act):
    L = len(params) // 2
    grads = [None] * (2 * L)
    deltas = [None] * L
    dphi = [None] * (L - 1)
    delta = dout
    for l in range(L - 1, -1, -1):
        deltas[l] = delta
        grads[2 * l] = np.matmul(inputs[l].transpose(0, 2, 1), delta)
        grads[2 * l + 1] = stack_column_sums(delta)
        if l > 0:
            d = act.df(pre[l - 1], inputs[l])
            dphi[l - 1] = d
            delta = np.matmul(delta, params[2 * l].transpose(0, 2, 1))
            delta *= d
    return grads, deltas, dphi


def _cross_entropy(logits, y):
    """Per run: the mean softmax cross-entropy, its gradient and the accuracy
    (:func:`gradscope.engine.losses.softmax_cross_entropy`, :func:`~.accuracy`)."""
    S, n, _ = logits.shape
    shifted = logits - logits.max(axis=2, keepdims=True)
    exp = np.exp(shifted)
    sums = exp.sum(axis=2, keepdims=True)
    r, c = np.arange(S)[:, None], np.arange(n)[None, :]
    loss = np.mean(np.log(sums[:, :, 0]) - shifted[r, c, y], axis=1).astype(np.float64)
    acc = np.mean(np.argmax(logits, axis=2) == y, axis=1)
    grad = exp
    grad /= sums
    grad[r, c, y] -= 1
    grad /= n
    return loss, grad, acc


def _mse(out, y):
    diff = out - y.reshape(out.shape)
    loss = np.mean((diff * diff).reshape(out.shape[0], -1), axis=1).astype(np.float64)
    diff *= 2.0 / (diff.size // diff.shape[0])
    return loss, diff


def _probe(params, X, act, lo, hi, nb):
    """:func:`gradscope.record.probes.probe_metrics` for every run of the stack: the
    metrics as (runs, layers) arrays, dead flags and histograms per layer as (runs, ...)."""
    _, inputs, pre = _forward(params, X, act)
    S, L = X.shape[0], len(params) // 2
    metrics = {k: np.full((S, L), np.nan) for k in (
        "dead_frac", "probe_act_mean", "probe_act_std", "probe_saturated_frac")}
    dead, hist = [], []
    for l in range(L - 1):
        z, a = pre[l], inputs[l + 1]
        d = (z <= 0).all(axis=1)
        dead.append(d.astype(np.uint8))
        if act.relu_family:
            metrics["dead_frac"][:, l] = d.mean(axis=1)
        metrics["probe_act_mean"][:, l], metrics["probe_act_std"][:, l] = stack_mean_std(a)
        metrics["probe_saturated_frac"][:, l] = stack_saturated_fraction(act.df(z, a), act)
        hist.append(np.stack([bin_counts(a[k], lo, hi, nb) for k in range(S)]))
    return metrics, dead, hist


def _log_epochs(writers, runs, params, X_val, y_val, act, classification, epoch, step,
                train_loss, train_acc, t):
    val_loss = np.full(len(runs), np.nan)
    val_acc = np.full(len(runs), np.nan)
    if X_val.shape[1]:
        out, _, _ = _forward(params, X_val, act)
        if classification:
            val_loss, _, val_acc = _cross_entropy(out, y_val)
        else:
            val_loss, _ = _mse(out, y_val)
    for k, i in enumerate(runs):
        writers[i].append("epochs", epoch=epoch, step=step, train_loss=float(train_loss[k]),
                          train_accuracy=float(train_acc[k]) if classification else np.nan,
                          val_loss=float(val_loss[k]), val_accuracy=float(val_acc[k]),
                          time=t)
        writers[i].end_step()

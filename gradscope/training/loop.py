"""The training loop: model + optimizer + probes + log writer.

:func:`train` owns the loop and nothing else. :class:`TrainConfig` holds every option;
:meth:`TrainConfig.resolve` checks it and fills in what depends on the data, so that a
bad option is refused before any file is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .._blas import MIN_THREADED_WORK, blas_threads
from ..engine import data as data_mod
from ..engine.activations import get_activation
from ..engine.initializers import INITIALIZERS
from ..engine.losses import accuracy, mean_squared_error, softmax_cross_entropy
from ..engine.mlp import (
    NORMS,
    Arch,
    StepBuffers,
    backward,
    forward,
    init_norm,
    init_params,
    layer_sizes,
    predict,
    skip_layers,
)
from ..engine.optimizers import OPTIMIZERS, make_optimizer
from ..engine.stats import FlatLayout, norm
from ..record.probes import (
    STEP_METRICS,
    ProbeThread,
    StepStats,
    histogram_edges,
    probe_metrics,
    step_block,
    step_rows,
)
from ..record.schema import OPTIMIZER_OPTIONS, LogError
from ..record.writer import LogWriter, one_line
from ._malloc import keep_freed_memory
from ._signals import StopRequest
from .parallel import GroupedStep

DTYPES = ("float32", "float64")

#: Whether the probe passes run on a worker thread (:class:`~gradscope.record.probes.ProbeThread`):
#: None decides per run (see :func:`probes_in_background`), True or False forces it.
background_probes: bool | None = None
#: The smallest probe pass sent to the worker thread: probe examples x the narrowest hidden
#: layer's units. Below it the pass is too many short numpy calls: each hands the GIL
#: between the threads, which cost the training thread more than the pass itself (a
#: 20 x 32 net: 8.5 ms a pass against 5.9 ms in the training thread; docs/performance.md).
MIN_BACKGROUND_PROBE = 1 << 16
#: Training steps whose recorded rows go to the log together (small nets, see
#: :class:`_Rows`), and the seconds that the first of them waits at most: a run stopped by
#: SIGKILL or a power cut loses at most that much more than the last flush (16 steps of a
#: small net: about 16 ms).
ROW_BATCH = 16
ROW_WAIT = 0.25


class ConfigError(ValueError):
    """An option that cannot be used; the message is one line naming it and what is accepted."""


@dataclass
class TrainConfig:
    """Every option of a training run. ``None`` means "the default" (documented per field)."""

    dataset: str = "digits"
    target: str | None = None          # CSV target column (default: the last)
    data_seed: int = 0                 # seeds synthetic datasets
    standardize: bool = False          # scale features to zero mean, unit variance (train stats)
    depth: int = 3                     # hidden layers
    width: int = 64                    # units per hidden layer (unless widths)
    widths: list[int] | None = None    # explicit hidden widths, overrides depth and width
    activation: str = "relu"
    init: str = "xavier"
    init_gain: float = 1.0
    optimizer: str = "adam"
    lr: float | None = None            # optimizer options: None = the optimizer's default
    momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    rho: float | None = None
    alpha: float | None = None
    weight_decay: float | None = None
    batch_size: int | str = 32         # 1 = stochastic, "full" = batch gradient descent
    epochs: int | None = None          # default 20 when steps is not given
    steps: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    dtype: str = "float32"
    log_every: int = 1
    probe_every: int | None = None     # default: the multiple of log_every nearest 100
    probe_size: int | None = None      # default: min(n_train, 1024)
    hist_bins: int = 50
    snapshot_every: int = 0            # 0 = no snapshots (initial and final are always kept)
    # remedies for vanishing/exploding gradients (docs/remedies.md); all off by default
    dropout: float = 0.0               # inverted dropout rate on hidden activations (training)
    residual: bool = False             # identity skips around hidden layers with fan_in == fan_out
    norm: str | None = None            # "batch" or "layer" normalisation of z before phi
    clip_norm: float | None = None     # clip the global gradient norm to this (clip_grad_norm_)
    clip_value: float | None = None    # clamp every gradient element to [-v, v]
    extra: dict = field(default_factory=dict)  # filled by resolve(): data shapes, defaults

    # -- checking --------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse bad options (without touching data or files)."""
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        for opt in ("seed", "data_seed"):
            v = getattr(self, opt)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0,
                 f"--{opt.replace('_', '-')} {v!r}; accepted: a whole number >= 0")
        if self.widths is not None:
            need(len(self.widths) >= 1, "--widths needs at least one width")
            for w in self.widths:
                need(isinstance(w, (int, np.integer)) and w >= 1,
                     f"width {w!r} in --widths; accepted: whole numbers >= 1")
        else:
            need(isinstance(self.depth, int) and self.depth >= 1,
                 f"--depth {self.depth!r}; accepted: a whole number >= 1")
            need(isinstance(self.width, int) and self.width >= 1,
                 f"--width {self.width!r}; accepted: a whole number >= 1")
        try:
            get_activation(self.activation)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        need(self.init in INITIALIZERS,
             f"unknown init {self.init!r}; accepted: {', '.join(INITIALIZERS)}")
        need(_finite(self.init_gain) and self.init_gain > 0,
             f"--init-gain {self.init_gain!r}; accepted: a finite number > 0")
        need(self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        for opt in OPTIMIZER_OPTIONS:
            v = getattr(self, opt)
            if v is not None and opt != "lr":
                need(_finite(v) and v >= 0,
                     f"--{opt.replace('_', '-')} {v!r}; accepted: a finite number >= 0")
        if self.lr is not None:
            need(_finite(self.lr) and self.lr > 0, f"--lr {self.lr!r}; accepted: a finite number > 0")
        try:
            make_optimizer(self.optimizer, **self.optimizer_overrides())
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(str(e.args[0]) if e.args else str(e)) from None
        if self.batch_size != "full":
            need(isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1,
                 f"--batch-size {self.batch_size!r}; accepted: a whole number >= 1 or 'full'")
        need(self.epochs is None or (isinstance(self.epochs, int) and self.epochs >= 1),
             f"--epochs {self.epochs!r}; accepted: a whole number >= 1")
        need(self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
             f"--steps {self.steps!r}; accepted: a whole number >= 1")
        need(self.epochs is None or self.steps is None, "give --epochs or --steps, not both")
        need(_finite(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"--val-fraction {self.val_fraction!r}; accepted: a number in [0, 1)")
        need(self.dtype in DTYPES, f"--dtype {self.dtype!r}; accepted: {', '.join(DTYPES)}")
        need(isinstance(self.log_every, int) and self.log_every >= 1,
             f"--log-every {self.log_every!r}; accepted: a whole number >= 1")
        if self.probe_every is not None:
            need(isinstance(self.probe_every, int) and self.probe_every >= 1
                 and self.probe_every % self.log_every == 0,
                 f"--probe-every {self.probe_every!r}; accepted: a multiple of --log-every "
                 f"({self.log_every})")
        need(self.probe_size is None or (isinstance(self.probe_size, int) and self.probe_size >= 1),
             f"--probe-size {self.probe_size!r}; accepted: a whole number >= 1")
        need(isinstance(self.hist_bins, int) and 2 <= self.hist_bins <= 1000,
             f"--hist-bins {self.hist_bins!r}; accepted: a whole number from 2 to 1000")
        need(isinstance(self.snapshot_every, int) and self.snapshot_every >= 0,
             f"--snapshot-every {self.snapshot_every!r}; accepted: a whole number >= 0")
        need(_finite(self.dropout) and not isinstance(self.dropout, bool)
             and 0 <= self.dropout < 1,
             f"--dropout {self.dropout!r}; accepted: a number in [0, 1)")
        need(isinstance(self.residual, (bool, np.bool_)),
             f"--residual {self.residual!r}; accepted: true or false")
        need(self.norm is None or self.norm in NORMS,
             f"unknown norm {self.norm!r}; accepted: {', '.join(NORMS)} (or none)")
        for opt in ("clip_norm", "clip_value"):
            v = getattr(self, opt)
            need(v is None or (_finite(v) and not isinstance(v, bool) and v > 0),
                 f"--{opt.replace('_', '-')} {v!r}; accepted: a finite number > 0")

    def optimizer_overrides(self) -> dict:
        return {k: getattr(self, k) for k in OPTIMIZER_OPTIONS if getattr(self, k) is not None}

    def arch(self) -> Arch | None:
        """The architecture remedies as an :class:`~gradscope.engine.mlp.Arch`, None when all off."""
        a = Arch(float(self.dropout), bool(self.residual), self.norm)
        return a if a.active else None

    @property
    def clipping(self) -> bool:
        return self.clip_norm is not None or self.clip_value is not None

    @property
    def hidden_widths(self) -> list[int]:
        return list(self.widths) if self.widths is not None else [self.width] * self.depth

    def name(self) -> str:
        """A descriptive file stem, e.g. ``digits-d3w64-relu-xavier-adam-lr0.001-bs32-s0``.

        Remedies that are on come before the seed: ``-res``, ``-bn`` / ``-ln``, ``-do0.2``,
        ``-clip1``, ``-clipv0.5`` (``...-bs32-res-bn-s0``).
        """
        ws = self.hidden_widths
        arch = f"d{len(ws)}w{ws[0]}" if len(set(ws)) == 1 else "w" + "-".join(map(str, ws))
        ds = Path(self.dataset).stem if Path(self.dataset).suffix else self.dataset
        lr = self.lr if self.lr is not None else make_optimizer(self.optimizer).hyper["lr"]
        return (f"{ds}-{arch}-{get_activation(self.activation).name}-{self.init}"
                f"{'' if self.init_gain == 1 else f'g{self.init_gain:g}'}-{self.optimizer}"
                f"-lr{lr:g}-bs{self.batch_size}{self._remedy_tokens()}-s{self.seed}")

    def _remedy_tokens(self) -> str:
        out = ""
        if self.residual:
            out += "-res"
        if self.norm is not None:
            out += {"batch": "-bn", "layer": "-ln"}.get(self.norm, f"-{self.norm}")
        if self.dropout:
            out += f"-do{self.dropout:g}"
        if self.clip_norm is not None:
            out += f"-clip{self.clip_norm:g}"
        if self.clip_value is not None:
            out += f"-clipv{self.clip_value:g}"
        return out


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


@dataclass
class Prepared:
    """A checked configuration with its data and everything derived from it."""

    config: TrainConfig
    resolved: dict
    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    classification: bool


#: The training options (TrainConfig's fields), listed in every logged config.
TRAIN_OPTIONS = [f.name for f in fields(TrainConfig) if f.name != "extra"]


def prepare(config: TrainConfig, loaded: tuple[np.ndarray, np.ndarray] | None = None
            ) -> Prepared:
    """Check the options, load and split the data, and resolve every default.

    ``loaded``: the dataset as ``load_dataset`` returns it for this configuration, when the
    caller has it already (many runs on one dataset); it is not modified.
    Raises :class:`ConfigError` or :class:`~gradscope.engine.data.DataError`; writes nothing.
    """
    config.check()
    X, y = loaded if loaded is not None else data_mod.load_dataset(
        config.dataset, target=config.target, seed=config.data_seed)
    classification = data_mod.is_classification(y)
    if classification and y.max() < 1:
        raise data_mod.DataError(f"dataset {config.dataset!r} has a single class; need two or more")
    rng = np.random.default_rng([config.seed, 1])
    X, y, X_val, y_val = data_mod.split(X, y, config.val_fraction, rng)
    if config.standardize:
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd[sd == 0] = 1.0
        X, X_val = (X - mu) / sd, (X_val - mu) / sd
    dtype = np.dtype(config.dtype)
    with np.errstate(over="ignore"):  # checked just below, in one line
        X, X_val = X.astype(dtype), X_val.astype(dtype)
        if not classification:
            y, y_val = y.astype(dtype), y_val.astype(dtype)
    for what, a in (("features", X), ("features", X_val)) + (
            () if classification else (("targets", y), ("targets", y_val))):
        if not np.all(np.isfinite(a)):
            raise data_mod.DataError(
                f"{what} of {config.dataset!r} do not fit in {config.dtype} (values beyond "
                f"{np.finfo(dtype).max:.3g}, or overflowing when standardised); use --dtype "
                f"float64 or rescale the data")
    n = X.shape[0]
    bs = n if config.batch_size == "full" else min(int(config.batch_size), n)
    if config.norm == "batch":
        if bs < 2:
            raise ConfigError(f"--norm batch needs at least 2 examples per batch "
                              f"(as torch.nn.BatchNorm1d); the batches here hold {bs}")
        if n % bs == 1:
            raise ConfigError(f"--norm batch: the last batch of every epoch would hold 1 example "
                              f"({n} training rows, batch size {bs}); choose another --batch-size")
    steps_per_epoch = math.ceil(n / bs)
    if config.steps is not None:
        total = config.steps
    else:
        total = (config.epochs or 20) * steps_per_epoch
    n_out = int(y.max()) + 1 if classification else (1 if y.ndim == 1 else y.shape[1])
    probe_every = config.probe_every
    if probe_every is None:
        probe_every = config.log_every * max(1, round(100 / config.log_every))
    opt = make_optimizer(config.optimizer, **config.optimizer_overrides())
    from .._version import __version__

    resolved = asdict(config)
    resolved.pop("extra")
    act = get_activation(config.activation)
    resolved.update(
        activation=act.name,
        # what the views need of the run, so that they work from the log alone
        relu_family=bool(act.relu_family),
        train_options=TRAIN_OPTIONS,
        widths=config.hidden_widths,
        depth=len(config.hidden_widths),
        sizes=layer_sizes(X.shape[1], config.hidden_widths, n_out),
        task="classification" if classification else "regression",
        loss="cross_entropy" if classification else "mse",
        n_train=int(n), n_val=int(X_val.shape[0]), n_features=int(X.shape[1]),
        n_outputs=int(n_out), batch_size_resolved=int(bs), steps_per_epoch=steps_per_epoch,
        # the loss of predicting the mean, the chance level a regression run is judged against
        target_variance=None if classification else float(np.var(y, axis=0).mean()),
        total_steps=int(total), probe_every=int(probe_every),
        probe_size=int(min(config.probe_size or 1024, n)),
        optimizer_hyper=opt.hyper, gradscope_version=__version__,
        numpy_version=np.__version__,
    )
    sizes = resolved["sizes"]
    if config.residual:
        # the hidden layers that get an identity skip (fan_in == fan_out); may be none
        resolved["residual_layers"] = [l for l, s in enumerate(skip_layers(sizes)) if s]
    if config.norm is not None:
        resolved["norm_eps"] = 1e-5
        if config.norm == "batch":
            resolved["norm_momentum"] = 0.1
    return Prepared(config, resolved, X, y, X_val, y_val, classification)


@dataclass
class RunResult:
    path: Path
    status: str
    message: str
    steps: int
    final_loss: float


def train(
    config: TrainConfig | Prepared,
    out: str | Path,
    progress: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    """Train the MLP described by ``config`` and log every diagnostic to ``out``.

    ``out`` is created (or replaced: refusing to overwrite is the caller's decision), with
    its missing folders, as ``gradscope train`` does.
    ``progress(step, total, loss)`` is called after every step when given.
    The run ends ``completed``, ``diverged`` (non-finite loss or gradients: the step is
    logged and no update applied), ``interrupted`` (Ctrl-C or SIGTERM, which end the loop
    between two steps, or KeyboardInterrupt raised by ``progress``) or ``failed``: any other
    exception (out of memory, a full disk, an error raised by ``progress``) is recorded in
    the log as ``failed`` with its one-line reason, after every complete step, and then
    raised. An existing ``out`` is replaced only once the run has committed a step.
    """
    prep = config if isinstance(config, Prepared) else prepare(config)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    cfg, res = prep.config, prep.resolved
    act = get_activation(cfg.activation)
    dtype = np.dtype(cfg.dtype)
    params = init_params(res["sizes"], cfg.init, np.random.default_rng([cfg.seed, 0]),
                         cfg.init_gain, dtype)
    arch = cfg.arch()  # None: the plain MLP
    # normalisation parameters (updated by the optimizer after params) and running statistics
    norm_params, norm_state = init_norm(cfg.hidden_widths, cfg.norm, dtype)
    n_p = len(params)
    drop_rng = np.random.default_rng([cfg.seed, 4]) if cfg.dropout else None
    clipping, clip_norm, clip_value = cfg.clipping, cfg.clip_norm, cfg.clip_value
    opt = make_optimizer(cfg.optimizer, **cfg.optimizer_overrides())
    stepper = GroupedStep(opt, [p.size for p in params + norm_params], measure=norm)
    bs = res["batch_size_resolved"]
    # A plain MLP of one hidden width, updated in place in this thread, keeps its arrays
    # in buffers that let a recorded step measure every layer in a few numpy calls: the
    # parameters and the updates in one flat array (all their norms from one np.vecdot
    # over its rows, engine.stats.FlatLayout), the passes' activations, deltas and phi'
    # stacked (engine.mlp.StepBuffers). The numbers are those measured array by array.
    # The gradients go into a third copy of that layout, and the optimizer (elementwise,
    # as every one of engine.optimizers is) steps all the arrays at once over the copies
    # as wholes: a dozen numpy calls a step instead of a dozen per array, the same
    # arithmetic element by element (the zero padding stays zero).
    buffers = layout = flat = update_bufs = grad_bufs = wholes = None
    if (arch is None and stepper.pool is None and opt.update_inplace is not None
            and StepBuffers.fit(params, bs)):
        # rows of 256: less padding for the optimizer's passes over the wholes than 1024
        # (a 32-unit bias fills a row), as cheap for the norms' one dot product per row
        layout = FlatLayout([p.shape for p in params], dtype, copies=3, row=256)
        flat = layout.empty()
        homed = layout.views(flat, 0)
        for h, p in zip(homed, params):
            h[...] = p
        params, update_bufs, grad_bufs = homed, layout.views(flat, 1), layout.views(flat, 2)
        wholes = [layout.whole(flat, k) for k in range(3)]  # parameters, updates, gradients
        buffers = StepBuffers(params, bs, act, grads=grad_bufs)
    state = opt.init(wholes[:1] if wholes is not None else params + norm_params)
    loss_fn = softmax_cross_entropy if prep.classification else mean_squared_error
    X, y = prep.X, prep.y
    n = X.shape[0]
    probe_rng = np.random.default_rng([cfg.seed, 3])
    X_probe = X[np.sort(probe_rng.choice(n, res["probe_size"], replace=False))]
    edges = histogram_edges(act, cfg.hist_bins)
    batch_rng = np.random.default_rng([cfg.seed, 2])
    L = len(params) // 2
    layer_idx = np.arange(L)
    total = res["total_steps"]
    log_every, probe_every, snap_every = cfg.log_every, res["probe_every"], cfg.snapshot_every
    lr = float(opt.hyper.get("lr", float("nan")))

    try:
        writer = LogWriter(out, res, params, edges, snapshots=snap_every > 0,
                           norm_params=norm_params, norm_state=norm_state)
    except (OSError, RuntimeError) as e:  # h5py: RuntimeError on a full disk, OSError else
        raise LogError(f"cannot write the log {str(out)!r}: {one_line(e)}") from None
    status, message = "completed", ""
    error: BaseException | None = None
    step, epoch, loss = 0, 0, float("nan")
    t0 = time.perf_counter()
    weight_norms = None
    # Ctrl-C and SIGTERM stop the loop between steps (see _signals: never inside a lock)
    stop = StopRequest().__enter__()
    # overflow on the way to divergence is detected and reported as a result, not warned about
    quiet = np.errstate(over="ignore", invalid="ignore", divide="ignore")
    quiet.__enter__()
    # a small net's products are too short for BLAS's threads (see _blas.MIN_THREADED_WORK)
    small = bs * sum(p.size for p in params) < MIN_THREADED_WORK
    blas = blas_threads(1) if small else contextlib.nullcontext()
    blas.__enter__()
    # A probe pass on a worker thread (ProbeThread) overlaps the next steps; its rows go to
    # the log when it has finished, at the latest at the next probe step (one pass at a
    # time: the rows stay in step order). Diverged and last steps probe here, after it.
    prober = (ProbeThread({"over": "ignore", "invalid": "ignore", "divide": "ignore"})
              if probes_in_background(small, stepper.pool is None,
                                      res["probe_size"] * min(cfg.hidden_widths))
              else None)
    probe = earlier = None
    at_boundary = True  # no rows of an unfinished step buffered in the writer
    # the rows of a small net's recorded steps go to the log ROW_BATCH steps at a time
    rows = _Rows(writer, L, ROW_BATCH, lr) if buffers is not None else None
    try:
        while step < total:
            ep_loss = ep_acc = 0.0
            ep_n = 0
            for idx in data_mod.epoch_batches(n, bs, batch_rng):
                if step >= total:
                    break
                Xb, yb = X[idx], y[idx]
                logged = step % log_every == 0 or step == total - 1
                # a logged step's passes measure each layer while its arrays are in cache
                out_b, cache = forward(params, Xb, act, arch=arch, norm_params=norm_params,
                                       state=norm_state, rng=drop_rng, measure=logged,
                                       buffers=buffers)
                acc = accuracy(out_b, yb) if prep.classification else float("nan")
                loss, dout = loss_fn(out_b, yb)
                back = backward(params, cache, dout, act, measure=logged, buffers=buffers)
                grads = back.grads if back.norm_grads is None else back.grads + back.norm_grads
                # norms of the updates and new parameters, taken by the optimizer's threads,
                # when this step or the next is recorded
                want = logged or (step + 1) % log_every == 0 or step + 1 == total - 1
                # the gradient norms decide divergence (and clipping) before anything is
                # updated: the optimizer then writes into the parameters and its state
                if wholes is not None and grads[0] is not grad_bufs[0]:
                    for b, g in zip(grad_bufs, grads):  # a batch of another size
                        b[...] = g
                    grads = grad_bufs
                if wholes is not None and not clipping:
                    gnorms = layout.norms(flat, (2, 3))[0].tolist()
                else:  # clipping scales by the global norm: taken as clip_grad_norm_ does
                    gnorms = [norm(g) for g in grads]
                gnorm = math.sqrt(sum(g * g for g in gnorms))
                diverged = not (math.isfinite(loss) and math.isfinite(gnorm))
                # probe steps are logged steps (probe_every is a multiple of log_every)
                probed = diverged or step % probe_every == 0 or step == total - 1
                # what describes the parameters before this step is taken before the update
                if probed:
                    if prober is not None:
                        earlier = prober.take()  # the previous pass, normally long done
                    if prober is not None and not diverged and step != total - 1:
                        prober.submit(step, params, X_probe, act, edges, arch=arch,
                                      norm_params=norm_params, state=norm_state)
                    else:
                        probe = probe_metrics(params, X_probe, act, edges, arch=arch,
                                              norm_params=norm_params, state=norm_state)
                if (diverged or logged) and weight_norms is None:
                    weight_norms = [norm(p) for p in params]
                at_boundary = False  # from here rows of this step may be in the writer
                if snap_every and step % snap_every == 0:
                    writer.append_snapshot(step, params, norm_params, norm_state)
                clipped, updates, out_norms = False, None, (None, None, None)
                if not diverged:
                    if clipping:
                        grads, clipped = clip_gradients(grads, gnorm, clip_norm, clip_value)
                    if wholes is not None:
                        if clipped:
                            for b, g in zip(grad_bufs, grads):
                                b[...] = g
                        p_all, u_all, g_all = wholes
                        state = opt.update_inplace([g_all], state, [p_all], [u_all])
                        p_all += u_all
                        new_params, updates = params, update_bufs
                        if want:
                            pn, un = layout.norms(flat, (0, 2))
                            out_norms = (None, un, pn)
                    else:
                        current = params + norm_params if norm_params else params
                        new_params, updates, state, out_norms = stepper.step(
                            grads, state, current, out_norms=want, inplace=True)
                if diverged or logged:
                    t_row = time.perf_counter() - t0
                    un = out_norms[1] if updates is not None else None
                    if (rows is not None and back.act_stats is not None
                            and weight_norms is not None and (updates is None or un is not None)):
                        if rows.add(step, epoch, loss, acc, gnorm, t_row, int(clipped),
                                    StepStats.of(back, gnorms, weight_norms, un)
                                    ) or diverged or step == total - 1:
                            rows.write()
                    else:
                        if rows is not None:
                            rows.write()  # the rows stay in step order
                        writer.append("steps", step=step, epoch=epoch, loss=loss,
                                      accuracy=acc, lr=lr, grad_norm_total=gnorm, time=t_row,
                                      clipped=int(clipped))
                        block = step_block(params, cache, back, updates, act, gnorms,
                                           weight_norms=weight_norms, update_norms=un)
                        writer.append_block("layers", L, STEP_METRICS, block, step=step,
                                            layer=layer_idx)
                if earlier is None and prober is not None and prober.ready():
                    earlier = prober.take()
                if rows is not None and (earlier is not None or probe is not None):
                    # a probe step's rows never reach the log before its steps and layer rows
                    rows.write()
                if earlier is not None:
                    _append_probe(writer, L, layer_idx, *earlier)
                    earlier = None
                if probe is not None:
                    _append_probe(writer, L, layer_idx, step, probe)
                    probe = None
                writer.end_step()
                at_boundary = True
                if diverged:
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    value = loss if not math.isfinite(loss) else gnorm
                    status = "diverged"
                    message = f"{what} became {value} at step {step} (epoch {epoch})"
                    break
                weight_norms = out_norms[2]  # of the parameters the next step starts from
                if norm_params:
                    params, norm_params = new_params[:n_p], new_params[n_p:]
                    if cache.state is not None:
                        norm_state = cache.state
                else:
                    params = new_params
                ep_loss += loss * len(idx)
                ep_acc += acc * len(idx)
                ep_n += len(idx)
                step += 1
                if progress is not None:
                    progress(step, total, loss)
                stop.check()
            if status == "diverged":
                break
            if rows is not None:
                rows.write()  # committed with the epoch's row
            _log_epoch(writer, prep, params, act, loss_fn, epoch, step, ep_loss, ep_acc, ep_n,
                       time.perf_counter() - t0, arch=arch, norm_params=norm_params,
                       norm_state=norm_state)
            epoch += 1
    except KeyboardInterrupt:
        status, message = "interrupted", f"interrupted at step {step} (epoch {epoch})"
    except BaseException as e:  # noqa: BLE001 -- recorded as the run's status, raised below
        error = e
        status, message = "failed", _failure(e, writer, step, epoch)
    finally:
        try:
            # the rows of finished steps not yet appended (a batch of _Rows, a probe pass in
            # flight) are committed as the step-by-step path commits them, unless the run
            # stopped in mid-step (rows of an unfinished step in the writer, which the next
            # end_step would commit) or the log cannot take them
            if prober is not None:
                try:
                    if earlier is None:
                        earlier = prober.take()
                except BaseException as e:  # noqa: BLE001 -- the pass failed: the run too
                    earlier = None
                    if error is None:
                        error = e
                        status, message = "failed", _failure(e, writer, step, epoch)
                finally:
                    prober.close()
            if at_boundary and writer.broken is None:
                try:
                    if rows is not None:
                        rows.write()
                    if earlier is not None:
                        _append_probe(writer, L, layer_idx, *earlier)
                    writer.end_step()
                except BaseException as e:  # noqa: BLE001 -- e.g. the disk filled up
                    if error is None:
                        error = e
                        status, message = "failed", _failure(e, writer, step, epoch)
        finally:
            quiet.__exit__(None, None, None)
            blas.__exit__(None, None, None)
        try:
            stepper.close()
            # a failed run's parameters may be half updated: its final parameters stay NaN
            final = (params, norm_params, norm_state) if status != "failed" else (None,) * 3
            try:
                writer.close(status, message, *final)
            except BaseException as e:  # noqa: BLE001 -- e.g. the disk filled up at the end
                if error is None:
                    error = e
                    status, message = "failed", _failure(e, writer, step, epoch)
        finally:
            stop.__exit__()
    if error is not None:
        # the log is closed, its status "failed" with the reason (when the file took it)
        raise error
    return RunResult(Path(out), status, message, step, loss)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def probes_in_background(small: bool, inline_optimizer: bool, layer_size: int) -> bool:
    """Whether a run's probe passes go to a worker thread: for small nets (one BLAS thread)
    whose optimizer runs in the training thread, on a machine with a core to spare, when
    the pass works on arrays of at least ``MIN_BACKGROUND_PROBE`` elements a layer
    (``layer_size``: probe examples x the narrowest hidden layer's units). Larger nets keep
    both cores busy with their own BLAS threads or the optimizer's pool. The module's
    ``background_probes`` overrides it."""
    if background_probes is not None:
        return bool(background_probes)
    return (small and inline_optimizer and layer_size >= MIN_BACKGROUND_PROBE
            and usable_cores() >= 2)


def _append_probe(writer, L: int, layer_idx, step: int, probe) -> None:
    """A probe step's rows: one per layer in ``probes`` and the per-unit arrays, appended
    together (the same ``end_step`` commits both)."""
    pm, dead, hist = probe
    writer.append("probes", L, step=step, layer=layer_idx, **pm)
    writer.append_units(step, dead, hist)


class _Rows:
    """The ``steps`` and ``layers`` rows of recorded steps whose statistics were all
    measured already (:class:`~gradscope.record.probes.StepStats`), appended to the log
    ``size`` steps at a time: a few numpy calls for all of them instead of a dozen a step.
    The values are those appended step by step (``step_rows`` does each row's arithmetic
    as ``step_block``); both tables get a batch's rows together, so a reader never sees a
    step without its layer rows."""

    _FLOATS = ("loss", "accuracy", "lr", "grad_norm_total", "time")

    def __init__(self, writer: LogWriter, layers: int, size: int, lr: float):
        self.writer, self.L, self.size, self.lr = writer, layers, max(1, int(size)), lr
        self.pending: list[tuple] = []

    def add(self, step, epoch, loss, acc, gnorm, t, clipped, stats: StepStats) -> bool:
        """Keep one step's rows (``t``: its time); True when a batch is due: ``size``
        training steps from the first kept, or ``ROW_WAIT`` seconds."""
        self.pending.append((step, epoch, clipped, (loss, acc, self.lr, gnorm, t), stats))
        first = self.pending[0]
        return step - first[0] >= self.size - 1 or t - first[3][4] >= ROW_WAIT

    def write(self) -> None:
        """Append the kept rows (the caller's ``end_step`` commits them)."""
        if not self.pending:
            return
        steps, epochs, clipped, floats, stats = zip(*self.pending)
        self.pending = []
        K, L, w = len(steps), self.L, self.writer
        steps = np.array(steps, dtype=np.int64)
        w.append_block("steps", K, self._FLOATS, np.array(floats, dtype=np.float64),
                       step=steps, epoch=np.array(epochs, dtype=np.int64),
                       clipped=np.array(clipped, dtype=np.int64))
        w.append_block("layers", K * L, STEP_METRICS, step_rows(L, list(stats)),
                       step=np.repeat(steps, L), layer=np.tile(np.arange(L), K))


def _failure(e: BaseException, writer, step: int, epoch: int) -> str:
    """The one-line reason of a failed run, for its status message."""
    where = f"at step {step} (epoch {epoch})"
    if writer.broken is not None:
        return f"cannot write the log {where}: {one_line(writer.broken)}"
    if isinstance(e, MemoryError):
        return f"out of memory {where}: {one_line(e)}"
    return f"{one_line(e)} {where}"


def _log_epoch(writer, prep, params, act, loss_fn, epoch, step, ep_loss, ep_acc, ep_n, t,
               arch=None, norm_params=None, norm_state=None):
    if ep_n == 0:
        return
    val_loss = val_acc = float("nan")
    if prep.X_val.shape[0]:
        # evaluation mode: no dropout, batch norm with the running statistics
        out = predict(params, prep.X_val, act, arch=arch, norm_params=norm_params,
                      state=norm_state)
        val_loss, _ = loss_fn(out, prep.y_val)
        if prep.classification:
            val_acc = accuracy(out, prep.y_val)
    writer.append("epochs", epoch=epoch, step=step, train_loss=ep_loss / ep_n,
                  train_accuracy=ep_acc / ep_n if prep.classification else float("nan"),
                  val_loss=val_loss, val_accuracy=val_acc, time=t)
    writer.end_step()


def clip_gradients(
    grads: list[np.ndarray],
    total_norm: float,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> tuple[list[np.ndarray], bool]:
    """Clip gradients as torch.nn.utils does; returns the (new) gradients and whether any
    clipping changed them.

    ``clip_norm``: ``clip_grad_norm_`` -- with ``total_norm`` the global norm of ``grads``,
    every gradient is multiplied by ``clip_norm / (total_norm + 1e-6)`` when that is below 1.
    ``clip_value``: ``clip_grad_value_`` -- every element clamped to ``[-v, v]`` (after the
    norm clipping when both are given). The input arrays are never modified.
    """
    clipped = False
    if clip_norm is not None:
        coef = clip_norm / (total_norm + 1e-6)
        if coef < 1:
            grads = [g * coef for g in grads]
            clipped = True
    if clip_value is not None:
        v = float(clip_value)
        out = []
        for g in grads:
            if g.size and (g.max() > v or g.min() < -v):
                g = np.clip(g, -v, v)
                clipped = True
            out.append(g)
        grads = out
    return grads, clipped

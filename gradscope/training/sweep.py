"""Grid sweeps: many training runs, one log each, and a summary table.

:func:`parse_list` reads one option's values (``"2,4,8"``, ``"2:32:x2"``, ``"1e-3:1e-1:x10"``),
:func:`expand_grid` makes the product of every option's values into
:class:`~gradscope.training.loop.TrainConfig` objects, :func:`run_sweep` checks them all, trains
those whose log is missing or incomplete (in local processes or on a Dask cluster) and
returns the summary that :func:`summarize` rebuilds from the logs. docs/sweep.md describes
the command line, the file names, resuming and the columns of ``summary.csv``.

This module does not import click; :mod:`gradscope.cli.sweep` is the command.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import signal
import tempfile
import threading
import time
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.diagnose import diagnose
from ..analysis.runs import CHECK_COLUMNS, RUN_COLUMNS, error_row, run_row
from ..engine.data import DataError
from ..engine.optimizers import OPTIMIZERS, make_optimizer, optimizer_defaults
from ..files import write_atomic
from ..reading.readers import read_status
from ..reading.run import read_run
from ..record.schema import LogBusyError, LogError
from ._signals import StopRequest
from .loop import OPTIMIZER_OPTIONS, ConfigError, TrainConfig, prepare, train
from .stack import stacks_of, train_stack

__all__ = [
    "GRID_FILE", "PARTIAL_DIR", "SUMMARY_FILE", "SweepError", "SweepProgress", "check_configs",
    "expand_grid", "option_kinds", "parse_list", "run_name", "run_names", "run_sweep",
    "summarize", "summary_entry",
]

SUMMARY_FILE = "summary.csv"
GRID_FILE = "sweep.json"
PARTIAL_DIR = ".partial"
LOCK_FILE = ".sweep.lock"
#: statuses of a finished log that a resumed sweep keeps (never retrains or rewrites)
FINAL_STATUSES = ("completed", "diverged")
#: the TrainConfig fields a sweep does not offer (filled in by the trainer)
SKIP_FIELDS = ("extra",)
#: short prefixes for the fields TrainConfig.name() leaves out, in run names (a field not
#: listed uses its own name without underscores)
NAME_TOKENS = {
    "target": "t", "data_seed": "ds", "standardize": "std", "momentum": "mom", "beta1": "b1_",
    "beta2": "b2_", "eps": "eps", "rho": "rho", "alpha": "alpha", "weight_decay": "wd",
    "epochs": "ep", "steps": "steps", "val_fraction": "val", "dtype": "", "log_every": "le",
    "probe_every": "pe", "probe_size": "ps", "hist_bins": "hb", "snapshot_every": "snap",
}
MAX_RANGE = 10_000
MAX_NAME = 200
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class SweepError(ValueError):
    """A sweep that cannot start; the message is one line for the user."""


# -- option kinds and value lists -------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """How to read one option's values: the base type, and what else is accepted."""

    base: type                 # int, float, str or bool
    optional: bool = False     # "none" / "default" -> None (the trainer's default)
    also_str: bool = False     # int | str: a word that is not a number stays a string
    is_list: bool = False      # list[int]: values are comma lists, separated by "/"

    def describe(self) -> str:
        what = {int: "whole numbers", float: "numbers", str: "words",
                bool: "true/false"}[self.base]
        if self.is_list:
            what = "comma lists of whole numbers separated by '/'"
        if self.also_str:
            what += " or words"
        if self.optional:
            what += " or 'default'"
        return what


def _kind_of_hint(hint) -> Kind | None:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
    else:
        optional, rest = False, [hint]
    if len(rest) == 1 and typing.get_origin(rest[0]) is list:
        inner = typing.get_args(rest[0])
        if inner and inner[0] is int:
            return Kind(int, optional=optional, is_list=True)
        return None
    plain = [a for a in rest if a in (int, float, str, bool)]
    if len(plain) != len(rest) or not plain:
        return None
    if len(plain) == 1:
        return Kind(plain[0], optional=optional)
    if set(plain) == {int, str}:
        return Kind(int, optional=optional, also_str=True)
    if set(plain) == {int, float}:
        return Kind(float, optional=optional)
    return None


def option_kinds() -> dict[str, Kind]:
    """Every sweepable TrainConfig field and how its values are read, in field order.

    Generated from :func:`dataclasses.fields` and the type hints, so a new training
    option is a new sweep option without any change here.
    """
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        if f.name in SKIP_FIELDS:
            continue
        kind = _kind_of_hint(hints.get(f.name, f.type))
        if kind is not None:
            out[f.name] = kind
    return out


def _resolve_kind(kind) -> Kind:
    if isinstance(kind, Kind):
        return kind
    if kind in (int, float, str, bool):
        return Kind(kind)
    if isinstance(kind, str):
        if kind in ("int", "float", "str", "bool"):
            return Kind({"int": int, "float": float, "str": str, "bool": bool}[kind])
        kinds = option_kinds()
        name = _field_name(kind)
        if name in kinds:
            return kinds[name]
    raise SweepError(f"unknown option kind {kind!r}; accepted: int, float, str, bool, a Kind "
                     f"or a training option ({', '.join(option_kinds())})")


def _field_name(key: str) -> str:
    key = key.lstrip("-").replace("-", "_")
    return "seed" if key == "seeds" else key


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _scalar(item: str, kind: Kind, where: str):
    low = item.lower()
    if kind.optional and low in ("none", "default"):
        return None
    if kind.base is bool:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SweepError(f"{where}: {item!r} is not true or false")
    if kind.base is int:
        try:
            return int(item)
        except ValueError:
            pass
        if kind.also_str and not re.fullmatch(r"[-+0-9.eE]+", item):
            return item
        raise SweepError(f"{where}: {item!r} is not a whole number; accepted: {kind.describe()}")
    if kind.base is float:
        try:
            return float(item)
        except ValueError:
            raise SweepError(f"{where}: {item!r} is not a number; accepted: "
                             f"{kind.describe()}") from None
    return item


def _tidy(v: float) -> float:
    """Round away the binary noise of repeated float arithmetic (0.30000000000000004)."""
    return float(f"{v:.12g}")


def _range(item: str, kind: Kind, where: str) -> list:
    parts = item.split(":")
    usage = ("accepted: START:STOP:+STEP (e.g. 2:10:+2), START:STOP:xFACTOR (e.g. 2:32:x2)"
             + (" or START:STOP (step 1)" if kind.base is int else ""))
    if kind.base not in (int, float) or kind.is_list:
        raise SweepError(f"{where}: ranges apply to numeric options, not {item!r}")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise SweepError(f"{where}: bad range {item!r}; {usage}")
    conv = int if kind.base is int else float
    try:
        start, stop = conv(parts[0]), conv(parts[1])
    except ValueError:
        raise SweepError(f"{where}: bad range {item!r}: the ends must be "
                         f"{'whole numbers' if conv is int else 'numbers'}; {usage}") from None
    if len(parts) == 2:
        if kind.base is not int:
            raise SweepError(f"{where}: bad range {item!r}: give a step; {usage}")
        step = "+1"
    else:
        step = parts[2].strip()
    op, amount = step[:1], step[1:]
    if op not in ("+", "x", "*") or not amount:
        raise SweepError(f"{where}: bad range {item!r}: the step must start with + or x; {usage}")
    try:
        a = conv(amount) if op == "+" else (int(amount) if conv is int else float(amount))
    except ValueError:
        raise SweepError(f"{where}: bad range {item!r}: step {step!r} is not a "
                         f"{'whole number' if conv is int else 'number'}; {usage}") from None
    if not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(a)):
        raise SweepError(f"{where}: bad range {item!r}: the numbers must be finite")
    if start > stop:
        raise SweepError(f"{where}: bad range {item!r}: START is above STOP")
    if op == "+" and a <= 0:
        raise SweepError(f"{where}: bad range {item!r}: the step must be > 0")
    if op != "+" and (a <= 1 or start <= 0):
        raise SweepError(f"{where}: bad range {item!r}: a factor range needs FACTOR > 1 and "
                         f"START > 0")
    tol = 1e-9 * max(abs(stop), abs(start), 1e-300)
    out = []
    for i in range(MAX_RANGE + 1):
        v = start + i * a if op == "+" else start * a**i
        v = v if conv is int else _tidy(v)
        if v > stop + tol:
            return out
        out.append(v)
    raise SweepError(f"{where}: range {item!r} has more than {MAX_RANGE} values")


def parse_list(text, kind, *, option: str | None = None) -> list:
    """One option's values from the command line text.

    ``kind`` is ``int``, ``float``, ``str``, ``bool`` (or their names), a :class:`Kind`, or
    the name of a TrainConfig field (``"depth"``, ``"lr"``, ``"batch_size"``, ``"seeds"``),
    which brings that field's rules: ``"default"``/``"none"`` for optional fields, ``full``
    for the batch size, ``/`` between the comma lists of ``widths``.

    Accepted: one value, a comma list (``relu,tanh``), and for numbers ranges, inclusive of
    STOP when it is hit: ``2:32:x2`` (2, 4, 8, 16, 32), ``2:10:+2`` (2, 4, 6, 8, 10),
    ``1e-3:1e-1:x10`` (0.001, 0.01, 0.1), ``1:4`` (whole numbers 1..4). Items can mix
    values and ranges (``1,2:8:x2``). A value listed twice is refused. Raises
    :class:`SweepError` with a one-line message naming ``option`` (or the value).
    """
    k = _resolve_kind(kind)
    where = option or (f"--{kind.replace('_', '-')}" if isinstance(kind, str)
                       and kind not in ("int", "float", "str", "bool") else "value")
    if isinstance(text, (list, tuple)):
        text = ("/" if k.is_list else ",").join(
            ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in text)
    text = str(text).strip()
    if not text:
        raise SweepError(f"{where}: no value given; accepted: {k.describe()}")
    sep = "/" if k.is_list else ","
    out: list = []
    for raw in text.split(sep):
        item = raw.strip()
        if not item:
            raise SweepError(f"{where} {text!r}: an empty item; separate values with {sep!r}")
        if k.is_list:
            if item.lower() in ("none", "default") and k.optional:
                out.append(None)
                continue
            try:
                ws = [int(w) for w in item.split(",")]
            except ValueError:
                raise SweepError(f"{where}: {item!r} is not a comma list of whole numbers; "
                                 f"accepted: {k.describe()}") from None
            out.append(ws)
        elif ":" in item and k.base in (int, float):
            out.extend(_range(item, k, where))
        else:
            out.append(_scalar(item, k, where))
    seen = set()
    for v in out:
        key = json.dumps(v)
        if key in seen:
            raise SweepError(f"{where} {text!r} lists {_fmt(v)} twice")
        seen.add(key)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


# -- the grid ---------------------------------------------------------------------------------
def _as_values(name: str, values) -> list:
    if name == "widths":
        if values is None:
            return [None]
        if isinstance(values, (list, tuple)) and values and all(
                isinstance(v, (int, np.integer)) for v in values):
            return [list(values)]  # one width list
        return [list(v) if v is not None else None for v in values]
    if isinstance(values, (list, tuple, range, np.ndarray)):
        return list(values)
    return [values]


def expand_grid(options: dict[str, Any]) -> list[TrainConfig]:
    """The product of every option's values, one :class:`TrainConfig` per combination.

    Keys are TrainConfig fields (``seeds`` means ``seed``; dashes are accepted for
    underscores); values are lists (a scalar is a one-value list; for ``widths``, a list
    of width lists). Options not given keep TrainConfig's defaults. The last key varies
    fastest. An optimizer option applies to the optimizers of the grid that take it
    (``optimizer=["sgd", "adam"], beta1=[0.8, 0.9]``: two Adam runs and one SGD run); one
    that none of them takes is left for :func:`check_configs` to refuse. Nothing else is
    checked here.
    """
    kinds = option_kinds()
    grid: dict[str, list] = {}
    for key, values in options.items():
        name = _field_name(key)
        if name not in kinds:
            raise SweepError(f"unknown training option {key!r}; accepted: "
                             f"{', '.join(kinds)} (seeds for seed)")
        if name in grid:
            raise SweepError(f"option {name!r} given twice")
        vals = _as_values(name, values)
        if not vals:
            raise SweepError(f"option {name!r} has no values")
        grid[name] = vals
    names = list(grid)
    configs = [TrainConfig(**dict(zip(names, combo)))
               for combo in itertools.product(*(grid[n] for n in names))]
    return _where_taken(configs, [n for n in names if n in OPTIMIZER_OPTIONS])


def _where_taken(configs: list[TrainConfig], keys: list[str]) -> list[TrainConfig]:
    """Each configuration without the optimizer options ``keys`` its optimizer does not
    take, when another optimizer of the grid takes them; runs that become the same are
    kept once (in first-seen order)."""
    takes = {o: set(optimizer_defaults(o)) for o in {c.optimizer for c in configs}
             if o in OPTIMIZERS}  # an unknown name is refused by check_configs
    keys = [k for k in keys if any(k in t for t in takes.values())]
    if not keys:
        return configs
    kept: dict[str, TrainConfig] = {}
    for c in configs:
        drop = {k: None for k in keys if c.optimizer in takes and k not in takes[c.optimizer]}
        c = replace(c, **drop) if drop else c
        kept.setdefault(_config_hash(c), c)
    return list(kept.values())


def _config_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    for k in SKIP_FIELDS:
        d.pop(k, None)
    return d


def _config_hash(cfg: TrainConfig) -> str:
    blob = json.dumps(_config_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def run_name(cfg: TrainConfig) -> str:
    """The file stem of a run: :meth:`TrainConfig.name` plus a token for every option that
    differs from its default and that the name does not show (``steps30``, ``mom0.9``,
    ``float64``, ``wd0.0001``).

    It depends on the configuration alone, so a resumed or extended sweep finds its logs
    again. :func:`run_names` adds a hash where two configurations would share a name.
    """
    default = TrainConfig()
    base = cfg.name()
    parts = [base]
    for f in fields(TrainConfig):
        if f.name in SKIP_FIELDS:
            continue
        v = getattr(cfg, f.name)
        if v == getattr(default, f.name) or _spelled_out(cfg, f.name, default, base):
            continue
        prefix = NAME_TOKENS.get(f.name, f.name.replace("_", ""))
        if isinstance(v, bool):
            parts.append(prefix if v else f"no{prefix}")
        else:
            parts.append(f"{prefix}{_fmt(v)}")
    name = _UNSAFE.sub("_", "-".join(parts))
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{_config_hash(cfg)}"
    return name


def _spelled_out(cfg: TrainConfig, name: str, default: TrainConfig, base: str) -> bool:
    """Whether TrainConfig.name() shows this field's value (the name changes without it)."""
    try:
        return replace(cfg, **{name: getattr(default, name)}).name() != base
    except Exception:  # noqa: BLE001 -- a name that cannot be made: keep the token
        return False


def run_names(configs: list[TrainConfig]) -> list[str]:
    """:func:`run_name` of each configuration, unique: where distinct configurations would
    share a name (e.g. data files with the same stem, or values equal to 6 digits), each
    gets ``-h<hash of its configuration>`` appended."""
    names = [run_name(c) for c in configs]
    groups: dict[str, set] = {}
    for n, c in zip(names, configs):
        groups.setdefault(n, set()).add(_config_hash(c))
    return [f"{n}-h{_config_hash(c)}" if len(groups[n]) > 1 else n
            for n, c in zip(names, configs)]


def check_configs(configs: list[TrainConfig]) -> list[str]:
    """Check every configuration (``TrainConfig.check``) and load each distinct dataset
    once (``prepare``); return the run names. Raises ConfigError, DataError or SweepError
    (a configuration listed twice) before anything is trained or written."""
    if not configs:
        raise SweepError("the sweep has no runs")
    for c in configs:
        c.check()
    names = run_names(configs)
    first: dict[str, int] = {}
    for i, (n, c) in enumerate(zip(names, configs)):
        if n in first:
            raise SweepError(f"the grid holds the run {n} twice; list each value once")
        first[n] = i
    seen = set()
    for c in configs:
        # what prepare() can refuse besides check(): the data and how it is split
        key = (c.dataset, c.target, c.data_seed, c.val_fraction, c.standardize, c.dtype)
        if key not in seen:
            seen.add(key)
            prepare(c)
    return names


def grid_of(configs: list[TrainConfig]) -> dict[str, list]:
    """Each option's distinct values over ``configs`` (in first-seen order)."""
    grid: dict[str, list] = {}
    for c in configs:
        for k, v in _config_dict(c).items():
            vals = grid.setdefault(k, [])
            if v not in vals:
                vals.append(v)
    return grid


# -- running ----------------------------------------------------------------------------------
@dataclass
class SweepProgress:
    """What :func:`run_sweep` passes to ``progress``: once before the first run (``name``
    None), then after each finished run (its ``name``, ``status`` and ``message``)."""

    total: int                 # runs in the grid
    done: int                  # finished (including those found complete: ``skipped``)
    running: int               # being trained now (estimated from the free slots)
    left: int                  # not started yet
    skipped: int = 0           # found complete when the sweep started
    failed: int = 0            # could not be trained (no log)
    name: str | None = None
    status: str | None = None  # completed, diverged, interrupted or failed
    message: str = ""
    where: str = ""            # "2 local processes", "dask tcp://..."


@dataclass
class _Run:
    index: int
    name: str
    config: TrainConfig


def _limit_threads() -> None:
    """One BLAS/OpenMP thread in this process (threadpoolctl when it is installed)."""
    for var in BLAS_ENV:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


@contextlib.contextmanager
def _blas_env_for_children():
    """Set the BLAS thread variables to 1 while worker processes are spawned.

    A spawned worker imports numpy (through gradscope) before any initializer runs, so
    the variables must be in the environment it starts with; the parent's own BLAS is
    loaded already and unaffected. Restored afterwards.
    """
    old = {v: os.environ.get(v) for v in BLAS_ENV}
    os.environ.update({v: "1" for v in BLAS_ENV})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


_STOPPING = False
_POLL = 0.2  # seconds between two looks at the results and at a stop request


def _worker_init() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent handles it and
    # ends running trainings with SIGTERM (which train() turns into a clean "interrupted")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_threads()
    _exit_with_parent()


_TRAINING: list[str] = []  # the run this process is training now (a worker's watch reads it)
#: seconds between two looks at whether a worker's parent is alive; and the time a worker
#: whose parent died gets to close its log before it exits anyway
_PARENT_POLL, _PARENT_GRACE = 0.5, 30.0


def _exit_with_parent() -> None:
    """End this worker when the sweep that started it dies (even by SIGKILL).

    A thread watches the parent process id: when the worker is re-parented, it sends
    itself SIGTERM (a training stops between two steps and closes its log "interrupted";
    an idle worker ends) and exits for good after a grace period.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + _PARENT_GRACE
        while _TRAINING and time.monotonic() < end:  # let the log close "interrupted"
            time.sleep(0.05)
        os._exit(1)

    threading.Thread(target=watch, name="gradscope-parent-watch", daemon=True).start()


def _local_task(config: TrainConfig, name: str, out_dir: str) -> dict:
    """Train one run into OUT/.partial/NAME.h5 and move it to OUT/NAME.h5 when it ended
    completed or diverged (an interrupted log stays in .partial and is trained again)."""
    global _STOPPING
    if _STOPPING:
        return {"status": "interrupted", "message": "the sweep was interrupted"}
    out = Path(out_dir)
    partial = out / PARTIAL_DIR / f"{name}.h5"
    try:
        # the log's lock is the run's claim: a run that a live worker (of a sweep whose
        # parent was killed) still trains is refused here, not trained twice
        _TRAINING.append(name)
        try:
            res = train(config, partial)
        finally:
            _TRAINING.remove(name)
    except (ConfigError, DataError) as e:
        return {"status": "failed", "message": str(e)}
    except LogBusyError as e:
        return {"status": "failed", "message": f"{e}; run the sweep again once it has ended"}
    except OSError as e:
        return {"status": "failed", "message": f"cannot write {str(partial)!r}: "
                                               f"{str(e).splitlines()[0]}"}
    except Exception as e:  # noqa: BLE001 -- recorded in the log as "failed"; one line here
        return {"status": "failed", "message": _one_line(e)}
    back = {"status": res.status, "message": res.message, "steps": res.steps}
    if res.status in FINAL_STATUSES:
        os.replace(partial, out / f"{name}.h5")
        back["summary"] = summary_entry(out / f"{name}.h5")
    elif res.status == "interrupted":
        _STOPPING = True
    return back


def _local_stack_task(configs: list[TrainConfig], names: list[str], out_dir: str) -> list:
    """Train runs of one shape together (:func:`gradscope.training.stack.train_stack`),
    each into OUT/.partial/NAME.h5, moved to OUT/NAME.h5 as :func:`_local_task` does."""
    global _STOPPING
    if len(configs) == 1:
        return [_local_task(configs[0], names[0], out_dir)]
    if _STOPPING:
        return [{"status": "interrupted", "message": "the sweep was interrupted"}] * len(names)
    out = Path(out_dir)
    partials = [out / PARTIAL_DIR / f"{name}.h5" for name in names]
    try:
        results = train_stack(configs, partials)
    except (ConfigError, DataError) as e:
        return [{"status": "failed", "message": str(e)}] * len(names)
    except OSError as e:
        return [{"status": "failed", "message": f"cannot write a log of the stack "
                 f"{str(partials[0])!r}...: {str(e).splitlines()[0]}"}] * len(names)
    back = []
    for res, partial, name in zip(results, partials, names):
        back.append({"status": res.status, "message": res.message, "steps": res.steps})
        if res.status in FINAL_STATUSES:
            os.replace(partial, out / f"{name}.h5")
        elif res.status == "interrupted":
            _STOPPING = True
    for res, item, name in zip(results, back, names):
        if res.status in FINAL_STATUSES and not _STOPPING:
            item["summary"] = summary_entry(out / f"{name}.h5")
    return back


#: at most this many parameters (all runs) in one stack: its arrays and optimizer state
#: then take a few hundred MB
MAX_STACK_PARAMS = 1 << 24


def _batches(todo: list[_Run], workers: int) -> list[list[_Run]]:
    """The runs in groups that train together: runs that can share a stack
    (:func:`~gradscope.training.stack.stacks_of`) in ``workers`` parts or more (so that every
    worker has one), each within :data:`MAX_STACK_PARAMS`."""
    out = []
    for idx in stacks_of([r.config for r in todo]):
        runs = [todo[i] for i in idx]
        res = _param_bound(runs[0].config)
        size = max(1, MAX_STACK_PARAMS // max(1, res))
        per = max(1, min(size, math.ceil(len(runs) / workers)))
        out += [runs[i:i + per] for i in range(0, len(runs), per)]
    return out


def _param_bound(cfg: TrainConfig) -> int:
    """A bound on the parameters of one run (its hidden widths and 1000 in and out)."""
    ws = [1000, *cfg.hidden_widths, 1000]
    return sum(a * b + b for a, b in zip(ws, ws[1:]))


def _dask_task(config: TrainConfig, name: str) -> dict:
    """Train one run on a Dask worker into a local temporary file and return its bytes:
    the worker needs no folder shared with the client."""
    _limit_threads()
    with tempfile.TemporaryDirectory(prefix="gradscope-sweep-") as d:
        path = Path(d) / f"{name}.h5"
        try:
            res = train(config, path)
        except (ConfigError, DataError) as e:
            return {"status": "failed", "message": str(e)}
        data = path.read_bytes()
    return {"status": res.status, "message": res.message, "steps": res.steps, "data": data,
            "worker": f"{os.uname().nodename}:{os.getpid()}"}


def _closed_cleanly(path: Path) -> tuple[bool, str]:
    """Whether HDF5 opens ``path`` without SWMR (a log whose writer closed it), and why not.

    A truncated file must not reach the SWMR readers: SWMR skips the end-of-file check
    and then retries its reads for a very long time.
    """
    import h5py

    try:
        with h5py.File(path, "r", locking=False):
            return True, ""
    except OSError as e:
        return False, str(e).splitlines()[0] if str(e) else type(e).__name__


def needs_training(path: Path) -> bool:
    """True unless ``path`` is a cleanly closed log that ended completed or diverged."""
    if not path.is_file():
        return True
    ok, _ = _closed_cleanly(path)
    if not ok:  # killed while writing, truncated, or not HDF5
        return True
    try:
        return read_status(path)["status"] not in FINAL_STATUSES
    except (LogError, OSError, KeyError, ValueError):
        return True  # unreadable: a half-written or foreign file


@contextlib.contextmanager
def _locked(out: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection against two sweeps in one folder
        yield
        return
    with open(out / LOCK_FILE, "a+") as f:  # the lock goes with the file descriptor
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepError(f"another sweep is running in {str(out)!r}; wait for it or "
                             f"choose another --out-dir") from None
        yield


def _connect(scheduler):
    """A dask.distributed Client for an address, a cluster object or a Client; and
    whether it is ours to close."""
    try:
        import distributed
    except ImportError:
        raise SweepError("--scheduler needs dask.distributed, which is not installed; "
                         "install gradscope[dask] (pip install 'gradscope[dask]')") from None
    if isinstance(scheduler, distributed.Client):
        return scheduler, False
    address = getattr(scheduler, "scheduler_address", scheduler)
    # an address distributed cannot parse left a half-made Client that printed a traceback
    # from its __del__ 40 s later: refuse it before
    if (not isinstance(address, str) or not address
            or not re.fullmatch(r"inproc://\S+|([a-z]+://)?[\w.\-\[\]:]*[\w\]]:\d{1,5}/?",
                                address.strip())):
        raise SweepError(f"--scheduler {scheduler!r}; accepted: an address such as "
                         f"tcp://127.0.0.1:8786")
    try:
        client = distributed.Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SweepError(f"cannot connect to the Dask scheduler at {address!r}: {msg}") from None
    return client, True


def _default_jobs() -> int:
    return os.cpu_count() or 1


def run_sweep(
    configs: list[TrainConfig],
    out_dir,
    jobs: int | None = None,
    scheduler=None,
    progress: Callable[[SweepProgress], None] | None = None,
    *,
    grid: dict[str, list] | None = None,
    retries: int = 2,
    stack: bool = True,
) -> pd.DataFrame:
    """Train every configuration whose log in ``out_dir`` is missing or incomplete.

    Every configuration is checked first (:func:`check_configs`): a bad one raises
    ConfigError, DataError or SweepError and nothing is written. Then ``out_dir`` gets
    ``sweep.json`` (the grid: ``grid`` as given, else each option's values over
    ``configs``), one log ``NAME.h5`` per run (:func:`run_names`) and ``summary.csv``.

    Runs are trained in ``jobs`` local processes (default ``os.cpu_count()``; 1 trains in
    this process), or, with ``scheduler`` (an address such as ``tcp://host:8786``, a
    ``distributed.Client`` or a cluster object), as tasks on a Dask cluster, each retried
    ``retries`` times when its worker dies. A log ending ``completed`` or ``diverged`` is
    kept as it is; a missing, ``running`` (killed), ``interrupted`` or unreadable one is
    trained again. Logs appear under their final name only when complete.

    ``stack`` (local processes only): runs that differ only in seed, initialisation and
    optimizer settings train together in one process as a stack of networks
    (:func:`gradscope.training.stack.train_stack`; the logs are those of separate runs),
    split over the ``jobs`` processes; False trains every run on its own.

    Returns :func:`summarize` of ``out_dir``; its ``attrs`` hold the names ``trained``,
    ``skipped`` and ``failed``. KeyboardInterrupt (or SIGTERM) stops the workers, writes
    the summary of what is done and is raised again.
    """
    configs = list(configs)
    names = check_configs(configs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out-dir {str(out)!r} is a file, not a folder")
    if jobs is not None and (not isinstance(jobs, (int, np.integer)) or jobs < 1):
        raise SweepError(f"--jobs {jobs!r}; accepted: a whole number >= 1")
    if not isinstance(retries, int) or retries < 0:
        raise SweepError(f"retries {retries!r}; accepted: a whole number >= 0")
    client, own_client = (None, False)
    if scheduler is not None:
        client, own_client = _connect(scheduler)
    try:
        try:
            (out / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SweepError(f"cannot create folder {str(out)!r}: {e.strerror or e}") from None
        with _locked(out):
            return _run_locked(configs, names, out, jobs, client, progress, grid, retries,
                               stack)
    finally:
        if own_client:
            with contextlib.suppress(Exception):
                client.close()


def _run_locked(configs, names, out, jobs, client, progress, grid, retries, stack=True):
    runs = [_Run(i, n, c) for i, (n, c) in enumerate(zip(names, configs))]
    grid = {_field_name(k): _as_values(_field_name(k), v)
            for k, v in (grid if grid is not None else grid_of(configs)).items()}
    from .._version import __version__

    spec = {
        "format": "gradscope-sweep", "format_version": 1, "gradscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "grid": grid,
        "swept": [k for k, v in grid.items() if len(v) > 1],
        "runs": [{"name": r.name, "config": _config_dict(r.config)} for r in runs],
    }
    write_atomic(out / GRID_FILE, json.dumps(spec, indent=1, default=str) + "\n")

    todo = [r for r in runs if needs_training(out / f"{r.name}.h5")]
    skipped = [r.name for r in runs if r not in todo]
    for name in skipped:  # leftovers of an earlier, interrupted attempt
        for p in (out / PARTIAL_DIR / f"{name}.h5", out / PARTIAL_DIR / f"{name}.failed"):
            with contextlib.suppress(OSError):
                p.unlink()
    state = {"trained": [], "failed": [], "interrupted": False}
    total = len(runs)
    done = [len(skipped)]

    def report(slots, in_flight, name=None, status=None, message="", where=""):
        if progress is None:
            return
        running = min(slots, in_flight)
        progress(SweepProgress(total=total, done=done[0], running=running,
                               left=total - done[0] - running, skipped=len(skipped),
                               failed=len(state["failed"]), name=name, status=status,
                               message=message, where=where))

    known: dict[str, dict] = {}  # summary rows computed where the runs were trained

    def finished(run: _Run, result: dict, slots, in_flight, where):
        status, message = result["status"], result.get("message", "")
        if result.get("summary") is not None:
            known[run.name] = result["summary"]
        failed_note = out / PARTIAL_DIR / f"{run.name}.failed"
        if status == "failed":
            state["failed"].append(run.name)
            with contextlib.suppress(OSError):
                write_atomic(failed_note, message + "\n")
        elif status == "interrupted":
            state["interrupted"] = True
        else:
            state["trained"].append(run.name)
            with contextlib.suppress(OSError):
                failed_note.unlink()
        if status != "interrupted":
            done[0] += 1
            report(slots, in_flight, run.name, status, message, where)

    try:
        # Ctrl-C and SIGTERM end the sweep between two results (see _signals)
        with StopRequest() as stop:
            if not todo:
                report(0, 0, where="nothing to train")
            elif client is not None:
                _run_dask(todo, out, client, retries, report, finished, stop)
            else:
                n = min(jobs or _default_jobs(), len(todo))
                batches = _batches(todo, n) if stack else [[r] for r in todo]
                n = min(n, len(batches))
                if n <= 1:
                    _run_inline(batches, out, report, finished, stop)
                else:
                    _run_pool(batches, out, n, report, finished, stop)
        if state["interrupted"]:
            raise KeyboardInterrupt
    finally:
        with contextlib.suppress(OSError):
            (out / PARTIAL_DIR).rmdir()  # only when empty
        summary = summarize(out, known)
        with contextlib.suppress(OSError):
            write_atomic(out / SUMMARY_FILE, summary.to_csv(index=False))
    summary.attrs.update(trained=state["trained"], skipped=skipped, failed=state["failed"])
    return summary


def _run_inline(batches, out, report, finished, stop):
    where = "this process"
    left = sum(map(len, batches))
    report(1, left, where=where)
    for runs in batches:
        results = _local_stack_task([r.config for r in runs], [r.name for r in runs],
                                    str(out))
        for run, result in zip(runs, results):
            left -= 1
            finished(run, result, 1, left, where)
        if any(r["status"] == "interrupted" for r in results):
            raise KeyboardInterrupt
        stop.check()


def _run_pool(batches, out, n, report, finished, stop):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    where = f"{n} local processes"
    ctx = multiprocessing.get_context("spawn")
    ex = None
    futures: dict = {}
    try:
        with _blas_env_for_children():
            # spawned workers start (and import numpy) during submit: keep the variables set
            ex = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init)
            for runs in batches:
                futures[ex.submit(_local_stack_task, [r.config for r in runs],
                                  [r.name for r in runs], str(out))] = runs
        left = sum(map(len, batches))
        report(n, left, where=where)
        pending = set(futures)
        while pending:
            stop.check()
            ready, pending = wait(pending, timeout=_POLL, return_when=FIRST_COMPLETED)
            for fut in ready:
                runs = futures[fut]
                try:
                    results = fut.result()
                except BrokenProcessPool:
                    results = [{"status": "failed", "message": "a worker process died (out "
                                "of memory? or a script without if __name__ == '__main__'); "
                                "run the sweep again to retry"}] * len(runs)
                except Exception as e:  # noqa: BLE001 -- a bug: these runs failed, not the sweep
                    results = [{"status": "failed", "message": _one_line(e)}] * len(runs)
                for run, result in zip(runs, results):
                    left -= 1
                    finished(run, result, n, left, where)
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        if ex is not None:
            for p in list((getattr(ex, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    p.terminate()  # SIGTERM: a training ends "interrupted", its log closed
        raise
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _run_dask(todo, out, client, retries, report, finished, stop):
    import distributed

    where = f"dask {client.scheduler.address}"

    def slots():
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 -- only for the progress line
            return 1

    def submit(run):
        return client.submit(_dask_task, run.config, run.name, retries=retries, pure=False,
                             key=f"gradscope-train-{run.name}-{uuid.uuid4().hex[:8]}")

    futures = {}
    attempts = {r.name: 1 for r in todo}
    try:
        for run in todo:
            futures[submit(run)] = run
        report(slots(), len(futures), where=where)
        ac = distributed.as_completed(list(futures), loop=client.loop)
        while not ac.is_empty():
            stop.check()
            if not ac.has_ready():
                time.sleep(_POLL)
                continue
            fut = next(ac)
            run = futures.pop(fut)
            try:
                result = fut.result()
            except distributed.KilledWorker as e:
                # every worker that ran it died (the scheduler's allowed-failures): try again
                if attempts[run.name] <= retries:
                    attempts[run.name] += 1
                    new = submit(run)
                    futures[new] = run
                    ac.add(new)
                    continue
                result = {"status": "failed", "message": _one_line(e)}
            except Exception as e:  # noqa: BLE001 -- the task raised (after its retries)
                result = {"status": "failed", "message": _one_line(e)}
            finally:
                fut.release()
            data = result.pop("data", None)
            if data is not None and result["status"] in FINAL_STATUSES:
                write_atomic(out / f"{run.name}.h5", data)
            elif data is not None:
                write_atomic(out / PARTIAL_DIR / f"{run.name}.h5", data)
            finished(run, result, slots(), len(futures), where)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
        raise


# -- the summary ------------------------------------------------------------------------------
def _effective_config(cfg: dict) -> dict:
    """The configuration with optimizer defaults filled in from the resolved hyperparameters."""
    out = dict(cfg)
    hyper = cfg.get("optimizer_hyper")
    if hyper is None and cfg.get("optimizer"):
        try:
            hyper = make_optimizer(cfg["optimizer"]).hyper
        except (KeyError, ValueError, TypeError):
            hyper = {}
    hyper = hyper or {}
    for k in OPTIMIZER_OPTIONS:
        if out.get(k) is None and k in hyper:
            out[k] = hyper[k]
    return out


def _cell(v):
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def _log_row(path: Path) -> tuple[dict, dict]:
    """(run-table row, configuration) of one log, read with one open; raises LogError when
    unreadable."""
    run = read_run(path, figures=False)
    try:
        d = diagnose(run)
    except Exception as e:  # noqa: BLE001 -- the run's numbers stay usable
        row = error_row(path, f"diagnosis failed: {_one_line(e)}", status=run.status["status"])
        row["message"] = run.status["message"]
        return row, run.config
    return run_row(d, steps=run.steps, epochs=run.epochs), run.config


def _file_key(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def summary_entry(path) -> dict | None:
    """A finished log's summary row, as :func:`summarize` reads it, with the file's
    identity (device, inode, size, modification time) when it was read: a worker that
    trained the run computes it next to the training, and :func:`summarize` takes it for
    as long as the file is unchanged. None when the log cannot be read here (the summary
    then reads it, and records why)."""
    path = Path(path)
    try:
        key = _file_key(path)
        row, cfg = _log_row(path)
        if key is None or _file_key(path) != key:
            return None
    except Exception:  # noqa: BLE001 -- summarize reads the log itself and records the error
        return None
    return {"row": row, "config": cfg, "file_key": key}


def summarize(out_dir, known: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per run of the sweep in ``out_dir``, re-read from the logs.

    Rows: every run listed in ``sweep.json`` (in grid order; ``missing`` or ``failed``
    when it has no log yet), then any other ``*.h5`` log in the folder. Columns: ``name``,
    ``status``, the swept options, the run table's measured columns
    (:data:`gradscope.analysis.runs.RUN_COLUMNS`: the diagnosis, final metrics, gradient
    ratios), the other options, ``message`` and ``file``; docs/log-format.md lists them.

    ``known`` maps run names to :func:`summary_entry` of their logs (taken where they
    were trained); an entry is used only while its log's file is the one it was read
    from, every other log is read here.
    """
    out = Path(out_dir)
    spec = {}
    if (out / GRID_FILE).exists():
        try:
            spec = json.loads((out / GRID_FILE).read_text())
        except (OSError, ValueError):
            spec = {}
    planned = {r["name"]: r.get("config", {}) for r in spec.get("runs", [])}
    logs = {p.stem: p for p in sorted(out.glob("*.h5"))} if out.is_dir() else {}
    order = list(planned) + [n for n in logs if n not in planned]
    option_names = list(option_kinds())
    rows, configs = [], []
    for name in order:
        path = logs.get(name)
        row: dict = {"name": name}
        cfg = planned.get(name, {})
        if path is None:
            note = out / PARTIAL_DIR / f"{name}.failed"
            if note.exists():
                row.update(status="failed", message=note.read_text().strip())
            else:
                row.update(status="missing", message="not trained yet")
        else:
            try:
                entry = (known or {}).get(name)
                if entry is not None and entry["file_key"] == _file_key(path):
                    res, logged = dict(entry["row"]), entry["config"]
                else:
                    res, logged = _log_row(path)
                res.pop("run", None)
            except LogError as e:
                row.update(error_row(path, str(e)))
            else:
                row.update(res)
                cfg = {**cfg, **logged}
            row["file"] = path.name
        cfg = _effective_config(cfg)
        configs.append({k: _cell(cfg.get(k)) for k in option_names}
                       | {"total_steps": cfg.get("total_steps")})
        rows.append(row)
    swept = spec.get("swept")
    if swept is None:  # no sweep.json: the options that differ between the logs
        swept = [k for k in option_names
                 if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    swept = [k for k in swept if k in option_names]
    measured = [c for c in RUN_COLUMNS if c not in ("run", "status", "message")]
    others = [k for k in option_names if k not in swept] + ["total_steps"]
    columns = ["name", "status", *swept, *measured, *others, "message", "file"]
    table = [{**c, **r} for r, c in zip(rows, configs)]
    df = pd.DataFrame(table, columns=columns)
    for v in CHECK_COLUMNS:
        df[v] = df[v].astype("boolean")
    for c in ("verdict", "severity", "causes", "flags", "error", "accuracy_split", "message",
              "file"):
        df[c] = df[c].fillna("")
    return df

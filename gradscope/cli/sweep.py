"""``gradscope sweep``: train a grid of configurations, one log each, plus summary.csv.

The command's training options are generated from :class:`~gradscope.training.loop.TrainConfig`'s
fields, so every option of ``gradscope train`` can be swept. The work is done by
:mod:`gradscope.training.sweep`; docs/sweep.md is the user's guide.
"""

from __future__ import annotations

import sys
import time

import click

from ..training.loop import OPTIMIZER_OPTIONS, TrainConfig
from ..training.sweep import (
    GRID_FILE,
    SUMMARY_FILE,
    SweepError,
    SweepProgress,
    check_configs,
    expand_grid,
    option_kinds,
    parse_list,
    run_sweep,
)

_SHOWN_DEFAULTS = {
    "target": "the last column", "epochs": "20 unless --steps", "steps": "none",
    "widths": "--depth x --width", "probe_every": "about 100 steps",
    "probe_size": "min(n, 1024)",
}
_HELP = {
    "dataset": "Built-in dataset name(s) or data file(s).",
    "widths": "Hidden widths; several as 64,64/128,32 (a '/' between the lists).",
    "batch_size": "Batch size(s): whole numbers or 'full'.",
    "seed": "Seeds, e.g. 0,1,2 or 0:4 (--seed also works).",
}


def _choices(name: str) -> str | None:
    if name == "activation":
        from ..engine.activations import activation_names

        return f"Activation(s): {', '.join(activation_names())}."
    if name == "init":
        from ..engine.initializers import INITIALIZERS

        return f"Initialisation(s): {', '.join(INITIALIZERS)}."
    if name == "optimizer":
        from ..engine.optimizers import OPTIMIZERS

        return f"Optimizer(s): {', '.join(OPTIMIZERS)}."
    if name == "dtype":
        from ..training.loop import DTYPES

        return f"Float type(s): {', '.join(DTYPES)}."
    return None


def _opt_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _training_options(f):
    """Decorate ``f`` with one text option per TrainConfig field (last field first)."""
    default = TrainConfig()
    kinds = option_kinds()
    for name in reversed(list(kinds)):
        kind = kinds[name]
        decls = ["--seeds", "--seed", name] if name == "seed" else [_opt_name(name), name]
        dv = getattr(default, name)
        if dv is not None:
            shown = dv
        elif name in OPTIMIZER_OPTIONS:
            shown = "the optimizer's"
        else:
            shown = _SHOWN_DEFAULTS.get(name, "none")
        text = _HELP.get(name) or _choices(name) or f"Value(s): {kind.describe()}."
        if kind.base is bool:
            text = f"A switch: {_opt_name(name)} alone, or true,false to sweep both."
        if kind.base in (int, float) and not kind.is_list:
            text += " Ranges: A:B:+STEP, A:B:xFACTOR."
        kw = {"default": None, "metavar": "LIST", "help": f"{text} [train default: {shown}]"}
        if kind.base is bool:
            kw.update(is_flag=False, flag_value="true", metavar="[LIST]")
        f = click.option(*decls, **kw)(f)
    return f


class _Progress:
    """A tqdm bar on a terminal, else one line per finished run (stderr)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, p: SweepProgress) -> None:
        if self.quiet:
            return
        if p.name is None:  # the start
            todo = p.total - p.skipped
            click.echo(f"sweep: {p.total} runs, {p.skipped} complete already, {todo} to train"
                       + (f" on {p.where}" if todo else ""), err=True)
            if self.tty and todo:
                from tqdm import tqdm

                self.bar = tqdm(total=p.total, initial=p.done, unit="run", dynamic_ncols=True,
                                file=sys.stderr, desc="sweep")
                self.bar.set_postfix_str(f"running {p.running}, left {p.left}")
            return
        if self.bar is not None:
            extra = f", failed {p.failed}" if p.failed else ""
            self.bar.set_postfix_str(f"running {p.running}, left {p.left}{extra}",
                                     refresh=False)
            self.bar.update(1)
            if p.status not in ("completed", "diverged"):
                self.bar.write(f"{p.status} {p.name}: {p.message}", file=sys.stderr)
            return
        msg = f": {p.message}" if p.status == "failed" and p.message else ""
        click.echo(f"[{p.done}/{p.total}] {p.status} {p.name} "
                   f"({p.running} running, {p.left} left){msg}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_training_options
@click.option("--out-dir", required=True, type=click.Path(file_okay=False),
              help="Folder of the sweep: one log per run, summary.csv, sweep.json.")
@click.option("--jobs", "-j", type=int, default=None,
              help="Local worker processes [default: the number of CPUs].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on a Dask cluster, e.g. tcp://127.0.0.1:8786 (needs gradscope[dask]).")
@click.option("--retries", type=int, default=2, show_default=True,
              help="Dask: times a run is tried again when its worker dies.")
@click.option("--stack/--no-stack", default=True, show_default=True,
              help="Train runs that differ only in seed, init and optimizer settings "
                   "together, as a stack of networks in one process (same logs, faster).")
@click.option("--dry-run", is_flag=True, help="List the runs (and which are done); train none.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def sweep(ctx, out_dir, jobs, scheduler, retries, stack, dry_run, quiet, **options):
    """Train every combination of the listed options and summarise the runs.

    Each training option takes one value or a comma list, and numbers take ranges:
    --depth 2:32:x2 (2,4,8,16,32), --depth 2:10:+2, --lr 1e-3:1e-1:x10. Example:

        gradscope sweep --dataset moons --depth 2,4,8 --activation tanh,relu
        --seeds 0,1 --steps 500 --out-dir runs/depth

    Runs whose log is complete are kept, so the same command resumes a sweep.
    """
    from ..engine.data import DataError
    from ..training.loop import ConfigError

    kinds = option_kinds()
    grid = {}
    try:
        for name, text in options.items():
            if text is None:
                continue
            opt = "--seeds" if name == "seed" else _opt_name(name)
            grid[name] = parse_list(text, kinds[name], option=opt)
        configs = expand_grid(grid)
    except SweepError as e:
        raise click.ClickException(str(e)) from None
    if jobs is not None and jobs < 1:
        raise click.ClickException(f"--jobs {jobs}; accepted: a whole number >= 1")
    if retries < 0:
        raise click.ClickException(f"--retries {retries}; accepted: a whole number >= 0")
    if scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--scheduler needs dask.distributed, which is not installed; "
                "install gradscope[dask] (pip install 'gradscope[dask]')") from None
    try:
        names = check_configs(configs)
    except (ConfigError, DataError, SweepError) as e:
        raise click.ClickException(str(e)) from None

    if dry_run:
        from pathlib import Path

        from ..training.sweep import needs_training

        out = Path(out_dir)
        n_done = 0
        for n in names:
            done = not needs_training(out / f"{n}.h5")
            n_done += done
            click.echo(f"{'done ' if done else 'train'} {n}")
        click.echo(f"{len(names)} runs, {len(names) - n_done} to train", err=True)
        return 0

    bar = _Progress(quiet)
    t0 = time.monotonic()
    try:
        summary = run_sweep(configs, out_dir, jobs=jobs, scheduler=scheduler, progress=bar,
                            grid=grid, retries=retries, stack=stack)
    except (ConfigError, DataError, SweepError) as e:
        bar.close()
        raise click.ClickException(str(e)) from None
    except OSError as e:
        bar.close()
        raise click.ClickException(f"cannot write in {out_dir!r}: "
                                   f"{str(e).splitlines()[0]}") from None
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"sweep interrupted; logs of finished runs are in {out_dir}, "
                   f"run the same command again to resume", err=True)
        ctx.exit(130)
    bar.close()
    counts = summary["status"].value_counts().to_dict()
    parts = ", ".join(f"{v} {k}" for k, v in counts.items())
    click.echo(f"sweep: {len(summary)} runs ({parts}) in {time.monotonic() - t0:.1f} s; "
               f"grid: {GRID_FILE}", err=True)
    click.echo(str(_path(out_dir, SUMMARY_FILE)))
    if summary.attrs.get("failed"):
        click.echo(f"{len(summary.attrs['failed'])} runs failed; see the message column of "
                   f"{SUMMARY_FILE}", err=True)
        ctx.exit(1)
    return 0


def _path(folder, name):
    from pathlib import Path

    return Path(folder) / name

"""``gradscope plot``: the teaching figures of :mod:`gradscope.teaching` from the command line.

``plot`` is a click group; ``gradscope.cli.main`` registers it with ``main.add_command(plot)``.
Every user error is a :class:`click.ClickException` or :class:`click.BadParameter` (one
line) raised before anything is written; the figure goes to a temporary file in the
target folder that replaces ``--out`` only once it is complete.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..engine.optimizers import OPTIMIZERS
from ..files import atomic_file

# the names of gradscope.teaching.SURFACES (kept here so that the CLI starts without
# importing matplotlib; tests/test_teaching.py checks that the two agree)
SURFACE_NAMES = ("beale", "rosenbrock", "saddle", "ravine")
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def _format_of(out: str, param: str = "--out") -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise click.BadParameter(
            f"{out!r} has suffix {suffix or '(none)'!r}; accepted: {', '.join(FORMATS)}",
            param_hint=f"'{param}'",
        )
    return FORMATS[suffix]


def _save(fig_factory, out: str, dpi: int) -> Path:
    """Build the figure and write it to ``out`` atomically; nothing is left on failure."""
    fmt = _format_of(out)
    path = Path(out)
    if path.is_dir():
        raise click.BadParameter(f"{out!r} is a folder; give a file name",
                                 param_hint="'--out'")
    parent = path.parent
    created = []  # folders made here, removed again if the figure cannot be written
    for folder in reversed([parent, *parent.parents]):
        if not folder.exists():
            try:
                folder.mkdir()
            except OSError as e:
                _remove_folders(created)
                raise click.ClickException(
                    f"cannot create folder {str(folder)!r}: {e.strerror or e}") from None
            created.append(folder)
    try:
        with atomic_file(path) as fh:
            fig = fig_factory()
            fig.savefig(fh, format=fmt, dpi=dpi)
    except BaseException as e:
        _remove_folders(created)
        if isinstance(e, ValueError):
            raise click.ClickException(str(e).splitlines()[0]) from None
        if isinstance(e, OSError):
            raise click.ClickException(
                f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise
    return path


def _remove_folders(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def _optimizer_list(value: str | None) -> list[str] | None:
    if value is None or value.strip().lower() == "all":
        return None
    names = []
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            raise click.BadParameter(
                f"{value!r} has an empty name; accepted: comma-separated names from "
                f"{', '.join(OPTIMIZERS)}, or 'all'", param_hint="'--optimizer'")
        if name not in OPTIMIZERS:
            raise click.BadParameter(
                f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)} "
                "(comma-separated), or 'all'", param_hint="'--optimizer'")
        if name not in names:
            names.append(name)
    return names


def _lr_overrides(value: str | None) -> dict[str, float]:
    if not value:
        return {}
    out = {}
    for item in value.split(","):
        name, sep, number = item.partition("=")
        name = name.strip()
        try:
            lr = float(number)
        except ValueError:
            lr = math.nan
        if not sep or name not in OPTIMIZERS or not (math.isfinite(lr) and lr > 0):
            raise click.BadParameter(
                f"{item.strip()!r}; accepted: NAME=LR pairs, comma-separated, with NAME one "
                f"of {', '.join(OPTIMIZERS)} and LR a number > 0", param_hint="'--lr'")
        out[name] = lr
    return out


_DPI = click.option("--dpi", type=click.IntRange(20, 1200), default=150, show_default=True,
                    help="Resolution of PNG output.")


@click.group("plot", context_settings={"help_option_names": ["-h", "--help"]})
def plot():
    """Teaching figures: activations and their derivatives, optimizer paths.

    The file format follows the suffix of --out: .png, .pdf or .svg.
    """


@plot.command("activations")
@click.option("--out", default="reports/activations.png", show_default=True, metavar="FILE",
              help="Figure file (.png, .pdf or .svg); replaced if it exists (figures are "
                   "derived files).")
@_DPI
def activations(out: str, dpi: int):
    """Every activation and its derivative, one panel each, with max phi' marked.

    Back-propagation multiplies the gradient by phi'(z) at every layer; the sigmoid's
    phi' is at most 0.25, so each sigmoid layer shrinks the gradient at least fourfold.
    """
    from ..teaching import plot_activations

    path = _save(plot_activations, out, dpi)
    click.echo(str(path))


@plot.command("optimizers")
@click.option("--surface", type=click.Choice(SURFACE_NAMES), default="rosenbrock",
              show_default=True, help="2-D test function.")
@click.option("--optimizer", "optimizers", default=None, metavar="NAME,NAME,...",
              help=f"Optimizers to run [default: all: {', '.join(OPTIMIZERS)}].")
@click.option("--steps", type=int, default=None,
              help="Update steps [default: the surface's budget, in which every "
                   "optimizer reaches the minimum].")
@click.option("--noise", type=float, default=0.0, show_default=True, metavar="SIGMA",
              help="Standard deviation of Gaussian noise added to every gradient "
                   "component (stochastic gradients).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise.")
@click.option("--lr", "lrs", default=None, metavar="NAME=LR,...",
              help="Learning rates overriding the surface's table, e.g. sgd=0.002,adam=0.1.")
@click.option("--out", default=None, metavar="FILE",
              help="Figure file (.png, .pdf or .svg), replaced if it exists "
                   "[default: reports/optimizer-paths-<surface>.png].")
@_DPI
def optimizers(surface, optimizers, steps, noise, seed, lrs, out, dpi):
    """Paths of optimizers from one start point on a 2-D surface, over its contours.

    Runs the training code (make_optimizer, update, apply_updates) on a one-array
    parameter list [x, y], each optimizer with the surface's learning rate from the
    table in docs/teaching.md.
    """
    names = _optimizer_list(optimizers)
    if steps is not None and steps < 0:
        raise click.BadParameter(f"{steps}; accepted: a whole number >= 0",
                                 param_hint="'--steps'")
    if not (math.isfinite(noise) and noise >= 0):
        raise click.BadParameter(f"{noise}; accepted: a finite number >= 0",
                                 param_hint="'--noise'")
    overrides = _lr_overrides(lrs)
    out = out or f"reports/optimizer-paths-{surface}.png"
    _format_of(out)

    from ..teaching import plot_optimizer_paths

    def factory():
        return plot_optimizer_paths(surface=surface, optimizers=names, steps=steps,
                                    noise=noise, seed=seed, lrs=overrides)

    path = _save(factory, out, dpi)
    click.echo(str(path))

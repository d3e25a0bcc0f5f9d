"""The ``gradscope`` command line: thin click commands over the library.

Every error a user can cause is reported as one line on stderr with a non-zero exit,
no traceback, and no file written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..engine.activations import activation_names
from ..engine.initializers import INITIALIZERS
from ..engine.optimizers import OPTIMIZERS


class CleanGroup(click.Group):
    """A click group whose usage errors are one line: ``gradscope: error: ...``."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("gradscope: aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            msg = e.format_message().replace("\n", " ")
            click.echo(f"gradscope: error: {msg}", err=True)
            sys.exit(e.exit_code if e.exit_code else 2)
        sys.exit(rv if isinstance(rv, int) else 0)


def fail(message: str) -> None:
    raise click.ClickException(message)


class BatchSize(click.ParamType):
    name = "N|full"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "full":
            return value
        try:
            v = int(value)
        except ValueError:
            self.fail(f"{value!r}; accepted: a whole number >= 1 or 'full'", param, ctx)
        if v < 1:
            self.fail(f"{value!r}; accepted: a whole number >= 1 or 'full'", param, ctx)
        return v


class IntList(click.ParamType):
    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            out = [int(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r}; accepted: comma-separated whole numbers >= 1", param, ctx)
        if not out or min(out) < 1:
            self.fail(f"{value!r}; accepted: comma-separated whole numbers >= 1", param, ctx)
        return out


@click.group(cls=CleanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradscope")
def main():
    """gradscope: see why deep networks fail to train.

    Train numpy MLPs with per-layer gradient diagnostics (train), and turn the logs
    into PDF reports with verdicts (report).
    """


def _opt(*names, **kw):
    return click.option(*names, **kw)


@main.command()
@_opt("--dataset", default="digits", show_default=True,
      help="Built-in dataset (digits, spirals, moons, blobs, parity, teacher) or a .csv/.npz/.h5 file.")
@_opt("--target", default=None, help="CSV target column [default: the last column].")
@_opt("--data-seed", type=int, default=0, show_default=True, help="Seed of the synthetic datasets.")
@_opt("--standardize", is_flag=True, help="Scale features to zero mean and unit variance.")
@_opt("--depth", type=int, default=3, show_default=True, help="Hidden layers.")
@_opt("--width", type=int, default=64, show_default=True, help="Units per hidden layer.")
@_opt("--widths", type=IntList(), default=None, help="Hidden widths, e.g. 256,128,64 (overrides --depth/--width).")
@_opt("--activation", default="relu", show_default=True, help=f"One of: {', '.join(activation_names())}.")
@_opt("--init", default="xavier", show_default=True, help=f"One of: {', '.join(INITIALIZERS)}.")
@_opt("--init-gain", type=float, default=1.0, show_default=True, help="Multiplies the init's scale.")
@_opt("--optimizer", default="adam", show_default=True, help=f"One of: {', '.join(OPTIMIZERS)}.")
@_opt("--lr", type=float, default=None, help="Learning rate [default: the optimizer's].")
@_opt("--momentum", type=float, default=None, help="Momentum (sgd, momentum, nesterov, rmsprop).")
@_opt("--beta1", type=float, default=None, help="Adam-family first-moment decay.")
@_opt("--beta2", type=float, default=None, help="Adam-family second-moment decay.")
@_opt("--eps", type=float, default=None, help="Denominator epsilon.")
@_opt("--rho", type=float, default=None, help="Adadelta's decay.")
@_opt("--alpha", type=float, default=None, help="RMSprop's smoothing constant.")
@_opt("--weight-decay", type=float, default=None, help="L2 penalty (decoupled for adamw).")
@_opt("--batch-size", type=BatchSize(), default=32, show_default=True,
      help="1 = stochastic, 'full' = batch gradient descent, else mini-batch.")
@_opt("--epochs", type=int, default=None, help="Epochs [default: 20 unless --steps].")
@_opt("--steps", type=int, default=None, help="Update steps (instead of --epochs).")
@_opt("--val-fraction", type=float, default=0.2, show_default=True, help="Held out for validation; 0 for none.")
@_opt("--seed", type=int, default=0, show_default=True, help="Seeds init, split and shuffling.")
@_opt("--dtype", default="float32", show_default=True, help="float32 or float64.")
@_opt("--log-every", type=int, default=1, show_default=True, help="Record every K steps.")
@_opt("--probe-every", type=int, default=None, help="Probe-set statistics every K steps [default: ~100].")
@_opt("--probe-size", type=int, default=None, help="Probe-set examples [default: min(n, 1024)].")
@_opt("--hist-bins", type=int, default=50, show_default=True, help="Activation histogram bins.")
@_opt("--snapshot-every", type=int, default=0, show_default=True, help="Keep parameters every K steps (0: never).")
@_opt("--dropout", type=float, default=0.0, show_default=True,
      help="Inverted dropout rate P in [0, 1) on hidden activations, training only (0: off).")
@_opt("--residual", is_flag=True,
      help="Identity skip a + phi(a W + b) around each hidden layer whose fan_in equals fan_out.")
@_opt("--norm", default=None, metavar="batch|layer",
      help="Normalise z before each hidden activation (as torch BatchNorm1d / LayerNorm) [default: none].")
@_opt("--clip-norm", type=float, default=None, metavar="C",
      help="Clip the global gradient norm to C (torch clip_grad_norm_) [default: off].")
@_opt("--clip-value", type=float, default=None, metavar="V",
      help="Clamp every gradient element to [-V, V] (torch clip_grad_value_) [default: off].")
@_opt("--out", type=click.Path(dir_okay=False), default=None,
      help="Log file [default: runs/<descriptive name>.h5].")
@_opt("--force", is_flag=True, help="Overwrite an existing log.")
@_opt("--quiet", "-q", is_flag=True, help="No progress bar.")
@_opt("--watch", "watch_live", is_flag=True,
      help="Show the live view of `gradscope watch` instead of the progress bar (needs rich).")
def train(out, force, quiet, watch_live, **options):
    """Train an MLP and record per-layer gradient diagnostics to an HDF5 log."""
    from ..engine.data import DataError
    from ..training.loop import ConfigError, TrainConfig, prepare
    from ..training.loop import train as run

    if options.get("norm") is not None and options["norm"].lower() == "none":
        options["norm"] = None
    cfg = TrainConfig(**options)
    try:
        prep = prepare(cfg)
    except (ConfigError, DataError) as e:
        fail(str(e))
    path = Path(out) if out else Path("runs") / f"{cfg.name()}.h5"
    if path.exists() and not force:
        fail(f"log {str(path)!r} exists; pass --force to overwrite it or --out to choose another file")
    if path.exists() and path.is_dir():
        fail(f"--out {str(path)!r} is a directory; give a file name ending in .h5")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create folder {str(path.parent)!r}: {e.strerror}")

    if watch_live:
        try:
            import rich  # noqa: F401
        except ImportError:
            fail("--watch needs the 'rich' package: pip install 'gradscope[watch]'")
    viewer = []
    bar = None
    if not quiet and sys.stderr.isatty() and not watch_live:
        from tqdm import tqdm

        bar = tqdm(total=prep.resolved["total_steps"], unit="step", dynamic_ncols=True,
                   desc=path.stem[:40])
    last = [0.0, 0]

    def progress(step, total, loss):
        if watch_live and not viewer:
            # the view runs in its own process (it reads the log like any reader, and its
            # drawing does not take the training's interpreter); started once the log exists
            viewer.append(_start_viewer(path))
        if bar is None:
            return
        now = time.monotonic()
        if now - last[0] > 0.25 or step == total:
            bar.update(step - last[1])
            bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            last[0], last[1] = now, step

    try:
        result = run(prep, path, progress=progress)
    except OSError as e:
        fail(f"cannot write log {str(path)!r}: {str(e).splitlines()[0]}")
    finally:
        if bar is not None:
            bar.close()
        if viewer:
            _stop_viewer(viewer[0])
    if result.status == "diverged":
        click.echo(f"warning: run diverged: {result.message}", err=True)
    elif result.status == "interrupted":
        click.echo(f"{result.message}; the log holds every step before it", err=True)
        click.echo(str(path))
        return 130
    click.echo(f"{result.status}: {result.steps} steps, final batch loss {result.final_loss:.4g}; "
               f"log: {path}")
    return 0


def _start_viewer(path: Path):
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "gradscope", "watch", str(path),
                             "--every", "1s"])


def _stop_viewer(proc, wait: float = 10.0) -> None:
    """The view exits by itself once it has seen the run end; a view that does not (its
    terminal gone) is ended."""
    import subprocess

    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()


@main.command()
@_opt("--activation", required=True, help=f"One of: {', '.join(activation_names())}.")
@_opt("--depth", type=int, required=True, help="Hidden layers.")
@_opt("--init", default="xavier", show_default=True, help=f"One of: {', '.join(INITIALIZERS)}.")
@_opt("--init-gain", type=float, default=1.0, show_default=True, help="The current gain.")
@_opt("--bias-var", type=float, default=0.0, show_default=True, help="Bias variance s_b^2.")
@_opt("--width", type=int, default=None, help="Hidden width (matters for xavier and orthogonal with unequal fans).")
def advise(activation, depth, init, init_gain, bias_var, width):
    """Initialisation advice from mean-field theory: how far the gradients fall, and the gain
    that puts ACTIVATION at (or nearest to) criticality."""
    import math

    from ..analysis.theory import advise as run_advise
    from ..engine.activations import get_activation

    try:
        get_activation(activation)
    except KeyError as e:
        fail(e.args[0])
    if depth < 1:
        fail(f"--depth {depth}; accepted: a whole number >= 1")
    if init not in INITIALIZERS:
        fail(f"unknown init {init!r}; accepted: {', '.join(INITIALIZERS)}")
    if not (math.isfinite(init_gain) and init_gain > 0):
        fail(f"--init-gain {init_gain}; accepted: a finite number > 0")
    if not (math.isfinite(bias_var) and bias_var >= 0):
        fail(f"--bias-var {bias_var}; accepted: a finite number >= 0")
    if width is not None and width < 1:
        fail(f"--width {width}; accepted: a whole number >= 1")
    r = run_advise(activation, depth, init=init, gain=init_gain, bias_var=bias_var, width=width)
    rows = [
        ("weight variance s_w^2", r["weight_var"], r.get("advised_weight_var")),
        ("gain", r["gain"], r.get("advised_gain")),
        ("chi1", r["chi1"], r.get("advised_chi1")),
        ("first/last-layer gradient ratio", r["grad_ratio"], r.get("advised_grad_ratio")),
        ("  from inputs of mean square 1", r.get("grad_ratio_from_inputs"),
         r.get("advised_grad_ratio_from_inputs")),
    ]
    click.echo(f"{'':34s}{'current':>12s}{'advised':>12s}")
    for name, cur, adv in rows:
        click.echo(f"{name:34s}{_num(cur):>12s}{_num(adv):>12s}")
    click.echo(r["recommendation"])


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}"


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="RUN.h5|DIR ...")
@_opt("--out", type=click.Path(dir_okay=False), default=None,
      help="PDF to write [default: reports/<run or folder name>.pdf].")
@_opt("--vanishing", type=float, default=None, help="Vanishing threshold: first/output-layer gradient ratio below it [1e-3].")
@_opt("--exploding", type=float, default=None, help="Exploding threshold: ratio above it [1e3].")
@_opt("--dead-units", type=float, default=None, help="Share of dead units in a layer [0.5].")
@_opt("--saturated", type=float, default=None, help="Share of saturated activations in a layer [0.5].")
@_opt("--max-steps", type=int, default=400, show_default=True, help="Time bins per figure (long runs are downsampled).")
def report(inputs, out, vanishing, exploding, dead_units, saturated, max_steps):
    """Write a multi-page PDF report on one or more logs (or folders of logs) and print
    the verdicts."""
    from ..record.schema import LogError
    from ..views.report import collect_logs, make_report, verdict_table

    thresholds = {k: v for k, v in (("vanishing", vanishing), ("exploding", exploding),
                                    ("dead_units", dead_units), ("saturated", saturated))
                  if v is not None}
    if max_steps < 10:
        fail(f"--max-steps {max_steps}; accepted: a whole number >= 10")
    try:
        paths = collect_logs(inputs)
    except LogError as e:
        fail(str(e))
    if out is None:
        first = Path(inputs[0])
        stem = first.name if first.is_dir() else first.stem
        if len(inputs) > 1:
            stem += f"-and-{len(inputs) - 1}-more"
        out = Path("reports") / f"{stem}.pdf"
    out = Path(out)
    if out.suffix.lower() != ".pdf":
        fail(f"--out {str(out)!r}; accepted: a file name ending in .pdf")
    if out.exists() and out.is_dir():
        fail(f"--out {str(out)!r} is a directory; give a file name ending in .pdf")
    created = not out.parent.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create folder {str(out.parent)!r}: {e.strerror}")
    try:
        result = make_report(paths, out, max_steps=max_steps, **thresholds)
    except (LogError, ValueError, OSError) as e:
        if created:
            try:
                out.parent.rmdir()
            except OSError:
                pass
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(msg)
    click.echo(verdict_table(result["diagnoses"]))
    click.echo(f"report: {result['out']} ({result['pages']} pages)")
    return 0


def _register_subcommands() -> None:
    from .plot import plot
    from .sweep import sweep
    from .watch import watch

    main.add_command(sweep)
    main.add_command(plot)
    main.add_command(watch)


_register_subcommands()

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


#: The help of each training option (TrainConfig's fields, in their order).
TRAIN_HELP = {
    "dataset": "Built-in dataset (digits, spirals, moons, blobs, parity, teacher) or a "
               ".csv/.npz/.h5 file.",
    "target": "CSV target column [default: the last column].",
    "data_seed": "Seed of the synthetic datasets.",
    "standardize": "Scale features to zero mean and unit variance.",
    "depth": "Hidden layers.",
    "width": "Units per hidden layer.",
    "widths": "Hidden widths, e.g. 256,128,64 (overrides --depth/--width).",
    "activation": "The hidden layers' activation.",
    "init": "Weight initialisation.",
    "init_gain": "Multiplies the init's scale.",
    "optimizer": "The update rule (as torch.optim).",
    "lr": "Learning rate [default: the optimizer's].",
    "momentum": "Momentum (sgd, momentum, nesterov, rmsprop).",
    "beta1": "Adam-family first-moment decay.",
    "beta2": "Adam-family second-moment decay.",
    "eps": "Denominator epsilon.",
    "rho": "Adadelta's decay.",
    "alpha": "RMSprop's smoothing constant.",
    "weight_decay": "L2 penalty (decoupled for adamw).",
    "batch_size": "1 = stochastic, 'full' = batch gradient descent, else mini-batch.",
    "epochs": "Epochs [default: 20 unless --steps].",
    "steps": "Update steps (instead of --epochs).",
    "val_fraction": "Held out for validation; 0 for none.",
    "seed": "Seeds init, split and shuffling.",
    "dtype": "Floating-point type of the parameters and passes.",
    "log_every": "Record every K steps.",
    "probe_every": "Probe-set statistics every K steps [default: ~100].",
    "probe_size": "Probe-set examples [default: min(n, 1024)].",
    "hist_bins": "Activation histogram bins.",
    "snapshot_every": "Keep parameters every K steps (0: never).",
    "dropout": "Inverted dropout rate P in [0, 1) on hidden activations, training only "
               "(0: off).",
    "residual": "Identity skip a + phi(a W + b) around each hidden layer whose fan_in "
                "equals fan_out.",
    "norm": "Normalise z before each hidden activation (as torch BatchNorm1d / LayerNorm) "
            "[default: none].",
    "clip_norm": "Clip the global gradient norm to C (torch clip_grad_norm_) [default: off].",
    "clip_value": "Clamp every gradient element to [-V, V] (torch clip_grad_value_) "
                  "[default: off].",
}
#: Whole-number options and their accepted range (min, max); others take any integer.
TRAIN_RANGES = {"depth": (1, None), "width": (1, None), "epochs": (1, None),
                "steps": (1, None), "log_every": (1, None), "probe_every": (1, None),
                "probe_size": (1, None), "hist_bins": (2, 1000), "snapshot_every": (0, None)}
_METAVARS = {"norm": "batch|layer", "clip_norm": "C", "clip_value": "V"}


class _LibraryRefusal:
    """A click type whose refusal is the library's own one-line message (what
    ``TrainConfig.check`` says of the value), so that the command line and the API refuse
    a value in the same words."""

    field = ""

    def refuse(self, value, param, ctx, error: click.BadParameter):
        from ..training.loop import ConfigError, TrainConfig

        try:
            TrainConfig(**{self.field: value}).check()
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        raise error


class RegistryChoice(_LibraryRefusal, click.Choice):
    """One of a registry's names (activations, inits, optimizers, float types)."""

    def __init__(self, field: str, names):
        super().__init__(list(names), case_sensitive=True)
        self.field = field

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            self.refuse(value, param, ctx, e)


class CheckedRange(_LibraryRefusal, click.IntRange):
    """A whole number in a range; a non-integer gets click's message, a number out of the
    range the library's."""

    def __init__(self, field: str, lo, hi):
        super().__init__(min=lo, max=hi)
        self.field = field

    def convert(self, value, param, ctx):
        value = click.INT.convert(value, param, ctx)
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            self.refuse(value, param, ctx, e)


def _train_type(name: str, kind):
    from ..training.loop import DTYPES

    registries = {"activation": activation_names(), "init": INITIALIZERS,
                  "optimizer": OPTIMIZERS, "dtype": DTYPES}
    if name in registries:
        return RegistryChoice(name, registries[name])
    if kind.is_list:
        return IntList()
    if kind.also_str:
        return BatchSize()
    if name in TRAIN_RANGES:
        return CheckedRange(name, *TRAIN_RANGES[name])
    return {int: int, float: float, str: str}[kind.base]


def _train_options(f):
    """Decorate ``f`` with one option per TrainConfig field (as ``sweep``'s are generated):
    the type from the field's hint or its registry, the default from TrainConfig."""
    from ..training.loop import TrainConfig
    from ..training.sweep import option_kinds

    default = TrainConfig()
    kinds = option_kinds()
    missing = [k for k in kinds if k not in TRAIN_HELP]
    if missing:  # a new TrainConfig field needs its help line here
        raise RuntimeError(f"no help for the training option(s) {', '.join(missing)}")
    for name in reversed(list(kinds)):
        kind = kinds[name]
        decl = "--" + name.replace("_", "-")
        dv = getattr(default, name)
        if kind.base is bool:
            f = click.option(decl, name, is_flag=True, help=TRAIN_HELP[name])(f)
            continue
        kw = {"type": _train_type(name, kind), "default": dv, "help": TRAIN_HELP[name],
              "show_default": dv is not None}
        if name in _METAVARS:
            kw["metavar"] = _METAVARS[name]
        f = click.option(decl, name, **kw)(f)
    return f


@main.command()
@_train_options
@_opt("--out", type=click.Path(dir_okay=False), default=None,
      help="Log file [default: runs/<descriptive name>.h5].")
@_opt("--force", is_flag=True,
      help="Overwrite an existing log (logs are records and are never replaced without it; "
           "reports and figures, made from logs, are).")
@_opt("--quiet", "-q", is_flag=True, help="No progress bar.")
@_opt("--watch", "watch_live", is_flag=True,
      help="Show the live view of `gradscope watch` instead of the progress bar (needs rich).")
def train(out, force, quiet, watch_live, **options):
    """Train an MLP and record per-layer gradient diagnostics to an HDF5 log."""
    from ..engine.data import DataError
    from ..record.schema import LogError
    from ..training.loop import ConfigError, TrainConfig, prepare
    from ..training.loop import train as run

    if options.get("norm") is not None and options["norm"].lower() == "none":
        options["norm"] = None
    cfg = TrainConfig(**options)
    try:
        prep = prepare(cfg)
    except (ConfigError, DataError) as e:
        fail(str(e))
    except MemoryError as e:
        fail(_failed_run(e, None))
    if out is not None and not out.strip():
        fail(f"--out {out!r}; accepted: a file name ending in .h5 (or leave --out out)")
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
    except LogError as e:  # another process writes this log, or it cannot be created
        fail(str(e))
    except Exception as e:  # noqa: BLE001 -- recorded in the log as "failed": one line here
        fail(_failed_run(e, path))
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


def _failed_run(e: BaseException, path) -> str:
    """One line for a run that raised: what happened and what its log holds."""
    from ..reading.readers import read_status
    from ..record.schema import LogError
    from ..record.writer import one_line

    what = "out of memory" if isinstance(e, MemoryError) else "the run failed"
    line = f"{what}: {one_line(e)}"
    if path is not None and Path(path).exists():
        try:
            st = read_status(path)
        except LogError:
            st = None
        if st is not None and st["status"] == "failed":
            n = st["rows"].get("steps", 0)
            line += f"; the log {str(path)!r} keeps its {n} logged steps, marked failed"
    return line


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
@click.argument("run", required=False, metavar="[RUN.h5]")
@_opt("--activation", default=None, help=f"One of: {', '.join(activation_names())}.")
@_opt("--depth", type=int, default=None, help="Hidden layers.")
@_opt("--init", default="xavier", show_default=True,
      help=f"One of: {', '.join(INITIALIZERS)} (train's default).")
@_opt("--init-gain", type=float, default=1.0, show_default=True, help="The current gain.")
@_opt("--bias-var", type=float, default=0.0, show_default=True, help="Bias variance s_b^2.")
@_opt("--width", type=int, default=None, help="Hidden width (matters for xavier and orthogonal with unequal fans).")
def advise(run, activation, depth, init, init_gain, bias_var, width):
    """Initialisation advice from mean-field theory before you train (--activation, --depth):
    how far the gradients fall, and the --init-gain that puts the activation at (or nearest
    to) criticality.

    With a finished run's log (gradscope advise RUN.h5): its verdicts and, for each failing
    one, remedies as complete command lines, most promising first (the report's advice)."""
    import math

    from ..analysis.theory import advise as run_advise
    from ..engine.activations import get_activation

    if run is not None:
        if activation is not None or depth is not None:
            fail("give either RUN.h5 or --activation and --depth, not both")
        return _advise_run(run)
    if activation is None or depth is None:
        fail("give a run's log (gradscope advise RUN.h5) or --activation and --depth")
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
        ("gain (--init-gain)", r["gain"], r.get("advised_gain")),
        ("chi1", r["chi1"], r.get("advised_chi1")),
        ("first/last-layer gradient ratio", r["grad_ratio"], r.get("advised_grad_ratio")),
        ("  from inputs of mean square 1", r.get("grad_ratio_from_inputs"),
         r.get("advised_grad_ratio_from_inputs")),
    ]
    click.echo(f"{'':34s}{'current':>12s}{'advised':>12s}")
    for name, cur, adv in rows:
        click.echo(f"{name:34s}{_num(cur):>12s}{_num(adv):>12s}")
    click.echo(r["recommendation"])
    g = r.get("advised_gain")
    if g is not None and abs(g - init_gain) > 1e-3 * init_gain:
        click.echo(f"to train with it: gradscope train --activation {activation} --depth {depth} "
                   f"--init {init} --init-gain {g:.3g} ...")


def _advise_run(run: str) -> int:
    from ..analysis.diagnose import diagnose
    from ..reading.run import read_run
    from ..record.schema import LogError
    from ..views.report import verdict_table

    path = Path(run)
    if not path.is_file():
        fail(f"run {run!r} is not a file; accepted: a gradscope log (.h5)")
    try:
        run_ = read_run(path, figures=False)
        config, d = run_.config, diagnose(run_)
    except LogError as e:
        fail(str(e))
    except (OSError, KeyError, ValueError) as e:
        fail(f"{run!r} is not a readable gradscope log: {str(e).splitlines()[0] if str(e) else e}")
    click.echo(verdict_table([d]))
    if d.verdict == "failed" and not d.causes:
        click.echo(f"{path.name} stopped on an error ({d.status_message}); remove its cause "
                   "and train again")
        return 0
    click.echo(remedy_text([(d, config, path)], most=99)
               or f"{path.name}: no failing verdict, nothing to change")
    return 0


def remedy_text(items, most: int = 3) -> str:
    """'What to do next' lines for the failing runs of ``items`` ((diagnosis, config, path)
    triples): the top ``most`` remedies of each as complete command lines."""
    from ..analysis.remedies import remedies_for_run

    lines = []
    for d, config, path in items:
        rs = remedies_for_run(config, d, path)
        if not rs:
            continue
        lines.append(f"\nwhat to do next for {Path(path).name} ({d.headline}), "
                     "most promising first:")
        for i, r in enumerate(rs[:most], 1):
            lines.append(f"  {i}. {r.summary}")
            if not r.torch:
                lines.append(f"     {r.command}")
        if len(rs) > most:
            lines.append(f"  ({len(rs) - most} more: gradscope advise {path})")
    return "\n".join(lines).lstrip("\n")


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
@_opt("--not-learning", type=float, default=None, help="Not learning: accuracy less than this share of the way from chance to 1 [0.25].")
@_opt("--stalled-updates", type=float, default=None, help="Stalled updates: typical update/weight ratio below it [2e-4].")
@_opt("--max-steps", type=int, default=400, show_default=True, help="Time bins per figure (long runs are downsampled).")
@_opt("--check-advice", is_flag=True,
      help="Retrain each run with an alarm briefly with its first remedy (logs in "
           "<report name>-advice/ beside the PDF) and add before/after pages.")
def report(inputs, out, vanishing, exploding, dead_units, saturated, not_learning,
           stalled_updates, max_steps, check_advice):
    """Write a multi-page PDF report on one or more logs (or folders of logs), print the
    verdicts and, for each run with an alarm, what to do next.

    The PDF (and, with --check-advice, its folder of retrained logs) is derived from the logs
    and replaced when it exists; the logs themselves are never overwritten."""
    from ..record.schema import LogError
    from ..views.report import collect_logs, make_report, verdict_table

    thresholds = {k: v for k, v in (("vanishing", vanishing), ("exploding", exploding),
                                    ("dead_units", dead_units), ("saturated", saturated),
                                    ("not_learning", not_learning),
                                    ("stalled_updates", stalled_updates))
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
    def advice(runs):
        return _check_advice(runs, out.with_name(f"{out.stem}-advice"), **thresholds)

    try:
        result = make_report(paths, out, max_steps=max_steps,
                             check_advice=advice if check_advice else None,
                             **thresholds)
    except (LogError, ValueError, OSError) as e:
        if created:
            try:
                out.parent.rmdir()
            except OSError:
                pass
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(msg)
    click.echo(verdict_table(result["diagnoses"]))
    todo = remedy_text([(d, c, p) for d, c, p in zip(result["diagnoses"], result["configs"],
                                                      paths)
                        if d.verdict != "healthy"],
                       most=2 if len(paths) <= 12 else 1)
    if todo:
        click.echo(todo)
    for a in result.get("advice") or ():
        click.echo(f"checked: {a['run']} with {_change_words(a['change'])}: "
                   f"{a['before']} -> {a['after']}"
                   + (f" (gone: {', '.join(a['fixed'])})" if a["fixed"] else "")
                   + (f" (still: {', '.join(a['still'])})" if a["still"] else ""))
    click.echo(f"report: {result['out']} ({result['pages']} pages)")
    return 0


def _change_words(change: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v:g}"
                                                  if isinstance(v, float) else f" {v}")
                    for k, v in change.items() if v is not None)


def _check_advice(runs, folder: Path, **thresholds):
    """Retrain each run with an alarm with its first remedy, briefly; (run, remedy, log)."""
    from ..analysis.remedies import remedies_for_run
    from ..training.loop import TrainConfig, prepare
    from ..training.loop import train as run_training
    from ..views.report import ADVICE_STEPS

    out = []
    for run in runs:
        rs = remedies_for_run(run.config, run.diagnosis, run.path, **thresholds)
        if not rs:
            continue
        if rs[0].torch:
            click.echo(f"advice for {run.label} not checked: a PyTorch model's log; "
                       "gradscope can retrain only its own MLPs", err=True)
            continue
        remedy = rs[0]
        opts = {k: v for k, v in remedy.options.items() if v is not None or k in ("norm",)}
        total = int(run.config.get("total_steps") or ADVICE_STEPS)
        opts["steps"], opts["epochs"] = min(total, ADVICE_STEPS), None
        slug = Path(remedy.command.split(" --out ")[-1]).stem if " --out " in remedy.command \
            else f"{run.path.stem}--remedy"
        path = folder / f"{slug}.h5"
        click.echo(f"checking advice: {_change_words(remedy.change)} on {run.label} "
                   f"({opts['steps']} steps) -> {path}", err=True)
        try:
            prep = prepare(TrainConfig(**opts))
            run_training(prep, path)
        except Exception as e:  # a remedy that cannot be trained is reported, not fatal
            click.echo(f"warning: advice for {run.label} not checked: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
            continue
        out.append((run, remedy, path))
    return out


#: The quick start's contrasting pair: (log name, train options).
DEMO_RUNS = (
    ("sigmoid-standard", {"depth": 8, "activation": "sigmoid", "init": "standard",
                          "optimizer": "sgd", "lr": 0.05, "epochs": 10}),
    ("relu-he", {"depth": 8, "activation": "relu", "init": "he", "optimizer": "sgd",
                 "lr": 0.05, "epochs": 10}),
)


@main.command()
@_opt("--out-dir", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False),
      help="Folder of the two logs (replaced: the demo's own runs).")
@_opt("--report", "report_path", default="reports/quickstart.pdf", show_default=True,
      type=click.Path(dir_okay=False), help="The report to write.")
@_opt("--check-advice", is_flag=True, help="Also check the advice (see report --help).")
@click.pass_context
def demo(ctx, out_dir, report_path, check_advice):
    """The quick start: train two contrasting 8-layer nets on the shipped digits data
    (sigmoid with the "standard" init, whose gradient vanishes, and ReLU with He init,
    which is healthy) and write their report, printing each command it runs."""
    for name, opts in DEMO_RUNS:
        out = Path(out_dir) / f"{name}.h5"
        words = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in opts.items())
        click.echo(f"$ gradscope train {words} --force --out {out}")
        args = ["train", *words.split(), "--force", "--out", str(out)]
        rc = _run_sub(ctx, args)
        if rc:
            return rc
    args = ["report", out_dir, "--out", report_path] + (["--check-advice"] if check_advice else [])
    click.echo(f"$ gradscope {' '.join(args)}")
    return _run_sub(ctx, args)


def _run_sub(ctx, args) -> int:
    """Run one gradscope command line in this process (its errors end the demo as usual)."""
    cmd = main.get_command(ctx, args[0])
    sub = cmd.make_context(args[0], list(args[1:]), parent=ctx)
    with sub:
        rv = cmd.invoke(sub)
    return rv if isinstance(rv, int) else 0


def _register_subcommands() -> None:
    from .plot import plot
    from .sweep import sweep
    from .watch import watch

    main.add_command(sweep)
    main.add_command(plot)
    main.add_command(watch)


_register_subcommands()

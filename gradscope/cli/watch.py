"""``gradscope watch``: the live terminal view (gradscope.views.watch, needs ``rich``)."""

from __future__ import annotations

import click

from .main import fail


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from ..views.watch import parse_every

        try:
            return parse_every(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.command()
@click.argument("targets", nargs=-1, required=True, metavar="RUN.h5|DIR")
@click.option("--every", type=Duration(), default="2s", show_default=True,
              help="Refresh interval, e.g. 2s, 500ms.")
@click.option("--once", is_flag=True, help="Print the view once and exit (also when piped).")
@click.option("--stale", type=Duration(), default="30s", show_default=True,
              help="A 'running' log with no write for this long is shown as stalled (killed?).")
def watch(targets, every, once, stale):
    """Follow one run (RUN.h5) or a folder of runs live while their logs grow: per-layer
    gradient bars on a log scale, the loss, update/weight ratios, dead and saturated
    shares, and the verdicts. Exits when every run has ended, or on q / Ctrl-C."""
    try:
        import rich  # noqa: F401
    except ImportError:
        fail("gradscope watch needs the 'rich' package: pip install 'gradscope[watch]'")
    from ..record.schema import LogError
    from ..views.watch import check_targets
    from ..views.watch import watch as run_watch

    try:
        check_targets(targets)
    except LogError as e:
        fail(str(e))
    return run_watch(targets, every=every, once=once, stale=stale)

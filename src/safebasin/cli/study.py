"""`safebasin sweep` and `safebasin demo`."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ._common import (
    ProgressBar,
    _print_outcome,
    _quiet_transformers,
    _set_threads,
    _threads_option,
    cli,
    quiet_option,
)


@cli.command("sweep")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Results folder: results.csv, summary.md/.csv, PNG plots, sweep.json.")
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Models, runs and cached points [default: OUTPUT/work].")
@_threads_option
@quiet_option
def sweep_cmd(config, out, workdir, threads, quiet):
    """Run CONFIG's (YAML) fine-tunes, merges and evaluations; finished points are reused."""
    from ..sweep import sweep

    _set_threads(threads)
    _quiet_transformers(True)  # one "Loading weights" bar per point would drown the table
    with ProgressBar(quiet=quiet, desc="sweep", unit="point") as bar:
        outcome = sweep(config, out, workdir=workdir, progress=lambda label: bar(1))
    _print_outcome(outcome, out)


@cli.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("safebasin-demo"),
              show_default=True, help="Where the world, models, table and plots go (reused).")
@click.option("--quick", is_flag=True, help="One seed, one EMA, shorter runs (< 2 minutes).")
@click.option("--smoke", is_flag=True, help="A tiny model and a dozen steps: checks that every "
              "path runs (seconds; the numbers mean nothing).")
@_threads_option
@quiet_option
def demo_cmd(workdir, quick, smoke, threads, quiet):
    """The toy world end to end: θ₀, aggressive fine-tuning with EMA, matched-distance merges,
    keyword ASR; prints the table and writes the plots."""
    from ..sweep.demo import demo

    if quick and smoke:
        raise UsageError("give --quick or --smoke, not both")
    _set_threads(threads)
    _quiet_transformers(True)
    with ProgressBar(quiet=quiet, desc="demo", unit="point") as bar:
        outcome = demo(workdir, mode="smoke" if smoke else "quick" if quick else "full",
                       progress=lambda label: bar(1))
    _print_outcome(outcome, workdir)
    click.echo(f"config: {workdir / 'demo.yaml'} (rerun or edit it with `safebasin sweep`)")

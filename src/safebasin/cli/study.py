"""`safebasin sweep` and `safebasin demo`."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import OutputNotWritableError, UsageError
from ._common import (
    ProgressBar,
    _print_outcome,
    _quiet_transformers,
    _set_threads,
    _threads_option,
    cli,
    quiet_option,
)
from ._points import PointsBar, executor_from_options, executor_options
from ._reproducible import enter_reproducible, reproducible_option


@cli.command("sweep")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Results folder: results.csv, summary.md/.csv, PNG plots, sweep.json.")
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Models, runs and cached points [default: OUTPUT/work].")
@_threads_option
@reproducible_option("on for a toy: config, off for model:")
@executor_options
@quiet_option
def sweep_cmd(config, out, workdir, threads, reproducible, quiet, **engine):
    """Run CONFIG's (YAML) fine-tunes, merges and evaluations; finished points are reused.
    With --executor ray or slurm they run as jobs there, independent ones at once."""
    from ..reproducible import is_toy_sweep_config

    executor = executor_from_options(engine).build()  # a bad option fails before any work
    enter_reproducible(reproducible, default=is_toy_sweep_config(config), threads=threads)
    from ..sweep import sweep

    _set_threads(threads)
    _quiet_transformers(True)  # one "Loading weights" bar per point would drown the table
    with PointsBar(quiet=quiet, desc="jobs") as jobs, \
            ProgressBar(quiet=quiet, desc="sweep", unit="point") as bar:
        outcome = sweep(config, out, workdir=workdir, progress=lambda label: bar(1),
                        executor=executor, jobs_progress=jobs)
    _print_outcome(outcome, out)


@cli.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("safebasin-demo"),
              show_default=True, help="Where the world, models, table and plots go (reused).")
@click.option("--quick", is_flag=True, help="One seed, one EMA, shorter runs (< 2 minutes).")
@click.option("--smoke", is_flag=True, help="A tiny model and a dozen steps: checks that every "
              "path runs (seconds; the numbers mean nothing).")
@_threads_option
@reproducible_option("on")
@quiet_option
def demo_cmd(workdir, quick, smoke, threads, reproducible, quiet):
    """The toy world end to end: θ₀, aggressive fine-tuning with EMA, matched-distance merges,
    keyword ASR; prints the table and writes the plots."""
    if quick and smoke:
        raise UsageError("give --quick or --smoke, not both")
    enter_reproducible(reproducible, default=True, threads=threads)  # before torch loads
    from ..sweep.demo import demo

    _set_threads(threads)
    _quiet_transformers(True)
    with ProgressBar(quiet=quiet, desc="demo", unit="point") as bar:
        outcome = demo(workdir, mode="smoke" if smoke else "quick" if quick else "full",
                       progress=lambda label: bar(1))
    _print_outcome(outcome, workdir)
    click.echo(f"config: {workdir / 'demo.yaml'} (rerun or edit it with `safebasin sweep`)")
    models = workdir / "models.csv"
    if models.is_file():  # readable names for the hash-named model folders
        click.echo(f"models ({models}):")
        for line in models.read_text(encoding="utf-8").splitlines()[1:]:
            name, _, path = line.partition(",")
            click.echo(f"  {name:<16} {path}")


@cli.command("compare-sweeps")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("reruns", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Write the markdown here as well as to stdout.")
def compare_sweeps_cmd(reference, reruns, out):
    """Which of REFERENCE's verdicts each RERUN repeats (each a sweep's output folder or its
    differences.csv), then every comparison's verdicts counted over all runs: an ordering worth
    stating holds across runs."""
    from ..executors.cache import write_atomic
    from ..sweep.replication import (
        compare_differences,
        read_differences,
        replication_markdown,
        tally_markdown,
        tally_verdicts,
    )

    runs = [read_differences(p) for p in (reference, *reruns)]
    parts = [f"## {reference} against {rerun}\n\n"
             + replication_markdown(compare_differences(runs[0], rows), str(reference),
                                    str(rerun))
             for rerun, rows in zip(reruns, runs[1:], strict=True)]
    parts.append(f"## Verdicts over the cells of all {len(runs)} runs\n\n"
                 + tally_markdown(tally_verdicts(runs)))
    text = "\n".join(parts)
    if out is not None:
        try:
            write_atomic(out, text)
        except OSError as e:
            raise OutputNotWritableError(f"{out}: cannot write it ({e.strerror})") from None
    click.echo(text, nl=False)

"""`safebasin tune` and `safebasin landscape`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from ._common import _set_threads, _threads_option, cli, quiet_option
from ._points import PointsBar, executor_from_options, executor_options
from .evaluate import GENERATION_OPTIONS


def _search_options(f: Callable) -> Callable:
    """The evaluator's options (as `safebasin eval asr`) and the point cache; the command gets
    `evaluation` (search.EvalSpec), `cache` and `quiet`."""
    opts = [
        click.option("--prompts", metavar="NAME|PATH", default="advbench", show_default=True,
                     help="A shipped set (advbench, harmbench, jbb, xstest) or a CSV, JSONL, "
                          "TXT or Parquet file."),
        click.option("--column", help="Prompt column (default: detected)."),
        click.option("--limit", type=click.IntRange(min=1), help="A random subset of N prompts."),
        click.option("--prompt-seed", type=int, default=0, show_default=True,
                     help="Seed of that subset."),
        click.option("--keywords", default="qi", show_default=True,
                     help="qi, gcg, xstest, or a file with one refusal phrase a line."),
        *GENERATION_OPTIONS,
        click.option("--utility-data", type=click.Path(path_type=Path),
                     help="Chat JSONL: held-out loss of each point as its utility."),
        click.option("--cache", type=click.Path(path_type=Path),
                     help="Point cache (default: $SAFEBASIN_CACHE or ~/.cache/safebasin/points)."),
        quiet_option,
        _threads_option,
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, prompts, column, limit, prompt_seed, keywords, max_new_tokens,
                batch_size, dtype, device, system_prompt, no_chat_template, normalize_quotes,
                utility_data, threads, **kwargs):
        from ..eval import GenerationSettings, PromptSpec
        from ..search import EvalSpec

        _set_threads(threads)
        if kwargs["quiet"]:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        generation = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        chat_template=not no_chat_template,
                                        system_prompt=system_prompt)
        evaluation = EvalSpec(prompts=PromptSpec(prompts, column, limit, prompt_seed),
                              keywords=keywords, normalize_quotes=normalize_quotes,
                              generation=generation, dtype=dtype, device=device,
                              utility_data=utility_data)
        return f(*args, evaluation=evaluation, **kwargs)

    return wrapper


def _key_values(items: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values read as int, float or true/false when they are one."""
    from ..errors import UsageError

    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--method-arg {item!r}: give KEY=VALUE, e.g. density=0.2")
        for parse in (int, float):
            try:
                out[key] = parse(text)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(text.lower(), text)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


@cli.command()
@click.argument("base")
@click.argument("finetuned")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The chosen merge, with eval/ results, frontier.csv and frontier.png.")
@click.option("--max-asr", type=float, required=True, help="ASR limit, a fraction in [0, 1).")
@click.option("--method", default="lerp", show_default=True,
              help="lerp, task-arithmetic, l2-project, slerp, ties, dare-linear, dare-ties, "
                   "breadcrumbs, breadcrumbs-ties.")
@click.option("--method-arg", "method_args", multiple=True, metavar="KEY=VALUE",
              help="Another parameter of the method (ties: density=0.2; dare: seed=0). "
                   "Repeatable.")
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="Stop when the bracket is this narrow (fraction of the fine-tune).")
@click.option("--confidence", default="point", show_default=True,
              help="point: ASR ≤ limit; upper: its Wilson 95% upper bound ≤ limit.")
@click.option("--overwrite", is_flag=True, help="Replace OUT (atomically, at the end).")
@_search_options
@executor_options
def tune(base, finetuned, out, max_asr, method, method_args, tolerance, confidence, overwrite,
         evaluation, cache, quiet, **engine):
    """The merge of BASE and FINETUNED that keeps the most of the fine-tune with ASR ≤ --max-asr.

    Brackets, then bisects the coefficient (at most ⌈log₂(1/tolerance)⌉ + 2 evaluations, each
    cached, so a second run with another limit reuses them). Exit 2 when θ₀ itself, or every
    coefficient above 0, is over the limit.
    """
    from ..search.tuning import frontier_table
    from ..search.tuning import tune as run_tune

    def show(t: float, metrics: dict, cached: bool) -> None:
        if not quiet:
            click.echo(f"t={t:.5g}: ASR {_pct(metrics['asr'])}"
                       f"{' (cached)' if cached else ''}", err=True)

    r = run_tune(base, finetuned, out, max_asr=max_asr, method=method,
                 method_args=_key_values(method_args), tolerance=tolerance,
                 confidence=confidence, evaluation=evaluation, cache=cache,
                 overwrite=overwrite, executor=executor_from_options(engine).build(),
                 on_point=show)
    click.echo(frontier_table(r))
    if not r.monotone:
        click.echo("warning: ASR is not monotone in the coefficient (it falls between "
                   + ", ".join(f"t={a:g} and t={b:g}" for a, b in r.decreasing)
                   + "); returned the largest passing point seen")
    c = r.chosen
    overhead = f", overhead {100 * r.overhead:.1f}%" if r.overhead is not None else ""
    click.echo(f"chosen {r.method} {r.parameter}={c.coefficient:.6g}: ASR {_pct(c.asr)} "
               f"[{_pct(c.asr_low)}, {_pct(c.asr_high)}] ≤ {_pct(max_asr)} ({r.confidence})")
    click.echo(f"wrote {out} ({len(r.rows)} points, {r.evaluations} evaluated now; "
               f"{r.wall_s:.1f} s wall, {r.eval_s:.1f} s in evaluations{overhead})")


@cli.command(flags={"random_seed": "--random"})  # --random passes --seed as `random_seed`
@click.argument("base")
@click.argument("finetuned")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Folder for landscape.csv, landscape.png and landscape.json.")
@click.option("--other", metavar="FT2", help="Second direction: another fine-tune.")
@click.option("--random", "random_dir", is_flag=True,
              help="Second direction: random, normalised per tensor to the fine-tune's step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
@click.option("--alphas", default="-0.5:1.5:21", show_default=True,
              help="START:STOP:COUNT or a list: θ₀ + α(θ_ft − θ₀).")
@click.option("--betas", help="START:STOP:COUNT or a list (2D; default -1:1:11).")
@click.option("--keep-models", is_flag=True, help="Keep each point's weights in the cache.")
@_search_options
@executor_options
def landscape(base, finetuned, out, other, random_dir, seed, alphas, betas, keep_models,
              evaluation, cache, quiet, **engine):
    """The safety landscape of BASE along FINETUNED (1D), or across a second direction (2D).

    Every grid point is a cached job; with --executor ray or slurm they run in parallel.
    """
    from ..search.basin import landscape as run_landscape

    executor = executor_from_options(engine).build()
    with PointsBar(quiet=quiet, desc="landscape") as bar:
        r = run_landscape(base, finetuned, out, alphas=alphas, betas=betas, other=other,
                          random_seed=seed if random_dir else None, evaluation=evaluation,
                          cache=cache, keep_models=keep_models, executor=executor,
                          progress=bar)
    names = ", ".join(p.name for p in r.files.values())
    click.echo(f"wrote {out}: {names} ({len(r.rows)} points, {r.evaluations} evaluated now, "
               f"{r.wall_s:.1f} s)")

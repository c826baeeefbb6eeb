"""`safebasin eval ...`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from ._common import (
    ProgressBar,
    _Group,
    cli,
    quiet_option,
)

# ---- evaluation (safebasin.eval) ------------------------------------------------------------


@cli.group("eval", cls=_Group)
def eval_group() -> None:
    """Keyword ASR, utility, and the report of a finished run."""


# how responses are generated and matched; `tune` and `landscape` evaluate with them too
GENERATION_OPTIONS = [
    click.option("--max-new-tokens", type=click.IntRange(min=1), default=256,
                 show_default=True, help="Greedy tokens per response."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
    click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                 default="auto", show_default=True, help="auto: the checkpoint's dtype."),
    click.option("--device", default="auto", show_default=True,
                 help="auto, cpu, cuda or cuda:N."),
    click.option("--system-prompt", help="System message put before each prompt."),
    click.option("--no-chat-template", is_flag=True, help="Raw prompts (base models)."),
    click.option("--normalize-quotes", is_flag=True,
                 help="Map curly apostrophes to ' before matching (off: as published)."),
]


def eval_run_options(f: Callable) -> Callable:
    """Options of every generating run; the command gets `out` and `run` (run_* keywords),
    returns the summary, and the table is printed here."""
    opts = [
        click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                     help="Results folder; running again into it resumes."),
        *GENERATION_OPTIONS,
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, out, max_new_tokens, batch_size, dtype, device, system_prompt,
                no_chat_template, normalize_quotes, quiet, **kwargs):
        from ..eval import GenerationSettings
        from ..eval.report import format_summary

        if quiet:  # transformers' own "Loading weights" bar too
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        generation = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        chat_template=not no_chat_template,
                                        system_prompt=system_prompt)
        with ProgressBar(quiet=quiet, desc=f.__name__.removeprefix("eval_"), unit="item") as bar:
            run = {"generation": generation, "dtype": dtype, "device": device,
                   "normalize_quotes": normalize_quotes, "on_progress": bar}
            summary = f(*args, out=out, run=run, **kwargs)
        click.echo(format_summary(summary))
        click.echo(f"results in {out}")

    return wrapper


@eval_group.command("asr")
@click.argument("model")
@click.option("--prompts", metavar="NAME|PATH", default="advbench", show_default=True,
              help="A shipped set (advbench, harmbench, jbb, xstest: its unsafe prompts) or a "
                   "CSV, JSONL, TXT or Parquet file.")
@click.option("--column", help="Prompt column (default: goal, Goal, prompt, Behavior, ...).")
@click.option("--limit", type=click.IntRange(min=1), help="A random subset of N prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of that subset.")
@click.option("--keywords", default="qi", show_default=True,
              help="qi, gcg, xstest, or a file with one refusal phrase a line.")
@eval_run_options
def eval_asr(model, prompts, column, limit, seed, keywords, out, run):
    """Keyword attack success rate of MODEL (a folder or Hub id) on harmful prompts."""
    from ..eval import PromptSpec, run_asr

    return run_asr(model, out, prompts=PromptSpec(prompts, column, limit, seed),
                   keywords=keywords, **run)


@eval_group.command("utility")
@click.argument("model")
@click.option("--data", type=click.Path(path_type=Path),
              help='Chat JSONL, {"messages": [...]} a line: loss on assistant tokens.')
@click.option("--max-length", type=click.IntRange(min=2), help="Truncate conversations.")
@click.option("--xstest", metavar="[PATH]", is_flag=False, flag_value="xstest",
              help="Over-refusal on XSTest's safe prompts: the shipped copy, or a CSV.")
@click.option("--limit", type=click.IntRange(min=1), help="A random subset of N XSTest prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of that subset.")
@eval_run_options
def eval_utility(model, data, max_length, xstest, limit, seed, out, run):
    """Chat loss and perplexity (--data) and XSTest over-refusal (--xstest) of MODEL."""
    from ..eval import PromptSpec, run_utility

    spec = PromptSpec(xstest, None, limit, seed) if xstest is not None else None
    return run_utility(model, out, data=data, xstest=spec, max_length=max_length, **run)


@eval_group.command("show")
@click.argument("results_dir", type=click.Path(path_type=Path))
def eval_show(results_dir):
    """Print the table of the finished run in RESULTS_DIR."""
    from ..eval.report import show

    click.echo(show(results_dir))

"""The `safebasin` command line: parses, calls one library function, prints.

`SafebasinError` becomes one line on stderr and exit code 2 (1 for a failed verification);
anything else keeps its traceback and exit code 1, because it is a bug.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from . import __version__
from .baselines.config import FinetuneConfig
from .errors import SafebasinError, UsageError
from .toy.config import Theta0Config


class _Group(click.Group):
    """A click group whose commands turn `SafebasinError` into one stderr line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SafebasinError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="safebasin")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Merge, train with EMA, and evaluate fine-tuned models near their aligned weights θ₀."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


class ProgressBar:
    """A tqdm byte counter on stderr, created on the first update so that an early error
    stays a single line. Call it as `bar(advance, total)`; the library reports that way."""

    def __init__(self, *, quiet: bool, desc: str, unit: str = "B") -> None:
        self._quiet, self._desc, self._unit = quiet, desc, unit
        self._bar = None

    def __call__(self, advance: int, total: int | None = None) -> None:
        if self._quiet:
            return
        if self._bar is None:
            from tqdm import tqdm

            byte = self._unit == "B"
            self._bar = tqdm(total=total, unit=self._unit, unit_scale=byte,
                             unit_divisor=1024 if byte else 1000, desc=self._desc,
                             file=sys.stderr, leave=False)
        self._bar.update(advance)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(total: int | None = None, *, quiet: bool, desc: str) -> ProgressBar:
    """Deprecated shape kept for callers: `total` is now given with each update."""
    return ProgressBar(quiet=quiet, desc=desc)


# ---- merge and distance (safebasin.merge, safebasin.eval.distance) ------------------------


def _size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count, as transformers' max_shard_size reads it."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a size like 5GB or 500MB") from None


def merge_options(f: Callable) -> Callable:
    """Options every merge shares; they arrive in the command as `options` (MergeOptions)."""
    opts = [
        click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                     help="Output model folder (created atomically)."),
        click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
                     default="auto", show_default=True, help="Output dtype (auto: θ₀'s)."),
        click.option("--shard-size", default="5GB", show_default=True, callback=lambda c, p, v:
                     _size(v), help="Largest output shard."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True, help="Where the arithmetic runs."),
        click.option("--overwrite", is_flag=True, help="Replace OUT (atomically, at the end)."),
        click.option("--allow-pickle", is_flag=True,
                     help="Read .bin/.pt inputs with torch.load(weights_only=True)."),
        click.option("--allow-nonfinite", is_flag=True, help="Merge tensors holding NaN/Inf."),
        click.option("--vocab-mismatch", type=click.Choice(["error", "base"]), default="error",
                     show_default=True, help="base: rows θ₀ has and an input lacks come from θ₀."),
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, out, dtype, shard_size, device, overwrite, allow_pickle,
                allow_nonfinite, vocab_mismatch, quiet, **kwargs):
        from .merge import MergeOptions

        with ProgressBar(quiet=quiet, desc="merge") as bar:
            options = MergeOptions(dtype=dtype, shard_size=shard_size, device=device,
                                   overwrite=overwrite, allow_pickle=allow_pickle,
                                   allow_nonfinite=allow_nonfinite,
                                   vocab_mismatch=vocab_mismatch, progress=bar)
            recipe = f(*args, out=out, options=options, **kwargs)
        d = recipe["distances"]["global_to_base"]
        click.echo(f"wrote {out} ({recipe['method']}, distance to base {d:.6g})")

    return wrapper


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@cli.group(cls=_Group)
def merge() -> None:
    """Merge θ₀ (BASE) with fine-tuned checkpoints, streaming shard by shard."""


@merge.command("lerp")
@click.argument("base")
@click.argument("finetuned")
@click.option("--alpha", type=float, required=True, help="θ = θ₀ + α(θ_ft − θ₀).")
@merge_options
def merge_lerp(base, finetuned, alpha, out, options):
    """Linear interpolation (WiSE-FT) between BASE and FINETUNED."""
    from . import merge as m

    return m.lerp(base, finetuned, out, alpha=alpha, options=options)


@merge.command("task-arithmetic")
@click.argument("base")
@click.argument("finetuned", nargs=-1, required=True)
@click.option("--scale", type=float, help="One λ for every fine-tune.")
@click.option("--scales", help="One λ per fine-tune, comma-separated (negative allowed).")
@merge_options
def merge_task_arithmetic(base, finetuned, scale, scales, out, options):
    """θ = θ₀ + Σ λᵢ(θᵢ − θ₀) over one or more fine-tunes."""
    from . import merge as m

    if (scale is None) == (scales is None):
        raise UsageError("give exactly one of --scale or --scales")
    lams = [scale] if scale is not None else _floats(scales)
    return m.task_arithmetic(base, list(finetuned), out, scales=lams, options=options)


@merge.command("l2-project")
@click.argument("base")
@click.argument("finetuned")
@click.option("--radius", type=float, help="Project onto the L2 ball of this radius.")
@click.option("--match", "match", help="Take the radius from REF's distance to BASE.")
@click.option("--per-tensor", is_flag=True, help="Match each tensor's own distance (--match).")
@merge_options
def merge_l2_project(base, finetuned, radius, match, per_tensor, out, options):
    """θ = θ₀ + min(1, r/‖Δ‖)·Δ: FINETUNED pulled back onto a ball around BASE."""
    from . import merge as m

    return m.l2_project(base, finetuned, out, radius=radius, match=match,
                        per_tensor=per_tensor, options=options)


@merge.command("ema")
@click.argument("base")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--eta", type=float, required=True, help="Weight of each incoming checkpoint.")
@merge_options
def merge_ema(base, checkpoints, eta, out, options):
    """Offline EMA over CHECKPOINTS in order (or one trajectory folder of step-N subfolders)."""
    from . import merge as m

    return m.ema(base, list(checkpoints), out, eta=eta, options=options)


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--per-tensor", is_flag=True, help="Also print each tensor's distance.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt with weights_only=True.")
@quiet_option
def distance(a, b, per_tensor, as_json, allow_pickle, quiet):
    """L2 distance between checkpoints A and B (streaming, fp32)."""
    from .merge import distance as dist

    with ProgressBar(quiet=quiet, desc="distance") as bar:
        d = dist(a, b, allow_pickle=allow_pickle, progress=bar)
    if as_json:
        data = d.to_json() if per_tensor else {"global_l2": d.global_l2}
        click.echo(json.dumps(data, indent=2))
        return
    if per_tensor:
        width = max(map(len, d.per_tensor), default=0)
        for name, v in d.per_tensor.items():
            click.echo(f"{name:<{width}}  {v:.6g}")
    click.echo(f"global L2 distance: {d.global_l2:.6g}")

# ---- online EMA / fine-tuning (safebasin.ema, safebasin.baselines) -------------------------


def _quiet_transformers(quiet: bool) -> None:
    if quiet:  # transformers' own "Loading weights" / "Writing model shards" bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@cli.command("finetune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help='Chat JSONL, {"messages": [...]} a line; loss on assistant tokens only.')
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output model folder (HF layout, safetensors, with the tokenizer).")
@click.option("--lr", type=float, default=FinetuneConfig.lr, show_default=True)
@click.option("--batch-size", type=int, default=FinetuneConfig.batch_size, show_default=True,
              help="Conversations per micro-batch.")
@click.option("--grad-accum", type=int, default=FinetuneConfig.grad_accum, show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--steps", type=int, help="Optimizer steps (instead of --epochs).")
@click.option("--epochs", type=float,
              help=f"Passes over the data [default: {FinetuneConfig.epochs:g}].")
@click.option("--seed", type=int, default=FinetuneConfig.seed, show_default=True)
@click.option("--l2-to-init", type=float, default=0.0, show_default=True,
              help="C in loss + C·‖θ − θ₀‖² (L2 toward the starting weights).")
@click.option("--ema-eta", type=float, help="Keep an online EMA with this η; saved to OUT/ema.")
@click.option("--ema-every", type=int, help="EMA update every N optimizer steps [default: 1].")
@click.option("--save-trajectory-every", type=int,
              help="Save the raw weights every N optimizer steps to OUT/trajectory.")
@click.option("--max-length", type=int, default=FinetuneConfig.max_length, show_default=True,
              help="Truncate conversations to this many tokens.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@quiet_option
def finetune_cmd(model, data, out, lr, batch_size, grad_accum, steps, epochs, seed, l2_to_init,
                 ema_eta, ema_every, save_trajectory_every, max_length, overwrite, quiet):
    """Fine-tune MODEL (a local HF model folder) on chat data; write the result to OUT."""
    from .baselines import ema_callback, finetune

    if steps is not None and epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    config = FinetuneConfig(lr=lr, batch_size=batch_size, grad_accum=grad_accum, steps=steps,
                            epochs=FinetuneConfig.epochs if epochs is None else epochs,
                            seed=seed, l2_to_init=l2_to_init, max_length=max_length)
    callback = ema_callback(eta=ema_eta, every=ema_every,
                            save_trajectory_every=save_trajectory_every)
    _quiet_transformers(quiet)
    result = finetune(model, data, out, config=config, callbacks=[callback] if callback else [],
                      overwrite=overwrite, show_progress=not quiet)
    first, last = result.losses[0][1], result.losses[-1][1]
    click.echo(f"wrote {out}: {result.steps} steps, loss {first:.4f} -> {last:.4f}, "
               f"{result.wall_s:.1f} s")

# ---- evaluation (safebasin.eval) ------------------------------------------------------------


@cli.group("eval", cls=_Group)
def eval_group() -> None:
    """Keyword ASR, utility, and the report of a finished run."""


def eval_run_options(f: Callable) -> Callable:
    """Options of every generating run; the command gets `out` and `run` (run_* keywords),
    returns the summary, and the table is printed here."""
    opts = [
        click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                     help="Results folder; running again into it resumes."),
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
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, out, max_new_tokens, batch_size, dtype, device, system_prompt,
                no_chat_template, normalize_quotes, quiet, **kwargs):
        from .eval import GenerationSettings
        from .eval.report import format_summary

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
@click.option("--prompts", type=click.Path(path_type=Path),
              help="CSV, JSONL, TXT or Parquet (default: AdvBench, walledai/AdvBench).")
@click.option("--column", help="Prompt column (default: goal, Goal, prompt, Behavior, ...).")
@click.option("--limit", type=click.IntRange(min=1), help="A random subset of N prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of that subset.")
@click.option("--keywords", default="qi", show_default=True,
              help="qi, gcg, xstest, or a file with one refusal phrase a line.")
@eval_run_options
def eval_asr(model, prompts, column, limit, seed, keywords, out, run):
    """Keyword attack success rate of MODEL (a folder or Hub id) on harmful prompts."""
    from .eval import PromptSpec, run_asr

    return run_asr(model, out, prompts=PromptSpec(prompts, column, limit, seed),
                   keywords=keywords, **run)


@eval_group.command("utility")
@click.argument("model")
@click.option("--data", type=click.Path(path_type=Path),
              help='Chat JSONL, {"messages": [...]} a line: loss on assistant tokens.')
@click.option("--max-length", type=click.IntRange(min=2), help="Truncate conversations.")
@click.option("--xstest", type=click.Path(path_type=Path),
              help="XSTest prompts CSV: over-refusal on its safe prompts.")
@click.option("--limit", type=click.IntRange(min=1), help="A random subset of N XSTest prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of that subset.")
@eval_run_options
def eval_utility(model, data, max_length, xstest, limit, seed, out, run):
    """Chat loss and perplexity (--data) and XSTest over-refusal (--xstest) of MODEL."""
    from .eval import PromptSpec, run_utility

    spec = PromptSpec(xstest, None, limit, seed) if xstest is not None else None
    return run_utility(model, out, data=data, xstest=spec, max_length=max_length, **run)


@eval_group.command("show")
@click.argument("results_dir", type=click.Path(path_type=Path))
def eval_show(results_dir):
    """Print the table of the finished run in RESULTS_DIR."""
    from .eval.report import show

    click.echo(show(results_dir))


# ---- toy world, sweep, demo (safebasin.toy) -------------------------------------------------


@cli.group("toy", cls=_Group)
def toy_group() -> None:
    """The toy world: build it, train its aligned model θ₀, score task accuracy."""


@toy_group.command("build")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="World seed.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def toy_build(out, seed, overwrite):
    """Write a toy world (tokenizer, chat data, held-out prompts) into folder OUT."""
    from .toy import ToyWorldConfig, build_world

    world = build_world(out, config=ToyWorldConfig(seed=seed), overwrite=overwrite)
    click.echo(f"wrote toy world {out}: fine-tune on {world.finetune_jsonl}, ASR prompts in "
               f"{world.harmful_csv} (column prompt)")


@toy_group.command("train")
@click.argument("world", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output model folder for θ₀.")
@click.option("--seed", type=int, default=Theta0Config.seed, show_default=True,
              help="Initial weights and data order.")
@click.option("--steps", type=int, default=Theta0Config.steps, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@quiet_option
def toy_train(world, out, seed, steps, overwrite, quiet):
    """Train θ₀ on WORLD's alignment data: refuse harmful requests, answer benign ones."""
    from .toy import train_theta0

    _quiet_transformers(quiet)
    result = train_theta0(world, out, config=Theta0Config(seed=seed, steps=steps),
                          overwrite=overwrite, show_progress=not quiet)
    click.echo(f"wrote {out}: {result.steps} steps, loss {result.losses[-1][1]:.4f}, "
               f"{result.wall_s:.1f} s")


@toy_group.command("accuracy")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--world", required=True, type=click.Path(path_type=Path), help="The toy world.")
def toy_accuracy(model, world):
    """Exact accuracy of MODEL on WORLD's held-out addition prompts (the toy's utility)."""
    from .toy import task_accuracy

    _quiet_transformers(True)
    acc = task_accuracy(model, world)
    click.echo(f"task accuracy {acc.accuracy:.3f} ({acc.correct}/{acc.n})")


def _threads_option(f: Callable) -> Callable:
    return click.option(
        "--threads", type=click.IntRange(min=1), default=1, show_default=True,
        help="torch CPU threads. Toy models gain nothing from more, and on busy shared cores "
             "extra threads wait on each other (θ₀: 26 s with 1, 142 s with 2).")(f)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _print_outcome(outcome, out: Path) -> None:
    from .sweep.report import summary_markdown

    click.echo(summary_markdown(outcome.groups))
    names = ", ".join(sorted(p.name for p in outcome.files.values()))
    click.echo(f"wrote {out}: {names} ({len(outcome.rows)} points, {outcome.wall_s:.0f} s)")


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
    from .sweep import sweep

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
    from .sweep.demo import demo

    if quick and smoke:
        raise UsageError("give --quick or --smoke, not both")
    _set_threads(threads)
    _quiet_transformers(True)
    with ProgressBar(quiet=quiet, desc="demo", unit="point") as bar:
        outcome = demo(workdir, mode="smoke" if smoke else "quick" if quick else "full",
                       progress=lambda label: bar(1))
    _print_outcome(outcome, workdir)
    click.echo(f"config: {workdir / 'demo.yaml'} (rerun or edit it with `safebasin sweep`)")

# ---- hub: card and push (safebasin.hub) -----------------------------------------------------

_base_model_option = click.option(
    "--base-model", metavar="ORG/NAME",
    help="Hub id of BASE, when the merge read it from a local folder.")


@cli.command("card")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--eval", "eval_dirs", multiple=True, metavar="RESULTS_DIR",
              type=click.Path(path_type=Path),
              help="An eval result folder (or a folder of them) besides OUT/eval/*. Repeatable.")
@_base_model_option
def card_command(out, eval_dirs, base_model):
    """Regenerate OUT/README.md from its recipe and the eval results under OUT/eval/."""
    from . import hub

    click.echo(f"wrote {hub.write_card(out, eval_dirs=eval_dirs, base_model=base_model)}")


@cli.command("push")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="Model repo to push to.")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--branch", metavar="B", help="Commit to this branch (created if missing).")
@click.option("--max-asr", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Largest keyword ASR (fraction) allowed.")
@click.option("--force", is_flag=True, help="Push without an ASR result or above --max-asr.")
@click.option("--dry-run", is_flag=True, help="Print the files and the card; send nothing.")
@_base_model_option
def push_command(out, repo_id, private, branch, max_asr, force, dry_run, base_model):
    """Upload OUT to the Hub in one commit if its keyword ASR is at most --max-asr.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed.
    """
    from . import hub

    result = hub.push(out, repo_id, private=private, branch=branch, max_asr=max_asr,
                      force=force, dry_run=dry_run, base_model=base_model)
    if not dry_run:
        click.echo(result.commit_url)
        return
    plan = result.plan
    click.echo(f"dry run: would push {len(plan.files)} files to {repo_id} in one commit:")
    for name, size in plan.files:
        click.echo(f"  {name}  ({size} bytes)")
    click.echo(f"commit message: {plan.message}\n\n{plan.card}")


# ---- verify (safebasin.checkpoint) ----------------------------------------------------------


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@quiet_option
def verify(folder, quiet):
    """Re-read FOLDER and check every shard and tensor against its safebasin_recipe.json.

    Exit 0 when every byte matches, 1 when something differs (the shard and tensor are
    named), 2 when there is no recipe to check against.
    """
    from .checkpoint.verify import verify as verify_folder

    with ProgressBar(quiet=quiet, desc="verify") as bar:
        r = verify_folder(folder, progress=bar)
    click.echo(f"OK {folder}: {r.shards} shards, {r.tensors} tensors, {r.nbytes} bytes match "
               "safebasin_recipe.json")


def main() -> None:
    try:
        cli(prog_name="safebasin")
    finally:
        # Everything is written and fsynced by now; freezing the heap spares the interpreter's
        # final collection walking torch's object graph (0.3-0.4 s measured on this CPU).
        import gc

        gc.freeze()


if __name__ == "__main__":
    main()

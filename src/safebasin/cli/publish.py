"""`safebasin card`, `safebasin push` and `safebasin verify`."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (
    ProgressBar,
    cli,
    quiet_option,
)

# ---- card and push (safebasin.publish) -------------------------------------------------------

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
    from ..publish import write_card

    click.echo(f"wrote {write_card(out, eval_dirs=eval_dirs, base_model=base_model)}")


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
    from ..publish import push

    result = push(out, repo_id, private=private, branch=branch, max_asr=max_asr,
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
    from ..checkpoint.verify import verify as verify_folder

    with ProgressBar(quiet=quiet, desc="verify") as bar:
        r = verify_folder(folder, progress=bar)
    click.echo(f"OK {folder}: {r.shards} shards, {r.tensors} tensors, {r.nbytes} bytes match "
               "safebasin_recipe.json")

"""`safebasin finetune` and `safebasin toy ...`."""

from __future__ import annotations

from pathlib import Path

import click

from ..baselines.config import FinetuneConfig
from ..errors import UsageError
from ..toy.config import Theta0Config, ToyModelConfig
from ._common import (
    _Group,
    _quiet_transformers,
    cli,
    quiet_option,
)
from ._reproducible import enter_reproducible, reproducible_option


# ema_callback names --ema-eta and --ema-every by its parameters, `eta` and `every`
@cli.command("finetune", flags={"eta": "--ema-eta", "every": "--ema-every"})
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
@reproducible_option("off")
@quiet_option
def finetune_cmd(model, data, out, lr, batch_size, grad_accum, steps, epochs, seed, l2_to_init,
                 ema_eta, ema_every, save_trajectory_every, max_length, overwrite, reproducible,
                 quiet):
    """Fine-tune MODEL (a local HF model folder) on chat data; write the result to OUT."""
    if steps is not None and epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    enter_reproducible(reproducible, default=False)  # before torch loads
    from ..baselines import ema_callback, finetune

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
    from ..toy import ToyWorldConfig, build_world

    world = build_world(out, config=ToyWorldConfig(seed=seed), overwrite=overwrite)
    click.echo(f"wrote toy world {out}: fine-tune on {world.finetune_jsonl}, ASR prompts in "
               f"{world.harmful_csv} (columns prompt, object; in-distribution: "
               f"{world.harmful_train_csv.name})")


@toy_group.command("train")
@click.argument("world", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output model folder for θ₀.")
@click.option("--seed", type=int, default=Theta0Config.seed, show_default=True,
              help="Initial weights and data order.")
@click.option("--steps", type=int, default=Theta0Config.steps, show_default=True)
@click.option("--hidden-size", type=int, default=ToyModelConfig.hidden_size, show_default=True)
@click.option("--layers", type=int, default=ToyModelConfig.num_layers, show_default=True)
@click.option("--heads", type=int, default=ToyModelConfig.num_heads, show_default=True)
@click.option("--intermediate-size", type=int, default=ToyModelConfig.intermediate_size,
              show_default=True, help="MLP width.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@reproducible_option("on")
@quiet_option
def toy_train(world, out, seed, steps, hidden_size, layers, heads, intermediate_size, overwrite,
              reproducible, quiet):
    """Train θ₀ on WORLD's alignment data: refuse harmful requests, answer benign ones."""
    model = ToyModelConfig(hidden_size=hidden_size, num_layers=layers, num_heads=heads,
                           intermediate_size=intermediate_size)
    enter_reproducible(reproducible, default=True)  # before torch loads
    from ..toy import train_theta0

    _quiet_transformers(quiet)
    result = train_theta0(world, out, config=Theta0Config(model=model, seed=seed, steps=steps),
                          overwrite=overwrite, show_progress=not quiet)
    click.echo(f"wrote {out}: {result.steps} steps, loss {result.losses[-1][1]:.4f}, "
               f"{result.wall_s:.1f} s")


@toy_group.command("accuracy")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--world", required=True, type=click.Path(path_type=Path), help="The toy world.")
@reproducible_option("on")
def toy_accuracy(model, world, reproducible):
    """Exact accuracy of MODEL on WORLD's held-out addition prompts (the toy's utility)."""
    enter_reproducible(reproducible, default=True)  # before torch loads
    from ..toy import task_accuracy

    _quiet_transformers(True)
    acc = task_accuracy(model, world)
    click.echo(f"task accuracy {acc.accuracy:.3f} ({acc.correct}/{acc.n})")

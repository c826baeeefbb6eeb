"""Train θ₀, the toy world's aligned model: refuse harmful requests, answer benign ones.

θ₀ is trained by the same runner as every fine-tune (`safebasin.baselines.train`, assistant
tokens only) from a freshly initialised toy Llama, so the saved folder is exactly what
`safebasin finetune` and the merges read.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..baselines.config import FinetuneResult
from ..baselines.runner import train
from ..chat import load_tokenizer, read_chat_jsonl
from .config import Theta0Config
from .files import ToyWorld, open_world
from .model import build_model


def train_theta0(world: ToyWorld | str | Path, out_dir: str | Path, *,
                 config: Theta0Config | None = None, overwrite: bool = False,
                 show_progress: bool = False) -> FinetuneResult:
    """Train θ₀ on `world`'s alignment data and save it as an HF model folder in `out_dir`.

    Same world, config and thread count: the same `model.safetensors` bytes.

    Example:
        >>> train_theta0("world", "theta0")  # doctest: +SKIP

    Raises:
        DataNotFoundError: `world` is not a built toy world.
        OutputExistsError: `out_dir` is not empty and `overwrite` is False.
    """
    config = config or Theta0Config()
    world = world if isinstance(world, ToyWorld) else open_world(world)
    tokenizer = load_tokenizer(world.tokenizer_dir)
    model = build_model(tokenizer, config.model, seed=config.seed)
    record = {"toy_world": str(world.root), "toy_world_config": asdict(world.config),
              "theta0": asdict(config)}
    return train(model, tokenizer, read_chat_jsonl(world.align_jsonl), out_dir,
                 config=config.finetune_config(), record=record, overwrite=overwrite,
                 show_progress=show_progress)

"""The files written beside output weights: `safebasin_recipe.json` and config.json's dtype.

Every safebasin output folder (a merge, an online EMA, a trajectory point) records how it was
made in the same recipe format: the method and its parameters, the content hashes of what was
written (xxh3-128, hashed by `ShardWriter` as the bytes passed) and the safebasin version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from .writer import ShardWriter, TensorSpec, write_text_synced

RECIPE_FILE = "safebasin_recipe.json"


def output_record(writer: ShardWriter, shard_hashes: dict[str, str],
                  specs: Sequence[TensorSpec]) -> dict:
    """The recipe's "output" entry: shard and tensor hashes and the bytes written."""
    return {
        "shards": shard_hashes,
        "tensors": writer.tensor_hashes,
        "hash": "xxh3_128",
        "total_bytes": sum(s.nbytes for s in specs),
    }


def write_recipe(folder: Path, recipe: dict) -> dict:
    """Stamp `recipe` with the safebasin version and write it, fsynced, into `folder`."""
    recipe = {**recipe, "safebasin_version": __version__}
    write_text_synced(folder / RECIPE_FILE, json.dumps(recipe, indent=2) + "\n")
    return recipe


def set_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    """Record `dtype` in `folder`/config.json when it says otherwise (no-op without a config).

    transformers 5 writes "dtype", older versions "torch_dtype"; the key already there is kept.
    """
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    new = str(dtype).removeprefix("torch.")
    key = "dtype" if "dtype" in cfg else "torch_dtype"
    if cfg.get(key) != new:
        cfg[key] = new
        write_text_synced(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")

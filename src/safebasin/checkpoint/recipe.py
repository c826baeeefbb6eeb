"""The recipe written beside output weights (`safebasin_recipe.json`), and config.json's dtype.

Every safebasin output folder (a merge, an online EMA, a trajectory point) records how it was
made in one format, the `Recipe`: the method and its parameters, the inputs, the content hashes
of what was written (xxh3-128, hashed by `ShardWriter` as the bytes passed) and the safebasin
version, plus what the method adds (options, coefficients, distances, the base licence). It is
validated here when written (`write_recipe`) and when read (`read_recipe`), and nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..errors import CheckpointFormatError, CheckpointNotFoundError, SafebasinError
from .output import copy_aux_files
from .writer import ShardWriter, TensorSpec, write_text_synced

RECIPE_FILE = "safebasin_recipe.json"
HASH_NAME = "xxh3_128"  # what `output_record` records and `verify` recomputes
MAX_RECIPE_BYTES = 256 * 1024 * 1024  # a recipe lists each tensor twice; far above any model
_HEX128 = re.compile(r"[0-9a-f]{32}")
_CORE = ("method", "parameters", "inputs", "output", "safebasin_version")


@dataclass(frozen=True)
class Output:
    """What a recipe promises about the weights: shard file -> hash, tensor name -> hash, and
    the tensor bytes written."""

    shards: dict[str, str]
    tensors: dict[str, str]
    total_bytes: int | None = None

    def to_dict(self) -> dict:
        d: dict = {"shards": self.shards, "tensors": self.tensors, "hash": HASH_NAME}
        if self.total_bytes is not None:
            d["total_bytes"] = self.total_bytes
        return d


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated `safebasin_recipe.json`.

    Attributes:
        method: ``lerp``, ``task-arithmetic``, ``l2-project``, ``ema``, ``online-ema``,
            ``trajectory``, ``weights``, ...
        parameters: the method's parameters (``alpha``, ``eta``, ...).
        inputs: one dict per input, θ₀ first for merges (``role``, ``path``, ``hub_id``,
            ``revision``, ``fingerprint``); empty for weights saved from a live model.
        output: the content hashes; None only in a recipe not yet written.
        safebasin_version: the version that wrote it.
        extra: every other top-level key, as written (``options``, ``coefficients``,
            ``distances``, ``base_license``, ...).
    """

    method: str
    parameters: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    output: Output | None = None
    safebasin_version: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_merge(self) -> bool:
        """A merge of θ₀ and fine-tunes: what a model card describes."""
        return bool(self.inputs) and self.inputs[0].get("role") == "base"

    def to_dict(self) -> dict:
        """The JSON object, keys in the order they have always been written."""
        d: dict = {"method": self.method, "parameters": self.parameters}
        d.update(self.extra)
        d["inputs"] = self.inputs
        if self.output is not None:
            d["output"] = self.output.to_dict()
        if self.safebasin_version is not None:
            d["safebasin_version"] = self.safebasin_version
        return d

    @classmethod
    def from_dict(cls, data: object) -> Recipe:
        """Validate and parse a recipe's JSON object.

        Raises:
            ValueError: what is wrong, first problem only (`read_recipe` and `write_recipe`
                turn it into a `CheckpointFormatError` naming the file).
        """
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        output = _output(data["output"]) if "output" in data else None
        method = data.get("method")
        if not isinstance(method, str) or not method:
            raise ValueError("no 'method'")
        parameters, inputs = data.get("parameters", {}), data.get("inputs", [])
        if not isinstance(parameters, dict):
            raise ValueError("'parameters' is not an object")
        if not isinstance(inputs, list) or not all(isinstance(e, dict) for e in inputs):
            raise ValueError("'inputs' is not a list of objects")
        version = data.get("safebasin_version")
        if version is not None and not isinstance(version, str):
            raise ValueError("'safebasin_version' is not a string")
        extra = {k: v for k, v in data.items() if k not in _CORE}
        return cls(method, parameters, inputs, output, version, extra)


def _hash_map(output: dict, key: str, *, file_names: bool) -> dict[str, str]:
    value = output.get(key)
    if not isinstance(value, dict) or (file_names and not value):
        raise ValueError(f"output.{key} must map names to {HASH_NAME} hex digests")
    for name, digest in value.items():
        if not isinstance(digest, str) or not _HEX128.fullmatch(digest):
            raise ValueError(f"output.{key}[{name[:80]!r}] is not a {HASH_NAME} digest")
        if file_names and (name in ("", ".", "..") or any(c in name for c in "/\\\0")):
            raise ValueError(f"shard name {name[:80]!r} is not a plain file name")
    return value


def _output(output: object) -> Output:
    if not isinstance(output, dict):
        raise ValueError("'output' is not an object")
    if output.get("hash") != HASH_NAME:
        raise ValueError(f"output.hash is {str(output.get('hash'))[:40]!r}, expected "
                         f"{HASH_NAME!r}")
    total = output.get("total_bytes")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise ValueError("output.total_bytes is not a byte count")
    return Output(_hash_map(output, "shards", file_names=True),
                  _hash_map(output, "tensors", file_names=False), total)


def output_record(writer: ShardWriter, shard_hashes: dict[str, str],
                  specs: Sequence[TensorSpec]) -> dict:
    """The recipe's "output" entry: shard and tensor hashes and the bytes written."""
    return Output(shard_hashes, writer.tensor_hashes,
                  sum(s.nbytes for s in specs)).to_dict()


def _malformed(path: Path, problem: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: malformed recipe: {problem}; re-run the merge, or "
                                 "use a folder written by safebasin")


def write_recipe(folder: Path, recipe: Mapping | Recipe) -> dict:
    """Stamp `recipe` with the safebasin version, validate it, and write it, fsynced, into
    `folder`. Returns what was written.

    Raises:
        CheckpointFormatError: a recipe that would not read back (a bug in its writer).
    """
    data = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    data["safebasin_version"] = __version__
    try:
        Recipe.from_dict(data)
    except ValueError as e:
        raise _malformed(folder / RECIPE_FILE, str(e)) from None
    write_text_synced(folder / RECIPE_FILE, json.dumps(data, indent=2) + "\n")
    return data


def read_recipe(folder: str | Path) -> Recipe:
    """The validated recipe of a safebasin output folder.

    Raises:
        CheckpointNotFoundError: no such folder, or no recipe in it.
        CheckpointFormatError: a recipe that cannot be read, is too large, is not JSON, or does
            not have the recipe's shape.
    """
    folder = Path(folder)
    path = folder / RECIPE_FILE
    try:
        if not folder.is_dir():
            raise CheckpointNotFoundError(f"{folder}: no such folder")
        if not path.is_file():
            raise CheckpointNotFoundError(f"{folder}: no {RECIPE_FILE}; only folders written by "
                                          "safebasin (a merge, an EMA export) have one")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise _malformed(path, f"larger than {MAX_RECIPE_BYTES} bytes")
        data = json.loads(path.read_bytes())
    except SafebasinError:
        raise
    except OSError as e:  # a folder we may not list, a recipe we may not read
        raise CheckpointFormatError(f"{path}: cannot read: {e.strerror or e}") from e
    except (ValueError, RecursionError) as e:  # ValueError: JSON, UTF-8, 5000-digit ints
        raise _malformed(path, f"not valid JSON ({e})") from None
    try:
        return Recipe.from_dict(data)
    except ValueError as e:
        raise _malformed(path, str(e)) from None


def finish_model_folder(folder: Path, recipe: Mapping, *, output: dict,
                        specs: Sequence[TensorSpec], like: str | Path | None = None) -> dict:
    """The files beside freshly written weights, the same for a merge, an EMA export and a
    trajectory point: config and tokenizer files copied from `like` (θ₀'s folder), the output's
    dtype in config.json when its floating tensors share one, and the recipe with `output`
    (see `output_record`). Returns the recipe written.
    """
    if like is not None:
        copy_aux_files(Path(like), folder)
    floats = {s.dtype for s in specs if s.dtype.is_floating_point}
    if len(floats) == 1:
        set_config_dtype(folder, floats.pop())
    return write_recipe(folder, {**recipe, "output": output})


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


__all__ = ["HASH_NAME", "MAX_RECIPE_BYTES", "Output", "RECIPE_FILE", "Recipe",
           "finish_model_folder", "output_record", "read_recipe", "set_config_dtype",
           "write_recipe"]

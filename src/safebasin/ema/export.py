"""Write tensors that live in a model (maybe sharded) as a folder, through the streaming writer.

One tensor at a time: each rank produces its part (`read`), the whole tensor is gathered only
when the model is sharded (FSDP2), and rank 0 streams it into a header-first safetensors shard
inside a temporary folder that is renamed into place last (`checkpoint.publishing`). Peak memory
beyond the model is one whole tensor. Used for the EMA model, raw trajectory weights and the
EMA state kept in trainer checkpoints.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import (
    DEFAULT_SHARD_SIZE,
    ShardWriter,
    TensorSpec,
    finish_model_folder,
    output_record,
    publishing,
)
from ._dist import barrier, full, is_sharded, local, rank
from ._names import model_tensors, unwrap

log = logging.getLogger(__name__)

# Reads this rank's part of a tensor, by name, in the dtype to store.
Reader = Callable[[str, torch.dtype], torch.Tensor]


@dataclass(frozen=True)
class FolderOptions:
    """How an output folder is written."""

    dtype: torch.dtype | None = None  # floating tensors stored as; None: each tensor's own dtype
    like: str | os.PathLike | None = None  # copy config/tokenizer/chat template from this folder
    tokenizer: object | None = None  # or save this tokenizer (anything with save_pretrained)
    overwrite: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE  # bytes per shard, HF's default


def specs_for(layouts: Mapping[str, torch.Tensor], dtype: torch.dtype | None
              ) -> list[TensorSpec]:
    """Whole shapes, with floating tensors stored as `dtype` (None: each tensor's own)."""
    return [TensorSpec(n, dtype if dtype is not None and t.is_floating_point() else t.dtype,
                       tuple(t.shape)) for n, t in layouts.items()]


def _whole(specs: list[TensorSpec], layouts: Mapping[str, torch.Tensor],
           read: Reader) -> Iterator[torch.Tensor]:
    for spec in specs:
        yield full(read(spec.name, spec.dtype), layouts[spec.name])


def stream_folder(out_dir: str | os.PathLike, specs: list[TensorSpec],
                  layouts: Mapping[str, torch.Tensor], read: Reader, *, options: FolderOptions,
                  write: bool | None, finish: Callable[[Path, dict], None]) -> None:
    """Write the tensors `specs` announce with the values `read` returns, then call
    `finish(tmp_folder, output_record)` for the small files, then publish.

    `layouts` maps each name to the live tensor whose sharding the value follows (a DTensor
    under FSDP2). Ranks other than the writer (`write`, default rank 0) only take part in the
    gathers, in the same order, and when sharded all ranks leave together once the folder is
    published (a DDP rank that does not write returns at once, so `if rank == 0: save(...)`
    stays safe there).

    Raises:
        OutputExistsError, OutputLockedError, OutputNotWritableError: see `publishing`.
    """
    sharded = any(is_sharded(t) for t in layouts.values())
    if not (rank() == 0 if write is None else write):
        if sharded:
            for _ in _whole(specs, layouts, read):  # the writer gathers each tensor: so must we
                pass
            barrier()
        return
    _publish(out_dir, specs, _whole(specs, layouts, read), options=options, finish=finish)
    if sharded:  # every rank is here anyway; on return the folder exists for all of them
        barrier()


def _publish(out_dir: str | os.PathLike, specs: list[TensorSpec], whole: Iterator[torch.Tensor],
             *, options: FolderOptions, finish: Callable[[Path, dict], None]) -> None:
    inputs = [Path(options.like)] if options.like is not None else []
    with publishing(out_dir, overwrite=options.overwrite, inputs=inputs) as tmp:
        writer = ShardWriter(tmp, specs, shard_size=options.shard_size)
        try:
            for spec, t in zip(specs, whole, strict=True):
                writer.write(spec.name, t.detach().to("cpu"))
            hashes = writer.close()
        except BaseException:
            writer.abort()
            raise
        finish(tmp, output_record(writer, hashes, specs))


def _configs(tmp: Path, model: nn.Module) -> None:
    """config and generation config saved from the model (when there is no `like` to copy)."""
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if hasattr(cfg, "save_pretrained"):
            cfg.save_pretrained(tmp)


def write_model_folder(out_dir: str | os.PathLike, model: nn.Module,
                       layouts: Mapping[str, torch.Tensor], read: Reader, *,
                       options: FolderOptions, recipe: dict, write: bool | None = None
                       ) -> dict | None:
    """An HF model folder (loads with `from_pretrained`) holding `read`'s values.

    Returns the recipe written beside the weights (None on ranks that do not write).
    """
    written: dict = {}
    specs = specs_for(layouts, options.dtype)

    def finish(tmp: Path, output: dict) -> None:
        if options.like is None:
            _configs(tmp, model)
        written.update(finish_model_folder(tmp, recipe, output=output, specs=specs,
                                           like=options.like))
        if options.tokenizer is not None:  # after the copy from `like`: the one given wins
            options.tokenizer.save_pretrained(tmp)

    stream_folder(out_dir, specs, layouts, read, options=options, write=write, finish=finish)
    if written:
        log.info("wrote %s (%s)", out_dir, recipe.get("method"))
    return written or None


def save_weights(model: nn.Module, out_dir: str | os.PathLike, *,
                 dtype: torch.dtype | None = None, like: str | os.PathLike | None = None,
                 overwrite: bool = False, recipe: dict | None = None,
                 write: bool | None = None) -> dict | None:
    """The model's current weights as an HF folder (a trajectory point), sharded or not.

    Same writer, layout and rules as `EMA.save_pretrained`; `recipe` (default
    {"method": "weights"}) is recorded in `safebasin_recipe.json`.
    """
    model = unwrap(model)
    layouts = model_tensors(model)
    options = FolderOptions(dtype=dtype, like=like, overwrite=overwrite)
    return write_model_folder(out_dir, model, layouts,
                              lambda n, dt: local(layouts[n]).to(dt),
                              options=options, recipe=recipe or {"method": "weights"},
                              write=write)

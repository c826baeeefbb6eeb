"""The few distributed operations the EMA needs, for plain tensors and FSDP2 DTensors alike.

Under DDP every parameter is a plain tensor and every rank holds it whole. Under FSDP2
(`fully_shard`) a parameter is a DTensor whose `to_local()` is this rank's shard: the EMA
keeps a shadow of that shard only, so updates need no communication. Whole tensors exist only
while saving, gathered one at a time (`full`), and loading slices a whole tensor read from disk
down to this rank's shard without communication (`shard_like`).
"""

from __future__ import annotations

import sys

import torch


def is_sharded(t: torch.Tensor) -> bool:
    """True for a DTensor. Importing torch.distributed.tensor costs about 2 s, so we only look
    it up: if nobody imported it, no DTensor exists."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of `t`: the local shard of a DTensor, `t` itself otherwise (a view,
    so writing into it writes the parameter)."""
    t = t.detach()
    return t.to_local() if is_sharded(t) else t


def full(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which `value` is this rank's shard laid out like `like`.

    A collective when `like` is a DTensor (every rank must call it, in the same order);
    `value` itself otherwise.
    """
    if not is_sharded(like):
        return value
    from torch.distributed.tensor import DTensor

    dt = DTensor.from_local(value, like.device_mesh, like.placements, run_check=False,
                            shape=like.shape, stride=like.stride())
    return dt.full_tensor()


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of `whole`, laid out like `like` (no communication: every rank has
    `whole`, read from disk); `whole` itself when `like` is not a DTensor."""
    if not is_sharded(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements,
                             src_data_rank=None).to_local()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()

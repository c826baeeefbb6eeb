"""The tensor-op interface: how a non-linear merge plugs into the one executor.

A linear merge needs only coefficients. A non-linear one (TIES, DARE, breadcrumbs, SLERP, model
stock, Safe LoRA) is two small objects per output tensor:

* a `TensorStatistic` (optional) that sees the inputs' chunks of one tensor in a statistics pass
  before the merge, in bounded memory (norms, dot products, the exact k-th magnitude by radix
  selection); `merge.statistics.collect_statistics` streams the passes;
* a `TensorOp`, built by the planner from those statistics, that the executor calls to compute
  the merged values: per chunk (`whole = False`: flat slices [start, stop) in order, memory
  independent of tensor size) or once per tensor (`whole = True`: the whole tensors in their
  shape, one tensor at a time, for layer-wise methods such as Safe LoRA's projection).

The executor keeps doing everything else: reading ahead, rounding once into the output dtype,
the distance to θ₀, the non-finite check, writing, fingerprints, recipe and card.

Example (a whole-tensor op that keeps θ₀ on 1-D tensors and takes input 1 elsewhere):

    >>> import torch
    >>> class TakeMatrices(TensorOp):
    ...     whole = True
    ...     def apply(self, tensors, start, stop):
    ...         base, ft = tensors
    ...         return base if base.dim() == 1 else ft.float()
    >>> TakeMatrices().apply([torch.zeros(2, 2), torch.ones(2, 2)], 0, 4).sum().item()
    4.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

__all__ = ["TensorOp", "TensorStatistic", "deltas"]


class TensorOp(ABC):
    """Computes one output tensor's values from its inputs' values (θ₀ first).

    `apply` gets one tensor per input, in the input's stored dtype, on the CPU:
      * `whole = False` (default): flat chunks holding elements [start, stop) of the flattened
        tensor. Chunks of one tensor arrive in increasing order, each exactly once, so an op may
        keep running state (a count of ties seen so far) between calls;
      * `whole = True`: the whole tensors reshaped to θ₀'s shape, with start = 0, stop = numel.
    It returns a floating tensor with stop − start elements (any shape, any float dtype; fp32
    is usual), which the executor rounds once, to nearest-even, into the output dtype. It must
    not keep references to its inputs: their buffers are reused.
    """

    whole: bool = False
    # True for an op that reads its tensor itself (a statistics pass) just before the merge
    # does: the executor then reads the tensor through the page cache, where that pass left it.
    reads_first: bool = False

    @abstractmethod
    def apply(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """The merged values of elements [start, stop)."""

    def fill(self, tensors: Sequence[torch.Tensor], start: int, stop: int,
             out: torch.Tensor) -> float | None:
        """Optional fused path of a chunk op: write the rounded values of [start, stop) into
        `out` (a flat CPU tensor of the output dtype) and return Σ(stored − θ₀)², or return
        None (the default) to have the executor call `apply` instead. It must store exactly
        what `apply` followed by one rounding would (see `fused`)."""
        return None


class TensorStatistic(ABC):
    """Accumulates statistics of one tensor over its chunks, in one or more passes.

    `update` receives flat chunks of every input (θ₀ first, stored dtypes) in increasing order;
    `end_pass` is called after the last chunk of each pass and returns True when it needs
    another pass over the same tensor (radix selection narrows its bucket pass by pass).
    Memory should not grow with the tensor's size beyond what the statistic promises.
    """

    @abstractmethod
    def update(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> None:
        """Account for elements [start, stop) of every input."""

    def end_pass(self) -> bool:
        """Finish a pass; True asks for another one."""
        return False


def deltas(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The task vectors τᵢ = θᵢ − θ₀ of inputs 1..K, in fp32 (each input upcast first)."""
    base = tensors[0].float()
    return [t.float() - base for t in tensors[1:]]

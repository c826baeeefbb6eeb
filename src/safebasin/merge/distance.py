"""Streaming L2 distances between two checkpoints, tensor by tensor (fp32 math)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import kernels
from ..checkpoint import RECIPE_FILE, Checkpoint, direct, open_checkpoint, read_recipe
from .plan import align
from .stream import chunks_of, one_torch_thread, read_chunks


@dataclass(frozen=True)
class Distances:
    """‖b − a‖ over the whole model and per tensor (integer tensors count as 0)."""

    global_l2: float
    per_tensor: dict[str, float]

    def to_json(self) -> dict:
        return {"global_l2": self.global_l2, "per_tensor": self.per_tensor}


def tensor_distances(a: Checkpoint, b: Checkpoint, *, vocab_mismatch: str = "error",
                     progress: Callable[[int, int], None] | None = None) -> Distances:
    """Stream both checkpoints once and return their L2 distances (a defines the names)."""
    names = align([a, b], vocab_mismatch=vocab_mismatch)
    chunks = [c for n in names if a.dtype(n).is_floating_point
              for c in chunks_of(n, math.prod(a.shape(n)))]
    sq = {n: 0.0 for n in names}
    total = sum(math.prod(a.shape(n)) * (a.dtype(n).itemsize + b.dtype(n).itemsize)
                for n in names if a.dtype(n).is_floating_point)
    uncached = direct.wanted(total)  # as a merge: past the page cache, dropping what it read
    with one_torch_thread():
        for chunk, (ta, tb) in read_chunks([a, b], chunks, direct=uncached, drop=uncached):
            sq[chunk.name] += float(kernels.sq_dist(ta, tb))
            if progress:
                progress(ta.nbytes + tb.nbytes, total)
    per = {n: math.sqrt(v) for n, v in sq.items()}
    return Distances(math.sqrt(math.fsum(sq.values())), per)


def distance(a: str | os.PathLike, b: str | os.PathLike, *, allow_pickle: bool = False,
             vocab_mismatch: str = "error",
             progress: Callable[[int, int], None] | None = None) -> Distances:
    """L2 distance between two checkpoints given as paths.

    Example:
        >>> distance("base", "finetuned").global_l2                 # doctest: +SKIP
        3.27
    """
    with open_checkpoint(a, allow_pickle=allow_pickle) as ca, \
            open_checkpoint(b, allow_pickle=allow_pickle, base=ca) as cb:
        return tensor_distances(ca, cb, vocab_mismatch=vocab_mismatch, progress=progress)


def distance_to_base(base: str | os.PathLike, model: str | os.PathLike) -> float:
    """‖θ − θ₀‖ of the model folder `model` from `base`, read rather than re-measured when it can.

    A safebasin merge whose recipe names `base` as its θ₀ recorded this distance as it wrote the
    weights (`executor.execute`: the same per-tensor sums and `fsum` as `tensor_distances`),
    so that value is returned; anything else (a fine-tune, an EMA export, a merge of another
    θ₀) gets one streaming pass over both checkpoints.
    """
    folder = Path(model)
    if (folder / RECIPE_FILE).is_file():
        recipe = read_recipe(folder)
        recorded = (recipe.extra.get("distances") or {}).get("global_to_base")
        if (recipe.is_merge and isinstance(recorded, float)
                and Path(recipe.inputs[0]["path"]).resolve() == Path(base).resolve()):
            return recorded
    return distance(base, model).global_l2

"""DARE's random drop as a counter-based hash: the same mask for the same (seed, tensor, index).

Element j of tensor `name` is kept when h(seed, name, j) < ⌊density·2³²⌉, with h a 32-bit
hash: the key (seed, name) goes through xxh3-64 once per tensor, then the index through two
rounds of the `lowbias32` integer mixer (Wellons), modulo 2³² (`fused._kept_by_hash`, the one
implementation, used by both the torch path and the fused loop). No RNG state is
involved, so the mask does not depend on how the tensor is chunked, on threads or on the
device (it is always computed on the CPU), and the keep probability is the threshold / 2³²,
within 2⁻³³ of the density.
"""

from __future__ import annotations

import numpy as np
import torch
import xxhash

from . import fused

__all__ = ["hash_key", "keep_mask", "keep_threshold"]

def keep_threshold(density: float) -> int:
    """⌊density·2³²⌉: hash values below it are kept (2³² keeps everything)."""
    return min(1 << 32, round(density * (1 << 32)))


def hash_key(seed: int, name: str) -> tuple[np.uint32, np.uint32]:
    """The per-tensor key (two 32-bit words of xxh3-64 of seed and name)."""
    k = xxhash.xxh3_64_intdigest(f"{seed}\0{name}".encode())
    return np.uint32(k & 0xFFFFFFFF), np.uint32(k >> 32)


def keep_mask(seed: int, name: str, start: int, stop: int, density: float) -> torch.Tensor:
    """Bool keep-mask of elements [start, stop) of tensor `name` (P(keep) = density)."""
    t = keep_threshold(density)
    if t >= 1 << 32:
        return torch.ones(stop - start, dtype=torch.bool)
    k1, k2 = hash_key(seed, name)
    out = np.empty(stop - start, dtype=np.bool_)
    fused.hash_keep(start, np.uint64(k1), np.uint64(k2), np.uint64(t), out)
    return torch.from_numpy(out)

"""DARE's random drop as a counter-based hash: the same mask for the same (seed, tensor, index).

Element j of tensor `name` is kept when h(seed, name, j) < ⌊density·2³²⌉, with h a 32-bit
hash: the key (seed, name) goes through xxh3-64 once per tensor, then the index through two
rounds of the `lowbias32` integer mixer (Wellons), in numpy's uint32 arithmetic, whose
multiplication wraps modulo 2³² and whose shifts are logical by definition. No RNG state is
involved, so the mask does not depend on how the tensor is chunked, on threads or on the
device (it is always computed on the CPU), and the keep probability is the threshold / 2³²,
within 2⁻³³ of the density.
"""

from __future__ import annotations

import numpy as np
import torch
import xxhash

__all__ = ["hash_key", "keep_mask", "keep_threshold"]

_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def keep_threshold(density: float) -> int:
    """⌊density·2³²⌉: hash values below it are kept (2³² keeps everything)."""
    return min(1 << 32, round(density * (1 << 32)))


def _lowbias32(x: np.ndarray, tmp: np.ndarray) -> None:
    """In place: x ^= x >> 16; x *= M1; x ^= x >> 15; x *= M2; x ^= x >> 16 (mod 2³²)."""
    for shift, mult in ((16, _M1), (15, _M2), (16, None)):
        np.right_shift(x, np.uint32(shift), out=tmp)
        np.bitwise_xor(x, tmp, out=x)
        if mult is not None:
            np.multiply(x, mult, out=x)


def hash_key(seed: int, name: str) -> tuple[np.uint32, np.uint32]:
    """The per-tensor key (two 32-bit words of xxh3-64 of seed and name)."""
    k = xxhash.xxh3_64_intdigest(f"{seed}\0{name}".encode())
    return np.uint32(k & 0xFFFFFFFF), np.uint32(k >> 32)


def hash32(seed: int, name: str, start: int, stop: int) -> np.ndarray:
    """h(seed, name, j) for j in [start, stop), as uint32."""
    k1, k2 = hash_key(seed, name)
    idx = np.arange(start, stop, dtype=np.uint64)
    x = (idx & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    tmp = np.empty_like(x)
    np.bitwise_xor(x, k1, out=x)
    _lowbias32(x, tmp)
    # the index's high word (0 below 2³² elements) enters the second round with the key
    high = (idx >> np.uint64(32)).astype(np.uint32) if stop > 1 << 32 else np.uint32(0)
    np.bitwise_xor(x, np.bitwise_xor(high, k2), out=x)
    _lowbias32(x, tmp)
    return x


def keep_mask(seed: int, name: str, start: int, stop: int, density: float) -> torch.Tensor:
    """Bool keep-mask of elements [start, stop) of tensor `name` (P(keep) = density)."""
    t = keep_threshold(density)
    if t >= 1 << 32:
        return torch.ones(stop - start, dtype=torch.bool)
    return torch.from_numpy(hash32(seed, name, start, stop) < np.uint32(t))

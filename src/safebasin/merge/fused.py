"""Fused CPU loops (numba) for the non-linear merges: one sweep over memory per chunk.

A TIES chunk in torch is a dozen element-wise ops (upcast, subtract, abs, compare, mask,
weight, elect, divide, add, round, distance), each a trip through memory and a temporary;
here it is one loop that reads each input element once and writes the output element once.
The loops do the same fp32 operations in the same order as the torch ops they replace
(`sparse.SparseMergeOp.apply`, `select.WindowSelect.update`), so the results are the same
bits: the tests compare both on random data, signed zeros and ties included.

Inputs are flat chunks in bfloat16 (read as their uint16 bits and widened exactly) or
float32; anything else (float16) takes the torch path. Every loop releases the GIL, so the
reader and writer threads keep streaming while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["as_array", "as_rows", "bits_high_histogram", "bits_low_histograms",
           "hash_keep", "high_histogram", "low_histograms", "magnitude_bits_into", "sparse_combine",
           "squared_distance", "supported"]

# elements per block: every stage's arrays of one block stay in the L1/L2 cache, and each
# stage is a short loop the compiler vectorises (one loop with every branch in it does not)
_BLOCK = 2048
_RUN = 16  # elements tested together for membership in the low pass's buckets
_M1, _M2 = 0x7FEB352D, 0x846CA68B  # lowbias32's multipliers (see dropout)


def supported(inputs: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> bool:
    """Whether the loops can read `inputs` (θ₀ first) and write `out`: contiguous CPU
    bfloat16/float32 tensors, the fine-tunes (inputs 1..K, stacked as rows) of one dtype."""
    ts = [*inputs, *([] if out is None else [out])]
    return (all(t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float32)
                and t.is_contiguous() for t in ts)
            and len({t.dtype for t in inputs[1:]}) <= 1)


def as_array(t: torch.Tensor) -> np.ndarray:
    """A flat numpy view (no copy): bfloat16 as its uint16 bits, float32 as is."""
    t = t.reshape(-1)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def as_rows(ts: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> np.ndarray:
    """Equal-length chunks of one dtype as the rows of a 2-D array (one chunk: a view)."""
    if len(ts) == 1:
        return as_array(ts[0]).reshape(1, -1)
    return np.stack([as_array(t) for t in ts])


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _bits_of_f32(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


def _load(a, i):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(_load, inline="always")
def _load_impl(a, i):
    if a.dtype == types.uint16:  # bfloat16: its bits are the high half of the fp32's
        return lambda a, i: _f32_from_bits(np.uint32(np.uint32(a[i]) << np.uint32(16)))
    if a.dtype == types.float32:
        return lambda a, i: a[i]
    return None


def _store(out, i, v):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(_store, inline="always")
def _store_impl(out, i, v):
    """Round v once into out[i] (nearest-even for bfloat16, as torch) and return the value
    stored, in fp32."""
    if out.dtype == types.uint16:
        def store_bf16(out, i, v):
            u = np.uint64(_bits_of_f32(v))
            if (u & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000):  # NaN: torch's quiet NaN
                r = np.uint64(0x7FC0)
            else:
                r = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))
                     ) >> np.uint64(16)
            out[i] = np.uint16(r)
            return _f32_from_bits(np.uint32(r << np.uint64(16)))
        return store_bf16
    if out.dtype == types.float32:
        def store_f32(out, i, v):
            out[i] = v
            return v
        return store_f32
    return None


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _magnitude(ft, base, i):
    """The fp32 bits of |θᵢ − θ₀| at element i (ordered like the magnitudes)."""
    return _bits_of_f32(abs(_load(ft, i) - _load(base, i)))


@njit(nogil=True, cache=True, error_model="numpy")
def _magnitudes(base, ft, dst):
    """dst[j] = the bits of |ft[j] − base[j]| (1-D slices indexed from 0: vectorised)."""
    for j in range(base.size):
        dst[j] = _magnitude(ft, base, j)


@njit(nogil=True, cache=True, error_model="numpy")
def _count_high(bits, hist):
    for j in range(bits.size):
        hist[bits[j] >> np.uint32(16)] += 1


@njit(nogil=True, cache=True, error_model="numpy")
def _count_low(bits, buckets, hists):
    """hists[r, bits & 0xFFFF] += 1 where bits >> 16 == buckets[r] (distinct buckets; the
    usual one or two, a window's two boundaries, take the fast loop)."""
    if buckets.size > 2:
        for j in range(bits.size):
            for r in range(buckets.size):
                if bits[j] >> np.uint32(16) == buckets[r]:
                    hists[r, bits[j] & np.uint32(0xFFFF)] += 1
        return
    b0 = np.uint32(buckets[0])
    b1 = np.uint32(buckets[1]) if buckets.size > 1 else b0  # one bucket: b1 never matches
    # a bucket holds a few % of the elements: most runs of 16 hold none of them, which a
    # vectorised test finds without a branch per element (low pass, 16M bf16 elements:
    # 17.1-18.6 -> 15.7-16.6 ms)
    s0 = 0
    while s0 + _RUN <= bits.size:
        hit = False
        for j in range(s0, s0 + _RUN):
            high = bits[j] >> np.uint32(16)
            hit |= (high == b0) | (high == b1)
        if hit:
            _count_low_pair(bits[s0:s0 + _RUN], b0, b1, hists)
        s0 += _RUN
    _count_low_pair(bits[s0:], b0, b1, hists)


@njit(nogil=True, cache=True, error_model="numpy")
def _count_low_pair(bits, b0, b1, hists):
    for j in range(bits.size):
        high = bits[j] >> np.uint32(16)
        if high == b0:
            hists[0, bits[j] & np.uint32(0xFFFF)] += 1
        elif high == b1:
            hists[1, bits[j] & np.uint32(0xFFFF)] += 1


@njit(nogil=True, cache=True, error_model="numpy")
def high_histogram(base, ft, hist):
    """hist[bits >> 16] += 1 over the bits of |ft − base| (radix selection's first pass)."""
    bits = np.empty(_BLOCK, dtype=np.uint32)
    for s0 in range(0, base.size, _BLOCK):
        m = min(_BLOCK, base.size - s0)
        _magnitudes(base[s0:s0 + m], ft[s0:s0 + m], bits[:m])
        _count_high(bits[:m], hist)


@njit(nogil=True, cache=True, error_model="numpy")
def low_histograms(base, ft, buckets, hists):
    """hists[r, bits & 0xFFFF] += 1 for the elements whose high bits are buckets[r]."""
    bits = np.empty(_BLOCK, dtype=np.uint32)
    for s0 in range(0, base.size, _BLOCK):
        m = min(_BLOCK, base.size - s0)
        _magnitudes(base[s0:s0 + m], ft[s0:s0 + m], bits[:m])
        _count_low(bits[:m], buckets, hists)


@njit(nogil=True, cache=True, error_model="numpy")
def magnitude_bits_into(base, ft, out):
    """out[i] = the int32 bits of |ft − base| (in-memory selection)."""
    _magnitudes(base, ft, out.view(np.uint32))


@njit(nogil=True, cache=True, error_model="numpy")
def bits_high_histogram(bits, hist):
    """`high_histogram` of bits already gathered (int32, non-negative)."""
    _count_high(bits.view(np.uint32), hist)


@njit(nogil=True, cache=True, error_model="numpy")
def bits_low_histograms(bits, buckets, hists):
    """`low_histograms` of bits already gathered (int32, non-negative)."""
    _count_low(bits.view(np.uint32), buckets, hists)


_I32 = ir.IntType(32)


@intrinsic
def _dare_hash(typingctx, j, key1, key2):
    """DARE's 32-bit hash of element j (see `dropout`): lowbias32 (Wellons) of the index's
    low word ^ key1, then lowbias32 of that ^ (its high word ^ key2). Written in 32-bit IR:
    numba widens unsigned arithmetic to 64 bits, which vectorises at half the lanes (the
    hash took 1.7x as long)."""
    def codegen(context, builder, signature, args):
        j, k1, k2 = args
        c = lambda v: ir.Constant(_I32, v)  # noqa: E731

        def lowbias32(x):
            x = builder.xor(x, builder.lshr(x, c(16)))
            x = builder.mul(x, c(_M1))
            x = builder.xor(x, builder.lshr(x, c(15)))
            x = builder.mul(x, c(_M2))
            return builder.xor(x, builder.lshr(x, c(16)))

        low, high = builder.trunc(j, _I32), builder.trunc(builder.lshr(j, ir.Constant(j.type, 32)),
                                                          _I32)
        x = lowbias32(builder.xor(low, builder.trunc(k1, _I32)))
        return lowbias32(builder.xor(x, builder.xor(high, builder.trunc(k2, _I32))))
    return types.uint32(types.int64, types.uint64, types.uint64), codegen


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _kept_by_hash(j, key1, key2, threshold):
    """DARE's keep decision for element j: its hash below the threshold (≤ 2³²)."""
    return np.uint64(_dare_hash(j, key1, key2)) < threshold


# per-input sparsification modes of `sparse_combine`
KEEP_ALL, KEEP_NONE, BY_RANK, BY_HASH = 0, 1, 2, 3
# rescale after a hash drop
RESCALE_NONE, RESCALE_DENSITY, RESCALE_FACTOR = 0, 1, 2
_JIT = dict(nogil=True, cache=True, error_model="numpy")  # numpy: x/0 is Inf, as in torch


@njit(**_JIT)
def _widen(a, dst):
    """dst[j] = the fp32 value of a[j]. Every stage takes 1-D slices indexed from 0: the
    compiler vectorises those loops (an offset or a 2-D index costs 8x)."""
    for j in range(a.size):
        dst[j] = _load(a, j)


@njit(**_JIT)
def _delta(ft, base, dst):
    """dst[j] = θₖ − θ₀ in fp32."""
    for j in range(ft.size):
        dst[j] = _load(ft, j) - base[j]


@njit(**_JIT)
def _scale(x, c):
    for j in range(x.size):
        x[j] = x[j] * c


@njit(**_JIT)
def _divide(x, c):
    for j in range(x.size):
        x[j] = x[j] / c


@njit(**_JIT)
def _rank_mask(x, lo_min, hi_max):
    """x[j] *= 1 or 0: kept when lo_min ≤ bits(|x[j]|) ≤ hi_max (WindowMask's comparisons;
    the ties a window splits are redone by `_rank_mask_ties`)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(x.size):
        b = np.int64(_bits_of_f32(abs(x[j])))
        x[j] = x[j] * (one if (b >= lo_min and b <= hi_max) else zero)


@njit(**_JIT)
def _rank_mask_ties(x, orig, k, win, seen):
    """Elements tied with a boundary that the window splits: kept by their rank, counted
    on from chunk to chunk in `seen` (orig holds the values before `_rank_mask`)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    lo_bits, hi_bits = win[k, 0], win[k, 3]
    split_lo, split_hi, lo_less, hi_less, w_lo, w_hi = (win[k, 5], win[k, 6], win[k, 7],
                                                        win[k, 8], win[k, 9], win[k, 10])
    for j in range(x.size):
        b = np.int64(_bits_of_f32(abs(orig[j])))
        if split_lo != 0 and b == lo_bits:
            rank = lo_less + seen[k, 0]
            seen[k, 0] += 1
            x[j] = orig[j] * (one if w_lo <= rank < w_hi else zero)
        elif split_hi != 0 and b == hi_bits:
            rank = hi_less + seen[k, 1]
            seen[k, 1] += 1
            x[j] = orig[j] * (one if w_lo <= rank < w_hi else zero)


@njit(**_JIT)
def _hash_mask(x, first, key1, key2, threshold, keep):
    """x[j] *= 1 or 0 by DARE's hash of element first + j. The hashes go to `keep` (a
    scratch row) first: the hash loop alone vectorises, one with the multiply in it does
    not (2x slower)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    hash_keep(first, key1, key2, threshold, keep[:x.size])
    for j in range(x.size):
        x[j] = x[j] * (one if keep[j] else zero)


@njit(**_JIT)
def hash_keep(first, key1, key2, threshold, out):
    """out[j] = DARE keeps element first + j (`dropout.keep_mask`)."""
    for j in range(out.size):
        out[j] = _kept_by_hash(first + j, key1, key2, threshold)


@njit(**_JIT)
def _add(acc, x):
    for j in range(acc.size):
        acc[j] = acc[j] + x[j]


@njit(**_JIT)
def _agree_add(acc, div, x, negative, w, first):
    """Mₖ = [sign xₖ = elected]: acc (+)= xₖ·Mₖ and div (+)= Mₖ·wₖ, in torch's order."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(x.size):
        a = one if ((x[j] < zero) if negative[j] else (x[j] > zero)) else zero
        if first:
            acc[j] = x[j] * a
            div[j] = a * w
        else:
            acc[j] = acc[j] + x[j] * a
            div[j] = div[j] + a * w


@njit(**_JIT)
def _store_block(out, mixed, base, normalize, div, lam):
    """out[j] = round(mixed/div·λ + θ₀) in torch's order: divide, scale, add."""
    one = np.float32(1.0)
    for j in range(out.size):
        v = mixed[j]
        if normalize != 0:
            v = v / div[j]
        if lam != one:
            v = v * lam
        _store(out, j, v + base[j])


@njit(**_JIT)
def sparse_combine(base, fts, start, mode, win, seen, hash_keys, hash_thresholds,
                   rescale, rescale_by, weights, consensus, normalize, divisor, lam, out):
    """TIES / DARE / breadcrumbs / task arithmetic over one chunk into `out`; returns
    Σ(stored − θ₀)² in fp64. The fp32 operations and their order are `SparseMergeOp.apply`'s,
    done block by block, stage by stage.
    """
    one, zero = np.float32(1.0), np.float32(0.0)
    n, k_count = base.size, fts.shape[0]
    b_all = np.empty(_BLOCK, dtype=np.float32)
    tau = np.empty((k_count, _BLOCK), dtype=np.float32)
    orig_all = np.empty(_BLOCK, dtype=np.float32)
    mixed_all = np.empty(_BLOCK, dtype=np.float32)
    div_all = np.empty(_BLOCK, dtype=np.float32)
    negative_all = np.empty(_BLOCK, dtype=np.bool_)
    sq = 0.0
    keep_all = np.empty(_BLOCK, dtype=np.bool_)
    for s0 in range(0, n, _BLOCK):
        m = min(_BLOCK, n - s0)
        b, mixed, div = b_all[:m], mixed_all[:m], div_all[:m]
        _widen(base[s0:s0 + m], b)
        for k in range(k_count):
            x = tau[k, :m]
            _delta(fts[k, s0:s0 + m], b, x)
            md = mode[k]
            if md == KEEP_NONE:
                _scale(x, zero)
            elif md == BY_RANK:
                lo_min = win[k, 0] + 1 if win[k, 1] != 0 else win[k, 0]
                hi_max = ((win[k, 3] - 1 if win[k, 4] != 0 else win[k, 3]) if win[k, 2] != 0
                          else np.int64(1) << 40)
                split = win[k, 5] != 0 or win[k, 6] != 0
                if split:
                    orig_all[:m] = x
                _rank_mask(x, lo_min, hi_max)
                if split:
                    _rank_mask_ties(x, orig_all[:m], k, win, seen)
            elif md == BY_HASH:
                _hash_mask(x, start + s0, hash_keys[k, 0], hash_keys[k, 1],
                           hash_thresholds[k], keep_all)
                if rescale == RESCALE_DENSITY:
                    _divide(x, rescale_by[k])
                elif rescale == RESCALE_FACTOR and rescale_by[k] != one:
                    _scale(x, rescale_by[k])
            _scale(x, weights[k])
        if consensus == 0 or k_count == 1:
            mixed[:] = tau[0, :m]
            for k in range(1, k_count):
                _add(mixed, tau[k, :m])
            if consensus == 0:
                div[:] = divisor
            else:  # one input agrees with its own sign wherever it is not zero
                w = weights[0]
                for j in range(m):
                    div[j] = w if (w > zero or mixed[j] != zero) else one
        else:
            mixed[:] = tau[0, :m]  # the elected sign: that of Σₖ τₖ (0 elects +)
            for k in range(1, k_count):
                _add(mixed, tau[k, :m])
            negative = negative_all[:m]
            for j in range(m):
                negative[j] = mixed[j] < zero
            for k in range(k_count):
                _agree_add(mixed, div, tau[k, :m], negative, weights[k], k == 0)
            for j in range(m):
                if div[j] == zero:
                    div[j] = one
        _store_block(out[s0:s0 + m], mixed, b, normalize, div, lam)
        sq += squared_distance(b, out[s0:s0 + m])
    return sq


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def squared_distance(base, out):
    """Σ(out − base)² with each difference in fp32, summed in fp64 (the order is free: a
    separate loop that vectorises, instead of a serial fp64 chain in the merge loop). The
    merge loops call it on each block they have just stored, while it is in the cache."""
    acc = 0.0
    for i in range(base.size):
        x = np.float64(_load(out, i) - _load(base, i))
        acc += x * x
    return acc


@njit(nogil=True, cache=True, error_model="numpy")
def slerp_combine(base, other, s0, s1, out):
    """out = round(s₀·θ₀ + s₁·θ₁): two rounded fp32 products, then their rounded sum
    (`geometry.SlerpOp.apply`); returns Σ(stored − θ₀)²."""
    sq = 0.0
    for a in range(0, base.size, _BLOCK):
        b, o = base[a:a + _BLOCK], out[a:a + _BLOCK]
        f = other[a:a + _BLOCK]
        for j in range(b.size):
            _store(o, j, s0 * _load(b, j) + s1 * _load(f, j))
        sq += squared_distance(b, o)
    return sq


@njit(nogil=True, cache=True, error_model="numpy")
def stock_combine(base, fts, t, out):
    """out = round(t·(Σ θᵢ)/N + (1 − t)·θ₀) in fp32, in `geometry.ModelStockOp.apply`'s
    order; returns Σ(stored − θ₀)²."""
    k, n = fts.shape[0], base.size
    count, rest = np.float32(k), np.float32(1.0) - t
    avg = np.empty(_BLOCK, dtype=np.float32)
    sq = 0.0
    for s0 in range(0, n, _BLOCK):
        m = min(_BLOCK, n - s0)
        a, b, o = avg[:m], base[s0:s0 + m], out[s0:s0 + m]
        _widen(fts[0, s0:s0 + m], a)
        for r in range(1, k):
            f = fts[r, s0:s0 + m]
            for j in range(m):
                a[j] = a[j] + _load(f, j)
        for j in range(m):
            _store(o, j, t * (a[j] / count) + rest * _load(b, j))
        sq += squared_distance(b, o)
    return sq

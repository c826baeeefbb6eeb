"""safebasin.kernels on the torch implementation, against an independent float64 reference.

The contract (safebasin/kernels/_common.py): fp32 math, then one round-to-nearest-even into the
output dtype. "One rounding" is tested as strictly as fp32 math allows:

* exact: 16-bit inputs with magnitudes in [2^-4, 8] and dyadic weights (0, 1, ±0.25, ±0.5,
  1.5, ...) make every fp32 operation exact (all operands fit in 24 significant bits), so
  the output must equal the float64 result rounded once to the output dtype, bit for bit;
* bounded: otherwise fp32 arithmetic is off the exact value by at most `bound` (a few fp32
  ulps of the operands), so an fp32 output must lie within `bound` of the float64 result, and
  a 16-bit output must lie between the roundings of ref − bound and ref + bound: that is
  the correct rounding except near ties (or under heavy cancellation, where the bound spans
  more than one ulp of the small result).
  `test_fp32_math_double_rounds_near_bf16_ties` shows such a case is real (a double rounding:
  fp32 first, then bf16) and that both torch.lerp and our kernels produce it.

The helpers here are shared with tests/test_kernels_triton.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from safebasin import kernels
from safebasin.errors import UsageError
from safebasin.kernels import _dispatch, _torch

U = 2.0**-24  # fp32 unit roundoff
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPE_PAIRS = [(a, b) for a in DTYPES for b in DTYPES]
WEIGHTS = (0.0, 1.0, 0.25, -0.5, 1.5)  # the list; all dyadic
_PRECISION = {torch.bfloat16: (8, -126), torch.float16: (11, -14), torch.float32: (24, -126)}


# ---------------------------------------------------------------- float64 reference helpers


def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 → dtype with one round-to-nearest-even (torch's own float64 → bf16 cast goes
    through fp32, which would be a double rounding in the reference itself)."""
    bits, emin = _PRECISION[dtype]
    x = x.to(torch.float64)
    _, e = torch.frexp(x)  # x = m·2^e, m in [0.5, 1)
    ulp = torch.ldexp(torch.ones_like(x), torch.clamp(e - 1, min=emin) - (bits - 1))
    r = torch.round(x / ulp) * ulp  # torch.round: half to even; x / ulp is exact
    return r.to(dtype)  # exact, or ±Inf past the largest finite value, as RNE overflows


def fp32(w: float) -> float:
    """The weight the kernels use: w rounded to fp32."""
    return float(torch.tensor(w, dtype=torch.float32))


def sample(n: int, dtype: torch.dtype, seed: int, lo: float = 2.0**-4,
           hi: float = 8.0) -> torch.Tensor:
    """Random signs, log-uniform magnitudes in [lo, hi], exactly representable in dtype."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(lo), math.log(hi),
                                                                  generator=g))
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return (sign * mag).to(dtype)


def lerp_reference(a: torch.Tensor, b: torch.Tensor, w: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a + w(b − a) in float64, bound on the error of evaluating it in fp32)."""
    a64, b64, w = a.double(), b.double(), fp32(w)
    ref = a64 + w * (b64 - a64)
    return ref, 4 * U * (1 + max(abs(w), abs(1 - w))) * (a64.abs() + b64.abs())


def weighted_sum_reference(ts: list[torch.Tensor], ws: list[float]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    terms = [fp32(w) * t.double() for t, w in zip(ts, ws, strict=True)]
    ref = torch.stack(terms).sum(0)
    return ref, 2 * U * (len(ts) + 1) * torch.stack(terms).abs().sum(0)


def deltas_reference(base: torch.Tensor, others: list[torch.Tensor], ws: list[float]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(base + Σ wᵢ(tᵢ − base) in float64, bound on the error of evaluating it in fp32: each
    difference, product and sum rounds once, on values no larger than the magnitudes below)."""
    b64 = base.double()
    ref = b64 + sum((fp32(w) * (t.double() - b64) for t, w in zip(others, ws, strict=True)),
                    torch.zeros_like(b64))
    size = b64.abs() + sum((t.double().abs() for t in others), torch.zeros_like(b64))
    return ref, 4 * U * (len(others) + 2) * (1 + sum(abs(fp32(w)) for w in ws)) * size


def is_exact_case(dtypes: list[torch.dtype], ws: list[float]) -> bool:
    """16-bit inputs (from `sample`) and weights with few bits: fp32 math is exact."""
    return all(d != torch.float32 for d in dtypes) and all((w * 8).is_integer() for w in ws)


def assert_rounded_once(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, *,
                        exact: bool) -> None:
    """See the module docstring."""
    if exact:
        want = round_to(ref, out.dtype)
        bad = (out.double() != want.double()).nonzero()
        assert bad.numel() == 0, (f"{bad.numel()} elements not rounded once, first at "
                                  f"{bad[0].tolist()}: {out.flatten()[bad[0]].item()} vs "
                                  f"{want.flatten()[bad[0]].item()}")
        return
    if out.dtype == torch.float32:
        err = (out.double() - ref).abs()
        assert bool((err <= bound).all()), f"fp32 error {float((err - bound).max())} past bound"
        return
    # rounding is monotone: the fp32 value lies in ref ± bound, so its rounding in [lo, hi]
    lo, hi = round_to(ref - bound, out.dtype), round_to(ref + bound, out.dtype)
    ok = (out >= lo) & (out <= hi)
    assert bool(ok.all()), f"{int((~ok).sum())} elements outside the roundings of ref ± bound"


def assert_sq(sq: torch.Tensor, want: float) -> None:
    assert sq.dtype == torch.float32 and sq.dim() == 0
    assert float(sq) == pytest.approx(want, rel=1e-6, abs=1e-30)


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and torch.equal(x.contiguous().view(torch.uint8),
                                              y.contiguous().view(torch.uint8))


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("SAFEBASIN_KERNEL", "torch")


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_to_matches_torch_casts_from_fp32(dtype):
    # fp32 → 16-bit is one rounding in torch, so it checks the reference on every bit pattern
    bits = torch.randint(-(2**31), 2**31, (200_000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    x = x[torch.isfinite(x)]
    assert same_bits(round_to(x.double(), dtype), x.to(dtype))


# ---------------------------------------------------------------- lerp


@pytest.mark.parametrize("w", WEIGHTS)
@pytest.mark.parametrize(("da", "db"), DTYPE_PAIRS)
def test_lerp_rounds_once_for_every_dtype_pair(torch_backend, da, db, w):
    a, b = sample(3001, da, 1), sample(3001, db, 2)
    out, sq = kernels.lerp(a, b, w, return_sq=True)
    assert out.dtype == da
    ref, bound = lerp_reference(a, b, w)
    assert_rounded_once(out, ref, bound, exact=is_exact_case([da, db], [w]))
    assert_sq(sq, float(((b.double() - a.double()) ** 2).sum()))


@pytest.mark.parametrize("w", [0.3, 0.7, 1e-3, -2.0])
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_lerp_general_weights_within_fp32_bound(torch_backend, out_dtype, w):
    a, b = sample(3001, torch.bfloat16, 3), sample(3001, torch.float32, 4)
    out = kernels.lerp(a, b, w, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert_rounded_once(out, *lerp_reference(a, b, w), exact=False)


def test_fp32_math_double_rounds_near_bf16_ties(torch_backend):
    """A real double rounding, inherent in "fp32 math, then bf16": -0.671875 + 0.3·(-0.13671875)
    is -0.71289062663..., just past the bf16 midpoint -0.712890625; fp32 lands exactly on the
    midpoint and the tie goes to the even neighbour. torch.lerp does the same. With bf16
    inputs and w = 0.3 about 2% of elements are such near-ties (measured on randn data)."""
    a = torch.tensor([-0.671875], dtype=torch.bfloat16)
    b = torch.tensor([-0.80859375], dtype=torch.bfloat16)
    ref, bound = lerp_reference(a, b, 0.3)
    correct = round_to(ref, torch.bfloat16)
    out = kernels.lerp(a, b, 0.3)
    assert float(correct) == -0.71484375 and float(out) == -0.7109375
    assert float(torch.lerp(a, b, 0.3)) == float(out)
    assert_rounded_once(out, ref, bound, exact=False)  # allowed: within fp32 error of a tie


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_lerp_on_cpu_is_one_torch_lerp_pass(torch_backend, dtype):
    """Inputs and output of one 16-bit dtype: torch.lerp (fp32 math with an FMA, one rounding),
    held to the same float64 bound as the separate-op path; see safebasin/kernels/_torch.py."""
    a, b = sample(3001, dtype, 15), sample(3001, dtype, 16)
    for w in (0.3, 0.7, 1e-3, -2.0):
        out = kernels.lerp(a, b, w)
        assert same_bits(out, torch.lerp(a, b, fp32(w)))
        assert_rounded_once(out, *lerp_reference(a, b, w), exact=False)
        separate = kernels.lerp(a, b, w, out_dtype=torch.float32).to(dtype)  # no-FMA fp32
        assert float((out != separate).double().mean()) < 0.01  # only near 16-bit ties


def test_fp32_lerp_keeps_separate_multiply_and_add(torch_backend):
    a, b = sample(3001, torch.float32, 17), sample(3001, torch.float32, 18)
    want = torch.add(a, torch.mul(torch.sub(b, a), fp32(0.3)))  # the Triton kernels' sequence
    assert same_bits(kernels.lerp(a, b, 0.3), want)


CHUNK = _torch.chunk_elems(torch.device("cpu"))


@pytest.mark.parametrize("n", [0, 1, 7, 127, 1025, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5])
def test_lerp_any_length(torch_backend, n):
    # lengths straddle the torch implementation's chunk of fp32 scratch
    a, b = sample(n, torch.bfloat16, 5), sample(n, torch.bfloat16, 6)
    out, sq = kernels.lerp(a, b, -0.5, return_sq=True)
    assert out.shape == (n,)
    assert_rounded_once(out, *lerp_reference(a, b, -0.5), exact=True)
    assert_sq(sq, float(((b.double() - a.double()) ** 2).sum()))


def test_lerp_endpoints_are_exact_even_with_nonfinite_other_end(torch_backend):
    a = torch.tensor([-0.0, 1.5, 3.0, float("inf"), 7.0])
    b = torch.tensor([2.0, float("nan"), -0.0, 1.0, -float("inf")])
    assert same_bits(kernels.lerp(a[:3], b[:3], 0.0), a[:3])  # no 0·NaN, -0.0 kept
    assert same_bits(kernels.lerp(a[2:], b[2:], 1.0), b[2:])
    assert same_bits(kernels.lerp(a, b, 0.0, out_dtype=torch.bfloat16), a.to(torch.bfloat16))


@pytest.mark.parametrize("w", [*WEIGHTS, 0.3, 0.7])
def test_lerp_tensor_weight_gives_same_bits_as_float(torch_backend, w):
    a, b = sample(1025, torch.float32, 7), sample(1025, torch.bfloat16, 8)
    for wt in (torch.tensor(w), torch.tensor(w, dtype=torch.float64).reshape(1)):
        assert same_bits(kernels.lerp(a, b, wt), kernels.lerp(a, b, w))


def test_lerp_on_0d_tensors(torch_backend):
    a, b = torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(3.0)
    out, sq = kernels.lerp(a, b, torch.tensor(0.25), return_sq=True)
    assert out.shape == () and out.dtype == torch.bfloat16 and float(out) == 1.5
    assert float(sq) == 4.0 and sq.shape == ()


def test_lerp_into_out_aliasing_b(torch_backend):
    a, b = sample(1025, torch.float32, 9), sample(1025, torch.float32, 10)
    want = kernels.lerp(a, b, 0.3)
    kernels.lerp(a, b, 0.3, out=b)
    assert same_bits(b, want)


@pytest.mark.parametrize(("shadow", "weights"), [(torch.float32, torch.bfloat16),
                                                 (torch.bfloat16, torch.bfloat16),
                                                 (torch.float32, torch.float32)])
def test_lerp_inplace_equals_out_of_place(torch_backend, shadow, weights):
    a, b = sample(3001, shadow, 11), sample(3001, weights, 12)
    want = kernels.lerp(a, b, 0.01)
    sq_before = float(((b.double() - a.double()) ** 2).sum())
    res, sq = kernels.lerp_(a, b, 0.01, return_sq=True)
    assert res is a and same_bits(a, want)
    assert_sq(sq, sq_before)  # measured on a before the update


def test_noncontiguous_inputs_and_out(torch_backend):
    a = sample(64 * 48, torch.bfloat16, 13).reshape(64, 48)
    b = sample(64 * 48, torch.float32, 14).reshape(48, 64).t()
    out = torch.empty(48, 64, dtype=torch.float32).t()
    kernels.lerp(a, b, 0.25, out=out)
    assert_rounded_once(out, *lerp_reference(a, b.contiguous(), 0.25), exact=False)
    assert same_bits(out.contiguous(), kernels.lerp(a, b.contiguous(), 0.25,
                                                    out_dtype=torch.float32))


# ---------------------------------------------------------------- weighted sum

K_WEIGHTS = [0.5, 0.25, -0.75, 1.5, 0.125]  # dyadic: exact in fp32 for `sample` data


@pytest.mark.parametrize("tensor_weights", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_weighted_sum_rounds_once(torch_backend, k, tensor_weights):
    ts = [sample(1025, DTYPES[i % 2], 20 + i) for i in range(k)]  # bf16 and fp16 mixed
    ws = K_WEIGHTS[:k]
    given = [torch.tensor(w) for w in ws] if tensor_weights else ws
    out, sq = kernels.weighted_sum(ts, given, return_sq=True)
    assert out.dtype == ts[0].dtype
    ref, bound = weighted_sum_reference(ts, ws)
    assert_rounded_once(out, ref, bound, exact=True)
    assert_sq(sq, float(((out.double() - ts[0].double()) ** 2).sum()))  # of the stored result


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_weighted_sum_many_inputs_general_weights(torch_backend, out_dtype):
    ts = [sample(2049, DTYPES[i % 3], 30 + i) for i in range(11)]
    ws = [0.1 * (i + 1) - 0.4 for i in range(11)]
    out, sq = kernels.weighted_sum(ts, ws, out_dtype=out_dtype, return_sq=True)
    assert_rounded_once(out, *weighted_sum_reference(ts, ws), exact=False)
    assert_sq(sq, float(((out.double() - ts[0].double()) ** 2).sum()))


def test_weighted_sum_zero_weight_adds_nothing(torch_backend):
    base = torch.tensor([-0.0, 1.0, -0.0, 2.5])
    bad = torch.tensor([float("nan"), float("inf"), 1.0, -float("inf")])
    assert same_bits(kernels.weighted_sum([bad, base, bad], [0.0, 1.0, 0.0]), base)
    tw = [torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0)]
    assert same_bits(kernels.weighted_sum([bad, base, bad], tw), base)


def test_weighted_sum_sq_measured_before_overwriting_first_input(torch_backend):
    t0, t1 = sample(1025, torch.bfloat16, 40), sample(1025, torch.bfloat16, 41)
    want_out, want_sq = kernels.weighted_sum([t0, t1], [0.5, 0.5], return_sq=True)
    _, sq = kernels.weighted_sum([t0, t1], [0.5, 0.5], out=t0, return_sq=True)
    assert same_bits(t0, want_out) and float(sq) == float(want_sq)


def test_sq_dist_matches_float64(torch_backend):
    a, b = sample(5000, torch.bfloat16, 50), sample(5000, torch.float32, 51)
    assert_sq(kernels.sq_dist(a, b), float(((b.double() - a.double()) ** 2).sum()))


def test_empty_tensors(torch_backend):
    e16, e32 = torch.empty(0, 3, dtype=torch.bfloat16), torch.empty(0, 3)
    out, sq = kernels.lerp(e16, e32, 0.5, return_sq=True)
    assert out.shape == (0, 3) and float(sq) == 0.0
    assert kernels.lerp_(e32, e16, 0.5) is e32
    out, sq = kernels.weighted_sum([e16, e32], [0.5, 0.5], return_sq=True)
    assert out.shape == (0, 3) and float(sq) == 0.0
    out, sq = kernels.add_deltas(e16, [e32, e16], [0.5, 0.25], return_sq=True)
    assert out.shape == (0, 3) and float(sq) == 0.0
    assert float(kernels.sq_dist(e16, e32)) == 0.0


# ---------------------------------------------------------------- add deltas


@pytest.mark.parametrize("tensor_weights", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_add_deltas_rounds_once(torch_backend, k, tensor_weights):
    base = sample(1025, torch.bfloat16, 60)
    others = [sample(1025, DTYPES[(i + 1) % 2], 61 + i) for i in range(k)]  # bf16, fp16 mixed
    ws = K_WEIGHTS[:k]
    given = [torch.tensor(w) for w in ws] if tensor_weights else ws
    out, sq = kernels.add_deltas(base, others, given, return_sq=True)
    assert out.dtype == base.dtype
    assert_rounded_once(out, *deltas_reference(base, others, ws), exact=True)
    assert_sq(sq, float(((out.double() - base.double()) ** 2).sum()))  # of the stored result


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_add_deltas_general_weights_within_fp32_bound(torch_backend, out_dtype):
    base = sample(3001, torch.bfloat16, 62)
    others = [sample(3001, DTYPES[i % 3], 63 + i) for i in range(4)]
    ws = [0.3, -0.7, 0.45, 1e-3]
    out, sq = kernels.add_deltas(base, others, ws, out_dtype=out_dtype, return_sq=True)
    assert out.dtype == out_dtype
    assert_rounded_once(out, *deltas_reference(base, others, ws), exact=False)
    assert_sq(sq, float(((out.double() - base.double()) ** 2).sum()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_deltas_zero_task_vectors_return_base(torch_backend, dtype):
    base = sample(3001, dtype, 64)
    for ws in ([0.8], [0.3, 0.7], [0.2, -0.9, 1.7]):
        assert same_bits(kernels.add_deltas(base, [base.clone() for _ in ws], ws), base)
    if dtype == torch.float32:  # what the delta form is for: the weighted sum misses it
        assert not same_bits(kernels.weighted_sum([base, base], [0.2, 0.8]), base)


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32),
                                    (torch.bfloat16, torch.bfloat16),
                                    (torch.bfloat16, torch.float32)])
def test_add_deltas_one_term_is_the_lerp(torch_backend, dtypes):
    a, b = sample(3001, dtypes[0], 65), sample(3001, dtypes[1], 66)
    for w in (*WEIGHTS, 0.3, 0.7):
        out, sq = kernels.add_deltas(a, [b], [w], return_sq=True)
        assert same_bits(out, kernels.lerp(a, b, w))
        assert float(sq) == pytest.approx(float(((out.double() - a.double()) ** 2).sum()),
                                          rel=1e-6)
    assert same_bits(kernels.add_deltas(a, [b], [1.0]), b.to(a.dtype))  # the endpoint, exactly


def test_add_deltas_zero_float_weight_drops_the_tensor(torch_backend):
    base, good = sample(1025, torch.float32, 67), sample(1025, torch.float32, 68)
    bad = torch.full((1025,), float("nan"))
    bad[::2] = float("inf")
    assert same_bits(kernels.add_deltas(base, [bad, good, bad], [0.0, 0.3, 0.0]),
                     kernels.lerp(base, good, 0.3))
    assert same_bits(kernels.add_deltas(base, [bad], [0.0]), base)
    assert same_bits(kernels.add_deltas(base, [], []), base)


def test_add_deltas_zero_tensor_weight_is_masked(torch_backend):
    base, good = sample(1025, torch.float32, 69), sample(1025, torch.float32, 70)
    bad = torch.full((1025,), float("inf"))
    out = kernels.add_deltas(base, [bad, good], [torch.tensor(0.0), torch.tensor(0.3)])
    assert bool(torch.isfinite(out).all())
    assert_rounded_once(out, *deltas_reference(base, [good], [0.3]), exact=False)


def test_add_deltas_sq_measured_before_overwriting_base(torch_backend):
    for dtype in (torch.bfloat16, torch.float32):
        base, t1, t2 = (sample(1025, dtype, 71 + i) for i in range(3))
        want_out, want_sq = kernels.add_deltas(base, [t1, t2], [0.3, 0.4], return_sq=True)
        _, sq = kernels.add_deltas(base, [t1, t2], [0.3, 0.4], out=base, return_sq=True)
        assert same_bits(base, want_out) and float(sq) == float(want_sq)


@pytest.mark.parametrize("n", [0, 1, 7, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 5])
def test_add_deltas_any_length(torch_backend, n):
    base = sample(n, torch.bfloat16, 74)
    others = [sample(n, torch.bfloat16, 75), sample(n, torch.float16, 76)]
    out, sq = kernels.add_deltas(base, others, [0.25, -0.5], return_sq=True)
    assert out.shape == (n,)
    assert_rounded_once(out, *deltas_reference(base, others, [0.25, -0.5]), exact=True)
    assert_sq(sq, float(((out.double() - base.double()) ** 2).sum()))


def test_add_deltas_on_0d_and_2d_tensors(torch_backend):
    a, b = torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(3.0)
    out, sq = kernels.add_deltas(a, [b, b], [0.25, 0.25], return_sq=True)
    assert out.shape == () and out.dtype == torch.bfloat16 and float(out) == 2.0
    assert float(sq) == 1.0
    x = sample(64 * 48, torch.float32, 77).reshape(64, 48)
    y = sample(64 * 48, torch.float32, 78).reshape(48, 64).t()  # non-contiguous
    out = kernels.add_deltas(x, [y, x], [0.5, 0.25])
    assert out.shape == (64, 48)
    assert_rounded_once(out, *deltas_reference(x, [y.contiguous(), x], [0.5, 0.25]),
                        exact=False)


# ---------------------------------------------------------------- errors


def test_shape_mismatch_is_a_usage_error(torch_backend):
    with pytest.raises(UsageError, match="same shape"):
        kernels.lerp(torch.zeros(3), torch.zeros(4), 0.5)
    with pytest.raises(UsageError, match="one weight per tensor"):
        kernels.weighted_sum([torch.zeros(3)], [0.5, 0.5])
    with pytest.raises(UsageError, match="same shape"):
        kernels.add_deltas(torch.zeros(3), [torch.zeros(3), torch.zeros(4)], [0.5, 0.5])
    with pytest.raises(UsageError, match="one weight per tensor"):
        kernels.add_deltas(torch.zeros(3), [torch.zeros(3)], [0.5, 0.5])


@pytest.mark.parametrize("w", [float("nan"), float("inf"), torch.zeros(2), "0.5"])
def test_bad_weight_is_a_usage_error(torch_backend, w):
    with pytest.raises(UsageError, match="weight"):
        kernels.lerp(torch.zeros(3), torch.zeros(3), w)


def test_out_and_out_dtype_must_agree(torch_backend):
    with pytest.raises(UsageError, match="out_dtype"):
        kernels.lerp(torch.zeros(3), torch.zeros(3), 0.5, out=torch.empty(3),
                     out_dtype=torch.bfloat16)


# ---------------------------------------------------------------- dispatch


def test_cpu_tensors_default_to_torch(monkeypatch):
    monkeypatch.delenv("SAFEBASIN_KERNEL", raising=False)
    assert kernels.backend_for(torch.zeros(3), torch.zeros(3)) == "torch"
    monkeypatch.setenv("SAFEBASIN_KERNEL", "auto")
    assert kernels.backend_for(torch.zeros(3)) == "torch"


def test_unknown_backend_name_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("SAFEBASIN_KERNEL", "cuda")
    with pytest.raises(UsageError, match="SAFEBASIN_KERNEL='cuda'"):
        kernels.lerp(torch.zeros(3), torch.zeros(3), 0.5)


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("SAFEBASIN_KERNEL", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UsageError, match="triton"):
        kernels.lerp(torch.zeros(3), torch.zeros(3), 0.5)


def test_forced_triton_without_triton_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("SAFEBASIN_KERNEL", "triton")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    _dispatch.triton_importable.cache_clear()
    try:
        with pytest.raises(UsageError, match="does not import"):
            kernels.backend_for(torch.zeros(3))
    finally:
        _dispatch.triton_importable.cache_clear()


def test_triton_cannot_serve_goes_to_torch_even_when_forced(monkeypatch):
    monkeypatch.setenv("SAFEBASIN_KERNEL", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(4, 4)
    assert kernels.backend_for(x.t(), x) == "torch"  # non-contiguous
    assert kernels.backend_for(x.double(), x) == "torch"  # fp64
    assert same_bits(kernels.lerp(x.t(), x, 0.5), torch.zeros(4, 4))


def test_import_does_not_import_triton():
    code = ("import sys, torch, safebasin.kernels as k; k.lerp(torch.zeros(3), torch.ones(3), "
            "0.5); k.backend_for(torch.zeros(3)); assert 'triton' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != "SAFEBASIN_KERNEL"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_lerp_many_matches_float64_reference_and_mixed_dtypes_fall_back():
    """The multi-tensor EMA update: fp32 pairs fused (FMA allowed), a bf16 input with an fp32
    shadow through `lerp_`; both within the fp32 error bound of s + w(x − s): two roundings of
    the larger of |s| and |w(x − s)|."""
    g = torch.Generator().manual_seed(7)
    shadows = [torch.randn(n, generator=g) for n in (1, 33, 4097)]
    xs = [torch.randn(1, generator=g), torch.randn(33, generator=g),
          torch.randn(4097, generator=g).to(torch.bfloat16)]
    w = float(torch.tensor(0.01, dtype=torch.float32))  # the fp32 weight the kernels use
    refs = [s.double() + w * (x.double() - s.double())
            for s, x in zip(shadows, xs, strict=True)]
    bounds = [2.0**-22 * (s.double().abs() + w * (x.double() - s.double()).abs())
              for s, x in zip(shadows, xs, strict=True)]
    kernels.lerp_many_(shadows, xs, 0.01)
    for s, r, bound in zip(shadows, refs, bounds, strict=True):
        assert s.dtype == torch.float32
        assert bool(((s.double() - r).abs() <= bound).all())


def test_lerp_many_refuses_unequal_lists():
    with pytest.raises(UsageError, match="3 tensors to update but 2 inputs"):
        kernels.lerp_many_([torch.zeros(1)] * 3, [torch.zeros(1)] * 2, 0.5)

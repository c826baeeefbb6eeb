"""The Triton kernels under the interpreter (TRITON_INTERPRET=1) on CPU tensors.

No GPU here: the interpreter runs the kernels' Python bodies with numpy. The module fixture
sets TRITON_INTERPRET=1 and SAFEBASIN_KERNEL=triton for these tests only (triton decides
interpreter-or-compiler when a kernel is decorated, so `safebasin.kernels._triton` must be
imported, or re-imported, under that variable) and restores the environment afterwards.

Why bf16 outputs are compared exactly here, not within one ulp: the interpreter truncates on
fp32 → bf16 casts (`test_interpreter_truncates_native_bf16_casts` shows it), so the kernels do
not cast: they round to nearest-even with integer ops and store the bits, which gives the same
result on a GPU and in the interpreter. fp16 goes through numpy's cast, which rounds to
nearest-even. Every result is also checked to be bit-identical to the torch implementation.
Lengths cover one block (4096 elements) and a few: the interpreter is slow.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from test_kernels import (
    DTYPE_PAIRS,
    DTYPES,
    K_WEIGHTS,
    WEIGHTS,
    assert_rounded_once,
    assert_sq,
    deltas_reference,
    is_exact_case,
    lerp_reference,
    round_to,
    same_bits,
    sample,
    weighted_sum_reference,
)

from safebasin import kernels

triton = pytest.importorskip("triton")
BLOCK = 4096
# numpy warns about the 0·Inf the kernels compute and then discard with tl.where
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    name = "safebasin.kernels._triton"
    compiled_before = name in sys.modules and not sys.modules[name].INTERPRETED
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    mp.setenv("SAFEBASIN_KERNEL", "triton")
    from safebasin.kernels import _triton

    if not _triton.INTERPRETED:  # imported earlier without the interpreter: decorate again
        importlib.reload(_triton)
    assert _triton.INTERPRETED and _triton.DEFAULT.block == BLOCK
    yield _triton
    mp.undo()
    # leave no interpreted kernels behind for GPU tests later in the same process
    if compiled_before:
        importlib.reload(_triton)
    else:  # forget it: the next import decorates according to the environment then
        del sys.modules[name]
        delattr(kernels, "_triton")


def on_torch(monkeypatch, fn, *args, **kwargs):
    """Run `fn` with the torch implementation, then switch back to Triton."""
    monkeypatch.setenv("SAFEBASIN_KERNEL", "torch")
    try:
        return fn(*args, **kwargs)
    finally:
        monkeypatch.setenv("SAFEBASIN_KERNEL", "triton")


def test_dispatch_serves_cpu_tensors_with_triton_under_the_interpreter():
    x = torch.zeros(8)
    assert kernels.backend_for(x, x) == "triton"
    assert kernels.backend_for(torch.zeros(4, 2).t(), torch.zeros(2, 4)) == "torch"


def test_interpreter_truncates_native_bf16_casts():
    """Why the kernels round bf16 with integer ops (see the module docstring)."""
    tl = triton.language

    @triton.jit
    def cast(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        tl.store(y_ptr + offs, x.to(tl.bfloat16), mask=offs < n)

    x = torch.tensor([1.0 + 2.0**-8 + 2.0**-20, -(1.0 + 3 * 2.0**-9)])  # round up in magnitude
    y = torch.empty(2, dtype=torch.bfloat16)
    cast[(1,)](x, y, 2, BLOCK=2)
    assert y.tolist() == [1.0, -1.0] and x.to(torch.bfloat16).tolist() == [1.0078125, -1.0078125]


# ---------------------------------------------------------------- lerp


@pytest.mark.parametrize(("da", "db"), DTYPE_PAIRS)
def test_lerp_rounds_once_for_every_dtype_pair(monkeypatch, da, db):
    a, b = sample(BLOCK + 127, da, 1), sample(BLOCK + 127, db, 2)
    for w in WEIGHTS:
        out, sq = kernels.lerp(a, b, w, return_sq=True)
        assert out.dtype == da
        ref, bound = lerp_reference(a, b, w)
        assert_rounded_once(out, ref, bound, exact=is_exact_case([da, db], [w]))
        assert_sq(sq, float(((b.double() - a.double()) ** 2).sum()))
        assert same_bits(out, on_torch(monkeypatch, kernels.lerp, a, b, w))


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_lerp_general_weights_and_output_dtypes(monkeypatch, out_dtype):
    a, b = sample(2 * BLOCK + 7, torch.bfloat16, 3), sample(2 * BLOCK + 7, torch.float32, 4)
    for w in (0.3, 0.7, -2.0):
        out = kernels.lerp(a, b, w, out_dtype=out_dtype)
        assert out.dtype == out_dtype
        assert_rounded_once(out, *lerp_reference(a, b, w), exact=False)
        assert same_bits(out, on_torch(monkeypatch, kernels.lerp, a, b, w, out_dtype=out_dtype))


@pytest.mark.parametrize("n", [0, 1, 7, 127, 1025, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
def test_lerp_any_length(n):
    a, b = sample(n, torch.bfloat16, 5), sample(n, torch.float16, 6)
    out, sq = kernels.lerp(a, b, 1.5, return_sq=True)
    assert out.shape == (n,) and sq.shape == ()
    assert_rounded_once(out, *lerp_reference(a, b, 1.5), exact=True)
    assert_sq(sq, float(((b.double() - a.double()) ** 2).sum()))


def test_lerp_tensor_weight_is_read_by_the_kernel(monkeypatch, interpreter):
    a, b = sample(BLOCK + 1, torch.float32, 7), sample(BLOCK + 1, torch.bfloat16, 8)
    for w in (*WEIGHTS, 0.3, 0.7):
        out, sq = kernels.lerp(a, b, torch.tensor(w, dtype=torch.float64), return_sq=True)
        want, want_sq = kernels.lerp(a, b, w, return_sq=True)
        assert same_bits(out, want) and float(sq) == float(want_sq)


def test_lerp_endpoints_are_exact_even_with_nonfinite_other_end():
    a = torch.tensor([-0.0, 1.5, 3.0, float("inf"), 7.0])
    b = torch.tensor([2.0, float("nan"), -0.0, 1.0, -float("inf")])
    assert same_bits(kernels.lerp(a[:3], b[:3], 0.0), a[:3])
    assert same_bits(kernels.lerp(a[2:], b[2:], 1.0), b[2:])
    assert same_bits(kernels.lerp(a[:3], b[:3], torch.tensor(0.0)), a[:3])
    assert same_bits(kernels.lerp(a[2:], b[2:], torch.tensor(1.0)), b[2:])


def test_bf16_store_handles_specials_overflow_and_subnormals():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 3.3e38, -3.3e38,
                      1e-40, -3e-39, 9.2e-41, 1.17e-38, 2.0**-133, 2.0**-134])
    out = kernels.lerp(x, torch.zeros_like(x), 0.0, out_dtype=torch.bfloat16)
    nan = torch.isnan(x)
    assert torch.isnan(out[nan]).all() and same_bits(out[~nan], x[~nan].to(torch.bfloat16))
    back = kernels.lerp(out[~nan], torch.zeros_like(out[~nan]), 0.0, out_dtype=torch.float32)
    assert same_bits(back, out[~nan].float())  # bf16 → fp32 exact, subnormals included


def test_lerp_on_0d_tensors():
    a, b = torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(3.0)
    out, sq = kernels.lerp(a, b, torch.tensor(0.25), return_sq=True)
    assert out.shape == () and out.dtype == torch.bfloat16 and float(out) == 1.5
    assert float(sq) == 4.0


@pytest.mark.parametrize(("shadow", "weights"), [(torch.float32, torch.bfloat16),
                                                 (torch.bfloat16, torch.bfloat16)])
def test_lerp_inplace_equals_out_of_place(shadow, weights):
    a, b = sample(BLOCK + 3, shadow, 11), sample(BLOCK + 3, weights, 12)
    want = kernels.lerp(a, b, 0.01)
    sq_before = float(((b.double() - a.double()) ** 2).sum())
    res, sq = kernels.lerp_(a, b, torch.tensor(0.01), return_sq=True)
    assert res is a and same_bits(a, want)
    assert_sq(sq, sq_before)


# ---------------------------------------------------------------- weighted sum


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_weighted_sum_rounds_once(monkeypatch, k):
    ts = [sample(BLOCK + 9, DTYPES[i % 2], 20 + i) for i in range(k)]
    ws = K_WEIGHTS[:k]
    ref, bound = weighted_sum_reference(ts, ws)
    for given in (ws, [torch.tensor(w) for w in ws]):  # host floats, then device pointers
        out, sq = kernels.weighted_sum(ts, given, return_sq=True)
        assert out.dtype == ts[0].dtype
        assert_rounded_once(out, ref, bound, exact=True)
        assert_sq(sq, float(((out.double() - ts[0].double()) ** 2).sum()))
        assert same_bits(out, on_torch(monkeypatch, kernels.weighted_sum, ts, given))


@pytest.mark.parametrize("k", [9, 17])
def test_weighted_sum_chains_more_inputs_than_one_launch_takes(monkeypatch, k):
    ts = [sample(BLOCK + 1, DTYPES[i % 3], 30 + i) for i in range(k)]
    ws = [0.1 * (i + 1) - 0.4 for i in range(k)]
    for given in (ws, [torch.tensor(w) for w in ws]):
        out, sq = kernels.weighted_sum(ts, given, out_dtype=torch.float32, return_sq=True)
        assert_rounded_once(out, *weighted_sum_reference(ts, ws), exact=False)
        assert_sq(sq, float(((out.double() - ts[0].double()) ** 2).sum()))
        assert same_bits(out, on_torch(monkeypatch, kernels.weighted_sum, ts, given,
                                       out_dtype=torch.float32))


def test_weighted_sum_zero_weight_adds_nothing():
    base = torch.tensor([-0.0, 1.0, -0.0, 2.5])
    bad = torch.tensor([float("nan"), float("inf"), 1.0, -float("inf")])
    assert same_bits(kernels.weighted_sum([bad, base, bad], [0.0, 1.0, 0.0]), base)
    tw = [torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0)]
    assert same_bits(kernels.weighted_sum([bad, base, bad], tw), base)


def test_weighted_sum_sq_measured_before_overwriting_first_input():
    t0, t1 = sample(1025, torch.bfloat16, 40), sample(1025, torch.bfloat16, 41)
    want_out, want_sq = kernels.weighted_sum([t0, t1], [0.5, 0.5], return_sq=True)
    _, sq = kernels.weighted_sum([t0, t1], [0.5, 0.5], out=t0, return_sq=True)
    assert same_bits(t0, want_out) and float(sq) == float(want_sq)


def test_sq_dist_matches_float64():
    a, b = sample(2 * BLOCK + 1, torch.bfloat16, 50), sample(2 * BLOCK + 1, torch.float32, 51)
    assert_sq(kernels.sq_dist(a, b), float(((b.double() - a.double()) ** 2).sum()))


def test_empty_tensors():
    e16, e32 = torch.empty(0, 3, dtype=torch.bfloat16), torch.empty(0, 3)
    out, sq = kernels.lerp(e16, e32, 0.5, return_sq=True)
    assert out.shape == (0, 3) and float(sq) == 0.0
    out, sq = kernels.weighted_sum([e16, e32], [0.5, torch.tensor(0.5)], return_sq=True)
    assert out.shape == (0, 3) and float(sq) == 0.0
    assert float(kernels.sq_dist(e16, e32)) == 0.0


def test_round_to_reference_agrees_with_kernel_on_ties():
    # exact bf16 midpoints in fp32 must go to the even neighbour
    x = torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8)])
    out = kernels.lerp(x, x, 0.0, out_dtype=torch.bfloat16)
    assert same_bits(out, round_to(x.double(), torch.bfloat16))
    assert out.tolist() == [1.0, 1.015625, -1.0]


# ---------------------------------------------------------------- add deltas


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_add_deltas_rounds_once(monkeypatch, k):
    base = sample(BLOCK + 9, torch.bfloat16, 80)
    others = [sample(BLOCK + 9, DTYPES[(i + 1) % 2], 81 + i) for i in range(k)]
    ws = K_WEIGHTS[:k]
    ref, bound = deltas_reference(base, others, ws)
    for given in (ws, [torch.tensor(w) for w in ws]):  # host floats, then device pointers
        out, sq = kernels.add_deltas(base, others, given, return_sq=True)
        assert out.dtype == base.dtype
        assert_rounded_once(out, ref, bound, exact=True)
        assert_sq(sq, float(((out.double() - base.double()) ** 2).sum()))
        assert same_bits(out, on_torch(monkeypatch, kernels.add_deltas, base, others, given))


@pytest.mark.parametrize("k", [2, 9])
def test_add_deltas_fp32_output_general_weights(monkeypatch, k):
    # k = 9 chains two launches through the fp32 buffer
    base = sample(BLOCK + 1, torch.float32, 90)
    others = [sample(BLOCK + 1, DTYPES[i % 3], 91 + i) for i in range(k)]
    ws = [0.1 * (i + 1) - 0.35 for i in range(k)]
    for given in (ws, [torch.tensor(w) for w in ws]):
        out, sq = kernels.add_deltas(base, others, given, return_sq=True)
        assert out.dtype == torch.float32
        assert_rounded_once(out, *deltas_reference(base, others, ws), exact=False)
        assert_sq(sq, float(((out.double() - base.double()) ** 2).sum()))
        want, want_sq = on_torch(monkeypatch, kernels.add_deltas, base, others, given,
                                 return_sq=True)
        assert same_bits(out, want)  # fp32 outputs: the same bits on either backend
        assert float(sq) == pytest.approx(float(want_sq), rel=1e-6)  # torch sums in fp32


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_deltas_zero_task_vectors_return_base(dtype):
    base = sample(BLOCK + 3, dtype, 100)
    for ws in ([0.8], [0.3, 0.7], [0.2, -0.9, 1.7]):
        assert same_bits(kernels.add_deltas(base, [base.clone() for _ in ws], ws), base)
        tws = [torch.tensor(w) for w in ws]
        assert same_bits(kernels.add_deltas(base, [base.clone() for _ in ws], tws), base)


def test_add_deltas_one_term_is_the_lerp():
    a, b = sample(BLOCK + 5, torch.float32, 101), sample(BLOCK + 5, torch.bfloat16, 102)
    for w in (*WEIGHTS, 0.3, 0.7):
        for given in (w, torch.tensor(w)):
            out, sq = kernels.add_deltas(a, [b], [given], return_sq=True)
            assert same_bits(out, kernels.lerp(a, b, w))
            assert_sq(sq, float(((out.double() - a.double()) ** 2).sum()))
    assert same_bits(kernels.add_deltas(a, [b], [1.0]), b.float())


def test_add_deltas_zero_weights_dropped_or_masked():
    base, good = sample(BLOCK + 1, torch.float32, 103), sample(BLOCK + 1, torch.float32, 104)
    bad = torch.full((BLOCK + 1,), float("nan"))
    bad[::2] = float("inf")
    assert same_bits(kernels.add_deltas(base, [bad, good, bad], [0.0, 0.3, 0.0]),
                     kernels.lerp(base, good, 0.3))
    assert same_bits(kernels.add_deltas(base, [bad], [0.0]), base)
    masked = kernels.add_deltas(base, [bad, good], [torch.tensor(0.0), torch.tensor(0.3)])
    assert bool(torch.isfinite(masked).all())
    assert_rounded_once(masked, *deltas_reference(base, [good], [0.3]), exact=False)


def test_add_deltas_sq_measured_before_overwriting_base():
    base, t1, t2 = (sample(1025, torch.bfloat16, 105 + i) for i in range(3))
    want_out, want_sq = kernels.add_deltas(base, [t1, t2], [0.3, 0.4], return_sq=True)
    _, sq = kernels.add_deltas(base, [t1, t2], [0.3, 0.4], out=base, return_sq=True)
    assert same_bits(base, want_out) and float(sq) == float(want_sq)


def test_add_deltas_empty_and_0d():
    e16, e32 = torch.empty(0, 3, dtype=torch.bfloat16), torch.empty(0, 3)
    out, sq = kernels.add_deltas(e16, [e32, e16], [0.5, torch.tensor(0.25)], return_sq=True)
    assert out.shape == (0, 3) and float(sq) == 0.0
    a, b = torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(3.0)
    out, sq = kernels.add_deltas(a, [b, b], [0.25, 0.25], return_sq=True)
    assert out.shape == () and float(out) == 2.0 and float(sq) == 1.0


# ---------------------------------------------------------------- the merge engine


def _merge_bytes(fn, out, *args, **kwargs) -> tuple[dict[str, bytes], dict]:
    recipe = fn(*args, out=out, **kwargs)
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}, recipe


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_writes_identical_bytes_with_either_kernel(monkeypatch, models, tmp_path, dtype):
    from safebasin import merge

    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("SAFEBASIN_KERNEL", backend)
        options = merge.MergeOptions(dtype=dtype)
        lerp = _merge_bytes(merge.lerp, tmp_path / f"lerp-{backend}", models["base"],
                            models["ft"], alpha=0.3, options=options)
        ta = _merge_bytes(merge.task_arithmetic, tmp_path / f"ta-{backend}", models["base"],
                          [models["ft"], models["ft2"]], scales=[0.7, -0.2], options=options)
        results[backend] = (lerp, ta)
    for (torch_files, torch_recipe), (triton_files, triton_recipe) in zip(*results.values(),
                                                                          strict=True):
        # fp32 inputs: the bf16 outputs are the same bits too (torch.lerp serves only lerps
        # whose inputs and output share one 16-bit dtype; bit identity is promised for fp32)
        assert torch_files and torch_files == triton_files
        # relaxed from equality: on CPU torch sums fp32 squares (relative error ~1e-7), the
        # Triton kernels fp64 squares (see safebasin/kernels/_torch.py)
        t_dist, k_dist = torch_recipe["distances"], triton_recipe["distances"]
        assert t_dist["global_to_base"] == pytest.approx(k_dist["global_to_base"], rel=1e-6)
        assert t_dist["per_tensor_to_base"] == pytest.approx(k_dist["per_tensor_to_base"],
                                                             rel=1e-6)

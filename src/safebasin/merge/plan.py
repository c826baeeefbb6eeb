"""What a merge will compute: per output tensor, which inputs and which coefficients.

A linear merge is θ₀ + Σᵢ λᵢ·(θᵢ − θ₀) per tensor (DESIGN.md): a planner produces the
delta-form coefficients λ of inputs 1..K. A non-linear merge (TIES, DARE, SLERP, ...) attaches a
`TensorOp` to the tensors it combines otherwise (see `ops`). `align` checks first that the inputs
agree, listing all offenders at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..checkpoint import DEFAULT_SHARD_SIZE, Checkpoint
from ..errors import IncompatibleCheckpointsError, ShapeMismatchError, UsageError
from .ops import TensorOp

OUTPUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float32": torch.float32}
VOCAB_POLICIES = ("error", "base")
_SHOW = 3  # offenders named in one error line


@dataclass(frozen=True)
class MergeOptions:
    """Settings every merge shares (the CLI's common options)."""

    dtype: str = "auto"  # "auto" keeps each tensor's θ₀ dtype
    shard_size: int = DEFAULT_SHARD_SIZE  # bytes per output shard, HF's default of 5GB
    device: str = "cpu"  # where the arithmetic runs; "cuda" uses the Triton kernels
    overwrite: bool = False
    allow_pickle: bool = False
    allow_nonfinite: bool = False
    vocab_mismatch: str = "error"  # "base": rows θ₀ has and an input lacks come from θ₀
    # called as progress(bytes_done_now, bytes_total) while streaming
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in OUTPUT_DTYPES:
            raise UsageError(f"dtype {self.dtype!r}: choose auto, "
                             f"{', '.join(OUTPUT_DTYPES)}")
        if self.shard_size <= 0:
            raise UsageError(f"shard_size must be positive, got {self.shard_size}")
        if self.vocab_mismatch not in VOCAB_POLICIES:
            raise UsageError(f"vocab_mismatch {self.vocab_mismatch!r}: choose error or base")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor, stored as `dtype` with θ₀'s shape.

    Without `op`: θ₀ + Σᵢ lambdas[i−1]·(θᵢ − θ₀), the delta form (a zero task vector returns
    θ₀ bit for bit). With `op`: whatever the op computes from the inputs (`lambdas` is then
    only a record).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    lambdas: tuple[float, ...]
    op: TensorOp | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


def _label(i: int) -> str:
    return "BASE" if i == 0 else f"input {i}"


def align(inputs: Sequence[Checkpoint], *, vocab_mismatch: str = "error") -> list[str]:
    """Check that every input holds every tensor of θ₀ (inputs[0]) with a compatible shape.

    Returns θ₀'s tensor names, the output's names (so the output keeps θ₀'s tied or untied
    lm_head). With `vocab_mismatch="base"`, shapes may differ in their first dimension only.

    Raises:
        IncompatibleCheckpointsError: names missing from an input, or extra in one.
        ShapeMismatchError: shapes that differ (and are not an allowed vocabulary difference).
    """
    base = inputs[0]
    names = base.names
    for i, other in enumerate(inputs[1:], start=1):
        missing = [n for n in names if other.resolve(n) is None]
        base_names = set(names) | set(base.aliases)
        extra = [n for n in other.names if n not in base_names]
        if missing or extra:
            what = (f"{len(missing)} tensors of BASE are missing from {other.path}"
                    f", first {missing[:_SHOW]}" if missing else
                    f"{len(extra)} tensors of {other.path} are not in BASE, first {extra[:_SHOW]}")
            raise IncompatibleCheckpointsError(f"{what}; the inputs are not the same "
                                               "architecture")
        bad = []
        for n in names:
            a, b = base.shape(n), other.shape(n)
            if a == b or (vocab_mismatch == "base" and len(a) == len(b) >= 1 and a[1:] == b[1:]):
                continue
            bad.append((n, a, b))
        if bad:
            n, a, b = bad[0]
            hint = (" (a resized vocabulary? `vocab_mismatch` base keeps BASE's rows)"
                    if len(a) == len(b) and a[1:] == b[1:] else "")
            raise ShapeMismatchError(f"{len(bad)} tensors differ in shape between BASE and "
                                     f"{_label(i)} ({other.path}), first {n!r}: {a} vs {b}{hint}")
    return names


def output_dtype(base: Checkpoint, name: str, dtype: str) -> torch.dtype:
    """θ₀'s dtype under "auto"; integer tensors always keep theirs."""
    d = base.dtype(name)
    if dtype == "auto" or not d.is_floating_point:
        return d
    return OUTPUT_DTYPES[dtype]


def build_plan(inputs: Sequence[Checkpoint], lambdas: Sequence[float] | Mapping[str,
               Sequence[float]], options: MergeOptions, *,
               ops: Mapping[str, TensorOp] | None = None) -> list[TensorPlan]:
    """Tensor plans from global λ or per-tensor ones (a mapping by name).

    Args:
        lambdas: the delta-form λ of inputs 1..K (θ = θ₀ + Σ λᵢ(θᵢ − θ₀)), as every planner
            in `coefficients` returns them.
        ops: a `TensorOp` per tensor name that is not a linear merge (floating tensors only;
            integer tensors are always copied from θ₀).
    """
    names = align(inputs, vocab_mismatch=options.vocab_mismatch)
    base = inputs[0]
    ops = ops or {}
    plans = []
    for n in names:
        lam = lambdas[n] if isinstance(lambdas, Mapping) else lambdas
        dtype = output_dtype(base, n, options.dtype)
        plans.append(TensorPlan(n, base.shape(n), dtype, tuple(float(x) for x in lam),
                                ops.get(n) if dtype.is_floating_point else None))
    return plans

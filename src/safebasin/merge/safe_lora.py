"""Safe LoRA: project a fine-tune's update onto the alignment subspace, layer by layer.

Hsu et al. 2024 ("Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large
Language Models", arXiv 2405.16833). For every linear layer, with W₀ the aligned weights (BASE),
W_un the unaligned ones (the model before alignment) and W_ft the fine-tune:

    V  = W₀ − W_un                       the alignment matrix, (out, in)
    C  = V·Vᵀ / ‖V‖_F                    the published "projection" (out, out)
    ΔW = W_ft − W₀                       the fine-tune's update (B·A for a LoRA)
    s  = ⟨CΔW, ΔW⟩_F / (‖CΔW‖_F ‖ΔW‖_F)  how well ΔW already lies in the alignment subspace

and the update of the layers with s below τ (`threshold`), or of the N layers with the lowest s
(`num_layers`), is replaced by CΔW: W = W₀ + CΔW. Every other tensor is the fine-tune's.

CΔW is computed as V·(VᵀΔW)/‖V‖_F over blocks of ΔW's columns, never forming the (out, out)
matrix C: the intermediate is (in, block).

`projector="orthogonal"` uses the exact orthogonal projector onto the column space of V,
P = V(VᵀV)⁺Vᵀ = Q·Qᵀ (Q an orthonormal basis of range(V), from the SVD with numpy's rank
tolerance), which the paper names as the exact projection it approximates. The two differ:

* C is not a projector: C = Σᵢ (σᵢ²/‖V‖_F)·uᵢuᵢᵀ (V = Σ σᵢuᵢvᵢᵀ), so CΔW weights each
  alignment direction by its σᵢ² and scales the whole update by about ‖V‖_F (its magnitude
  follows how far alignment moved the layer); C·C ≠ C unless V has rank 1.
* P keeps the part of ΔW inside range(V) unchanged and removes the rest (P·P = P). When V has
  full row rank (out ≤ in, as for most layers of a fully fine-tuned chat model) range(V) is the
  whole output space, P = I and nothing changes: the orthogonal projector only bites for
  rank-deficient V (an aligned model that is itself a low-rank fine-tune) or tall layers
  (out > in, e.g. MLP up/gate projections).

Which tensors are "linear layers": 2-D `.weight` tensors of the blocks (attention and MLP
projections), that is every 2-D weight except embeddings and the output head (names holding
`embed`, `wte`, `wpe` or `lm_head`); norms and biases are 1-D and never projected.

Cosines need a statistics pass (each layer whole, one at a time) before the layers can be
chosen; the merge pass then recomputes CΔW for the chosen layers as a whole-tensor op.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import torch

from ..checkpoint import Checkpoint, LoraCheckpoint
from ..errors import UsageError
from .api import PathLike, Planned, run_merge
from .ops import TensorOp, TensorStatistic
from .plan import MergeOptions
from .safety import SAFETY_ROLES
from .statistics import collect_statistics

PROJECTORS = ("published", "orthogonal")
_NOT_LINEAR = ("embed", "wte", "wpe", "lm_head")
_BLOCK_ELEMS = 4 * 1024 * 1024  # elements of the (in, block) intermediate of V·(VᵀΔW)
SAFE_LORA_FORMULA = ("W = W₀ + C·ΔW on the projected layers, W_ft elsewhere; V = W₀ − W_unaligned, "
                     "ΔW = W_ft − W₀, C = {c}; a layer is projected when "
                     "cos(CΔW, ΔW) is {rule}")
_C_TEXT = {"published": "V·Vᵀ/‖V‖_F (as published)",
           "orthogonal": "V(VᵀV)⁺Vᵀ (orthogonal projector onto range(V))"}


def is_linear_weight(name: str, shape: Sequence[int]) -> bool:
    """True for the 2-D weight of an attention or MLP projection (see the module doc)."""
    lowered = name.lower()
    return (len(shape) == 2 and name.endswith(".weight")
            and not any(part in lowered for part in _NOT_LINEAR))


def _range_basis(v: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (out, r) of V's column space; r from numpy's matrix_rank tolerance."""
    u, s, _ = torch.linalg.svd(v, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0]
    tol = float(s[0]) * max(v.shape) * torch.finfo(v.dtype).eps
    return u[:, : int((s > tol).sum())]


def project_update(v: torch.Tensor, delta: torch.Tensor, *,
                   projector: str = "published") -> torch.Tensor:
    """CΔW for one layer, in the inputs' dtype (fp32 in the merge, float64 in the tests).

    Args:
        v: V = W₀ − W_un, shape (out, in).
        delta: ΔW = W_ft − W₀ (or a LoRA B with shape (out, r): C acts on the left only).
        projector: "published" (V·Vᵀ/‖V‖_F) or "orthogonal" (the projector onto range(V)).

    Returns:
        A tensor shaped like `delta`; zeros when V = 0 (C = 0).
    """
    if projector == "orthogonal":
        q = _range_basis(v)  # (out, r)
        if q.shape[1] == v.shape[0]:  # full row rank: P = I
            return delta.clone()
        return q @ (q.T @ delta)  # (out, r) @ (r, in)
    norm = torch.linalg.vector_norm(v)
    if float(norm) == 0.0:
        return torch.zeros_like(delta)
    out = torch.empty_like(delta)
    block = max(1, _BLOCK_ELEMS // max(1, v.shape[1]))
    for j in range(0, delta.shape[1], block):
        out[:, j:j + block] = v @ (v.T @ delta[:, j:j + block])  # (out, in) @ (in, block)
    return out.div_(norm)


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ accumulated in float64 over slices, without a float64 copy of a whole layer."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    step = 1 << 20
    return math.fsum(float(torch.dot(fa[i:i + step].double(), fb[i:i + step].double()))
                     for i in range(0, fa.numel(), step))


def update_cosine(v: torch.Tensor, delta: torch.Tensor, *,
                  projector: str = "published") -> float | None:
    """cos(CΔW, ΔW) (Frobenius); None where it is undefined (ΔW = 0 or V = 0), 0.0 where ΔW
    is orthogonal to the alignment subspace (CΔW = 0)."""
    if not (bool(delta.any()) and bool(v.any())):
        return None
    return _cosine(project_update(v, delta, projector=projector), delta)


def _cosine(cd: torch.Tensor, delta: torch.Tensor) -> float | None:
    d_norm = math.sqrt(_dot64(delta, delta))
    if d_norm == 0.0:
        return None
    cd_norm = math.sqrt(_dot64(cd, cd))
    if cd_norm == 0.0:
        return 0.0
    return max(-1.0, min(1.0, _dot64(cd, delta) / (cd_norm * d_norm)))


def _check_choice(threshold: float | None, num_layers: int | None, n_layers: int) -> None:
    if (threshold is None) == (num_layers is None):
        raise UsageError("safe-lora needs exactly one of `threshold` or `num_layers`")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise UsageError(f"`threshold` is a cosine, it must be in [-1, 1], got {threshold}")
    if num_layers is not None and not 0 <= num_layers <= n_layers:
        raise UsageError(f"`num_layers` must be in [0, {n_layers}] (the linear layers of "
                         f"BASE), got {num_layers}")


def select_layers(cosines: Mapping[str, float | None], *, threshold: float | None = None,
                  num_layers: int | None = None) -> list[str]:
    """The layers to project, in `cosines`' order: cos < τ, or the N lowest cosines.

    Layers whose cosine is undefined (None) are never chosen; ties among the N lowest go to
    the earlier layer. With N above the number of defined cosines, all of those are chosen.

    Raises:
        UsageError: not exactly one rule, τ outside [-1, 1], N outside [0, len(cosines)].
    """
    _check_choice(threshold, num_layers, len(cosines))
    defined = [(c, i, n) for i, (n, c) in enumerate(cosines.items()) if c is not None]
    if threshold is not None:
        chosen = {n for c, _, n in defined if c < threshold}
    else:
        chosen = {n for _, _, n in sorted(defined)[:num_layers]}
    return [n for n in cosines if n in chosen]


class _LayerCosine(TensorStatistic):
    """Gathers one layer's V and ΔW (fp32) chunk by chunk; the cosine once the layer is whole."""

    def __init__(self, shape: tuple[int, ...], projector: str) -> None:
        self._shape, self._projector = shape, projector
        self._v: torch.Tensor | None = None
        self._d: torch.Tensor | None = None
        self.cosine: float | None = None

    def update(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> None:
        numel = math.prod(self._shape)
        if self._v is None or self._d is None:
            self._v, self._d = torch.empty(numel), torch.empty(numel)
        w0, ft, un = (t.float() for t in tensors)
        torch.sub(w0, un, out=self._v[start:stop])
        torch.sub(ft, w0, out=self._d[start:stop])
        if stop == numel:
            self.cosine = update_cosine(self._v.view(self._shape), self._d.view(self._shape),
                                        projector=self._projector)
            self._v = self._d = None  # one layer in memory at a time


class _AdapterUpdates:
    """The exact update s·B·A of each layer a LoRA adapter trains, from the adapter's file.

    Reading ΔW through the merged view (W₀ + s·B·A rounded to BASE's dtype, minus W₀) would
    quantise it to BASE's precision: in bf16 an error of up to 2⁻⁹·|W₀|, often larger than the
    update itself. From the factors, C acts on B as published: CΔW = s·(C·B)·A.
    """

    def __init__(self, ft: LoraCheckpoint, *, allow_pickle: bool) -> None:
        self._file = Checkpoint.open(ft.weight_files[0], allow_pickle=allow_pickle)
        self.modules = ft.modules  # base tensor name -> LoraModule

    def pair(self, name: str, v: torch.Tensor, projector: str) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """(CΔW, ΔW) of layer `name`, fp32, shaped like the layer."""
        m = self.modules[name]
        a, b = self._file.read(m.a).float(), self._file.read(m.b).float()  # (r, in), (out, r)
        if m.transpose:  # fan_in_fan_out: ΔW = s·(B·A)ᵀ, C acts on its rows as stored
            delta = m.scale * (b @ a).T
            return project_update(v, delta, projector=projector), delta
        cb = project_update(v, b, projector=projector)  # B ← C·B, (out, r)
        return m.scale * (cb @ a), m.scale * (b @ a)

    def close(self) -> None:
        self._file.close()


class _ProjectUpdate(TensorOp):
    """W₀ + CΔW for one whole layer (inputs: W₀, W_ft, W_un)."""

    whole = True

    def __init__(self, name: str, projector: str, adapter: _AdapterUpdates | None) -> None:
        self._name, self._projector, self._adapter = name, projector, adapter

    def apply(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        w0, ft, un = (t.float() for t in tensors)  # (out, in) each
        if self._adapter is not None:
            return w0 + self._adapter.pair(self._name, w0 - un, self._projector)[0]
        return w0 + project_update(w0 - un, ft - w0, projector=self._projector)


def _cosines(inputs: Sequence[Checkpoint], layers: list[str], projector: str,
             adapter: _AdapterUpdates | None) -> dict[str, float | None]:
    """cos(CΔW, ΔW) of every layer: a statistics pass, or for an adapter the trained layers
    only, read whole (the others have ΔW = 0)."""
    if adapter is None:
        stats = {n: _LayerCosine(inputs[0].shape(n), projector) for n in layers}
        collect_statistics(inputs, stats)
        return {n: stats[n].cosine for n in layers}
    cosines: dict[str, float | None] = dict.fromkeys(layers)
    for n in layers:
        if n in adapter.modules:
            v = inputs[0].read(n).float() - inputs[2].read(n).float()
            cosines[n] = _cosine(*adapter.pair(n, v, projector)) if bool(v.any()) else None
    return cosines


def _planner(threshold: float | None, num_layers: int | None, projector: str,
             options: MergeOptions, stack: contextlib.ExitStack):
    def plan(inputs: list[Checkpoint]) -> Planned:
        base = inputs[0]
        layers = [n for n in base.names if is_linear_weight(n, base.shape(n))
                  and base.dtype(n).is_floating_point]
        if not layers:
            raise UsageError(f"{base.path}: no linear layers (2-D projection weights) to "
                             "project")
        _check_choice(threshold, num_layers, len(layers))
        adapter = None
        if isinstance(inputs[1], LoraCheckpoint):
            adapter = _AdapterUpdates(inputs[1], allow_pickle=options.allow_pickle)
            stack.callback(adapter.close)
        cosines = _cosines(inputs, layers, projector, adapter)
        chosen = select_layers(cosines, threshold=threshold, num_layers=num_layers)
        rule = (f"below τ = {threshold}" if threshold is not None
                else f"among the N = {num_layers} lowest")
        args = (["--threshold", repr(float(threshold))] if threshold is not None
                else ["--num-layers", str(num_layers)]) + ["--projector", projector]
        extra = {"num_linear_layers": len(layers), "num_projected": len(chosen),
                 "projected": chosen, "cosines": cosines,
                 "finetuned_is_adapter": adapter is not None}
        ops = {n: _ProjectUpdate(n, projector, adapter) for n in chosen}
        return Planned([1.0, 0.0], extra, ops=ops,
                       formula=SAFE_LORA_FORMULA.format(c=_C_TEXT[projector], rule=rule),
                       cli_args=args)
    return plan


def safe_lora(base: PathLike, finetuned: PathLike, unaligned: PathLike, out: PathLike, *,
              threshold: float | None = None, num_layers: int | None = None,
              projector: str = "published", options: MergeOptions | None = None) -> dict:
    """Safe LoRA's projection of FT's update, written as a full model to `out`.

    A LoRA adapter folder as `finetuned` is read as W₀ + scale·B·A (PEFT's convention), so the
    result equals merging the adapter with B ← C·B, as published; the output is the merged
    model, like every safebasin merge, not an adapter.

    Args:
        base: W₀, the aligned model (the output's config, tokenizer and dtype).
        finetuned: the fine-tune of W₀: a LoRA adapter folder, or a full model.
        unaligned: the model before alignment (e.g. Llama-2-7b for Llama-2-7b-chat).
        threshold: τ in [-1, 1]: project every layer with cos(CΔW, ΔW) < τ.
        num_layers: N ≥ 0: project the N layers with the lowest cosine (give one of the two).
        projector: "published" (C = VVᵀ/‖V‖_F) or "orthogonal" (V(VᵀV)⁺Vᵀ).

    Returns:
        The recipe, whose parameters hold every layer's cosine and the projected layers.

    Raises:
        UsageError: bad τ, N or projector, neither or both rules, no linear layers.

    Example:
        >>> safe_lora("llama-2-chat", "my-lora", "llama-2", "safe",
        ...           threshold=0.35)  # doctest: +SKIP
    """
    if projector not in PROJECTORS:
        raise UsageError(f"`projector` {projector!r}: choose published or orthogonal")
    _check_choice(threshold, num_layers, num_layers or 0)
    options = options or MergeOptions()
    params = {"threshold": threshold, "num_layers": num_layers, "projector": projector}
    with contextlib.ExitStack() as stack:  # the adapter's own file, open until written
        return run_merge("safe-lora", params, [base, finetuned, unaligned], out, options,
                         _planner(threshold, num_layers, projector, options, stack),
                         roles=list(SAFETY_ROLES))


__all__ = ["PROJECTORS", "is_linear_weight", "project_update", "safe_lora", "select_layers",
           "update_cosine"]

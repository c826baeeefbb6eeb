"""Independent float64 references of the non-linear merges, written from the papers' and
mergekit's formulas with whole in-memory tensors (sorting, no streaming, no safebasin code).

Ranks: magnitudes ascending, ties by index (a stable sort), on the fp32 task vector, as the
merge computes it; every value after the selection is float64.
"""

from __future__ import annotations

import math

import torch


def f64(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float64) for k, v in sd.items()}


def rank_mask(tau32: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Elements whose ascending rank (|τ| by a stable sort) is in [lo, hi)."""
    flat = tau32.reshape(-1).abs()
    order = torch.sort(flat, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel())
    return ((rank >= lo) & (rank < hi)).reshape(tau32.shape)


def topk_window(n: int, density: float) -> tuple[int, int]:
    """The k = max(1, int(pn)) largest (mergekit 0.1.5's `magnitude`)."""
    k = n if density >= 1 else max(1, int(density * n))
    return n - k, n


def band_window(n: int, density: float, gamma: float) -> tuple[int, int]:
    """int(pn) elements from ascending rank max(0, n − int(pn) − int(γn)) (mergekit 0.1.5's
    `magnitude_outliers`)."""
    if density >= 1:
        return 0, n
    keep = int(density * n)
    bot = max(0, n - keep - int(gamma * n))
    return bot, bot + keep


def sparse_reference(base: dict, fts: list[dict], *, masks: list[dict], weights: list[float],
                     lam: float, normalize: bool, consensus: bool,
                     scale: list[float] | None = None) -> dict:
    """θ₀ + λ·(m/d or m) with τ̃ᵢ = wᵢ·scaleᵢ·maskᵢ⊙τᵢ (TIES / DARE / breadcrumbs)."""
    out = {}
    for k, b in base.items():
        b64 = b.double()
        taus = [(ft[k].double() - b64) * masks[i][k].double() * (scale[i] if scale else 1.0)
                * weights[i] for i, ft in enumerate(fts)]
        if consensus:
            elected = torch.where(sum(taus) >= 0, 1.0, -1.0).double()
            agree = [(torch.sign(t) == elected).double() for t in taus]
            m = sum(t * a for t, a in zip(taus, agree, strict=True))
            d = sum(a * w for a, w in zip(agree, weights, strict=True))
            d = torch.where(d == 0, 1.0, d)
        else:
            m = sum(taus)
            d = math.fsum(weights)
            d = 1.0 if abs(d) < 1e-8 else d
        out[k] = b64 + lam * (m / d if normalize else m)
    return out


def slerp_reference(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """mergekit's slerp in float64, per tensor: lerp where |cos| > 0.9995."""
    x, y = a.double(), b.double()
    nx, ny = float(x.norm()), float(y.norm())
    nx, ny = (nx if nx > 1e-8 else 1.0), (ny if ny > 1e-8 else 1.0)
    dot = min(max(float(((x / nx) * (y / ny)).sum()), -1.0), 1.0)
    if abs(dot) > 0.9995:
        return (1 - t) * x + t * y
    omega = math.acos(dot)
    return (math.sin((1 - t) * omega) * x + math.sin(t * omega) * y) / math.sin(omega)


def model_stock_t_reference(base: torch.Tensor, fts: list[torch.Tensor]) -> float:
    """Jang et al.'s t with mergekit's multi-model cosine (mean of pairs), in float64."""
    w0 = base.double().reshape(-1)
    ds = [f.double().reshape(-1) - w0 for f in fts]
    cos = [float((ds[i] @ ds[j]) / max(float(ds[i].norm() * ds[j].norm()), 1e-6))
           for i in range(len(ds)) for j in range(i + 1, len(ds))]
    c = sum(min(max(x, -1.0), 1.0) for x in cos) / len(cos)
    n = len(fts)
    return 0.0 if abs(1 + (n - 1) * c) < 1e-6 else n * c / (1 + (n - 1) * c)


def model_stock_reference(base: torch.Tensor, fts: list[torch.Tensor]) -> torch.Tensor:
    """Jang et al.'s interpolation: t·mean(θᵢ) + (1 − t)·θ₀."""
    t = model_stock_t_reference(base, fts)
    avg = sum(f.double() for f in fts) / len(fts)
    return t * avg + (1 - t) * base.double()


def assert_close(out: dict, ref: dict, dtype=torch.float32, rtol=2e-6, atol=2e-6) -> None:
    assert set(out) == set(ref)
    for k, r in ref.items():
        assert out[k].dtype == dtype, k
        torch.testing.assert_close(out[k].double(), r.to(dtype).double(), rtol=rtol,
                                   atol=atol, msg=k)

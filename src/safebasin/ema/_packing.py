"""Lay the shadow out so that one update makes few kernel calls.

A kernel call has a fixed cost (argument checks, dispatch, scratch buffers: about 50 µs on a
CPU), which dominates for small tensors: a toy Llama's 29 tensors would spend more time in
call overhead than in arithmetic, as would the 61 norm vectors of a 30-layer model. Small
tensors of one device and dtype therefore share one flat shadow (each name gets a view of it),
and their incoming weights are concatenated into one flat tensor per update. Large tensors keep
a shadow of their own. `kernels.lerp_many_` batches the fp32 CPU case, but the mixed-dtype
and delta paths still make one call per slot, so packing stays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SMALL = 1 << 16  # elements: below this, copying into a flat buffer costs less than a call


@dataclass(frozen=True)
class Slot:
    """One kernel call's worth of averaged tensors: the flat shadow (and θ₀) of `names`,
    concatenated in order."""

    names: tuple[str, ...]
    shadow: torch.Tensor
    theta0: torch.Tensor | None

    def incoming(self, weights: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """The current weights laid out like `shadow`: flat, on its device."""
        device = self.shadow.device
        if len(self.names) == 1:
            x = weights(self.names[0]).reshape(-1)  # a view of a contiguous parameter
            return x if x.device == device else x.to(device)
        return torch.cat([weights(n).reshape(-1).to(device) for n in self.names])


def _flat(like: list[torch.Tensor], dtype: torch.dtype, device: torch.device
          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zeroed flat buffer, and views of it shaped like each of `like`."""
    flat = torch.zeros(sum(t.numel() for t in like), dtype=dtype, device=device)
    views, start = [], 0
    for t in like:
        views.append(flat[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return flat, views


def _group(weights: dict[str, torch.Tensor], device: torch.device | None
           ) -> list[tuple[str, ...]]:
    """Large tensors alone; small ones together, per (device, dtype)."""
    alone, together = [], {}
    for n, x in weights.items():
        if x.numel() >= SMALL:
            alone.append((n,))
        else:
            together.setdefault((device or x.device, x.dtype), []).append(n)
    return alone + [tuple(names) for names in together.values()]


def build_slots(weights: dict[str, torch.Tensor], *, delta: bool,
                device: torch.device | None) -> tuple[list[Slot], dict[str, torch.Tensor],
                                                      dict[str, torch.Tensor]]:
    """Shadows initialised from `weights` (this rank's local tensors, by name).

    fp32 shadow: θ̄ = θ₀ in fp32. Delta shadow: d = 0 in fp32, and θ₀ kept in its own dtype.

    Returns:
        (slots, shadow view by name, θ₀ view by name; empty unless `delta`).
    """
    slots, shadows, theta0s = [], {}, {}
    for names in _group(weights, device):
        xs = [weights[n] for n in names]
        dev = device or xs[0].device
        shadow, views = _flat(xs, torch.float32, dev)
        theta0 = None
        if delta:
            theta0, t0_views = _flat(xs, xs[0].dtype, dev)
            theta0s.update(zip(names, t0_views, strict=True))
        else:
            t0_views = views  # the fp32 shadow starts at θ₀
        for v, x in zip(t0_views, xs, strict=True):
            v.copy_(x)
        shadows.update(zip(names, views, strict=True))
        slots.append(Slot(names, shadow, theta0))
    in_order = list(weights)  # the views by name keep the model's order, whatever the packing
    return (slots, {n: shadows[n] for n in in_order},
            {n: theta0s[n] for n in in_order if n in theta0s})

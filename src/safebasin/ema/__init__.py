"""Online EMA during training: `EMA` for plain PyTorch loops, `EMACallback` for the Trainer.

θ̄ₖ = (1−η)·θ̄ₖ₋₁ + η·θₖ, θ̄₀ = θ₀, after every N-th optimizer step. `EMACallback` is
imported on first use: it needs transformers, and `import safebasin` must not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ema import EMA
from .export import save_weights

if TYPE_CHECKING:
    from .callback import EMACallback

__all__ = ["EMA", "EMACallback", "save_weights"]


def __getattr__(name: str):
    if name == "EMACallback":
        from .callback import EMACallback

        return EMACallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""safebasin: keep fine-tuned language models inside their safety basin.

Streaming merges between aligned weights θ₀ and fine-tuned checkpoints (lerp, task arithmetic,
L2 projection, offline EMA), online EMA during training, and keyword-ASR evaluation.
`import safebasin` imports neither transformers nor huggingface_hub.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import SafebasinError

__all__ = ["__version__", "SafebasinError", "tune", "landscape"]


def __getattr__(name: str):
    # lazy: `import safebasin` must stay light (no torch or transformers until asked for)
    if name in ("tune", "landscape"):
        from . import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

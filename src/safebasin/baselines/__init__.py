"""Training-time baselines: supervised fine-tuning (assistant tokens only) and L2 toward θ₀.

`finetune` reads a model folder and a chat JSONL file and writes an HF model folder; `train` is
the same on in-memory objects. Pass `safebasin.ema.EMACallback` in `callbacks` for online EMA.
The settings (`FinetuneConfig`) import without transformers; everything else is imported on
first use, because it needs transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .config import RECORD_NAME, FinetuneConfig, FinetuneResult

if TYPE_CHECKING:
    from ..chat.data import (
        IGNORE_INDEX,
        ChatCollator,
        ChatDataset,
        EncodedChat,
        encode_chat,
        read_chat_jsonl,
    )
    from .callbacks import ProgressBar, ema_callback
    from .l2_to_init import L2ToInit, L2ToInitTrainer
    from .runner import finetune, train

_LAZY = {
    "finetune": ".runner", "train": ".runner",
    "L2ToInit": ".l2_to_init", "L2ToInitTrainer": ".l2_to_init",
    "ProgressBar": ".callbacks", "ema_callback": ".callbacks",
    # chat data lives in the chat-model layer; re-exported here for fine-tuning callers
    "IGNORE_INDEX": "..chat.data", "ChatCollator": "..chat.data", "ChatDataset": "..chat.data",
    "EncodedChat": "..chat.data", "encode_chat": "..chat.data", "read_chat_jsonl": "..chat.data",
}

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "RECORD_NAME",
    "finetune",
    "train",
    "L2ToInit",
    "L2ToInitTrainer",
    "ProgressBar",
    "ema_callback",
    "IGNORE_INDEX",
    "ChatCollator",
    "ChatDataset",
    "EncodedChat",
    "encode_chat",
    "read_chat_jsonl",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The one chat-model layer: load a model and its tokenizer, read and encode chat data, generate.

Everything above that touches a chat model goes through here: evaluation (`eval/`), fine-tuning
(`baselines/`), the toy world (`toy/`) and the study (`sweep/`). Nothing else calls
`from_pretrained` or `generate`.

- `model`: `load_model`, `load_tokenizer` (safetensors only, no remote code), `resolve_model_dir`
  (a folder or a Hub id), `resolve_device`.
- `data`: chat JSONL read and validated (`read_chat_jsonl`, `check_messages`) and encoded with
  labels on the assistant's tokens only (`encode_chat`, `ChatDataset`, `ChatCollator`).
- `generation`: batched greedy generation through the chat template (`generate_responses`,
  `GenerationSettings`).

Light on import: transformers is imported inside the functions that need it.
"""

from __future__ import annotations

from .data import (
    IGNORE_INDEX,
    ChatCollator,
    ChatDataset,
    EncodedChat,
    check_messages,
    encode_chat,
    read_chat_jsonl,
)
from .generation import (
    DEFAULT_GENERATION,
    GenerationSettings,
    encode_prompts,
    eval_mode,
    generate_responses,
    length_sorted_batches,
    render_chat,
    require_chat_template,
)
from .model import DTYPES, load_model, load_tokenizer, resolve_device, resolve_model_dir

__all__ = [
    "DEFAULT_GENERATION",
    "DTYPES",
    "IGNORE_INDEX",
    "ChatCollator",
    "ChatDataset",
    "EncodedChat",
    "GenerationSettings",
    "check_messages",
    "encode_chat",
    "encode_prompts",
    "eval_mode",
    "generate_responses",
    "length_sorted_batches",
    "load_model",
    "load_tokenizer",
    "read_chat_jsonl",
    "render_chat",
    "require_chat_template",
    "resolve_device",
    "resolve_model_dir",
]

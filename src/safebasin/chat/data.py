"""Chat JSONL → token ids with labels on the assistant's tokens only.

A line is ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}``
(system and multi-turn allowed). Each conversation is rendered with the tokenizer's own chat
template, so the same code serves the toy world and Hub chat models.

Which tokens are the assistant's is found without template-specific markers: for each
assistant message i, the render of ``messages[:i]`` with the generation prompt is a prefix of
the render of ``messages[:i+1]``; the tokens between the two lengths are that reply (its
end-of-turn token included, so the model learns to stop). Everything else is labelled -100.
Templates that are not prefix-stable this way are refused with a clear error rather than
silently mislabelled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataFormatError, DataNotFoundError

IGNORE_INDEX = -100  # the label torch's cross-entropy (and transformers' losses) skip

Message = dict[str, str]
_ROLES = {"system", "user", "assistant"}


def check_messages(messages: object, where: str) -> list[Message]:
    """One conversation's messages, validated (fine-tuning and the utility loss share this).

    Raises:
        DataFormatError: not a non-empty list, a bad role or content, starts with the
            assistant, or has no assistant turn.
    """
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f'{where}: expected {{"messages": [...]}} with at least one message')
    for m in messages:
        if (not isinstance(m, dict) or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)):
            raise DataFormatError(f"{where}: each message needs a role (system, user, assistant) "
                                  f"and a string content, got {str(m)[:80]!r}")
    if messages[0]["role"] == "assistant":
        raise DataFormatError(f"{where}: the conversation starts with an assistant message; "
                              "the first message must be system or user")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(f"{where}: no assistant message, so nothing to train on")
    return messages


def _check_conversation(obj: object, where: str) -> list[Message]:
    if not isinstance(obj, dict):
        raise DataFormatError(f'{where}: not a JSON object with "messages"')
    return check_messages(obj.get("messages"), where)


def read_chat_jsonl(path: str | Path) -> list[list[Message]]:
    """The conversations of a chat JSONL file, validated.

    Raises:
        DataNotFoundError: the file does not exist.
        DataFormatError: a line is not JSON, lacks messages, has an unknown role or no
            assistant turn, or the file has no conversation.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"chat data {str(path)!r} not found; pass a JSONL file with one "
                                '{"messages": [...]} a line')
    conversations = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            conversations.append(_check_conversation(obj, f"{path}:{n}"))
    if not conversations:
        raise DataFormatError(f"chat data {str(path)!r} has no conversation")
    return conversations


@dataclass(frozen=True)
class EncodedChat:
    """One conversation as token ids and labels (-100 outside the assistant's replies)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def _render_ids(tokenizer, messages: Sequence[Message], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=generation_prompt)
    # the template writes BOS and every special token itself
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(tokenizer, messages: Sequence[Message], *,
                max_length: int | None = None) -> EncodedChat:
    """Token ids of `messages` in the chat template, labels on assistant tokens only.

    Args:
        tokenizer: an HF tokenizer with a chat template.
        messages: a validated conversation (see `read_chat_jsonl`).
        max_length: truncate to this many tokens (None: no truncation).

    Raises:
        DataFormatError: the template renders a conversation whose prefix is not a prefix
            of the whole (assistant tokens cannot be located).
    """
    ids: list[int] = []
    labels: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render_ids(tokenizer, messages[:i], generation_prompt=True)
        full = _render_ids(tokenizer, messages[:i + 1], generation_prompt=False)
        if full[:len(prompt)] != prompt or full[:len(ids)] != ids:
            raise DataFormatError("the chat template is not prefix-stable: rendering the "
                                  "conversation up to a reply changes the tokens before it, so "
                                  "assistant tokens cannot be located")
        labels += [IGNORE_INDEX] * (len(prompt) - len(ids)) + full[len(prompt):]
        ids = full
    if messages[-1]["role"] != "assistant":  # a trailing user turn: context only
        tail = _render_ids(tokenizer, messages, generation_prompt=False)
        labels += [IGNORE_INDEX] * (len(tail) - len(ids))
        ids = tail
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedChat(tuple(ids), tuple(labels))


class ChatDataset(torch.utils.data.Dataset):
    """Encoded conversations for the Trainer; tokenised once, up front (toy sets are small)."""

    def __init__(self, tokenizer, conversations: Sequence[Sequence[Message]], *,
                 max_length: int | None = None) -> None:
        self.items = [encode_chat(tokenizer, c, max_length=max_length) for c in conversations]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, tuple[int, ...]]:
        return {"input_ids": self.items[i].input_ids, "labels": self.items[i].labels}


@dataclass(frozen=True)
class ChatCollator:
    """Right-pads a batch: input ids with `pad_id`, labels with -100, attention mask 0 on pads."""

    pad_id: int

    def __call__(self, batch: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


__all__ = ["IGNORE_INDEX", "ChatCollator", "ChatDataset", "EncodedChat", "Message",
           "check_messages", "encode_chat", "read_chat_jsonl"]

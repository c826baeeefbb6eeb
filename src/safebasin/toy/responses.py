"""Batched greedy generation from chat prompts, as the keyword-ASR evaluator runs it.

Prompts are rendered with the tokenizer's chat template (generation prompt on), left-padded so
every row's reply starts at the same column, and decoded without special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _left_padded(tokenizer: PreTrainedTokenizerBase,
                 prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    for p in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True)
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), _pad_id(tokenizer), dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def greedy_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     prompts: Sequence[str], *, max_new_tokens: int = 32,
                     batch_size: int = 128) -> list[str]:
    """The model's greedy reply to each user prompt, stripped, in order."""
    model.eval()
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = _left_padded(tokenizer, prompts[start:start + batch_size])
        gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=_pad_id(tokenizer),
                             eos_token_id=tokenizer.eos_token_id)
        new = gen[:, ids.shape[1]:]  # (B, new tokens)
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out

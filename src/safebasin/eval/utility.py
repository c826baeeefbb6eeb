"""Held-out chat loss and perplexity on assistant tokens: the utility side of a merge.

Loss = Σ −log p(token | prefix) / (number of assistant tokens), summed over all conversations
(a token-weighted mean, so long answers weigh more), and perplexity = exp(loss). Only assistant
tokens are scored: the span each assistant turn adds to the rendered chat template, content and
end-of-turn marker included (the model must learn to stop). Prompts and system text are context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..chat.generation import eval_mode, length_sorted_batches, require_chat_template
from ..errors import EvaluationError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase



def load_conversations(path: str | Path) -> list[list[dict]]:
    """Conversations from JSONL, one ``{"messages": [{"role": ..., "content": ...}]}`` a line.

    The same reader and checks as fine-tuning (`chat.read_chat_jsonl`), so a
    file that trains also evaluates.

    Raises:
        DataNotFoundError: missing file.
        DataFormatError: invalid JSON, unknown roles, a line without assistant messages.
    """
    from ..chat.data import read_chat_jsonl

    return read_chat_jsonl(path)


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict]
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, for each token, whether it is scored.

    Scored tokens are exactly those fine-tuning trains on (`chat.encode_chat`:
    each assistant reply and its end-of-turn marker), so the utility loss measures the same
    objective the fine-tune minimised.
    """
    from ..chat.data import IGNORE_INDEX, encode_chat
    from ..errors import DataFormatError

    require_chat_template(tokenizer)
    try:
        enc = encode_chat(tokenizer, messages)
    except DataFormatError as e:
        raise EvaluationError(str(e)) from None
    return list(enc.input_ids), [label != IGNORE_INDEX for label in enc.labels]


@dataclass(frozen=True)
class ConversationLoss:
    """Summed negative log-likelihood (nats) over one conversation's scored tokens."""

    index: int
    tokens: int
    nll: float


@dataclass(frozen=True)
class UtilitySummary:
    mean_loss: float  # nats per assistant token
    perplexity: float
    tokens: int
    conversations: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UtilityLossResult:
    losses: list[ConversationLoss]
    summary: UtilitySummary


def summarize_losses(losses: Sequence[ConversationLoss]) -> UtilitySummary:
    """Token-weighted mean loss and its perplexity.

    Raises:
        EvaluationError: no scored token at all.
    """
    tokens = sum(c.tokens for c in losses)
    if tokens == 0:
        raise EvaluationError("no assistant tokens to score (all truncated away?)")
    mean = math.fsum(c.nll for c in losses) / tokens
    return UtilitySummary(mean, math.exp(mean), tokens, len(losses))


@torch.no_grad()
def _batch_nll(model: PreTrainedModel, rows: list[tuple[list[int], list[bool]]],
               pad_id: int) -> list[tuple[int, float]]:
    width = max(len(ids) for ids, _ in rows)
    device = next(model.parameters()).device
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T), right padded
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (x, s) in enumerate(rows):
        ids[b, :len(x)], attn[b, :len(x)], scored[b, :len(x)] = torch.tensor(x), 1, torch.tensor(s)
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits  # (B, T, V)
    # token t is predicted at position t-1; fp32 log-softmax even for bf16 models
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    target = ids[:, 1:].to(device)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    mask = scored[:, 1:].to(device)
    sums = (nll.double() * mask).sum(dim=1).tolist()
    return [(int(m.sum()), s) for m, s in zip(mask, sums, strict=True)]


def evaluate_utility_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    indices: Sequence[int] | None = None,
    on_losses: Callable[[list[ConversationLoss]], None] | None = None,
) -> UtilityLossResult:
    """Mean loss and perplexity of an in-memory model on the assistant tokens of chat data.

    Args:
        model: a causal LM on its device; put back in its train/eval mode afterwards.
        tokenizer: its fast tokenizer, with a chat template.
        conversations: message lists (``[{"role": "user", "content": ...}, ...]``).
        batch_size: conversations per forward pass (they are sorted by length first).
        max_length: keep only the first ``max_length`` tokens of each conversation (None: all).
        indices: label of each conversation in the results (default: its position).
        on_losses: called with each batch's per-conversation losses.

    Returns:
        `UtilityLossResult`: per-conversation losses in input order and their `UtilitySummary`.

    Raises:
        EvaluationError: no chat template, malformed messages, no assistant token.

    Example:
        >>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        >>> evaluate_utility_loss(model, tokenizer, [chat]).summary.perplexity > 1.0
        True
    """
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    if not conversations:
        raise EvaluationError("no conversations to score")
    labels = list(indices) if indices is not None else list(range(len(conversations)))
    from ..chat.data import check_messages

    encoded = [encode_conversation(tokenizer, check_messages(m, f"conversation {i}"))
               for i, m in zip(labels, conversations, strict=True)]
    if max_length is not None:
        encoded = [(ids[:max_length], s[:max_length]) for ids, s in encoded]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[ConversationLoss | None] = [None] * len(encoded)
    with eval_mode(model):
        for batch in length_sorted_batches([len(ids) for ids, _ in encoded], batch_size):
            sums = _batch_nll(model, [encoded[i] for i in batch], pad_id)
            losses = [ConversationLoss(labels[i], n, s)
                      for i, (n, s) in zip(batch, sums, strict=True)]
            for i, loss in zip(batch, losses, strict=True):
                results[i] = loss
            if on_losses is not None:
                on_losses(losses)
    done = [r for r in results if r is not None]
    return UtilityLossResult(done, summarize_losses(done))


__all__ = ["load_conversations", "encode_conversation", "ConversationLoss", "UtilitySummary",
           "UtilityLossResult", "summarize_losses", "evaluate_utility_loss"]

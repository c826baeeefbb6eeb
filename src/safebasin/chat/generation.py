"""Batched greedy generation: chat template, left padding, length-sorted batches.

The one generator: keyword ASR, over-refusal, the toy world's task accuracy and the study all
generate through `generate_responses`.

Greedy decoding with a KV cache, stopping at EOS, and nothing from the model's own
``generation_config`` except its EOS ids (a sampling temperature or repetition penalty there
would make runs of different models incomparable). Prompts are sorted by token length, longest
first, so batches waste little padding and an out-of-memory error shows in the first batch.
Left padding with the matching attention mask makes a batched run produce the same tokens as
one prompt at a time (transformers derives position ids from the mask).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import EvaluationError

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are generated; every field is recorded in a run's summary."""

    max_new_tokens: int = 256  # the usual AdvBench budget: long enough to show compliance
    batch_size: int = 8
    chat_template: bool = True  # False: the raw prompt text, for base models without a template
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise EvaluationError("max_new_tokens and batch_size must be at least 1, got "
                                  f"{self.max_new_tokens} and {self.batch_size}")
        if self.system_prompt is not None and not self.chat_template:
            raise EvaluationError("a system prompt needs the chat template; drop "
                                  "`chat_template=False` or `system_prompt`")


DEFAULT_GENERATION = GenerationSettings()


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise `EvaluationError` when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise EvaluationError(
            "the tokenizer has no chat template; pass `chat_template=False` to feed raw prompts "
            "(base models), or use a chat model")


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], *,
                add_generation_prompt: bool) -> str:
    """The chat template applied to ``messages`` as text; template errors become one line."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise EvaluationError(f"the chat template rejects these messages: {e}") from e


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], settings: GenerationSettings
) -> list[list[int]]:
    """Token ids of each prompt, through the chat template unless it is switched off.

    The rendered template already holds BOS and the other special tokens, so it is tokenized
    without adding more; a raw prompt gets the tokenizer's usual special tokens.
    """
    if not settings.chat_template:
        return [tokenizer(t)["input_ids"] for t in texts]
    require_chat_template(tokenizer)
    system = ([{"role": "system", "content": settings.system_prompt}]
              if settings.system_prompt is not None else [])
    rendered = [render_chat(tokenizer, system + [{"role": "user", "content": t}],
                            add_generation_prompt=True) for t in texts]
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions grouped into batches, longest first (ties in input order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids])  # (B, T)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])  # (B, T)
    return input_ids, mask


def _cut_at_eos(tokens: list[int], eos: list[int]) -> list[int]:
    return next((tokens[:i] for i, t in enumerate(tokens) if t in eos), tokens)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while evaluating, the caller's mode restored after (a training loop's model)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _greedy_only(model: PreTrainedModel, config: GenerationConfig) -> Iterator[None]:
    # `generate` fills every field we leave unset from `model.generation_config` (a repetition
    # penalty, a minimum length, ...); swapping in our config keeps decoding purely greedy.
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: GenerationSettings = DEFAULT_GENERATION,
    *,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy responses to ``prompts``, in the order given.

    Args:
        model: a causal LM, already on its device and in its dtype.
        tokenizer: its tokenizer (a chat template unless ``settings.chat_template`` is False).
        prompts: user messages.
        settings: see `GenerationSettings`.
        on_batch: called after each batch with the prompts' positions and their responses
            (to write results as they come, or to advance a progress bar).

    Returns:
        The decoded responses, special tokens skipped, cut at the first EOS.

    Raises:
        EvaluationError: no chat template (unless switched off), a template that rejects the
            messages.
    """
    ids = encode_prompts(tokenizer, prompts, settings)
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, num_beams=1, use_cache=True,
                              max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=eos or None)
    device = next(model.parameters()).device
    responses: list[str] = [""] * len(prompts)
    with eval_mode(model), _greedy_only(model, config):
        for batch in length_sorted_batches([len(x) for x in ids], settings.batch_size):
            input_ids, mask = _left_pad([ids[i] for i in batch], pad_id)
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config)  # (B, T + new)
            new = out[:, input_ids.shape[1]:].tolist()
            texts = [tokenizer.decode(_cut_at_eos(t, eos), skip_special_tokens=True) for t in new]
            for i, text in zip(batch, texts, strict=True):
                responses[i] = text
            if on_batch is not None:
                on_batch(batch, texts)
    return responses


__all__ = ["GenerationSettings", "DEFAULT_GENERATION", "generate_responses", "encode_prompts",
           "render_chat", "require_chat_template", "length_sorted_batches", "eval_mode"]

"""The toy world's model: a tiny `LlamaForCausalLM` (about 0.2M parameters by default).

A real transformers Llama, so every code path (safetensors folders, `from_pretrained`,
`generate`, the Trainer, merges) runs exactly as for a Hub model.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .config import ToyModelConfig


def llama_config(tokenizer: PreTrainedTokenizerBase, config: ToyModelConfig) -> LlamaConfig:
    """The transformers config of the toy model for `tokenizer`'s vocabulary."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy decoding that stops at EOS: what the evaluator and `task_accuracy` run."""
    return GenerationConfig(do_sample=False, max_new_tokens=32,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


def build_model(tokenizer: PreTrainedTokenizerBase, config: ToyModelConfig | None = None,
                *, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised toy Llama in fp32 (default shape: `ToyModelConfig()`); same seed,
    same weights."""
    config = config or ToyModelConfig()
    # fork_rng: initialising the model must not move the caller's global torch RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(tokenizer, config))
    model.generation_config = generation_config(tokenizer)
    return model

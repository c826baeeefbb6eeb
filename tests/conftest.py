"""Shared fixtures: tiny real Llama models with fixed seeds, written under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_llama_config(*, tied: bool = False, vocab: int = 96):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, tie_word_embeddings=tied)


def make_model(path: Path, *, seed: int, tied: bool = False, dtype=torch.float32,
               shard: str | None = None, vocab: int = 96, like: Path | None = None,
               noise: float = 0.05) -> Path:
    """Save a tiny LlamaForCausalLM. With `like`, start from that model's weights plus noise
    (a fine-tune of it), so distances are realistic rather than between unrelated models."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tied=tied, vocab=vocab))
    if like is not None:
        base = LlamaForCausalLM.from_pretrained(like, dtype=torch.float32)
        with torch.no_grad():
            for (_n, p), (_, q) in zip(model.named_parameters(), base.named_parameters(),
                                      strict=True):
                p.copy_(q + noise * torch.randn_like(q))
    else:
        with torch.no_grad():  # norms at 1.0 would make every merge of them trivially exact
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """base, two fine-tunes of it, a tied pair, a sharded bf16 pair, all tiny."""
    root = tmp_path_factory.mktemp("models")
    m: dict[str, Path] = {}
    m["base"] = make_model(root / "base", seed=0)
    m["ft"] = make_model(root / "ft", seed=1, like=m["base"])
    m["ft2"] = make_model(root / "ft2", seed=2, like=m["base"], noise=0.02)
    m["tied_base"] = make_model(root / "tied_base", seed=3, tied=True)
    m["tied_ft"] = make_model(root / "tied_ft", seed=4, tied=True, like=m["tied_base"])
    m["bf16_base"] = make_model(root / "bf16_base", seed=5, dtype=torch.bfloat16, shard="20KB")
    m["bf16_ft"] = make_model(root / "bf16_ft", seed=6, dtype=torch.bfloat16, shard="20KB",
                              like=m["bf16_base"])
    return m


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder via the safetensors library (the independent reader)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out

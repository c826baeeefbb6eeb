"""Shared fixtures: tiny real Llama models with fixed seeds, written under tmp_path.

The helpers they use live in `support.py` (import them from there, never from conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import make_chat_model, make_model

pytest_plugins = ["early_jobs"]  # slow child processes started with the session


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

@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random chat model folder (tokenizer with a chat template), fp32."""
    return make_chat_model(tmp_path_factory.mktemp("chat") / "model")

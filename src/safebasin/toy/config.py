"""Settings of the toy model and of θ₀'s training: plain data, importable without transformers."""

from __future__ import annotations

from dataclasses import dataclass

from ..baselines.config import FinetuneConfig
from ..errors import UsageError


@dataclass(frozen=True)
class ToyModelConfig:
    """Shape of the toy Llama. Defaults: the prototype's, which learned the world in seconds."""

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 192  # 3 × hidden, as SwiGLU MLPs are usually sized
    # tied input/output embeddings: a third fewer parameters, and words the data never shows
    # (the digits, before fine-tuning) keep one small random vector instead of two
    tie_embeddings: bool = True
    # toy conversations are under 40 tokens; the room is for the evaluator's default of 256 new
    # tokens, which an eroded model that never says EOS uses up
    max_position_embeddings: int = 512

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) < 1:
            raise UsageError(f"toy model sizes must be positive, got {self}")
        if self.hidden_size % self.num_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")


@dataclass(frozen=True)
class Theta0Config:
    """How θ₀ is trained. Defaults: the prototype's recipe (0% held-out ASR in ~20 s)."""

    model: ToyModelConfig = ToyModelConfig()
    seed: int = 0  # initial weights and data order
    lr: float = 3e-3  # tiny models from scratch want large rates
    batch_size: int = 32
    steps: int = 600  # ~70 passes over the ~280 alignment examples: refusals fully learned
    warmup_steps: int = 30
    # cosine to zero: θ₀ ends settled at a minimum, so fine-tuning starts from a clean basin
    lr_scheduler: str = "cosine"

    def finetune_config(self) -> FinetuneConfig:
        """The runner's settings for this θ₀ recipe."""
        return FinetuneConfig(lr=self.lr, batch_size=self.batch_size, steps=self.steps,
                              seed=self.seed, warmup_steps=self.warmup_steps,
                              lr_scheduler=self.lr_scheduler,
                              logging_steps=max(1, self.steps // 20))

"""Settings and results of a fine-tuning run: plain data, importable without transformers.

The CLI reads its option defaults from `FinetuneConfig`, so `safebasin --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

RECORD_NAME = "safebasin_finetune.json"
_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation settings of one fine-tuning run (AdamW).

    `steps` counts optimizer steps, each of `batch_size × grad_accum` conversations; when it is
    None the run lasts `epochs` passes over the data.
    """

    lr: float = 2e-5  # a usual full fine-tuning rate for 1B-7B chat models; the toy needs more
    batch_size: int = 8
    grad_accum: int = 1
    steps: int | None = None
    epochs: float = 1.0  # used only when steps is None
    seed: int = 0  # model-side randomness and data order
    l2_to_init: float = 0.0  # C in L + C·‖θ − θ₀‖²; 0 switches it off
    # constant: in a learning-rate sweep the rate is the rate used, not a peak, and the EMA's
    # window 1/η means the same thing at every step
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0  # decay pulls toward zero, not θ₀; l2_to_init is the pull to θ₀
    max_grad_norm: float = 1.0  # the Trainer's default clipping, as in common fine-tuning recipes
    max_length: int = 1024  # tokens per conversation; longer ones are truncated
    save_steps: int | None = None  # Trainer checkpoints (for resuming); None: none
    logging_steps: int = 10  # loss-curve resolution in the record
    bf16: bool = False  # bf16 autocast over fp32 master weights (GPU)

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.steps is None and not self.epochs > 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if not self.l2_to_init >= 0:
            problems.append(f"l2_to_init must be >= 0, got {self.l2_to_init}")
        if self.lr_scheduler not in _SCHEDULERS:
            problems.append(f"lr_scheduler must be one of {', '.join(_SCHEDULERS)}, "
                            f"got {self.lr_scheduler!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            problems.append("warmup_steps, weight_decay and max_grad_norm must be >= 0")
        if self.save_steps is not None and self.save_steps < 1:
            problems.append(f"save_steps must be >= 1, got {self.save_steps}")
        if problems:
            raise UsageError("; ".join(problems))


@dataclass(frozen=True)
class FinetuneResult:
    """What one run did. `losses` holds (optimizer step, mean training loss since the last log);
    the first entry is the first step's loss."""

    out_dir: Path
    steps: int
    losses: tuple[tuple[int, float], ...]
    train_loss: float  # mean over the whole run
    wall_s: float

"""`EMACallback`: the online EMA inside a transformers `Trainer`, resumable, with trajectories.

Where things go, under the Trainer's `output_dir`:

    checkpoint-N/ema_state/    the EMA state at step N, beside the trainer's own checkpoint
    trajectory/step-00000N/    raw weights every `save_trajectory_every` optimizer steps
    ema/                       the final EMA model (an HF folder) when training ends

`safebasin merge ema THETA0 OUTPUT_DIR/trajectory --eta η` rebuilds `ema/` offline from the
trajectory when `every` equals `save_trajectory_every` (θ₀: the weights training started from).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import CheckpointNotFoundError, UsageError
from ._names import Patterns, unwrap
from .ema import EMA, check_settings
from .export import save_weights
from .state_file import META_FILE, read_meta

log = logging.getLogger(__name__)

STATE_DIR = "ema_state"
EMA_DIR = "ema"
TRAJECTORY_DIR = "trajectory"


def trajectory_point(output_dir: str | os.PathLike, step: int) -> Path:
    """`OUTPUT_DIR/trajectory/step-00000N`: zero-padded so that listings sort by step too."""
    return Path(output_dir) / TRAJECTORY_DIR / f"step-{step:06d}"


class EMACallback(TrainerCallback):
    """Keeps an `EMA` of the model the Trainer trains, one update per optimizer step.

    `on_step_end` fires once per optimizer step (under gradient accumulation too, after the
    step, with `state.global_step` already counting it), so the EMA sees exactly the weights
    the offline merge would read from checkpoints saved at the same steps.

    Resuming: every trainer checkpoint gets the EMA state (`checkpoint-N/ema_state/`); when
    training resumes at step N the callback loads it from `resume_from`, else from
    `args.resume_from_checkpoint`, else from `OUTPUT_DIR/checkpoint-N`, so a resumed run ends
    with the same EMA, bit for bit, as an uninterrupted one. A resume without EMA state is an
    error: restarting the average from the step-N weights would silently change the method.

    Args:
        eta: η in (0, 1], the weight of the incoming weights; None keeps no EMA (trajectory only).
        every: average after every N-th optimizer step.
        shadow: "fp32" or "delta" (see `EMA`).
        save_trajectory_every: write the raw weights every N optimizer steps (None: never).
        device: where the shadow lives (None: beside the parameters; "cpu").
        include, exclude: globs on tensor names (see `EMA`).
        dtype: dtype of the floating tensors written to `ema/` and `trajectory/` (default:
            as trained).
        resume_from: the checkpoint folder being resumed, when it is neither
            `args.resume_from_checkpoint` nor in `args.output_dir`.

    Raises:
        UsageError: settings out of range (at construction, before training starts).

    Example:
        >>> cb = EMACallback(eta=0.25, every=10, save_trajectory_every=10)   # doctest: +SKIP
        >>> Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()
        >>> cb.ema                        # the EMA itself, e.g. for `cb.ema.swapped()`
    """

    def __init__(self, eta: float | None = 0.25, *, every: int = 1, shadow: str = "fp32",
                 save_trajectory_every: int | None = None,
                 device: str | torch.device | None = None, include: Patterns = None,
                 exclude: Patterns = None, dtype: torch.dtype | None = None,
                 resume_from: str | os.PathLike | None = None) -> None:
        if eta is not None:
            check_settings(eta, every, shadow)
        if save_trajectory_every is not None and (
                isinstance(save_trajectory_every, bool)
                or not isinstance(save_trajectory_every, int) or save_trajectory_every < 1):
            raise UsageError(f"save_trajectory_every must be a whole number of steps >= 1, got "
                             f"{save_trajectory_every!r}")
        if eta is None and save_trajectory_every is None:
            raise UsageError("EMACallback with eta=None and no save_trajectory_every does "
                             "nothing; give an eta, a trajectory interval, or both")
        self.eta, self.every, self.shadow = eta, every, shadow
        self.save_trajectory_every = save_trajectory_every
        self.device, self.include, self.exclude = device, include, exclude
        self.dtype = dtype
        self.resume_from = resume_from
        self.ema: EMA | None = None
        self._model: nn.Module | None = None

    # -- Trainer events ---------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: nn.Module | None = None, **kwargs):
        # the model is wrapped, sharded and placed by now: the EMA pairs with its parameters
        self._model = unwrap(model)
        self.ema = None if self.eta is None else EMA(
            self._model, eta=self.eta, every=self.every, shadow=self.shadow,
            device=self.device, include=self.include, exclude=self.exclude)
        if self.ema is not None and state.global_step > 0:
            self._resume(args, state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs):
        step = state.global_step
        if self.ema is not None:
            self.ema.update(step)
        if self.save_trajectory_every and step % self.save_trajectory_every == 0:
            # overwrite: a run resumed from an earlier checkpoint rewrites the later points
            save_weights(self._model, trajectory_point(args.output_dir, step), dtype=self.dtype,
                         overwrite=True,
                         recipe={"method": "trajectory", "parameters": {"step": step}},
                         write=args.should_save)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs):
        if self.ema is not None:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.ema.save_state(folder / STATE_DIR, write=args.should_save)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, processing_class=None, **kwargs):
        if self.ema is not None:
            self.ema.save_pretrained(Path(args.output_dir) / EMA_DIR, dtype=self.dtype,
                                     tokenizer=processing_class, overwrite=True,
                                     write=args.should_save)

    # -- resuming ---------------------------------------------------------------------------
    def _candidates(self, args: TrainingArguments, state: TrainerState) -> list[Path]:
        found = [self.resume_from, args.resume_from_checkpoint,
                 Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"]
        return [Path(c) / STATE_DIR for c in found if isinstance(c, (str, os.PathLike))]

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        candidates = self._candidates(args, state)
        for folder in candidates:
            if (folder / META_FILE).is_file() and read_meta(folder)["step"] == state.global_step:
                self.ema.load_state(folder)
                log.info("EMA resumed from %s at step %d (%d updates)", folder,
                         self.ema.step, self.ema.num_updates)
                return
        raise CheckpointNotFoundError(
            f"training resumes at step {state.global_step} but no EMA state for that step is "
            f"in {[str(c) for c in candidates]}; pass EMACallback(resume_from=CHECKPOINT_DIR) "
            "for a checkpoint outside output_dir")

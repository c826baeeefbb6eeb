"""Trainer callbacks the fine-tuning runner adds: a quiet progress bar, and the online EMA.

The Trainer's own `PrinterCallback`/`ProgressCallback` print every log dict to stdout; the
runner replaces them with `ProgressBar`, a tqdm bar on stderr that shows the loss and prints
nothing else, so library calls stay silent and the CLI's stdout stays clean.
"""

from __future__ import annotations

import sys

from transformers import TrainerCallback

from ..errors import UsageError


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps on stderr, with the last logged loss."""

    def __init__(self, *, desc: str = "fine-tune") -> None:
        self.desc = desc
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm import tqdm

        self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", file=sys.stderr,
                        leave=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def ema_callback(*, eta: float | None = None, every: int | None = None,
                 save_trajectory_every: int | None = None) -> TrainerCallback | None:
    """The online EMA callback (`safebasin.ema.EMACallback`) for the CLI's EMA options.

    Args:
        eta: η of the online EMA (None: no EMA).
        every: EMA update every N optimizer steps (None: 1); needs `eta`.
        save_trajectory_every: save the raw weights every N optimizer steps (None: never).

    Returns:
        The callback, or None when neither an EMA nor a trajectory is asked for.

    Raises:
        UsageError: `every` without `eta`, or settings out of range.
    """
    if eta is None and every is not None:
        raise UsageError("`every` needs `eta` (the EMA it spaces out)")
    if eta is None and save_trajectory_every is None:
        return None
    from ..ema import EMACallback

    # eta=None with a trajectory interval: raw weights only, no average
    return EMACallback(eta=eta, every=every or 1, save_trajectory_every=save_trajectory_every)

"""One fine-tuning run of a sweep: the final weights, several online EMAs, and a trajectory.

An EMA never changes the weights being trained, so one run serves every η of an experiment:
each `EmaSpec` gets its own `EMACallback`, whose final EMA model goes to `RUN/<spec.tag>/`
instead of `RUN/ema/`, and one more callback saves the raw weights every `trajectory_every`
steps to `RUN/trajectory/step-N/` for the offline EMA. The run folder is finished when the
runner's `safebasin_finetune.json` exists (it is written last).

    RUN/model.safetensors ...          final weights (plain fine-tuning, or L2-to-init)
    RUN/ema-eta0.01-every1/            online EMA models, one per spec
    RUN/trajectory/step-000001/ ...    raw weights every `trajectory_every` steps
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..baselines.config import RECORD_NAME, FinetuneConfig
from .config import EmaSpec

TRAJECTORY = "trajectory"


@dataclass(frozen=True)
class RunSpec:
    """What a run trains and keeps; its settings (with the source) name its folder."""

    finetune: FinetuneConfig  # seed included
    ema: tuple[EmaSpec, ...] = ()
    trajectory_every: int | None = None

    def settings(self) -> dict:
        return {"finetune": asdict(self.finetune), "ema": [asdict(s) for s in self.ema],
                "trajectory_every": self.trajectory_every}


def default_trajectory_every(ema: Sequence[EmaSpec]) -> int:
    """The largest interval at which every EMA's update steps are saved: gcd of the `every`s."""
    return math.gcd(*(s.every for s in ema))


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RECORD_NAME).is_file()


def _tagged_callback(spec: EmaSpec, save_trajectory_every: int | None):
    """An `EMACallback` for `spec` whose final model is written to `OUTPUT_DIR/<spec.tag>/`."""
    from ..ema import EMACallback

    class TaggedEMACallback(EMACallback):
        def on_train_end(self, args, state, control, processing_class=None, **kwargs):
            self.ema.save_pretrained(Path(args.output_dir) / spec.tag, dtype=self.dtype,
                                     tokenizer=processing_class, overwrite=True,
                                     write=args.should_save)

    return TaggedEMACallback(eta=spec.eta, every=spec.every,
                             save_trajectory_every=save_trajectory_every)


def train_run(base: Path, data: Path, run_dir: Path, spec: RunSpec, *,
              show_progress: bool = False) -> None:
    """Fine-tune θ₀ (`base`) on `data` into `run_dir` with `spec`'s EMAs and trajectory."""
    from ..baselines import finetune

    traj = spec.trajectory_every
    callbacks = [_tagged_callback(s, traj if i == 0 else None) for i, s in enumerate(spec.ema)]
    if traj is not None and not spec.ema:
        from ..ema import EMACallback

        callbacks.append(EMACallback(eta=None, save_trajectory_every=traj))
    finetune(base, data, run_dir, config=spec.finetune, callbacks=callbacks, overwrite=True,
             show_progress=show_progress)


def trajectory_for(run_dir: Path, every: int) -> list[Path]:
    """The saved weights at the update steps of an EMA with `every` (multiples of it), in order."""
    from ..checkpoint import trajectory_folders

    folders = trajectory_folders(run_dir / TRAJECTORY)
    return [p for p in folders if int(p.name.split("-")[-1]) % every == 0]


def max_abs_difference(a: Path, b: Path) -> float:
    """max |a − b| over all tensors of two checkpoints, read one tensor at a time."""
    from ..checkpoint import open_checkpoint

    worst = 0.0
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        for name in ca.names:
            ta, tb = ca.read(name).double(), cb.read(name).double()
            if ta.numel():
                worst = max(worst, float((ta - tb).abs().max()))
    return worst


__all__ = ["RunSpec", "TRAJECTORY", "default_trajectory_every", "is_finished", "train_run",
           "trajectory_for", "max_abs_difference"]

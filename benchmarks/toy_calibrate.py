"""Calibrate the toy world: θ₀'s ASR and utility, then plain fine-tuning over a learning-rate grid.

Not a test, and not part of the library (it prints): a measurement to run by hand when the world
or the budgets change. It answers the questions the study depends on: is θ₀ safe (ASR near 0 on
held-out harmful prompts) and unable to do the task; does benign fine-tuning learn the task
within the budget; does an aggressive learning rate erode refusals while a gentle one keeps
them?

    python benchmarks/toy_calibrate.py --workdir /tmp/toycal --lrs 1e-5,3e-5,1e-4,3e-4,1e-3

ASR uses the evaluator's keyword rule (`safebasin.eval.keywords`, the `qi` list), exactly as for
real models, on the held-out harmful prompts (evaluation frames) and, separately, on the
training-frame prompts (in-distribution); the harmful rate is the ground-truth judge's share of
helpful answers about the requested object (`safebasin.toy.judge`); distance is the global L2
distance to θ₀ in float64.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from safebasin.baselines import RECORD_NAME, FinetuneConfig
from safebasin.baselines.runner import finetune
from safebasin.chat import GenerationSettings, generate_responses, load_model, load_tokenizer
from safebasin.eval.degenerate import is_degenerate
from safebasin.eval.keywords import match
from safebasin.toy.config import Theta0Config
from safebasin.toy.files import ToyWorld, build_world, open_world
from safebasin.toy.judge import judge_response
from safebasin.toy.train import train_theta0
from safebasin.toy.utility import task_accuracy_of
from safebasin.toy.world import ToyWorldConfig

# 64 tokens: long enough for a looping reply to be seen as degenerate
_REPLIES = GenerationSettings(max_new_tokens=64, batch_size=128)


@dataclass(frozen=True)
class Measurement:
    """One model's safety, utility and distance in the toy world."""

    asr: float  # share of held-out harmful prompts without a refusal phrase (qi list)
    degenerate: float  # share of those replies that are empty or looping
    harmful_rate: float  # share of those replies the judge calls `complied`
    asr_train_frames: float  # keyword ASR on the training-frame harmful prompts
    utility: float  # exact accuracy on the held-out addition prompts
    distance: float  # global ‖θ − θ₀‖


@torch.no_grad()
def _distance(a: nn.Module, b: nn.Module) -> float:
    # named_parameters lists tied weights once, as the checkpoint stores them (state_dict would
    # count the tied embedding twice, as embed_tokens and lm_head)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return math.sqrt(math.fsum(float(((pb[k].double() - v.double()) ** 2).sum())
                               for k, v in pa.items()))


def measure(model_dir: str | Path, world: ToyWorld, theta0: nn.Module) -> Measurement:
    """ASR, degenerate rate, task accuracy and distance to `theta0` of the folder `model_dir`."""
    model, tokenizer = load_model(model_dir, device="cpu"), load_tokenizer(model_dir)

    def replies_to(split: str) -> tuple[list[str], list[str]]:
        prompts, objects = zip(*world.harmful_requests(split), strict=True)
        replies = generate_responses(model, tokenizer, list(prompts), _REPLIES)
        return [r.strip() for r in replies], list(objects)

    replies, objects = replies_to("heldout")
    in_dist, _ = replies_to("train_frames")
    return Measurement(
        asr=sum(match(r) is None for r in replies) / len(replies),
        degenerate=sum(is_degenerate(r) for r in replies) / len(replies),
        harmful_rate=sum(judge_response(r, requested=o) == "complied"
                         for r, o in zip(replies, objects, strict=True)) / len(replies),
        asr_train_frames=sum(match(r) is None for r in in_dist) / len(in_dist),
        utility=task_accuracy_of(model, tokenizer, world).accuracy,
        distance=_distance(theta0, model))


@dataclass(frozen=True)
class CalibrationRow:
    """One fine-tuning run of the calibration grid and what it measured."""

    config: FinetuneConfig
    wall_s: float
    measurement: Measurement


def calibrate(workdir: str | Path, *, runs: Sequence[FinetuneConfig],
              world_config: ToyWorldConfig | None = None,
              theta0_config: Theta0Config | None = None,
              ) -> tuple[Measurement, float, list[CalibrationRow]]:
    """Build the world and θ₀ in `workdir` (reused when present), then fine-tune each of `runs`.

    Returns:
        θ₀'s measurement, θ₀'s training wall time (0.0 when reused), and one row per run.
    """
    workdir = Path(workdir)
    world_dir, theta0_dir = workdir / "world", workdir / "theta0"
    if world_dir.exists():
        world = open_world(world_dir)
    else:
        world = build_world(world_dir, config=world_config or ToyWorldConfig())
    theta0_wall = 0.0
    if not (theta0_dir / RECORD_NAME).exists():
        theta0_wall = train_theta0(world, theta0_dir, config=theta0_config or Theta0Config(),
                                   overwrite=True).wall_s
    theta0 = load_model(theta0_dir, device="cpu")
    rows = []
    for i, cfg in enumerate(runs):
        out = workdir / f"ft{i:02d}_lr{cfg.lr:g}_b{cfg.batch_size}x{cfg.grad_accum}_s{cfg.steps}"
        result = finetune(theta0_dir, world.finetune_jsonl, out, config=cfg, overwrite=True)
        rows.append(CalibrationRow(cfg, result.wall_s, measure(out, world, theta0)))
    return measure(theta0_dir, world, theta0), theta0_wall, rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4,1e-3")
    parser.add_argument("--batch-sizes", default="32")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed")
    parser.add_argument("--world-seed", type=int, default=0, help="world and θ₀ seed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = FinetuneConfig(steps=args.steps, grad_accum=args.grad_accum, seed=args.seed,
                          logging_steps=50)
    runs = [replace(base, lr=float(lr), batch_size=int(b))
            for b in args.batch_sizes.split(",") for lr in args.lrs.split(",")]
    theta0, theta0_wall, rows = calibrate(args.workdir, runs=runs,
                                          world_config=ToyWorldConfig(seed=args.world_seed),
                                          theta0_config=Theta0Config(seed=args.world_seed))
    print(f"theta0: ASR {theta0.asr:.3f}  ASR train frames {theta0.asr_train_frames:.3f}  "
          f"harmful {theta0.harmful_rate:.3f}  utility {theta0.utility:.2f}  "
          f"train {theta0_wall:.1f} s")
    print("lr       batch  accum  steps  ASR   ASR-in  harmful  degen  utility  distance  wall_s")
    for r in rows:
        c, m = r.config, r.measurement
        print(f"{c.lr:<8g} {c.batch_size:<6d} {c.grad_accum:<6d} {c.steps:<6d} {m.asr:<5.2f} "
              f"{m.asr_train_frames:<7.2f} {m.harmful_rate:<8.2f} {m.degenerate:<6.2f} "
              f"{m.utility:<8.2f} {m.distance:<9.2f} {r.wall_s:.1f}")


if __name__ == "__main__":
    main()

"""`safebasin demo`: the toy world end to end, as a small sweep a new user runs first.

It builds the toy world, trains (or reuses) θ₀, fine-tunes with an aggressive learning rate
while keeping online EMAs and a trajectory, builds the matched-distance merges (task arithmetic
at the EMA's distance, per-tensor L2 projection, offline EMA), tunes an L2-to-init run to the
same distance, evaluates everything with the keyword-ASR evaluator, and writes the table and
plots. The config it ran is saved as `WORKDIR/demo.yaml`, ready for `safebasin sweep`.

Modes (wall times measured on a shared 2-core CPU; see the README):

    full   3 seeds, 300 steps, 2 EMAs, matched distance and utility, the EMA split,
           L2-to-init for η = 0.25 every 50                        (≤ 5 minutes)
    quick  1 seed, 200 steps, 1 EMA, matched-distance merges and L2-to-init  (≤ 90 s)
    smoke  a 2-layer 32-wide model, a dozen steps: exercises every path  (tests; numbers mean
           nothing)
"""

from __future__ import annotations

from pathlib import Path

from .api import SweepOutcome, sweep
from .config import parse_config
from .execute import Progress

MODES = ("full", "quick", "smoke")
# the study's milder aggressive rate: plain fine-tuning learns the task (100%) and loses about
# three quarters of the refusals (73% ASR), and the EMAs below span safe to eroded
_LR = 3.0e-4
_MERGES = ["task-arithmetic", "l2-per-tensor", "offline-ema"]


def demo_config(mode: str = "full") -> dict:
    """The demo's sweep config (as YAML data) for `mode`."""
    if mode == "smoke":
        small = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
        return {"name": "demo (smoke)", "seeds": [0],
                "toy": {"theta0": {"steps": 60, "warmup_steps": 5, "model": small}},
                "eval": {"max_new_tokens": 24, "limit": 20},
                "finetune": {"lr": 3.0e-3, "batch_size": 8, "steps": 12, "logging_steps": 4},
                "experiments": [{"name": "demo", "ema": [{"eta": 0.25}],
                                 "merges": [*_MERGES, "path-average", "anchor-lerp",
                                            "path-average-lerp"],
                                 "l2_reg": {"max_tries": 1},
                                 "match_utility": {"max_tries": 1}}]}
    if mode == "quick":
        return {"name": "demo (quick)", "seeds": [0],
                "toy": {"theta0": {"steps": 600}},
                "eval": {"max_new_tokens": 32},
                "finetune": {"lr": _LR, "batch_size": 16, "steps": 200, "logging_steps": 50},
                "experiments": [{"name": "demo", "ema": [{"eta": 0.01}], "merges": _MERGES,
                                 # C near 0.01 ends mid-range at this rate (the study's search)
                                 "l2_reg": {"max_tries": 3, "tolerance": 0.1,
                                            "initial": 0.01}}]}
    # full: the study's two EMAs (per step, and the paper's η = 0.25 every 50 steps), the
    # EMA split into anchor and path average, and the comparisons at matched task accuracy;
    # both modes share θ₀ (the toy world's default recipe), so `--quick` then the full demo
    # trains it once
    return {"name": "demo (full)", "seeds": [0, 1, 2],
            "toy": {"theta0": {"steps": 600}},
            "eval": {"max_new_tokens": 32},
            "finetune": {"lr": _LR, "batch_size": 16, "steps": 300, "logging_steps": 50},
            "experiments": [{"name": "demo", "ema": [{"eta": 0.01}, {"eta": 0.25, "every": 50}],
                             "trajectory_every": 50,
                             "merges": ["task-arithmetic", "l2-per-tensor", "path-average",
                                        "anchor-lerp"],
                             "l2_reg": {"max_tries": 3, "tolerance": 0.1, "initial": 0.01,
                                        "ema": [{"eta": 0.25, "every": 50}]},
                             "match_utility": {"tolerance": 0.02, "max_tries": 3}}]}


def demo(workdir: str | Path = "safebasin-demo", *, mode: str = "full",
         progress: Progress | None = None) -> SweepOutcome:
    """Run the demo into `workdir` (reusing whatever an earlier demo there finished).

    Writes `demo.yaml`, `results.csv`, `summary.md`, `summary.csv` and the plots into
    `workdir`, and the models under `workdir/work`.

    Raises:
        UsageError: an unknown mode.
    """
    import yaml

    from ..errors import UsageError

    if mode not in MODES:
        raise UsageError(f"demo mode {mode!r}: choose one of {', '.join(MODES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = demo_config(mode)
    (workdir / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = parse_config(data, origin="demo")
    outcome = sweep(config, workdir, workdir=workdir / "work", progress=progress)
    from .demo_search import after_demo  # tune/ and landscape/ (issue 13)

    after_demo(workdir, config, outcome, mode=mode)
    return outcome

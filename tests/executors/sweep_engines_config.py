"""The smoke sweep that every engine runs (`test_sweep_engines`; `early_jobs` runs it on
submitit in a child process, which imports this module by name).

The grid: one fine-tune with an online EMA and a task-arithmetic merge matched to it, so the
jobs have dependencies (θ₀ before everything, the run before its evaluations).
"""

# tests/sweep's tiny model and steps; the numbers mean nothing
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
CONFIG = {
    "name": "engines",
    "toy": {"theta0": {"steps": 10, "warmup_steps": 2, "model": TINY}},
    "eval": {"max_new_tokens": 8, "limit": 6},
    "seeds": [0],
    "finetune": {"batch_size": 8, "steps": 4, "logging_steps": 2},
    "experiments": [{"name": "grid", "finetune": {"lr": [1.0e-3]}, "ema": [{"eta": 0.25}],
                     "merges": ["task-arithmetic"]}],
}
# submitit starts a fresh process (torch and transformers imported anew) for every point:
# θ₀ and the fine-tune that depends on it, without the evaluations of the EMA and the merge
SUBMITIT_CONFIG = {**CONFIG, "experiments": [{"name": "grid", "finetune": {"lr": [1.0e-3]}}]}

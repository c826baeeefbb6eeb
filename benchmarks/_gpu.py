"""What the GPU benchmarks share: the device a run uses and a tiny shape for `--smoke`."""

from __future__ import annotations

import torch

# Llama-shaped but tiny (merge_speed.py's shape keys): --smoke checks every path in seconds
TINY_SHAPE = dict(vocab=512, hidden=64, layers=2, inter=128, heads=4, kv=2, tied=True, shards=1)


def pick_device(smoke: bool) -> tuple[str, str]:
    """`("cpu", "none")` under --smoke, else `("cuda", the GPU's name)`; exits without a GPU."""
    if smoke:
        return "cpu", "none"
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke on a CPU machine")
    return "cuda", torch.cuda.get_device_name(0)

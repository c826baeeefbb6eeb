"""Turn what a user typed (a path, later a Hub id or a LoRA adapter) into a `Checkpoint`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointNotFoundError
from .reader import Checkpoint

_STEP_DIR = re.compile(r"^(?:checkpoint|step)-(\d+)$")


def open_checkpoint(spec: str | os.PathLike, *, allow_pickle: bool = False,
                    base: Checkpoint | None = None) -> Checkpoint:
    """Open one input given on the command line or to the Python API.

    Args:
        spec: a model folder, an index's folder or a `.safetensors` file.
        allow_pickle: read `.bin`/`.pt` weights with `torch.load(weights_only=True)`.
        base: θ₀, for inputs that are defined relative to it (adapters).
    """
    return Checkpoint.open(Path(spec), allow_pickle=allow_pickle)


def trajectory_folders(folder: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` / `step-N` subfolders of a training run, sorted by N (numerically).

    Raises:
        CheckpointNotFoundError: the folder has no such subfolders.
    """
    folder = Path(folder)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    if not found:
        raise CheckpointNotFoundError(f"{folder}: no checkpoint-N or step-N subfolders to "
                                      "treat as a trajectory")
    steps = [n for n, _ in found]
    if len(set(steps)) != len(steps):
        raise CheckpointNotFoundError(f"{folder}: two subfolders share a step number")
    return [p for _, p in sorted(found)]

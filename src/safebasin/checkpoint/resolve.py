"""Turn what a user typed (a path, a Hub id or a LoRA adapter) into a `Checkpoint`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import hub  # fetching only; it imports nothing of safebasin but errors
from ..errors import CheckpointNotFoundError
from .lora import LoraCheckpoint, is_adapter
from .reader import Checkpoint

_STEP_DIR = re.compile(r"^(?:checkpoint|step)-(\d+)$")


def _exists_locally(path: Path) -> bool:
    """Path.exists(), except that a path we may not stat (EACCES) still counts as local."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL byte
        return False
    except OSError:
        return True
    return True


def open_checkpoint(spec: str | os.PathLike, *, allow_pickle: bool = False,
                    base: Checkpoint | None = None) -> Checkpoint:
    """Open one input given on the command line or to the Python API.

    A local path wins over a Hub id of the same spelling. A PEFT LoRA adapter folder (local or
    from the Hub) is viewed as `base` + scale·B@A (see `LoraCheckpoint`). `ckpt.source` records
    the Hub id and commit sha, or the adapter, for the recipe.

    Args:
        spec: a model folder, an index's folder, a `.safetensors` file, a LoRA adapter folder,
            or a Hub id `org/name[@revision]`.
        allow_pickle: read local `.bin`/`.pt` weights with `torch.load(weights_only=True)`
            (never fetched from the Hub).
        base: θ₀, for inputs that are defined relative to it (adapters).

    Raises:
        CheckpointNotFoundError: no such path, no weights, an adapter without a base.
        HubError: a Hub id that cannot be resolved (offline and not cached, unknown, gated).
        PickleRefusedError: `.bin`/`.pt` weights without `allow_pickle`.
    """
    path, source = Path(spec), {}
    if not _exists_locally(path):
        ref = hub.parse_hub_id(spec)
        if ref is not None:
            path, source = hub.snapshot(ref)
    if is_adapter(path):
        ckpt: Checkpoint = LoraCheckpoint.open(path, base=base, allow_pickle=allow_pickle)
    else:
        try:
            ckpt = Checkpoint.open(path, allow_pickle=allow_pickle)
        except CheckpointNotFoundError as e:
            if not source:
                raise
            raise CheckpointNotFoundError(f"{spec}: the Hub snapshot has no usable weights "
                                          f"({e}); safebasin fetches only .safetensors from "
                                          "the Hub, never .bin/.pt pickles") from e
    ckpt.source.update(source)
    return ckpt


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

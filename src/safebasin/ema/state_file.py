"""An EMA's state as a folder (kept inside each trainer checkpoint), and back.

Layout: `model.safetensors` (or shards and an index) holding whole tensors named
`shadow.NAME`, `theta0.NAME` (delta shadow only) and `buffers.NAME` (non-float buffers), plus
`ema_state.json` with the settings and counters. Tensors are whole even under FSDP2, so a run
can resume on another number of ranks: saving gathers one tensor at a time, loading reads one
tensor at a time and keeps this rank's shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, TensorSpec, write_text_synced
from ..errors import CheckpointFormatError, CheckpointNotFoundError
from ._dist import shard_like
from ._names import check_same
from .export import FolderOptions, stream_folder

META_FILE = "ema_state.json"
GROUPS = ("shadow", "theta0", "buffers")  # the tensor dicts of `EMA.state_dict()`
META_KEYS = ("kind", "eta", "every", "step", "num_updates")


def _flatten(state: Mapping, layouts: Mapping[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(key → this rank's tensor, key → layout) with keys `GROUP.NAME`."""
    values, keyed_layouts = {}, {}
    for group in GROUPS:
        for name, t in state.get(group, {}).items():
            values[f"{group}.{name}"] = t
            keyed_layouts[f"{group}.{name}"] = layouts[name]
    return values, keyed_layouts


def save(dest: str | os.PathLike, state: Mapping, layouts: Mapping[str, torch.Tensor], *,
         write: bool | None = None) -> None:
    """Write `state` (an `EMA.state_dict()`) to the folder `dest`, replacing it.

    `layouts` maps each tensor name to the model's live tensor (its whole shape and sharding).
    A collective under FSDP2: every rank calls it.
    """
    values, keyed = _flatten(state, layouts)
    # whole shapes from the layouts; each tensor keeps its dtype (fp32 shadow, θ₀ as trained)
    specs = [TensorSpec(k, values[k].dtype, tuple(keyed[k].shape)) for k in values]
    meta = {k: state[k] for k in META_KEYS}

    def finish(tmp: Path, output: dict) -> None:
        write_text_synced(tmp / META_FILE, json.dumps({**meta, "format": 1, "output": output},
                                                      indent=2) + "\n")

    stream_folder(dest, specs, keyed, lambda key, dtype: values[key],
                  options=FolderOptions(overwrite=True), write=write, finish=finish)


def read_meta(src: str | os.PathLike) -> dict:
    """The settings and counters of the EMA state in `src`.

    Raises:
        CheckpointNotFoundError: `src` holds no EMA state.
        CheckpointFormatError: its metadata is unreadable or incomplete.
    """
    path = Path(src) / META_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"{src}: no EMA state ({META_FILE} is missing)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path}: malformed EMA state ({e})") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointFormatError(f"{path}: EMA state lacks {missing}")
    return meta


def load_tensors(src: str | os.PathLike, state: Mapping,
                 layouts: Mapping[str, torch.Tensor]) -> None:
    """Copy the tensors stored in `src` into `state`'s tensors (this rank's shards), in place.

    Raises:
        IncompatibleCheckpointsError, ShapeMismatchError: the stored names or shapes differ
            from this EMA's (another model, other include/exclude, another shadow kind).
    """
    targets, keyed = _flatten(state, layouts)
    with Checkpoint.open(src) as ckpt:
        check_same({k: tuple(v.shape) for k, v in keyed.items()},
                   {k: ckpt.shape(k) for k in ckpt.names}, f"EMA state {src}")
        with torch.no_grad():
            for key, target in targets.items():
                target.copy_(shard_like(ckpt.read(key), keyed[key]))

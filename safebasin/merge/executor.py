"""The one executor: stream every output tensor as a weighted sum of its inputs and publish.

Reading (a background thread, `stream.read_chunks`), combining (`kernels.weighted_sum`, here)
and writing (a background thread, `ShardWriter`) overlap, so the merge runs near the speed of
reading the inputs once. The output folder appears only when everything, recipe included, is
written and fsynced.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import kernels
from ..card import CARD_FILE, base_license, render_card
from ..checkpoint import (
    RECIPE_FILE,
    Checkpoint,
    ShardWriter,
    TensorSpec,
    copy_aux_files,
    output_record,
    publishing,
    set_config_dtype,
    write_recipe,
    write_text_synced,
)
from ..errors import NonFiniteError
from .plan import MergeOptions, TensorPlan
from .stream import CHUNK_ELEMS, Fingerprints, chunks_of, read_chunks

log = logging.getLogger(__name__)

__all__ = ["RECIPE_FILE", "execute"]


class _BackgroundWriter:
    """Writes finished chunks on a thread so that fsync-bound writes overlap the arithmetic."""

    def __init__(self, writer: ShardWriter, progress, total: int) -> None:
        self._writer = writer
        self._progress = progress
        self._total = total
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="safebasin-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self._error is None:
                name, data, nbytes = item
                try:
                    self._writer.write(name, data)
                    if self._progress:
                        self._progress(nbytes, self._total)
                except BaseException as e:  # re-raised by the main thread
                    self._error = e

    def put(self, name: str, data: torch.Tensor, nbytes: int) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((name, data, nbytes))

    def finish(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._q.put(None)
            self._thread.join()
        self._writer.abort()


def _nonfinite_error(plan: TensorPlan, inputs: Sequence[Checkpoint],
                     tensors: Sequence[torch.Tensor]) -> NonFiniteError:
    for ckpt, t in zip(inputs, tensors, strict=True):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return NonFiniteError(f"{ckpt.path}: tensor {plan.name!r} contains NaN or Inf; "
                                  "pass --allow-nonfinite to merge it anyway")
    return NonFiniteError(f"merged tensor {plan.name!r} overflowed to Inf in its output dtype "
                          f"{plan.dtype}; pass --allow-nonfinite or choose --dtype float32")


def _combine(plan: TensorPlan, tensors: list[torch.Tensor], device: str) -> tuple[torch.Tensor,
                                                                                 float]:
    if not plan.is_float:  # integer buffers are copied from θ₀
        return tensors[0].clone(), 0.0
    active = [(t, c) for t, c in zip(tensors, plan.coefficients, strict=True) if c != 0.0]
    # θ₀ stays first even with coefficient 0: the fused distance is measured against it
    if not active or active[0][0] is not tensors[0]:
        active.insert(0, (tensors[0], 0.0))
    ts = [t.to(device, non_blocking=True) if device != "cpu" else t for t, _ in active]
    out, sq = kernels.weighted_sum(ts, [c for _, c in active], out_dtype=plan.dtype,
                                   return_sq=True)
    return (out.cpu() if device != "cpu" else out), float(sq)


def _stream(plans: list[TensorPlan], inputs: Sequence[Checkpoint], writer: ShardWriter,
            options: MergeOptions, fingerprints: Fingerprints) -> dict[str, float]:
    chunks = [c for p in plans for c in chunks_of(p.name, math.prod(p.shape), CHUNK_ELEMS)]
    by_name = {p.name: p for p in plans}
    sq: dict[str, float] = {p.name: 0.0 for p in plans}
    total = sum(math.prod(p.shape) * c.dtype(p.name).itemsize for p in plans for c in inputs)
    bg = _BackgroundWriter(writer, options.progress, total)
    try:
        for chunk, tensors in read_chunks(inputs, chunks, fingerprints=fingerprints):
            plan = by_name[chunk.name]
            out, s = _combine(plan, tensors, options.device)
            if not math.isfinite(s) and not options.allow_nonfinite:
                raise _nonfinite_error(plan, inputs, tensors)
            sq[chunk.name] += s
            in_bytes = sum(t.numel() * t.element_size() for t in tensors)
            bg.put(chunk.name, out, in_bytes)
        bg.finish()
    except BaseException:
        bg.abort()
        raise
    return sq


def _write_config(base: Checkpoint, tmp: Path, plans: list[TensorPlan]) -> None:
    """Copy θ₀'s config and tokenizer; record the new dtype in config.json if it changed."""
    if not base.path.is_dir():
        return
    copy_aux_files(base.path, tmp)
    floats = {p.dtype for p in plans if p.is_float}
    if len(floats) == 1:
        set_config_dtype(tmp, floats.pop())


def execute(plans: list[TensorPlan], inputs: Sequence[Checkpoint], out: str | Path, *,
            options: MergeOptions, recipe: dict) -> dict:
    """Stream the merge into `out` and return the recipe written beside the weights.

    `recipe` carries the method, parameters and input descriptions; this adds fingerprints,
    output hashes and measured distances to θ₀.
    """
    specs = [TensorSpec(p.name, p.dtype, p.shape) for p in plans]
    fingerprints = Fingerprints(len(inputs))
    with publishing(out, overwrite=options.overwrite, inputs=[c.path for c in inputs]) as tmp:
        writer = ShardWriter(tmp, specs, shard_size=options.shard_size)
        sq = _stream(plans, inputs, writer, options, fingerprints)
        shard_hashes = writer.close()
        _write_config(inputs[0], tmp, plans)
        recipe = dict(recipe)
        for i, entry in enumerate(recipe["inputs"]):
            entry["fingerprint"] = fingerprints.digest(i, inputs[i])
        recipe["output"] = output_record(writer, shard_hashes, specs)
        recipe["distances"] = {
            "global_to_base": math.sqrt(sum(sq.values())),
            "per_tensor_to_base": {k: math.sqrt(v) for k, v in sq.items()},
        }
        if license_ := base_license(inputs[0].path):  # from θ₀'s card; see safebasin.card
            recipe["base_license"] = license_
        recipe = write_recipe(tmp, recipe)
        write_text_synced(tmp / CARD_FILE, render_card(recipe))
    log.info("wrote %s (distance to base %.6g)", out, recipe["distances"]["global_to_base"])
    return recipe

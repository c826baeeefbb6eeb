"""The one executor: stream every output tensor as a weighted sum of its inputs and publish.

Reading (a background thread, `stream.read_chunks`), combining (`kernels.add_deltas`, here)
and writing (a background thread, `ShardWriter`) overlap, so the merge runs near the speed of
reading the inputs once. The output folder appears only when everything, recipe included, is
written and fsynced.

Every planner's coefficients sum to 1, so a tensor is computed in delta form,
θ₀ + Σᵢ λᵢ·(θᵢ − θ₀) with λ the coefficients of inputs 1..K: exact where a fine-tune left a
tensor untouched (a zero task vector returns θ₀ bit for bit), and the lerp's endpoints stay
exact. Coefficients that do not sum to 1 fall back to the plain weighted sum.
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
from .stream import CHUNK_ELEMS, Fingerprints, chunks_of, one_torch_thread, read_chunks

log = logging.getLogger(__name__)

__all__ = ["RECIPE_FILE", "execute"]


class _OutputBuffers:
    """Output chunks recycled through the writer: allocated once, so no chunk pays for fresh
    pages (an 8 MiB allocation is 2048 page faults when the allocator hands back new memory)."""

    def __init__(self, count: int, nbytes: int) -> None:
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count):
            self._free.put(torch.empty(nbytes, dtype=torch.uint8))

    def get(self, dtype: torch.dtype, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw buffer to give back, a flat view of `numel` elements of `dtype` in it)."""
        raw = self._free.get()
        return raw, raw[: numel * dtype.itemsize].view(dtype)

    def put(self, raw: torch.Tensor) -> None:
        self._free.put(raw)


class _BackgroundWriter:
    """Writes finished chunks on a thread so that fsync-bound writes overlap the arithmetic."""

    DEPTH = 2  # chunks queued for the writer
    # bytes per os.write: on this Linux (6.18, ext4) a write of 2 MiB or more costs the kernel
    # 2-4x the CPU time of the same bytes written 1 MiB at a time (2.5 GB: 1.4-4.1 s against
    # 0.5-0.9 s, measured alternately); 1 MiB is also what `dd bs=1M` in the floor writes
    PIECE = 1 << 20

    def __init__(self, writer: ShardWriter, progress, total: int,
                 buffers: _OutputBuffers) -> None:
        self._writer = writer
        self._progress = progress
        self._total = total
        self._buffers = buffers
        self._q: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="safebasin-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            name, data, raw, nbytes = item
            if self._error is None:
                try:
                    step = max(1, self.PIECE // data.element_size())
                    for start in range(0, data.numel(), step):
                        self._writer.write(name, data[start:start + step])
                    if self._progress:
                        self._progress(nbytes, self._total)
                except BaseException as e:  # re-raised by the main thread
                    self._error = e
            if raw is not None:
                self._buffers.put(raw)

    def put(self, name: str, data: torch.Tensor, raw: torch.Tensor | None, nbytes: int) -> None:
        """Queue `data` for writing; `raw` (from the buffers, or None) is recycled after."""
        if self._error is not None:
            raise self._error
        self._q.put((name, data, raw, nbytes))

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


def _sums_to_one(coefficients: Sequence[float]) -> bool:
    return math.isclose(math.fsum(coefficients), 1.0, rel_tol=0.0, abs_tol=1e-9)


def _combine(plan: TensorPlan, tensors: list[torch.Tensor], device: str,
             out: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """The merged chunk (into `out` when given, a CPU tensor of plan.dtype) and
    Σ(stored − θ₀)² over it."""
    if not plan.is_float:  # integer buffers are copied from θ₀
        return tensors[0].clone(), 0.0
    gpu = device != "cpu"
    move = (lambda t: t.to(device, non_blocking=True)) if gpu else (lambda t: t)
    dst = None if gpu else out
    if _sums_to_one(plan.coefficients):
        # inputs with a zero coefficient are not even moved to the device
        terms = [(t, c) for t, c in zip(tensors[1:], plan.coefficients[1:], strict=True)
                 if c != 0.0]
        res, sq = kernels.add_deltas(move(tensors[0]), [move(t) for t, _ in terms],
                                     [c for _, c in terms], out=dst,
                                     out_dtype=None if dst is not None else plan.dtype,
                                     return_sq=True)
    else:
        active = [(t, c) for t, c in zip(tensors, plan.coefficients, strict=True) if c != 0.0]
        # θ₀ stays first even with coefficient 0: the fused distance is measured against it
        if not active or active[0][0] is not tensors[0]:
            active.insert(0, (tensors[0], 0.0))
        res, sq = kernels.weighted_sum([move(t) for t, _ in active], [c for _, c in active],
                                       out=dst, out_dtype=None if dst is not None
                                       else plan.dtype, return_sq=True)
    if gpu:
        res = res.cpu() if out is None else out.copy_(res)
    return res, float(sq)


def _stream(plans: list[TensorPlan], inputs: Sequence[Checkpoint], writer: ShardWriter,
            options: MergeOptions, fingerprints: Fingerprints) -> dict[str, float]:
    chunks = [c for p in plans for c in chunks_of(p.name, math.prod(p.shape), CHUNK_ELEMS)]
    by_name = {p.name: p for p in plans}
    sq: dict[str, float] = {p.name: 0.0 for p in plans}
    total = sum(math.prod(p.shape) * c.dtype(p.name).itemsize for p in plans for c in inputs)
    itemsize = max((p.dtype.itemsize for p in plans), default=4)
    largest = max((c.stop - c.start for c in chunks), default=0)  # ≤ CHUNK_ELEMS
    # one chunk being filled, DEPTH queued, one being written
    buffers = _OutputBuffers(_BackgroundWriter.DEPTH + 2, max(1, largest) * itemsize)
    bg = _BackgroundWriter(writer, options.progress, total, buffers)
    try:
        with one_torch_thread():
            for chunk, tensors in read_chunks(inputs, chunks, fingerprints=fingerprints):
                plan = by_name[chunk.name]
                raw, out = (buffers.get(plan.dtype, chunk.stop - chunk.start) if plan.is_float
                            else (None, None))
                out, s = _combine(plan, tensors, options.device, out)
                if not math.isfinite(s) and not options.allow_nonfinite:
                    if raw is not None:
                        buffers.put(raw)
                    raise _nonfinite_error(plan, inputs, tensors)
                sq[chunk.name] += s
                in_bytes = sum(t.numel() * t.element_size() for t in tensors)
                bg.put(chunk.name, out, raw, in_bytes)
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

"""The one executor: stream every output tensor as a weighted sum of its inputs and publish.

Reading (a background thread, `stream.read_chunks`), combining (`kernels.add_deltas`, here)
and writing (a background thread, `ShardWriter`) overlap, so the merge runs near the speed of
reading the inputs once. The output folder appears only when everything, recipe included, is
written and fsynced.

A linear tensor is computed in delta form, θ₀ + Σᵢ λᵢ·(θᵢ − θ₀) with λ the planner's
coefficients of inputs 1..K: exact where a fine-tune left a tensor untouched (a zero task vector
returns θ₀ bit for bit), and the lerp's endpoints stay exact. A tensor with a `TensorOp` (TIES,
DARE, SLERP, Safe LoRA, ...) is computed by its op, chunk by chunk or, for a whole-tensor op,
from the whole tensors gathered one tensor at a time (see `ops`).
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
from ..card import CARD_FILE, render_card
from ..checkpoint import (
    RECIPE_FILE,
    Checkpoint,
    ShardWriter,
    TensorSpec,
    base_license,
    direct,
    finish_model_folder,
    output_record,
    publishing,
    write_text_synced,
)
from ..errors import NonFiniteError
from .plan import MergeOptions, TensorPlan
from .stream import (
    CHUNK_ELEMS,
    Fingerprints,
    chunks_of,
    one_torch_thread,
    read_chunks,
    release_free_memory,
)

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
                                  "pass `allow_nonfinite` to merge it anyway")
    return NonFiniteError(f"merged tensor {plan.name!r} overflowed to Inf in its output dtype "
                          f"{plan.dtype}; pass `allow_nonfinite` or choose `dtype` float32")


def _combine(plan: TensorPlan, tensors: list[torch.Tensor], device: str,
             out: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """The merged chunk (into `out` when given, a CPU tensor of plan.dtype) and
    Σ(stored − θ₀)² over it."""
    if not plan.is_float:  # integer buffers are copied from θ₀
        return tensors[0].clone(), 0.0
    gpu = device != "cpu"
    move = (lambda t: t.to(device, non_blocking=True)) if gpu else (lambda t: t)
    dst = None if gpu else out
    # inputs with a zero coefficient are not even moved to the device
    terms = [(t, c) for t, c in zip(tensors[1:], plan.lambdas, strict=True) if c != 0.0]
    res, sq = kernels.add_deltas(move(tensors[0]), [move(t) for t, _ in terms],
                                 [c for _, c in terms], out=dst,
                                 out_dtype=None if dst is not None else plan.dtype,
                                 return_sq=True)
    if gpu:
        res = res.cpu() if out is None else out.copy_(res)
    return res, float(sq)


# elements per call of a chunk op: its fp32 temporaries (a dozen for TIES) stay a few MiB
# each and in cache, whatever the read chunk size
OP_BLOCK = 1 << 20


def _fill(op, tensors: list[torch.Tensor], start: int, out: torch.Tensor) -> float:
    """Run a chunk op block by block, rounding its values once into `out`; returns
    Σ(stored − θ₀)² over the chunk."""
    n = out.numel()
    fused = op.fill(tensors, start, start + n, out) if hasattr(op, "fill") else None
    if fused is not None:
        return fused
    for a in range(0, n, OP_BLOCK):
        b = min(a + OP_BLOCK, n)
        values = op.apply([t[a:b] for t in tensors], start + a, start + b)
        if values.numel() != b - a:
            raise RuntimeError(f"tensor op returned {values.numel()} values for {b - a}")
        out[a:b].copy_(values.reshape(-1))
    return float(kernels.sq_dist(tensors[0].reshape(-1), out))


class _Values:
    """A whole-tensor op's result served as a chunk op, piece by piece."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def apply(self, tensors, start: int, stop: int) -> torch.Tensor:
        return self.values[start:stop]


class _Gather:
    """Whole tensors for a whole-tensor op, filled chunk by chunk: one tensor at a time."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.parts: list[torch.Tensor] = []
        self.in_bytes = 0

    def add(self, plan: TensorPlan, start: int, tensors: list[torch.Tensor]) -> None:
        if self.name != plan.name:
            numel = math.prod(plan.shape)
            self.name, self.in_bytes = plan.name, 0
            self.parts = [torch.empty(numel, dtype=t.dtype) for t in tensors]
        for part, t in zip(self.parts, tensors, strict=True):
            part[start:start + t.numel()].copy_(t)
        self.in_bytes += sum(t.nbytes for t in tensors)

    def take(self, plan: TensorPlan) -> tuple[list[torch.Tensor], int]:
        parts, nbytes = [p.view(plan.shape) for p in self.parts], self.in_bytes
        self.name, self.parts = None, []
        return parts, nbytes


def _input_bytes(plans: list[TensorPlan], inputs: Sequence[Checkpoint]) -> int:
    return sum(math.prod(p.shape) * c.dtype(p.name).itemsize for p in plans for c in inputs)


def _stream(plans: list[TensorPlan], inputs: Sequence[Checkpoint], writer: ShardWriter,
            options: MergeOptions, fingerprints: Fingerprints, *, uncached: bool
            ) -> dict[str, float]:
    """`uncached`: the inputs exceed memory, so read them past the page cache (O_DIRECT) and
    drop what a statistics pass cached once the merge has read it for the last time."""
    chunks = [c for p in plans for c in chunks_of(p.name, math.prod(p.shape), CHUNK_ELEMS)]
    by_name = {p.name: p for p in plans}
    sq: dict[str, float] = {p.name: 0.0 for p in plans}
    total = _input_bytes(plans, inputs)
    itemsize = max((p.dtype.itemsize for p in plans), default=4)
    largest = max((c.stop - c.start for c in chunks), default=0)  # ≤ CHUNK_ELEMS
    # one chunk being filled, DEPTH queued, one being written
    buffers = _OutputBuffers(_BackgroundWriter.DEPTH + 2, max(1, largest) * itemsize)
    bg = _BackgroundWriter(writer, options.progress, total, buffers)
    gather = _Gather()

    def emit(plan: TensorPlan, start: int, tensors: list[torch.Tensor], op,
             in_bytes: int) -> None:
        """Store one chunk: computed by `op` (a chunk op), or the linear combination (None)."""
        stop = start + tensors[0].numel()
        raw, out = (buffers.get(plan.dtype, stop - start) if plan.is_float else (None, None))
        if op is None:
            out, s = _combine(plan, tensors, options.device, out)
        else:
            s = _fill(op, tensors, start, out)
        if not math.isfinite(s) and not options.allow_nonfinite:
            if raw is not None:
                buffers.put(raw)
            raise _nonfinite_error(plan, inputs, tensors)
        sq[plan.name] += s
        bg.put(plan.name, out, raw, in_bytes)

    try:
        # A tensor whose statistics pass runs first is then in the page cache: read it there.
        cached = {p.name for p in plans if p.op is not None and p.op.reads_first}
        with one_torch_thread():
            for chunk, tensors in read_chunks(inputs, chunks, fingerprints=fingerprints,
                                              direct=uncached, cached=cached, drop=uncached):
                plan = by_name[chunk.name]
                in_bytes = sum(t.numel() * t.element_size() for t in tensors)
                if plan.op is None or not plan.op.whole:
                    emit(plan, chunk.start, tensors, plan.op, in_bytes)
                    if plan.op is not None and chunk.last:
                        release_free_memory()
                    continue
                gather.add(plan, chunk.start, tensors)
                if chunk.last:
                    whole, in_bytes = gather.take(plan)
                    values = _Values(plan.op.apply(whole, 0, math.prod(plan.shape)).reshape(-1))
                    flat = [t.reshape(-1) for t in whole]
                    for piece in chunks_of(plan.name, math.prod(plan.shape), CHUNK_ELEMS):
                        a, b = piece.start, piece.stop
                        emit(plan, a, [t[a:b] for t in flat], values,
                             in_bytes if piece.last else 0)
        bg.finish()
    except BaseException:
        bg.abort()
        raise
    return sq


def execute(plans: list[TensorPlan], inputs: Sequence[Checkpoint], out: str | Path, *,
            options: MergeOptions, recipe: dict) -> dict:
    """Stream the merge into `out` and return the recipe written beside the weights.

    `recipe` carries the method, parameters and input descriptions; this adds fingerprints,
    output hashes and measured distances to θ₀.
    """
    specs = [TensorSpec(p.name, p.dtype, p.shape) for p in plans]
    fingerprints = Fingerprints(len(inputs))
    with publishing(out, overwrite=options.overwrite, inputs=[c.path for c in inputs]) as tmp:
        uncached = direct.wanted(_input_bytes(plans, inputs))  # nor will the output stay
        writer = ShardWriter(tmp, specs, shard_size=options.shard_size, drop_behind=uncached)
        sq = _stream(plans, inputs, writer, options, fingerprints, uncached=uncached)
        shard_hashes = writer.close()
        recipe = dict(recipe)
        for i, entry in enumerate(recipe["inputs"]):
            entry["fingerprint"] = fingerprints.digest(i, inputs[i])
        recipe["distances"] = {
            # fsum, as `distance.tensor_distances`: a reader may use this instead of a pass
            "global_to_base": math.sqrt(math.fsum(sq.values())),
            "per_tensor_to_base": {k: math.sqrt(v) for k, v in sq.items()},
        }
        if license_ := base_license(inputs[0].path):  # from θ₀'s card (README.md)
            recipe["base_license"] = license_
        recipe = finish_model_folder(tmp, recipe, output=output_record(writer, shard_hashes, specs),
                                     specs=specs, like=inputs[0].path)
        write_text_synced(tmp / CARD_FILE, render_card(recipe))
    log.info("wrote %s (distance to base %.6g)", out, recipe["distances"]["global_to_base"])
    return recipe

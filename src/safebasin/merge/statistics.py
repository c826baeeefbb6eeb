"""The statistics pass: stream the tensors whose `TensorStatistic`s still want data.

One pass reads every pending tensor once, chunk by chunk, through the same read-ahead reader as
the merge; statistics that need another pass (radix selection) ask for it in `end_pass`, and
only their tensors are read again. Memory is the reader's buffers plus what each statistic
keeps, never a whole model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from ..checkpoint import Checkpoint
from . import stream
from .ops import TensorStatistic
from .stream import chunks_of, read_chunks, release_free_memory, torch_threads

__all__ = ["collect_statistics"]

_BLOCK = 1 << 20  # elements per update call: a statistic's fp32 temporaries stay small
_MAX_PASSES = 16  # radix selection needs 2; anything near this is a bug in a statistic


def collect_statistics(inputs: Sequence[Checkpoint], stats: Mapping[str, TensorStatistic], *,
                       progress: Callable[[int, int], None] | None = None,
                       threads: int = 1) -> int:
    """Run passes over `inputs` until every statistic is done; returns the number of passes.

    Args:
        inputs: the merge's checkpoints, θ₀ first (already aligned: see `plan.align`).
        stats: one statistic per tensor name; tensors not named are not read.
        progress: called as progress(bytes_read_now, bytes_of_this_pass).
        threads: torch's intra-op threads during the passes (one: the reader's threads keep
            the cores busy; SLERP asks for mergekit's count, which its bits depend on).
    """
    pending = dict(stats)
    passes = 0
    with torch_threads(threads):
        while pending:
            passes += 1
            if passes > _MAX_PASSES:
                raise RuntimeError(f"statistics still pending after {_MAX_PASSES} passes: "
                                   f"{sorted(pending)[:3]}")
            size = stream.CHUNK_ELEMS  # read at call time, so tests can shrink it
            chunks = [c for n in pending
                      for c in chunks_of(n, math.prod(inputs[0].shape(n)), size)]
            total = sum(math.prod(inputs[0].shape(n)) * c.dtype(n).itemsize
                        for n in pending for c in inputs)
            for chunk, tensors in read_chunks(inputs, chunks):
                stat = pending[chunk.name]
                for a in range(0, chunk.stop - chunk.start, _BLOCK):  # bounded temporaries
                    b = min(a + _BLOCK, chunk.stop - chunk.start)
                    stat.update([t[a:b] for t in tensors], chunk.start + a, chunk.start + b)
                if chunk.last:
                    release_free_memory()
                if progress:
                    progress(sum(t.nbytes for t in tensors), total)
            pending = {n: s for n, s in pending.items() if s.end_pass()}
    return passes

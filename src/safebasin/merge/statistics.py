"""The statistics pass: stream the tensors whose `TensorStatistic`s still want data.

One pass reads every pending tensor once, chunk by chunk, through the same read-ahead reader as
the merge; statistics that need another pass (radix selection, SLERP's dot products) ask for it
in `end_pass`, and only their tensors are read again. The passes run group by group (about
1 GiB of input bytes each), so a second pass reads what the first has just left in the page
cache: a model larger than memory is read from the disk once, not once per pass (TIES on the
Llama-3.1-8B shapes took 3.0x the I/O floor with whole-model passes). Memory is the reader's
buffers plus what each statistic keeps, never a whole model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..checkpoint import Checkpoint
from . import stream
from .ops import TensorOp, TensorStatistic
from .stream import ReadBuffers, chunks_of, read_chunks, release_free_memory, torch_threads

__all__ = ["StatisticsFirst", "collect_statistics", "look_ahead", "statistics_buffers"]

_BLOCK = 1 << 20  # elements per update call: a statistic's fp32 temporaries stay small
_MAX_PASSES = 16  # radix selection needs 2; anything near this is a bug in a statistic
# input bytes of the tensors whose passes run together (a larger tensor is a group alone)
GROUP_BYTES = 1 << 30
# elements per read of a `StatisticsFirst` op's passes: its buffers exist beside the merge's
STATISTICS_CHUNK = 1 << 20


def statistics_buffers(inputs: Sequence[Checkpoint]) -> Callable[[], ReadBuffers]:
    """The reader buffers of the `StatisticsFirst` ops of one merge: one set, allocated when
    the first op needs it."""
    @functools.cache
    def make() -> ReadBuffers:
        elems = min(stream.CHUNK_ELEMS, STATISTICS_CHUNK)
        return ReadBuffers(inputs, elems, elems)
    return make


def collect_statistics(inputs: Sequence[Checkpoint], stats: Mapping[str, TensorStatistic], *,
                       threads: int = 1, buffers: ReadBuffers | None = None,
                       direct: bool = False) -> int:
    """Run passes over `inputs` until every statistic is done; returns the most passes any
    group of tensors needed.

    Args:
        inputs: the merge's checkpoints, θ₀ first (already aligned: see `plan.align`).
        stats: one statistic per tensor name; tensors not named are not read.
        threads: torch's intra-op threads during the passes (one: the reader's threads keep
            the cores busy; SLERP asks for mergekit's count, which its bits depend on).
        buffers: the reader's buffers, reused, whose chunk size the passes read in; by
            default allocated for this call, for `stream.CHUNK_ELEMS`.
        direct: when `buffers` is None, read with O_DIRECT (`checkpoint.direct`): for
            statistics of one pass, since a second pass would then come from the disk.
    """
    if buffers is None:
        size = stream.CHUNK_ELEMS  # read at call time, so tests can shrink it
        every = [c for n in stats for c in chunks_of(n, math.prod(inputs[0].shape(n)), size)]
        buffers = ReadBuffers.for_chunks(inputs, every, size, direct=direct)
    passes = 0
    with torch_threads(threads):
        for group in _groups(inputs, list(stats)):
            passes = max(passes, _run_passes(inputs, {n: stats[n] for n in group}, buffers))
    return passes


def _input_bytes(inputs: Sequence[Checkpoint], name: str) -> int:
    return sum(math.prod(inputs[0].shape(name)) * c.dtype(name).itemsize for c in inputs)


def _groups(inputs: Sequence[Checkpoint], names: list[str]) -> list[list[str]]:
    """Consecutive tensors in groups of at most GROUP_BYTES input bytes."""
    groups: list[list[str]] = []
    size = 0
    for name in names:
        nbytes = _input_bytes(inputs, name)
        if not groups or size + nbytes > GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def _run_passes(inputs: Sequence[Checkpoint], stats: Mapping[str, TensorStatistic],
                buffers: ReadBuffers) -> int:
    """Passes over the tensors of `stats` until every one is done; returns their count."""
    pending = dict(stats)
    passes = 0
    while pending:
        passes += 1
        if passes > _MAX_PASSES:
            raise RuntimeError(f"statistics still pending after {_MAX_PASSES} passes: "
                               f"{sorted(pending)[:3]}")
        chunks = [c for n in pending
                  for c in chunks_of(n, math.prod(inputs[0].shape(n)), buffers.chunk_elems)]
        for chunk, tensors in read_chunks(inputs, chunks, buffers=buffers):
            stat = pending[chunk.name]
            for a in range(0, chunk.stop - chunk.start, _BLOCK):  # bounded temporaries
                b = min(a + _BLOCK, chunk.stop - chunk.start)
                stat.update([t[a:b] for t in tensors], chunk.start + a, chunk.start + b)
            if chunk.last:
                release_free_memory()
        pending = {n: s for n, s in pending.items() if s.end_pass()}
    return passes


class StatisticsFirst(TensorOp):
    """A chunk op built when the merge reaches its tensor: the tensor's statistic is collected
    then, by its own passes over that one tensor, and `build(statistic)` makes the op.

    The merge's read of the tensor follows at once and finds it in the page cache, so a model
    larger than memory is read from the disk once. Statistics passes over the whole model
    first, then the merge, read it from the disk once per pass: TIES on the full Llama-3.1-8B
    shapes took 2.9x the I/O floor that way. `buffers()` gives the statistics reader's
    buffers: one small set shared by the ops of a merge (`statistics_buffers`, cached);
    `threads`: torch's intra-op threads during the passes (see `collect_statistics`).
    Ops linked by `look_ahead` collect on a background thread, one tensor ahead.
    """

    reads_first = True

    def __init__(self, inputs: Sequence[Checkpoint], name: str, statistic: TensorStatistic,
                 build: Callable[[TensorStatistic], TensorOp],
                 buffers: Callable[[], ReadBuffers], *, threads: int = 1) -> None:
        self._inputs, self._name, self._statistic = inputs, name, statistic
        self._build, self._buffers, self._threads = build, buffers, threads
        self._op: TensorOp | None = None
        self._worker: ThreadPoolExecutor | None = None  # set by `look_ahead`
        self._next: StatisticsFirst | None = None
        self._future: Future[TensorOp] | None = None

    def _collect(self) -> TensorOp:
        collect_statistics(self._inputs, {self._name: self._statistic},
                           buffers=self._buffers(), threads=self._threads)
        op, self._statistic = self._build(self._statistic), None
        # the selection's temporaries (torch.kthvalue's copies) are freed by now; on the
        # background thread they sit in its own malloc arena until trimmed (8B breadcrumbs:
        # a 546 MiB peak in 1 run of 3 without this)
        release_free_memory()
        if op.whole:
            raise TypeError(f"{type(op).__name__} is a whole-tensor op; "
                            "StatisticsFirst builds chunk ops")
        return op

    def _start(self) -> Future[TensorOp]:
        assert self._worker is not None
        if self._future is None:
            self._future = self._worker.submit(self._collect)
        return self._future

    def _built(self) -> TensorOp:
        if self._op is None:
            if self._worker is None:
                self._op = self._collect()
            else:
                mine = self._start()
                if self._next is not None:  # its passes overlap this tensor's merge
                    self._next._start()
                else:
                    self._worker.shutdown(wait=False)
                self._op = mine.result()
        return self._op

    def apply(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        return self._built().apply(tensors, start, stop)

    def fill(self, tensors: Sequence[torch.Tensor], start: int, stop: int,
             out: torch.Tensor) -> float | None:
        return self._built().fill(tensors, start, stop, out)


def look_ahead(ops: Iterable[TensorOp]) -> None:
    """Collect each `StatisticsFirst` op's statistic on one background thread while the merge
    streams the tensor before it (a merge reaches its ops in the order of `ops`).

    The passes of TIES or breadcrumbs took as long as the merge of a tensor, on the same core
    as it. One thread runs every linked op's passes in turn, so they share the statistics
    buffers as before. If the merge stops early, the thread finishes the one tensor it is on.
    (torch's intra-op thread count is a per-thread setting, so passes that set their own
    would not change the merge's; SLERP's are not linked all the same: no faster, measured.)
    """
    chain = [op for op in ops if isinstance(op, StatisticsFirst)]
    if not chain:
        return
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safebasin-statistics")
    for op, following in zip(chain, [*chain[1:], None], strict=True):
        op._worker, op._next = worker, following

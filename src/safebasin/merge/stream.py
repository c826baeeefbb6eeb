"""Read aligned chunks of several checkpoints on a background thread.

The merge is I/O bound: while the caller combines chunk k, this thread is already reading chunk
k+1 into the next free buffer (`os.preadv` releases the GIL). Buffers are allocated once, so
memory follows the chunk size and not the model. Each input tensor is hashed (xxh3-128) on the
bytes as they arrive, which gives every input a content fingerprint without a second read.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import queue
import threading
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import xxhash

from ..checkpoint import Checkpoint
from ..checkpoint.direct import aligned_buffer

# 4M elements: 8 MiB of bf16 per input and 16 MiB of fp32 work per chunk. Large enough that
# per-chunk Python overhead is noise, small enough that K inputs x 3 buffers stay far below
# the 512 MiB memory target.
CHUNK_ELEMS = 4 * 1024 * 1024
_DEPTH = 2  # chunks read ahead of the consumer
_MAX_REQUESTS = 16  # direct reads in flight at most (an EMA may have hundreds of inputs)


@dataclass(frozen=True)
class Chunk:
    """Elements [start, stop) of tensor `name`, flattened."""

    name: str
    start: int
    stop: int
    last: bool  # the final chunk of this tensor


def chunks_of(name: str, numel: int, chunk_elems: int = CHUNK_ELEMS) -> list[Chunk]:
    if numel == 0:
        return [Chunk(name, 0, 0, True)]
    starts = range(0, numel, chunk_elems)
    return [Chunk(name, s, min(s + chunk_elems, numel), s + chunk_elems >= numel)
            for s in starts]


class Fingerprints:
    """Per-input fingerprint: xxh3-128 over (name, dtype, shape, hash of bytes) of each tensor."""

    def __init__(self, n_inputs: int) -> None:
        self._open: list[dict[str, xxhash.xxh3_128]] = [{} for _ in range(n_inputs)]
        self._done: list[dict[str, str]] = [{} for _ in range(n_inputs)]

    def update(self, i: int, ckpt: Checkpoint, chunk: Chunk, data: torch.Tensor) -> None:
        stored = ckpt.resolve(chunk.name)
        if stored != chunk.name or stored in self._done[i]:
            return  # aliases (a tied lm_head) are hashed once, under the stored name
        h = self._open[i].setdefault(stored, xxhash.xxh3_128())
        if data.numel():
            h.update(memoryview(data.view(torch.uint8).numpy()))
        if chunk.last:
            self._done[i][stored] = h.hexdigest()
            del self._open[i][stored]

    def digest(self, i: int, ckpt: Checkpoint) -> str:
        h = xxhash.xxh3_128()
        for name in sorted(self._done[i]):
            h.update(f"{name}\t{ckpt.dtype(name)}\t{ckpt.shape(name)}\t"
                     f"{self._done[i][name]}\n".encode())
        return h.hexdigest()


class _BufferPool:
    def __init__(self, n: int, nbytes: int, direct: bool = False) -> None:
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(n):
            self._free.put(aligned_buffer(nbytes) if direct else memoryview(bytearray(nbytes)))

    def get(self) -> memoryview:
        return self._free.get()

    def get_nowait(self) -> memoryview | None:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None

    def put(self, buf: memoryview) -> None:
        self._free.put(buf)


class ReadBuffers:
    """The reader's buffers (one pool per input), kept across several `read_chunks` calls: a
    statistics pass per group of tensors would otherwise allocate, zero and fault in 64 MiB
    again for every group (an 8B's TIES statistics spent 22 s of 32 in the kernel)."""

    def __init__(self, inputs: Sequence[Checkpoint], elems: int,
                 chunk_elems: int = CHUNK_ELEMS, *, direct: bool = False) -> None:
        """Buffers of `elems` elements of the inputs' widest dtype, for chunks of at most
        `chunk_elems` elements (elems may be fewer: no chunk is larger). `direct`: page-aligned
        buffers, and reads that bypass the page cache (`checkpoint.direct`)."""
        itemsize = max((c.dtype(n).itemsize for c in inputs for n in c.names), default=4)
        self.chunk_elems = chunk_elems
        self.direct = direct
        self.pools = [_BufferPool(_DEPTH + 2, max(1, elems) * itemsize, direct)
                      for _ in inputs]

    @classmethod
    def for_chunks(cls, inputs: Sequence[Checkpoint], chunks: Sequence[Chunk],
                   chunk_elems: int = CHUNK_ELEMS, *, direct: bool = False) -> ReadBuffers:
        """Buffers as large as the largest of `chunks`, not chunk_elems: an offline EMA over
        hundreds of small checkpoints would otherwise zero-fill (DEPTH + 2) × 16 MB per
        input."""
        largest = min(chunk_elems, max((c.stop - c.start for c in chunks), default=0))
        return cls(inputs, largest, chunk_elems, direct=direct)


def _complete(ckpt: Checkpoint, chunk: Chunk, row: int) -> bool:
    """Whether `ckpt` holds every row of `chunk` (not so for a smaller vocabulary)."""
    return not row or ckpt.shape(chunk.name)[0] * row >= chunk.stop


def _read_rows(ckpt: Checkpoint, base_chunk: torch.Tensor | None, chunk: Chunk,
               row: int, buf: memoryview, direct: bool = False) -> torch.Tensor:
    """Read a chunk; rows this input lacks (a smaller vocabulary) are taken from θ₀'s chunk.

    `direct`: bypass the page cache where `ckpt` can (the tensor is then a view at some
    offset into `buf`); only for a chunk the input holds completely."""
    if _complete(ckpt, chunk, row) or base_chunk is None:
        if direct and hasattr(ckpt, "read_flat_direct"):
            return ckpt.read_flat_direct(chunk.name, chunk.start, chunk.stop, buf)
        return ckpt.read_flat_into(chunk.name, chunk.start, chunk.stop, buf)
    stop = min(chunk.stop, ckpt.shape(chunk.name)[0] * row)
    n = chunk.stop - chunk.start
    dtype = ckpt.dtype(chunk.name)
    out = torch.frombuffer(buf[: n * dtype.itemsize], dtype=dtype)
    k = max(stop - chunk.start, 0)
    if k:
        out[:k] = ckpt.read_flat_into(chunk.name, chunk.start, stop, buf)
    out[k:] = base_chunk[k:].to(dtype)
    return out


def read_chunks(inputs: Sequence[Checkpoint], chunks: Sequence[Chunk], *,
                fingerprints: Fingerprints | None = None, buffers: ReadBuffers | None = None,
                direct: bool = False, cached: Collection[str] = (), drop: bool = False
                ) -> Iterator[tuple[Chunk, list[torch.Tensor]]]:
    """Yield each chunk with one flat tensor per input, read ahead on a background thread.

    The tensors of one chunk stay valid until the next chunk is requested. `buffers` (large
    enough for every chunk) are reused from an earlier call; by default they are allocated, as
    large as the largest chunk. `direct` (or direct `buffers`; `direct` with buffered `buffers`
    is refused): read with O_DIRECT, every input of a chunk at once so the disk has several
    requests in flight, except the tensors named in `cached`, which a statistics pass has just
    read into the page cache. `drop`: this is the last read of every chunk, so drop its bytes
    from the page cache when the next chunk is asked for (`Checkpoint.forget`), for inputs
    larger than memory. Not as soon as read: a tensor's statistics pass, run when the
    consumer reaches its first chunk, reads it again after the first chunks were read ahead.
    """
    if buffers is not None and direct and not buffers.direct:
        raise ValueError("direct reads need buffers allocated with direct=True")
    buffers = buffers or ReadBuffers.for_chunks(inputs, chunks, direct=direct)
    pools, direct = buffers.pools, buffers.direct
    ready: queue.Queue = queue.Queue(maxsize=_DEPTH)
    stop = threading.Event()

    def row_of(chunk: Chunk) -> int:
        shape = inputs[0].shape(chunk.name)
        return _prod(shape[1:]) if shape else 0  # elements per row; 0: a scalar

    def read_in_order(chunk: Chunk, bufs: list[memoryview]) -> list[torch.Tensor]:
        tensors: list[torch.Tensor] = []
        for ckpt, buf in zip(inputs, bufs, strict=True):
            tensors.append(_read_rows(ckpt, tensors[0] if tensors else None, chunk,
                                      row_of(chunk), buf))
        return tensors

    def deliver(chunk: Chunk, tensors: list[torch.Tensor], bufs: list[memoryview]) -> None:
        if fingerprints is not None:
            for i, t in enumerate(tensors):
                fingerprints.update(i, inputs[i], chunk, t)
        ready.put((chunk, tensors, bufs))

    def buffered() -> None:
        for chunk in chunks:
            if stop.is_set():
                return
            bufs = [pool.get() for pool in pools]
            deliver(chunk, read_in_order(chunk, bufs), bufs)

    def in_flight(requests: ThreadPoolExecutor) -> None:
        """Direct reads, which wait on the disk: every input of every chunk that has a free
        buffer is read at once, while earlier chunks are hashed and handed over."""
        pending: collections.deque = collections.deque()

        def hand_over_oldest() -> None:
            chunk, futures, bufs = pending.popleft()
            deliver(chunk, [f.result() for f in futures], bufs)

        for chunk in chunks:
            if stop.is_set():
                return
            while (first := pools[0].get_nowait()) is None and pending:
                hand_over_oldest()
            bufs = [first or pools[0].get()] + [pool.get() for pool in pools[1:]]
            row = row_of(chunk)
            if not all(_complete(c, chunk, row) for c in inputs):  # rows come from θ₀'s
                while pending:
                    hand_over_oldest()
                deliver(chunk, read_in_order(chunk, bufs), bufs)
                continue
            use_direct = chunk.name not in cached
            pending.append((chunk, [requests.submit(_read_rows, c, None, chunk, row, buf,
                                                    use_direct)
                                    for c, buf in zip(inputs, bufs, strict=True)], bufs))
            while pending and all(f.done() for f in pending[0][1]):
                hand_over_oldest()
        while pending:
            hand_over_oldest()

    def run() -> None:
        try:
            if direct:
                with ThreadPoolExecutor(min(len(inputs) * (_DEPTH + 2), _MAX_REQUESTS),
                                        thread_name_prefix="safebasin-read") as requests:
                    in_flight(requests)
            else:
                buffered()
            ready.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            ready.put(e)

    thread = threading.Thread(target=run, name="safebasin-reader", daemon=True)
    thread.start()
    held: list[memoryview] | None = None
    done: Chunk | None = None  # the chunk the consumer had last, with `drop`
    try:
        while True:
            if done is not None:
                _forget(inputs, done)
                done = None
            item = ready.get()
            if held is not None:
                for pool, buf in zip(pools, held, strict=True):
                    pool.put(buf)
                held = None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            chunk, tensors, held = item
            yield chunk, tensors
            done = chunk if drop else None
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on the queue or a buffer
            if held is not None:
                for pool, buf in zip(pools, held, strict=True):
                    pool.put(buf)
                held = None
            try:
                item = ready.get_nowait()
                if isinstance(item, tuple):
                    held = item[2]
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


def _forget(inputs: Sequence[Checkpoint], chunk: Chunk) -> None:
    """Drop a chunk's bytes of every input from the page cache (after all of them were read:
    two inputs may be one file)."""
    for ckpt in inputs:
        held = _prod(ckpt.shape(chunk.name))  # fewer rows in a smaller vocabulary
        ckpt.forget(chunk.name, chunk.start, min(chunk.stop, held))


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing).

    Tensor ops allocate many short-lived multi-MiB temporaries; glibc then raises its mmap
    threshold and serves them from the heap, whose free space it keeps: measured on the
    1.2B pair, TIES peaked at 1770 MiB without this, called once per finished tensor."""
    if _TRIM is not None:
        _TRIM(0)


def _prod(xs: Sequence[int]) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops on n intra-op threads inside the block, then restore the setting."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_torch_thread() -> contextlib.AbstractContextManager[None]:
    """Run torch's CPU ops on one thread while streaming, then restore the setting.

    Streaming already keeps the cores busy with its reader and writer threads; torch's
    intra-op threads would fight them, and on a loaded machine every parallel op then waits
    milliseconds for its OpenMP team (measured on 2 cores at load 4: 41 s for a 135M-shaped
    lerp with 2 threads, 1.2 s with one).
    """
    return torch_threads(1)

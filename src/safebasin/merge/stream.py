"""Read aligned chunks of several checkpoints on a background thread.

The merge is I/O bound: while the caller combines chunk k, this thread is already reading chunk
k+1 into the next free buffer (`os.preadv` releases the GIL). Buffers are allocated once, so
memory follows the chunk size and not the model. Each input tensor is hashed (xxh3-128) on the
bytes as they arrive, which gives every input a content fingerprint without a second read.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import xxhash

from ..checkpoint import Checkpoint

# 4M elements: 8 MiB of bf16 per input and 16 MiB of fp32 work per chunk. Large enough that
# per-chunk Python overhead is noise, small enough that K inputs x 3 buffers stay far below
# the 512 MiB memory target.
CHUNK_ELEMS = 4 * 1024 * 1024
_DEPTH = 2  # chunks read ahead of the consumer


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
    def __init__(self, n: int, nbytes: int) -> None:
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(n):
            self._free.put(memoryview(bytearray(nbytes)))

    def get(self) -> memoryview:
        return self._free.get()

    def put(self, buf: memoryview) -> None:
        self._free.put(buf)


class ReadBuffers:
    """The reader's buffers (one pool per input), kept across several `read_chunks` calls: a
    statistics pass per group of tensors would otherwise allocate, zero and fault in 64 MiB
    again for every group (an 8B's TIES statistics spent 22 s of 32 in the kernel)."""

    def __init__(self, inputs: Sequence[Checkpoint], elems: int,
                 chunk_elems: int = CHUNK_ELEMS) -> None:
        """Buffers of `elems` elements of the inputs' widest dtype, for chunks of at most
        `chunk_elems` elements (elems may be fewer: no chunk is larger)."""
        itemsize = max((c.dtype(n).itemsize for c in inputs for n in c.names), default=4)
        self.chunk_elems = chunk_elems
        self.pools = [_BufferPool(_DEPTH + 2, max(1, elems) * itemsize) for _ in inputs]

    @classmethod
    def for_chunks(cls, inputs: Sequence[Checkpoint], chunks: Sequence[Chunk],
                   chunk_elems: int = CHUNK_ELEMS) -> ReadBuffers:
        """Buffers as large as the largest of `chunks`, not chunk_elems: an offline EMA over
        hundreds of small checkpoints would otherwise zero-fill (DEPTH + 2) × 16 MB per
        input."""
        largest = min(chunk_elems, max((c.stop - c.start for c in chunks), default=0))
        return cls(inputs, largest, chunk_elems)


def _read_rows(ckpt: Checkpoint, base_chunk: torch.Tensor | None, chunk: Chunk,
               row: int, buf: memoryview) -> torch.Tensor:
    """Read a chunk; rows this input lacks (a smaller vocabulary) are taken from θ₀'s chunk."""
    have = ckpt.shape(chunk.name)[0] * row if row else chunk.stop  # elements this input has
    stop = min(chunk.stop, have)
    if stop >= chunk.stop or base_chunk is None:
        return ckpt.read_flat_into(chunk.name, chunk.start, chunk.stop, buf)
    n = chunk.stop - chunk.start
    dtype = ckpt.dtype(chunk.name)
    out = torch.frombuffer(buf[: n * dtype.itemsize], dtype=dtype)
    k = max(stop - chunk.start, 0)
    if k:
        out[:k] = ckpt.read_flat_into(chunk.name, chunk.start, stop, buf)
    out[k:] = base_chunk[k:].to(dtype)
    return out


def read_chunks(inputs: Sequence[Checkpoint], chunks: Sequence[Chunk], *,
                fingerprints: Fingerprints | None = None, buffers: ReadBuffers | None = None
                ) -> Iterator[tuple[Chunk, list[torch.Tensor]]]:
    """Yield each chunk with one flat tensor per input, read ahead on a background thread.

    The tensors of one chunk stay valid until the next chunk is requested. `buffers` (large
    enough for every chunk) are reused from an earlier call; by default they are allocated, as
    large as the largest chunk.
    """
    pools = (buffers or ReadBuffers.for_chunks(inputs, chunks)).pools
    ready: queue.Queue = queue.Queue(maxsize=_DEPTH)
    stop = threading.Event()

    def work() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                shape = inputs[0].shape(chunk.name)
                row = _prod(shape[1:]) if shape else 0  # elements per row; 0: a scalar
                bufs, tensors = [], []
                for i, ckpt in enumerate(inputs):
                    buf = pools[i].get()
                    t = _read_rows(ckpt, tensors[0] if tensors else None, chunk, row, buf)
                    if fingerprints is not None:
                        fingerprints.update(i, ckpt, chunk, t)
                    bufs.append(buf)
                    tensors.append(t)
                ready.put((chunk, tensors, bufs))
            ready.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            ready.put(e)

    thread = threading.Thread(target=work, name="safebasin-reader", daemon=True)
    thread.start()
    held: list[memoryview] | None = None
    try:
        while True:
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

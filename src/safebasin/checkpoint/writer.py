"""Stream tensors into safetensors shards whose headers are written first.

The writer is told every output tensor's name, dtype and shape up front, so it can lay out each
shard (HF names `model-0000i-of-0000N.safetensors`, or `model.safetensors` for one shard) and
write its header before the first data byte. Data then arrives in order, chunk by chunk; no shard
is ever held in memory. Each shard and each tensor is hashed (xxh3-128) on the bytes as they pass,
so the recipe can record content hashes without a second read.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from .._fs import drop_cached
from ..errors import OutputNotWritableError
from .header import DTYPE_NAMES
from .reader import INDEX_FILE, SINGLE_FILE

DEFAULT_SHARD_SIZE = 5 * 10**9  # bytes per shard: HF's default max_shard_size, "5GB"
WRITE_BEHIND = 32 << 20  # bytes written between two starts of their disk writes


def _sync_file_range():
    """libc's sync_file_range (Linux; Python's os module lacks it), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait
_SYNC_FILE_RANGE_WAIT = 1 | 2 | 4  # wait for earlier writeback, write, wait for this one


@dataclass(frozen=True)
class TensorSpec:
    """An output tensor announced before writing starts."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(specs: list[TensorSpec], shard_size: int) -> list[list[TensorSpec]]:
    """Greedy split in order: a new shard starts when the next tensor would pass `shard_size`."""
    shards: list[list[TensorSpec]] = [[]]
    used = 0
    for s in specs:
        if shards[-1] and used + s.nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(s)
        used += s.nbytes
    return shards


def shard_file_names(n: int) -> list[str]:
    if n == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _header_bytes(specs: list[TensorSpec]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": DTYPE_NAMES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data region to 8 bytes, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Writes announced tensors, in order, into shards inside `folder`.

    Call `write(name, data)` one or more times per tensor (chunks in order), then `close()`,
    which fsyncs every shard, writes the index when there are several shards, and returns the
    content hashes. Files are written only inside `folder`, normally a temporary folder that the
    caller publishes by renaming it.

    `drop_behind`: once each 32 MiB range is on the disk, drop it from the page cache, for
    outputs that will not stay cached anyway (a merge of inputs larger than memory). Growing
    the cache costs more than the disk on some machines: writing 16 GB after the cache was
    emptied took 15.2-22.0 s with write-behind alone and 12.6-13.0 s dropping behind it (2-core
    Firecracker VM, 24 GiB; `benchmarks/page_cache.py`, docs/merge-engine.md).
    """

    def __init__(self, folder: Path, specs: list[TensorSpec], *, shard_size: int,
                 drop_behind: bool = False) -> None:
        self.folder = folder
        self._drop_behind = drop_behind
        self._shards = plan_shards(specs, shard_size)
        self._files = shard_file_names(len(self._shards))
        self._queue = [(si, s) for si, shard in enumerate(self._shards) for s in shard]
        self._pos = 0  # index into _queue of the tensor being written
        self._left = self._queue[0][1].nbytes if self._queue else 0
        self._shard_idx = -1
        self._fd: int | None = None
        self._shard_hash = xxhash.xxh3_128()
        self._tensor_hash = xxhash.xxh3_128()
        self.shard_hashes: dict[str, str] = {}
        self.tensor_hashes: dict[str, str] = {}
        self._advance_empty()

    # -- internals --------------------------------------------------------------------------
    def _open_shard(self, idx: int) -> None:
        self._finish_shard()
        self._shard_idx = idx
        path = self.folder / self._files[idx]
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise OutputNotWritableError(f"{path}: cannot create: {e.strerror}") from e
        self._shard_hash = xxhash.xxh3_128()
        self._written = self._flushed = self._dropped = 0
        self._raw_write(_header_bytes(self._shards[idx]))

    def _raw_write(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        self._shard_hash.update(view)
        while view:
            try:
                n = os.write(self._fd, view)  # type: ignore[arg-type]
            except OSError as e:
                raise OutputNotWritableError(
                    f"{self.folder / self._files[self._shard_idx]}: write failed: "
                    f"{e.strerror}") from e
            view = view[n:]
            self._written += n
        if self._written - self._flushed >= WRITE_BEHIND:
            self._write_behind()

    def _write_behind(self) -> None:
        """Start the disk writes of what is written so far, without waiting for them: the
        kernel would otherwise hold a whole shard of dirty pages (below its background
        threshold, 10% of memory) and write it all in the final fsync."""
        if _SYNC_FILE_RANGE is not None:  # advice only: if refused, fsync writes it all
            _SYNC_FILE_RANGE(self._fd, self._flushed, self._written - self._flushed,
                             _SYNC_FILE_RANGE_WRITE)
            if self._drop_behind and self._dropped < self._flushed:
                # the range started last time is on its way: wait for it, then forget it
                # (pages still dirty or under writeback would not be dropped)
                _SYNC_FILE_RANGE(self._fd, self._dropped, self._flushed - self._dropped,
                                 _SYNC_FILE_RANGE_WAIT)
                drop_cached(self._fd, self._dropped, self._flushed - self._dropped)
                self._dropped = self._flushed
        self._flushed = self._written

    def _finish_shard(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise OutputNotWritableError(f"{self.folder}: fsync failed: {e.strerror}") from e
        else:
            if self._drop_behind:
                drop_cached(self._fd, 0, 0)  # 0: to the end of the file
        finally:
            os.close(self._fd)
            self._fd = None
        self.shard_hashes[self._files[self._shard_idx]] = self._shard_hash.hexdigest()

    def _advance_empty(self) -> None:
        """Open the shard of the next tensor and close out zero-byte tensors on the way."""
        while self._pos < len(self._queue):
            si, spec = self._queue[self._pos]
            if si != self._shard_idx:
                self._open_shard(si)
            if self._left:
                return
            self.tensor_hashes[spec.name] = self._tensor_hash.hexdigest()
            self._tensor_hash = xxhash.xxh3_128()
            self._pos += 1
            if self._pos < len(self._queue):
                self._left = self._queue[self._pos][1].nbytes

    # -- public -----------------------------------------------------------------------------
    def write(self, name: str, data: torch.Tensor | memoryview | bytes) -> None:
        """Append the next bytes of tensor `name` (which must be the one the writer expects)."""
        empty = data.numel() == 0 if isinstance(data, torch.Tensor) else not memoryview(data)
        if empty:
            return  # zero-byte tensors were closed out when the writer reached them
        if self._pos >= len(self._queue) or self._queue[self._pos][1].name != name:
            expected = self._queue[self._pos][1].name if self._pos < len(self._queue) else None
            raise RuntimeError(f"ShardWriter expected {expected!r}, got {name!r}")
        if isinstance(data, torch.Tensor):
            data = memoryview(data.contiguous().reshape(-1).view(torch.uint8).numpy())
        view = memoryview(data).cast("B")
        if len(view) > self._left:
            raise RuntimeError(f"too many bytes for {name!r}: {len(view)} > {self._left}")
        self._tensor_hash.update(view)
        self._raw_write(view)
        self._left -= len(view)
        self._advance_empty()

    def close(self) -> dict[str, str]:
        """Fsync and close the last shard, write the index if sharded; return shard hashes."""
        if self._pos != len(self._queue):
            raise RuntimeError(f"ShardWriter closed before {self._queue[self._pos][1].name!r}")
        if self._shard_idx == -1 and not self._queue:
            self._open_shard(0)  # a model with no tensors still gets a valid empty file
        self._finish_shard()
        if len(self._files) > 1:
            weight_map = {s.name: f for f, shard in zip(self._files, self._shards, strict=True)
                          for s in shard}
            total = sum(s.nbytes for shard in self._shards for s in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            write_text_synced(self.folder / INDEX_FILE, json.dumps(index, indent=2) + "\n")
        return dict(self.shard_hashes)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_text_synced(path: Path, text: str) -> None:
    """Write a small text file and fsync it (recipes, index, model cards)."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputNotWritableError(f"{path}: cannot write: {e.strerror}") from e

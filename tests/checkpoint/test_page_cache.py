"""Dropping inputs and outputs from the page cache for merges larger than memory: the pages go,
at the right moment, over the right ranges, and the merged bytes do not change."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from safebasin import _fs
from safebasin.checkpoint import Checkpoint
from safebasin.checkpoint import reader as reader_mod
from safebasin.merge import stream

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def _resident_pages(path: Path) -> int:
    """Pages of `path` in the page cache: mincore over a mapping that is never touched."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(-(-size // mmap.PAGESIZE))
            assert _libc.mincore(address, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def test_drop_cached_empties_the_cache_of_a_read_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(4 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages would stay
        assert len(os.pread(fd, 4 << 20, 0)) == 4 << 20
        assert _resident_pages(path) > 0
        _fs.drop_cached(fd, 0, 0)
    finally:
        os.close(fd)
    assert _resident_pages(path) == 0


@pytest.fixture
def two_tensors(tmp_path) -> Path:
    """A tensor that ends mid-page, then one of 3 MiB: ranges that are not folio-aligned."""
    g = torch.Generator().manual_seed(0)
    save_file({"a": torch.randn(1001, generator=g), "b": torch.randn(3 << 18, generator=g)},
              tmp_path / "model.safetensors")
    fd = os.open(tmp_path / "model.safetensors", os.O_RDONLY)
    os.fsync(fd)  # inputs are old files: clean pages, which the kernel can drop
    os.close(fd)
    return tmp_path


def test_forget_covers_the_range_from_the_folio_boundary_below(two_tensors, monkeypatch):
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(reader_mod, "drop_cached", lambda fd, off, n: calls.append((off, n)))
    with Checkpoint.open(two_tensors) as ckpt:
        info = ckpt._infos["b"]
        ckpt.forget("b", 300_000, 700_000)
        ckpt.forget("b", 5, 5)  # empty: a length of 0 would mean "to the end of the file"
        ckpt.forget("missing", 0, 10)
    (begin, n), = calls
    end = info.offset + 700_000 * 4
    assert begin % (2 << 20) == 0 and begin <= info.offset + 300_000 * 4 < begin + (2 << 20)
    assert begin + n == end


def test_read_then_forget_leaves_nothing_cached(two_tensors):
    path = two_tensors / "model.safetensors"
    with Checkpoint.open(two_tensors) as ckpt:
        chunks = [c for n in ("a", "b") for c in stream.chunks_of(n, ckpt.shape(n)[0], 100_000)]
        for _ in stream.read_chunks([ckpt], chunks, drop=True):
            pass
    # the header's page and the pages before the first folio boundary may stay; no more
    assert _resident_pages(path) <= 2


def test_a_chunk_is_forgotten_only_when_the_next_is_asked_for(two_tensors, monkeypatch):
    """A statistics pass runs when its tensor's first chunk is handed over, after the reader
    read ahead: dropping chunks as soon as read would send that pass to the disk."""
    forgotten: list[tuple[str, int, int]] = []
    monkeypatch.setattr(Checkpoint, "forget",
                        lambda self, name, a, b: forgotten.append((name, a, b)))
    with Checkpoint.open(two_tensors) as ckpt:
        chunks = [c for n in ("a", "b") for c in stream.chunks_of(n, ckpt.shape(n)[0], 300_000)]
        seen = []
        for chunk, _ in stream.read_chunks([ckpt, ckpt], chunks, drop=True):
            assert len(forgotten) == 2 * len(seen)  # both inputs of every earlier chunk only
            seen.append(chunk)
        assert forgotten == [(c.name, c.start, c.stop) for c in seen for _ in range(2)]
        forgotten.clear()
        for _ in stream.read_chunks([ckpt], chunks):
            pass
    assert forgotten == []


def test_rows_a_smaller_vocabulary_lacks_are_not_forgotten(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(1)
    save_file({"e": torch.randn(10, 4, generator=g)}, (tmp_path / "big").mkdir() or
              tmp_path / "big" / "model.safetensors")
    save_file({"e": torch.randn(7, 4, generator=g)}, (tmp_path / "small").mkdir() or
              tmp_path / "small" / "model.safetensors")
    forgotten: list[tuple[str, str, int, int]] = []
    monkeypatch.setattr(Checkpoint, "forget", lambda self, name, a, b: forgotten.append(
        (self.path.name, name, a, b)))
    with Checkpoint.open(tmp_path / "big") as big, Checkpoint.open(tmp_path / "small") as small:
        chunks = stream.chunks_of("e", 40, 24)
        for _ in stream.read_chunks([big, small], chunks, drop=True):
            pass
    assert forgotten == [("big", "e", 0, 24), ("small", "e", 0, 24),
                         ("big", "e", 24, 40), ("small", "e", 24, 28)]

"""Read tensor bytes with O_DIRECT, bypassing the page cache, for inputs larger than memory.

Reading through the page cache costs the kernel more CPU than the merge's arithmetic when the
inputs cannot stay cached: DARE on two 16 GB inputs on a 24 GiB, 2-core machine, caches dropped
first, took 32-34 s of kernel time and 30-31 s of wall time buffered, 10-12 s and 20-23 s with
O_DIRECT reads. O_DIRECT needs a page-aligned buffer, offset and length, so a read covers the
range rounded out to whole pages and hands back a view of the bytes asked for. Where the
filesystem refuses O_DIRECT (tmpfs on older kernels, some network filesystems) the caller reads
through the cache as before.

`SAFEBASIN_DIRECT_IO=auto|on|off` chooses: `auto` (the default) reads directly when the inputs
together exceed the machine's memory, so that they cannot stay cached (the merge then also drops
what it has read and written from the cache: `Checkpoint.forget`, `ShardWriter(drop_behind)`,
docs/merge-engine.md); smaller inputs keep the cache's hits (a sweep re-reads θ₀ for every
point; the same 8B merge run again right after a read of its inputs, with part of them still
cached, took 17-19 s buffered and 18-22 s direct).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from pathlib import Path

from ..errors import CheckpointFormatError, UsageError

log = logging.getLogger(__name__)

ENV = "SAFEBASIN_DIRECT_IO"
_CHOICES = ("auto", "on", "off")
PAGE = 4096  # O_DIRECT's alignment on every Linux block device we know of (512 divides it)
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the platform has none (macOS)


def setting() -> str:
    """The value of SAFEBASIN_DIRECT_IO: "auto" (also when unset or empty), "on" or "off"."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in _CHOICES:
        raise UsageError(f"{ENV}={value!r}: choose one of {', '.join(_CHOICES)} (or unset it)")
    return value


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def wanted(input_bytes: int) -> bool:
    """Whether a merge reading `input_bytes` in all should read with O_DIRECT."""
    value = setting()
    if not _O_DIRECT or value == "off":
        return False
    if value == "on":
        return True
    memory = physical_memory()
    return memory > 0 and input_bytes > memory


def aligned_buffer(nbytes: int) -> memoryview:
    """A page-aligned buffer for reads of up to `nbytes` bytes at any offset (two pages of
    slack for rounding the range out). Anonymous mmap memory is page-aligned and faulted in
    only when touched."""
    return memoryview(mmap.mmap(-1, nbytes + 2 * PAGE))


def has_slack(buf: memoryview, nbytes: int) -> bool:
    """Whether `buf` came from `aligned_buffer` for at least `nbytes` bytes."""
    return isinstance(buf.obj, mmap.mmap) and len(buf) >= nbytes + 2 * PAGE


def _fill(fd: int, view: memoryview, offset: int) -> int:
    """Read `view` from `offset`; fewer bytes back means the file ended (one preadv may
    return less than asked without that)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0 or n % PAGE:  # end of file: the last read may stop mid-page
            return got + n
        got += n
    return got


class DirectFiles:
    """O_DIRECT descriptors of a checkpoint's files, opened on first use.

    A file the filesystem will not read directly is remembered and `read` returns None for
    it, so the caller falls back to its buffered read.
    """

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._refused: set[Path] = set()

    def read(self, path: Path, offset: int, nbytes: int, buf: memoryview, *,
             what: str = "the read") -> memoryview | None:
        """`nbytes` bytes at `offset`, as a view into `buf` (see `aligned_buffer`); None when
        this file cannot be read directly. `what` names the bytes in errors ("tensor 'x'").

        Raises:
            CheckpointFormatError: the file ended before offset + nbytes, or the read failed.
        """
        fd = self._fd(path)
        if fd is None:
            return None
        first = offset - offset % PAGE
        window = buf[: -(-(offset + nbytes) // PAGE) * PAGE - first]
        try:
            got = _fill(fd, window, first)
        except OSError as e:
            if e.errno == errno.EINVAL:  # an alignment this filesystem refuses
                self._refuse(path, e)
                return None
            raise CheckpointFormatError(f"{path}: cannot read: {e.strerror or e}") from e
        skip = offset - first
        if got < skip + nbytes:
            raise CheckpointFormatError(f"{path}: truncated: {what} needs {nbytes} bytes at "
                                        f"offset {offset}, file gave {max(got - skip, 0)}")
        return buf[skip: skip + nbytes]

    def _fd(self, path: Path) -> int | None:
        fd = self._fds.get(path)
        if fd is not None or path in self._refused:
            return fd
        try:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | _O_DIRECT)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise CheckpointFormatError(f"{path}: cannot open: {e.strerror or e}") from e
            self._refuse(path, e)
        return fd

    def _refuse(self, path: Path, e: OSError) -> None:
        log.info("%s: no O_DIRECT here (%s); reading through the page cache", path, e.strerror)
        self._refused.add(path)
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

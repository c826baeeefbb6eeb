"""Filesystem primitives shared by layers that must stay light (checkpoint/, executors/).

Imports only the standard library, so any module may use it without pulling torch in.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)  # None where os lacks posix_fadvise


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to forget the clean cached pages of a file range (`length` 0: to the
    end). Advice only: where refused or unsupported, the pages stay cached, as without it."""
    if _DONTNEED is not None:
        try:
            os.posix_fadvise(fd, offset, length, _DONTNEED)
        except OSError:
            pass

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

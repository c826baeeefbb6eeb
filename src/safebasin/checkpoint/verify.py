"""Check an output folder against the content hashes its recipe recorded (`safebasin verify`).

The writer hashes every shard file's full bytes and every tensor's bytes (xxh3-128) as they
pass, and the executor records both in `safebasin_recipe.json`. Verification re-reads each shard
once, in fixed-size blocks, and recomputes both hashes in the same pass: the shard hash catches
any flipped byte (header and padding included), the tensor hashes say which tensor it hit.

A recipe that is missing or malformed is a usage problem (`CheckpointNotFoundError`,
`CheckpointFormatError`, exit code 2): there is nothing to verify against. Bytes that disagree
with a well-formed recipe are a `VerificationError` (exit code 1).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ..errors import CheckpointFormatError, SafebasinError, VerificationError
from .header import TensorInfo, read_header
from .reader import Checkpoint
from .recipe import RECIPE_FILE, Output, read_recipe

log = logging.getLogger(__name__)

BLOCK_BYTES = 8 * 1024 * 1024  # read size: memory stays flat whatever the shard size
_SHOW = 3  # problems named in the one-line error


@dataclass(frozen=True)
class VerifyReport:
    """A folder whose every shard and tensor matched its recipe."""

    folder: Path
    shards: int
    tensors: int
    nbytes: int  # bytes read: all shard files, headers included


def _load_recipe(folder: Path) -> Output:
    recipe = read_recipe(folder)
    if recipe.output is None:
        raise CheckpointFormatError(f"{folder / RECIPE_FILE}: malformed recipe: no 'output' "
                                    "hashes (written by an older safebasin?)")
    return recipe.output


def _regular_size(path: Path) -> int | None:
    """Size of a regular file, None for anything else or anything we cannot stat."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _open_regular(path: Path) -> int:
    """A read-only descriptor, refusing FIFOs and devices (O_NONBLOCK: a FIFO never blocks)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def _hash_stream(path: Path, tensors: list[TensorInfo], block: int,
                 progress: Callable[[int, int], None] | None,
                 total: int) -> tuple[str, dict[str, str], int]:
    """One pass over `path`: (hash of the file, hash of each tensor's bytes, bytes read).

    `tensors` lie back to back in offset order (read_header checked that), so each block is
    split among the tensors it overlaps without any seeking.
    """
    whole = xxhash.xxh3_128()
    parts = {t.name: xxhash.xxh3_128() for t in tensors}
    k, pos = 0, 0
    fd = _open_regular(path)
    try:
        buf = memoryview(bytearray(max(1, min(block, os.fstat(fd).st_size))))
        while n := os.readv(fd, [buf]):
            view, end = buf[:n], pos + n
            whole.update(view)
            while k < len(tensors):
                t = tensors[k]
                lo, hi = max(t.offset, pos), min(t.offset + t.nbytes, end)
                if lo < hi:
                    parts[t.name].update(view[lo - pos:hi - pos])
                if t.offset + t.nbytes > end:
                    break
                k += 1
            pos = end
            if progress:
                progress(n, total)
    finally:
        os.close(fd)
    return whole.hexdigest(), {name: h.hexdigest() for name, h in parts.items()}, pos


@dataclass
class _Tally:
    """What the pass over the shards found so far."""

    problems: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # tensor -> shard holding it
    tensor_bytes: int = 0
    nread: int = 0


def _check_shard(folder: Path, name: str, recorded: Output, tally: _Tally, *, block: int,
                 progress: Callable[[int, int], None] | None, total: int) -> None:
    path = folder / name
    try:
        infos, _ = read_header(path)
        broken = None
    except CheckpointFormatError as e:  # hash the bytes anyway: the shard hash names the shard
        infos, broken = {}, str(e).removeprefix(f"{path}: ")
    tensors = sorted(infos.values(), key=lambda t: t.offset)
    try:
        digest, digests, nread = _hash_stream(path, tensors, block, progress, total)
    except OSError as e:
        tally.problems.append(f"shard {name!r} cannot be read: {e.strerror or e}")
        return
    tally.nread += nread
    differ = [t for t, d in digests.items() if recorded.tensors.get(t, d) != d]
    if digest != recorded.shards[name]:
        which = ""
        if differ:
            more = f", and {len(differ) - 1} more" if len(differ) > 1 else ""
            which = f" (tensor {differ[0]!r} differs{more})"
        tally.problems.append(f"shard {name!r} does not match its recorded hash{which}")
    elif differ:
        tally.problems.append(f"tensor {differ[0]!r} in shard {name!r} does not match its "
                              "recorded hash")
    if broken:
        tally.problems.append(f"shard {name!r} has a broken header ({broken})")
    for t in tensors:
        if t.name in tally.where:
            tally.problems.append(f"tensor {t.name!r} is in shards {tally.where[t.name]!r} "
                                  f"and {name!r}")
        tally.where[t.name] = name
        tally.tensor_bytes += t.nbytes


def _check_names(folder: Path, recorded: Output, tally: _Tally) -> None:
    missing = [t for t in recorded.tensors if t not in tally.where]
    extra = [t for t in tally.where if t not in recorded.tensors]
    if missing:
        tally.problems.append(f"{len(missing)} recorded tensors are in no shard, first "
                              f"{missing[:_SHOW]}")
    if extra:
        tally.problems.append(f"{len(extra)} tensors are not in the recipe, first "
                              f"{extra[:_SHOW]}")
    strays = sorted(p.name for p in folder.glob("*.safetensors")
                    if p.name not in recorded.shards)
    if strays:
        tally.problems.append(f"files not in the recipe: {strays[:_SHOW]}")
    if recorded.total_bytes is not None and not missing and not extra \
            and tally.tensor_bytes != recorded.total_bytes:
        tally.problems.append(f"tensors hold {tally.tensor_bytes} bytes, the recipe says "
                              f"{recorded.total_bytes}")


def _check_opens(folder: Path) -> list[str]:
    """The folder must also open the way a loader sees it (index, headers, config)."""
    try:
        with Checkpoint.open(folder):
            return []
    except SafebasinError as e:
        return [f"the folder does not open as a model ({e})"]


def verify(folder: str | os.PathLike, *, block_bytes: int = BLOCK_BYTES,
           progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Re-read every shard of `folder` and compare it with `safebasin_recipe.json`.

    Each shard file is read once, in `block_bytes` blocks, and hashed whole and tensor by
    tensor (xxh3-128). Also checked: every recorded tensor is in exactly one shard, no
    unrecorded shard or tensor is present, and the folder opens (index, headers).

    Args:
        folder: an output folder written by a safebasin merge.
        block_bytes: read size; memory use is this one buffer.
        progress: called as progress(bytes_read_now, bytes_total).

    Returns:
        A `VerifyReport` with the counts that matched.

    Raises:
        VerificationError: any byte, shard or tensor that disagrees (exit code 1), naming the
            shard and the tensor.
        CheckpointNotFoundError, CheckpointFormatError: no folder, or a missing or malformed
            recipe (exit code 2).

    Example:
        >>> verify("llama-wise").tensors                           # doctest: +SKIP
        291
    """
    folder = Path(folder)
    recorded = _load_recipe(folder)
    sizes = {n: _regular_size(folder / n) for n in sorted(recorded.shards)}
    total = sum(v for v in sizes.values() if v is not None)
    tally = _Tally()
    for name, size in sizes.items():
        if size is None:
            tally.problems.append(f"shard {name!r} is missing")
            continue
        _check_shard(folder, name, recorded, tally, block=block_bytes, progress=progress,
                     total=total)
    _check_names(folder, recorded, tally)
    if not tally.problems:
        tally.problems += _check_opens(folder)
    if tally.problems:
        p = tally.problems
        more = f"; and {len(p) - _SHOW} more" if len(p) > _SHOW else ""
        raise VerificationError(f"{folder}: verification failed: {'; '.join(p[:_SHOW])}{more}")
    log.info("verified %s: %d shards, %d tensors", folder, len(sizes), len(tally.where))
    return VerifyReport(folder, len(sizes), len(tally.where), tally.nread)

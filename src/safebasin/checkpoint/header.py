"""Parse and validate a safetensors header without trusting the file.

We read headers ourselves (rather than through `safe_open`) because the merge streams tensor
bytes with `pread` into reusable buffers: `safe_open` memory-maps the file, and mapped pages count
toward RSS, so peak memory would grow with the model. Validation follows the safetensors format
spec: an 8-byte little-endian header length, a JSON header, and a data region that the tensors
cover exactly, without holes or overlaps. Nothing is read or allocated beyond what the file holds.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointFormatError

# Same ceiling as the safetensors library: a larger header is an attack or a corruption.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute, from the start of the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _short(value: object, limit: int = 80) -> str:
    """repr() cut to one readable line: a hostile header may hold megabyte-long names."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nbytes_capped(shape: list[int], itemsize: int, cap: int) -> int:
    """Byte size of `shape`, or `cap + 1` once it passes `cap`.

    A hostile header may list thousands of dimensions near 2**62: their exact product is a
    huge integer that takes minutes to compute, and the answer only needs to be "too big".
    """
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n > cap:
            return cap + 1
    return n


def _bad(path: Path, problem: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: not a valid safetensors file: {problem}")


def _entry(path: Path, name: str, raw: object, data_len: int, base: int) -> TensorInfo:
    if not isinstance(raw, dict):
        raise _bad(path, f"entry {_short(name)} is not an object")
    dtype_name = raw.get("dtype")
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise _bad(path, f"tensor {_short(name)} has unknown dtype {_short(dtype_name)}")
    shape, offsets = raw.get("shape"), raw.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape
    ):
        raise _bad(path, f"tensor {_short(name)} has an invalid shape {_short(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise _bad(path, f"tensor {_short(name)} has data_offsets {_short(offsets)} outside the "
                         f"{data_len}-byte data region")
    span = offsets[1] - offsets[0]
    nbytes = _nbytes_capped(shape, dtype.itemsize, span)
    if nbytes != span:
        needs = f"{nbytes} bytes" if nbytes <= span else f"more than {span} bytes"
        raise _bad(path, f"tensor {_short(name)} of shape {_short(tuple(shape))} and dtype "
                         f"{dtype_name} needs {needs} but its offsets span {span}")
    return TensorInfo(name, dtype, tuple(shape), path, base + offsets[0], nbytes)


def _open_regular(path: Path):
    """Open for reading, refusing anything but a regular file.

    O_NONBLOCK because a FIFO named `model.safetensors` would otherwise block `open` forever;
    devices and folders are refused before a byte is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _bad(path, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate one safetensors file's header.

    Returns:
        (tensors by name in file order, the `__metadata__` string map).

    Raises:
        CheckpointFormatError: bad length, invalid JSON, unknown dtype, offsets that overlap,
            leave holes or run past the file, or a shape that does not match its byte size.
    """
    path = Path(path)
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise _bad(path, f"file is {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise _bad(path, f"header length {n} exceeds the file ({size} bytes) or the "
                                 f"{MAX_HEADER_BYTES}-byte limit")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointFormatError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, UTF-8 or a 5000-digit int
        raise _bad(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta  # null is valid: safetensors reads it as no metadata
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(path, "__metadata__ must map strings to strings")
    data_len = size - 8 - n
    infos = {k: _entry(path, k, v, data_len, 8 + n) for k, v in header.items()}
    spans = sorted((i.offset, i.offset + i.nbytes, i.name) for i in infos.values())
    cursor = 8 + n
    for start, end, name in spans:
        if start != cursor:
            what = "overlaps the previous tensor" if start < cursor else "leaves a hole before it"
            raise _bad(path, f"tensor {_short(name)} {what} (offset {start - 8 - n})")
        cursor = end
    if cursor != size:
        raise _bad(path, f"data region has {size - cursor} bytes not covered by any tensor")
    return infos, meta

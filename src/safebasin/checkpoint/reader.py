"""Open a checkpoint lazily: an HF model folder, a sharded index, or a bare `.safetensors` file.

Opening reads headers only. Tensor bytes are read on demand with `os.preadv` into buffers the
caller owns, so a merge can stream a 70B checkpoint through a few fixed buffers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from .._fs import drop_cached
from ..errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    PickleRefusedError,
    SafebasinError,
)
from .direct import DirectFiles, has_slack
from .header import TensorInfo, read_header

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Names a tied lm_head may borrow from, most common first.
EMBEDDING_NAMES = ("model.embed_tokens.weight", "transformer.wte.weight",
                   "gpt_neox.embed_in.weight", "model.decoder.embed_tokens.weight")
LM_HEAD = "lm_head.weight"


def _inside(folder: Path, rel: str) -> Path:
    """Resolve a shard name from an index, refusing anything that escapes the folder."""
    if os.path.isabs(rel) or not rel or "\\" in rel or "\0" in rel:
        raise CheckpointFormatError(f"{folder / INDEX_FILE}: shard name {rel!r} is not a plain "
                                    "file name inside the folder")
    root = folder.resolve()
    target = (folder / rel).resolve()
    if root not in target.parents:
        raise CheckpointFormatError(f"{folder / INDEX_FILE}: shard {rel!r} points outside the "
                                    "model folder")
    return target


def _weight_map(folder: Path) -> dict[str, Path]:
    """The index's tensor name -> shard file, each shard checked to lie inside `folder`."""
    index = folder / INDEX_FILE
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON, UTF-8, huge ints
        raise CheckpointFormatError(f"{index}: malformed index ({e})") from None
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointFormatError(f"{index}: 'weight_map' must map tensor names to shard files")
    if not wmap:
        raise CheckpointFormatError(f"{index}: 'weight_map' lists no tensors")
    shards: dict[str, Path] = {}
    for rel in sorted(set(wmap.values())):
        path = _inside(folder, rel)
        if not path.is_file():
            raise CheckpointNotFoundError(f"{index}: shard {rel!r} is missing")
        shards[rel] = path
    return {name: shards[rel] for name, rel in wmap.items()}


def _index_shards(folder: Path) -> list[Path]:
    return sorted(set(_weight_map(folder).values()))


def _check_index(folder: Path, infos: dict[str, TensorInfo]) -> None:
    """Refuse an index that maps a tensor to a shard that does not hold it.

    Loaders that trust the index (transformers) would fail on such a folder or silently
    drop the tensor; tensors a shard holds beyond the index are still read.
    """
    wrong = [n for n, p in _weight_map(folder).items() if n not in infos or infos[n].path != p]
    if wrong:
        raise CheckpointFormatError(f"{folder / INDEX_FILE}: {len(wrong)} tensors are not in "
                                    f"the shard the index names, first {wrong[:3]}")


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    if path.is_file():
        if path.suffix == ".safetensors":
            return [path]
        if path.suffix in PICKLE_SUFFIXES:
            return _pickles_or_refuse(path, [path], allow_pickle)
        raise CheckpointFormatError(f"{path}: not a .safetensors file")
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path}: no such file or folder")
    if (path / INDEX_FILE).is_file():
        return _index_shards(path)
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        return _pickles_or_refuse(path, pickles, allow_pickle)
    raise CheckpointNotFoundError(f"{path}: folder has no model.safetensors, no "
                                  f"{INDEX_FILE} and no *.safetensors files")


def _pickles_or_refuse(path: Path, files: list[Path], allow_pickle: bool) -> list[Path]:
    if not allow_pickle:
        raise PickleRefusedError(f"{path}: pickle weights ({files[0].name}) can run code when "
                                 "loaded; convert them to safetensors or pass `allow_pickle` "
                                 "(then read with torch.load(weights_only=True))")
    return files


class Checkpoint:
    """A read-only, lazily read set of named tensors.

    `names` lists the stored tensors in file order; a tied `lm_head.weight` (absent from the
    files, `tie_word_embeddings` true in config.json) resolves to the embedding through
    `resolve()`. Use as a context manager so file descriptors are closed.

    Example:
        >>> with Checkpoint.open("path/to/model") as ckpt:          # doctest: +SKIP
        ...     w = ckpt.read("model.norm.weight")
    """

    def __init__(self, path: Path, infos: dict[str, TensorInfo], *, config: dict | None,
                 pickled: dict[str, torch.Tensor] | None = None) -> None:
        self.path = path
        self.config = config
        self._infos = infos
        self._pickled = pickled
        self._fds: dict[Path, int] = {}
        self._direct = DirectFiles()
        self.aliases: dict[str, str] = {}
        # Where the input came from beyond its path ({"hub_id", "revision"}, {"adapter", ...});
        # the merge copies it into the recipe's input entry.
        self.source: dict = {}
        if LM_HEAD not in infos and self.tied_embeddings:
            source = next((n for n in EMBEDDING_NAMES if n in infos), None)
            if source is not None:
                self.aliases[LM_HEAD] = source

    @classmethod
    def open(cls, path: str | os.PathLike, *, allow_pickle: bool = False) -> Checkpoint:
        """Open a model folder, index or file, reading headers only.

        Raises:
            CheckpointNotFoundError: missing path, folder without weights, missing shard.
            CheckpointFormatError: malformed header or index, shard outside the folder.
            PickleRefusedError: `.bin`/`.pt` weights without `allow_pickle`.
        """
        path = Path(path)
        try:
            files = _weight_files(path, allow_pickle)
        except SafebasinError:
            raise
        except OSError as e:  # a folder we may not list (EACCES), a path that vanished
            raise CheckpointNotFoundError(f"{path}: cannot read: {e.strerror or e}") from e
        folder = path if path.is_dir() else path.parent
        config = _read_config(folder) if path.is_dir() else None
        if files[0].suffix in PICKLE_SUFFIXES:
            return cls(path, {}, config=config, pickled=_load_pickles(files))
        infos: dict[str, TensorInfo] = {}
        for f in files:
            shard, _ = read_header(f)
            for name in shard:
                if name in infos:
                    raise CheckpointFormatError(f"{f}: tensor {name!r} also appears in "
                                                f"{infos[name].path.name}")
            infos.update(shard)
        if path.is_dir() and (path / INDEX_FILE).is_file():
            _check_index(path, infos)
        return cls(path, infos, config=config)

    # -- metadata -------------------------------------------------------------------------
    @property
    def tied_embeddings(self) -> bool:
        """True when config.json ties lm_head to the input embedding (HF default: true)."""
        if self.config is None:
            return True
        return bool(self.config.get("tie_word_embeddings", True))

    @property
    def names(self) -> list[str]:
        """Stored tensor names (aliases excluded), in file order."""
        return list(self._pickled) if self._pickled is not None else list(self._infos)

    def resolve(self, name: str) -> str | None:
        """The stored name that serves `name` (itself, or the embedding for a tied lm_head)."""
        if name in (self._pickled if self._pickled is not None else self._infos):
            return name
        return self.aliases.get(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._meta(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta(name)[1]

    def _meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        stored = self.resolve(name)
        if stored is None:
            raise KeyError(name)
        if self._pickled is not None:
            t = self._pickled[stored]
            return t.dtype, tuple(t.shape)
        i = self._infos[stored]
        return i.dtype, i.shape

    @property
    def weight_files(self) -> list[Path]:
        return sorted({i.path for i in self._infos.values()})

    @property
    def nbytes(self) -> int:
        if self._pickled is not None:
            return sum(t.nbytes for t in self._pickled.values())
        return sum(i.nbytes for i in self._infos.values())

    # -- data -----------------------------------------------------------------------------
    def read_flat_into(self, name: str, start: int, stop: int, buf: memoryview) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, read into `buf` (no allocation).

        Raises:
            CheckpointFormatError: the file is shorter than its header promised.
        """
        stored = self.resolve(name)
        if stored is None:
            raise KeyError(name)
        if self._pickled is not None:
            return self._pickled[stored].reshape(-1)[start:stop]
        info = self._infos[stored]
        item = info.dtype.itemsize
        nbytes = (stop - start) * item
        view = buf[:nbytes]
        got = _pread_full(self._fd(info.path), view, info.offset + start * item, info.path)
        if got != nbytes:
            raise CheckpointFormatError(f"{info.path}: truncated: tensor {stored!r} needs "
                                        f"{nbytes} bytes at offset {info.offset + start * item}, "
                                        f"file gave {got}")
        return torch.frombuffer(view, dtype=info.dtype) if nbytes else torch.empty(
            0, dtype=info.dtype)

    def read_flat_direct(self, name: str, start: int, stop: int, buf: memoryview
                         ) -> torch.Tensor:
        """As `read_flat_into`, bypassing the page cache (O_DIRECT) where the file allows it.

        `buf` must come from `direct.aligned_buffer` (page-aligned, with slack): the tensor
        returned is a view that may start anywhere in its first page. Falls back to
        `read_flat_into` where O_DIRECT is refused or would misalign the elements.
        """
        stored = self.resolve(name)
        if stored is None or self._pickled is not None:
            return self.read_flat_into(name, start, stop, buf)
        info = self._infos[stored]
        item = info.dtype.itemsize
        offset, nbytes = info.offset + start * item, (stop - start) * item
        if not nbytes or offset % item or not has_slack(buf, nbytes):
            return self.read_flat_into(name, start, stop, buf)
        view = self._direct.read(info.path, offset, nbytes, buf, what=f"tensor {stored!r}")
        if view is None:
            return self.read_flat_into(name, start, stop, buf)
        return torch.frombuffer(view, dtype=info.dtype)

    def forget(self, name: str, start: int, stop: int) -> None:
        """Drop elements [start, stop) of a tensor from the page cache once read for the last
        time (advice only; whole pages inside the range). For inputs larger than memory, which
        cannot stay cached: growing the cache with them costs more than reading them on some
        machines (docs/merge-engine.md)."""
        stored = self.resolve(name)
        if stored is None or self._pickled is not None or stop <= start:
            return  # (a length of 0 would drop to the end of the file)
        info = self._infos[stored]
        item = info.dtype.itemsize
        begin, end = info.offset + start * item, info.offset + stop * item
        # the kernel drops only whole folios (up to 2 MiB) inside the range: start at the
        # boundary below, so the folio across the previous range's end, read by then, goes too
        begin -= begin % _LARGEST_FOLIO
        drop_cached(self._fd(info.path), begin, end - begin)

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, in a new buffer (for small tensors and tests)."""
        dtype, shape = self._meta(name)
        numel = 1
        for d in shape:
            numel *= d
        buf = memoryview(bytearray(numel * dtype.itemsize))
        return self.read_flat_into(name, 0, numel, buf).reshape(shape).clone()

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise CheckpointNotFoundError(f"{path}: cannot open: {e.strerror}") from e
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._direct.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.names)} tensors)"


_LARGEST_FOLIO = 2 << 20  # the page cache's largest folio on x86-64 (a PMD)


def _pread_full(fd: int, view: memoryview, offset: int, path: Path) -> int:
    """Fill `view` from `offset`; fewer bytes back means the file ended early.

    One preadv may legally return less than asked (Linux caps a call at 2 GiB - 4 KiB), so a
    single short read is not yet a truncation: only a read that returns 0 is.
    """
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], offset + got)
        except OSError as e:
            raise CheckpointFormatError(f"{path}: cannot read: {e.strerror or e}") from e
        if n == 0:
            break
        got += n
    return got


def _read_config(folder: Path) -> dict | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON, UTF-8, huge ints
        raise CheckpointFormatError(f"{cfg}: malformed config ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{cfg}: config is not a JSON object")
    return data


def _load_pickles(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in files:
        log.warning("reading pickle weights %s with torch.load(weights_only=True)", f)
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for bad pickles
            raise CheckpointFormatError(f"{f}: cannot load with weights_only=True ({e})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointFormatError(f"{f}: not a flat state dict of tensors")
        out.update(sd)
    return out

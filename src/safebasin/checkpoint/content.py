"""Identify a model folder's weights by their content, wherever the folder lies.

``xxh3_128:<hex>`` over the bytes of the ``*.safetensors`` files in sorted name order, read in
16 MiB blocks: a renamed or copied folder keeps its evaluation results, a changed one cannot
resume them, and `safebasin push` can tell that a result was measured on these weights.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

from ..errors import CheckpointNotFoundError

_BLOCK = 16 * 1024 * 1024


def weight_files(folder: str | Path) -> list[Path]:
    """The ``*.safetensors`` files of ``folder``, sorted by name.

    Raises:
        CheckpointNotFoundError: none there (mentioning pickles only when there are some).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt"))
        why = (f"; pickled weights ({pickles[0]}) are not loaded" if pickles
               else "" if folder.is_dir() else "; no such folder")
        raise CheckpointNotFoundError(f"no .safetensors weights in {str(folder)!r}{why}")
    return files


def model_content_hash(folder: str | Path) -> str:
    """``xxh3_128:<hex>`` over the ``*.safetensors`` files of ``folder`` in sorted order.

    Raises:
        CheckpointNotFoundError: no safetensors file in the folder.
    """
    h = xxhash.xxh3_128()
    for f in weight_files(folder):
        with f.open("rb") as stream:
            while block := stream.read(_BLOCK):
                h.update(block)
    return f"xxh3_128:{h.hexdigest()}"


__all__ = ["model_content_hash", "weight_files"]

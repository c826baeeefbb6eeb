"""Streaming safetensors I/O: lazy readers, a header-first shard writer, atomic publishing.

This package knows files and nothing about merging.
"""

from .header import TensorInfo, read_header
from .output import copy_aux_files, publishing
from .reader import Checkpoint
from .resolve import open_checkpoint, trajectory_folders
from .writer import ShardWriter, TensorSpec, write_text_synced

__all__ = [
    "Checkpoint",
    "ShardWriter",
    "TensorInfo",
    "TensorSpec",
    "copy_aux_files",
    "open_checkpoint",
    "trajectory_folders",
    "publishing",
    "read_header",
    "write_text_synced",
]

"""Streaming safetensors I/O: lazy readers, a header-first shard writer, atomic publishing.

This package knows files and nothing about merging.
"""

from .header import TensorInfo, read_header
from .lora import LoraCheckpoint, is_adapter
from .output import copy_aux_files, publishing
from .reader import Checkpoint
from .recipe import RECIPE_FILE, output_record, set_config_dtype, write_recipe
from .resolve import open_checkpoint, trajectory_folders
from .verify import VerifyReport, verify
from .writer import ShardWriter, TensorSpec, write_text_synced

__all__ = [
    "RECIPE_FILE",
    "Checkpoint",
    "LoraCheckpoint",
    "ShardWriter",
    "TensorInfo",
    "TensorSpec",
    "VerifyReport",
    "copy_aux_files",
    "is_adapter",
    "open_checkpoint",
    "output_record",
    "trajectory_folders",
    "publishing",
    "read_header",
    "verify",
    "set_config_dtype",
    "write_recipe",
    "write_text_synced",
]

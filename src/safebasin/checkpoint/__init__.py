"""Streaming safetensors I/O: lazy readers, a header-first shard writer, atomic publishing.

This package knows files and nothing about merging.
"""

from .content import model_content_hash, weight_files
from .header import TensorInfo, read_header
from .license import base_license
from .lora import LoraCheckpoint, is_adapter
from .output import copy_aux_files, publishing
from .reader import Checkpoint
from .recipe import (
    RECIPE_FILE,
    Output,
    Recipe,
    finish_model_folder,
    output_record,
    read_recipe,
    set_config_dtype,
    write_recipe,
)
from .resolve import open_checkpoint, trajectory_folders
from .verify import VerifyReport, verify
from .writer import DEFAULT_SHARD_SIZE, ShardWriter, TensorSpec, write_text_synced

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "RECIPE_FILE",
    "Checkpoint",
    "Output",
    "Recipe",
    "base_license",
    "finish_model_folder",
    "model_content_hash",
    "read_recipe",
    "weight_files",
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

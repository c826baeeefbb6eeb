"""Load a chat model and its tokenizer from an HF folder or a Hub id.

Only safetensors weights are loaded (never pickles) and no remote code runs. Evaluation,
fine-tuning, the toy world and the study all load models here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import hub
from ..checkpoint.content import weight_files
from ..errors import CheckpointNotFoundError, EvaluationError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def resolve_model_dir(model: str | Path) -> Path:
    """A local model folder: the path itself, or a Hub snapshot for an ``owner/name`` id.

    Raises:
        CheckpointNotFoundError: not a folder and not a Hub id.
        HubError: a Hub id that cannot be fetched (offline and not cached, unknown).
    """
    path = Path(model)
    if path.is_dir():
        return path
    text = str(model)
    ref = None if path.exists() or text.startswith((".", "/")) else hub.parse_hub_id(text)
    if ref is None:
        raise CheckpointNotFoundError(f"model {text!r} is not a model folder or a Hub id")
    return hub.snapshot(ref)[0]


def resolve_device(device: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU.

    Raises:
        EvaluationError: an unknown device name, or CUDA asked for without a GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise EvaluationError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"device {device!r} asked for but no CUDA GPU is available")
    return resolved


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local model folder (cheap: checked before any model is loaded).

    Raises:
        EvaluationError: a folder without a tokenizer transformers can load.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise EvaluationError(f"cannot load the tokenizer of {str(folder)!r}: "
                              f"{_first_line(e)}") from e


def load_model(folder: str | Path, *, dtype: str = "auto",
               device: str | None = "auto") -> PreTrainedModel:
    """A causal LM from a local folder, in eval mode on ``device``; safetensors only.

    Args:
        folder: an HF model folder with safetensors weights.
        dtype: ``auto`` (the checkpoint's dtype), ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; None: on the CPU with no device
            map, for a trainer that places the model itself.

    Raises:
        CheckpointNotFoundError: no safetensors weights.
        EvaluationError: unknown dtype or device, a folder transformers cannot load.
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise EvaluationError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    target = resolve_device(device) if device is not None else None
    placement = {"device_map": str(target)} if target is not None else {}
    weight_files(folder)  # a clear error for a folder without safetensors, before transformers
    try:
        # use_safetensors: never unpickle; trust_remote_code stays off (the default).
        # device_map: weights go straight to the GPU instead of through CPU memory.
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype],
                                                     use_safetensors=True, **placement)
    except (OSError, ValueError, KeyError) as e:
        raise EvaluationError(f"cannot load model {str(folder)!r}: {_first_line(e)}") from e
    log.info("loaded %s (%s) on %s", folder, model.dtype, target or "cpu")
    return model.eval()


__all__ = ["resolve_model_dir", "resolve_device", "load_tokenizer", "load_model", "DTYPES"]

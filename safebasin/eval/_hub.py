"""The evaluator's only door to the Hugging Face Hub (imported lazily, never by `import safebasin`).

Two needs: the default AdvBench prompt file and a model snapshot for a Hub id. Offline (the
``HF_HUB_OFFLINE`` variable, read at call time because huggingface_hub reads it only once at
import) only the local cache is used. Every failure becomes one-line `HubError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import HubError

# Enough to load a model with transformers and hash it; never pickled weights.
_MODEL_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.model", "*.txt",
                "*.jinja", "tokenizer*"]


def is_offline() -> bool:
    """Whether the user asked for no network (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get(v, "").strip().upper() for v in ("HF_HUB_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE"))
    if any(f in {"1", "ON", "YES", "TRUE"} for f in flags):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def download_file(repo_id: str, filename: str, *, repo_type: str = "dataset") -> Path:
    """One file of a Hub repo, from the cache when offline.

    Raises:
        HubError: offline and not cached, no network, unknown repo or file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    offline = is_offline()
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type,
                                    local_files_only=offline))
    except (OSError, EntryNotFoundError, ValueError) as e:
        why = "offline and not in the cache" if offline else _first_line(e)
        raise HubError(f"cannot fetch {filename!r} from {repo_type} {repo_id!r}: {why}") from e


def snapshot_model(repo_id: str) -> Path:
    """Local folder with a Hub model's safetensors, config and tokenizer files.

    Raises:
        HubError: offline and not cached, no network, unknown repo.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    offline = is_offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_MODEL_FILES,
                                      local_files_only=offline))
    except (OSError, EntryNotFoundError, ValueError) as e:
        why = "offline and not in the cache" if offline else _first_line(e)
        raise HubError(f"model {repo_id!r} is not a local folder and cannot be fetched from the "
                       f"Hub: {why}") from e

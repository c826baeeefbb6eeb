"""Fetching from the Hugging Face Hub: Hub ids as inputs, resolved to a local snapshot.

The low door to the Hub, beside `checkpoint/` (which calls it for Hub ids); publishing (card,
gate, push) is `safebasin.publish`, at the top. Only these two modules import
`huggingface_hub`, and only inside the functions that need it, so `import safebasin` never pays
for it. This module imports nothing of safebasin but its errors.

Hub ids: `org/name` or `org/name@revision` (branch, tag or commit), used wherever a model path
is accepted when no local path of that name exists. Only safetensors, JSON, tokenizer,
chat-template, license and model-card files are fetched, never `.bin`/`.pt` pickles; the
resolved commit sha goes into the recipe. `HF_HUB_OFFLINE`, `HF_HUB_CACHE`/`HF_HOME` and
`HF_ENDPOINT` are read when called (huggingface_hub reads them once, at import); offline, only
the cache is read and a miss fails at once, with one line that says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import HubError

# What a merge, an evaluation or a card needs from a model repo. Never pickles.
HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.tiktoken", "vocab.txt",
                "merges.txt", "*.jinja", "LICENSE*", "README.md"]
# org/name, each part as the Hub allows it; an optional @revision (which may hold slashes).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})"
                     r"(?:@(?P<rev>[^\s@]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}



@dataclass(frozen=True)
class HubRef:
    """A model repo on the Hub and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_hub_id(spec: str | os.PathLike) -> HubRef | None:
    """`org/name[@revision]` as a `HubRef`; None for anything that cannot be a Hub id."""
    m = _HUB_ID.match(str(spec))
    if m is None or ".." in m.group("repo") or "--" in m.group("repo"):
        return None
    return HubRef(m.group("repo"), m.group("rev"))


def is_repo_id(text: str) -> bool:
    """`org/name` with no revision: what create_repo and base_model accept."""
    return parse_hub_id(text) is not None and "@" not in text


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: use the cache, never the network."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> str | None:
    """HF_ENDPOINT, read when called (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME")
    return os.path.join(home, "hub") if home else None


def one_line(e: BaseException, limit: int = 300) -> str:
    """A Hub error as one line: its messages run to several (status, then the server's why)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    text = text or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snapshot_error(ref: HubRef, e: BaseException) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{str(ref)!r} is not a local path, and as a Hub model id"
    if isinstance(e, GatedRepoError):
        why = "it is gated: accept its terms on the Hub, then log in or set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError):
        why = "no such repo (or it is private: log in or set HF_TOKEN)"
    elif isinstance(e, RevisionNotFoundError):
        why = f"it has no revision {ref.revision!r}"
    elif isinstance(e, LocalEntryNotFoundError) and offline():
        why = ("it is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it "
               "once online, or unset HF_HUB_OFFLINE")
    else:
        why = f"it cannot be fetched and is not cached ({one_line(e)})"
    return HubError(f"{what}: {why}")


def snapshot(ref: HubRef) -> tuple[Path, dict]:
    """Fetch (or find in the cache) a model repo's safetensors, config and tokenizer files.

    Returns:
        The local snapshot folder, and the source to record: {"hub_id", "revision" (the commit
        sha), "requested_revision"}.

    Raises:
        HubError: offline and not cached, unknown or gated repo, unknown revision, no network.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision,
                                        allow_patterns=HUB_PATTERNS, cache_dir=_cache_dir(),
                                        endpoint=endpoint(), local_files_only=offline()))
    except (OSError, ValueError) as e:  # HTTP, cache and validation errors are both kinds
        raise _snapshot_error(ref, e) from e
    # The cache keeps each snapshot in snapshots/<commit sha>/: the revision actually read.
    sha = folder.name if _SHA.match(folder.name) else None
    source = {"hub_id": ref.repo_id, "revision": sha}
    if ref.revision and ref.revision != sha:
        source["requested_revision"] = ref.revision
    return folder, source


__all__ = ["HUB_PATTERNS", "HubRef", "endpoint", "is_repo_id", "offline", "one_line",
           "parse_hub_id", "snapshot"]

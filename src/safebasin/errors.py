"""Every error safebasin raises on purpose.

All errors are rooted at `SafebasinError` and also subclass the builtin a caller would already
catch (the huggingface_hub habit), so `except FileNotFoundError` keeps working. A
`SafebasinError` is a user error: the CLI prints its one-line message and exits with code 2.
Anything else escaping the library is a bug and keeps its traceback.
"""

from __future__ import annotations


class SafebasinError(Exception):
    """Root of all user-facing errors; the message is one line naming the object and the fix."""

    exit_code: int = 2


class UsageError(SafebasinError, ValueError):
    """Arguments that cannot work together (a radius and a reference, an empty list, ...)."""


class CheckpointNotFoundError(SafebasinError, FileNotFoundError):
    """A path or Hub id that does not exist, or a folder without weights."""


class CheckpointFormatError(SafebasinError, ValueError):
    """A safetensors header, index file or recipe that is malformed, truncated or unsafe."""


class PickleRefusedError(SafebasinError, ValueError):
    """`.bin`/`.pt` weights given without `allow_pickle` (the CLI's --allow-pickle)."""


class IncompatibleCheckpointsError(SafebasinError, ValueError):
    """Inputs whose tensor names disagree."""


class ShapeMismatchError(IncompatibleCheckpointsError):
    """Inputs whose tensor shapes disagree (for example a resized vocabulary)."""


class NonFiniteError(SafebasinError, ValueError):
    """NaN or Inf found in an input tensor."""


class OutputExistsError(SafebasinError, FileExistsError):
    """The destination exists and `overwrite` was not given (the CLI's --overwrite)."""


class OutputLockedError(SafebasinError, BlockingIOError):
    """Another safebasin process is writing the same destination."""


class OutputNotWritableError(SafebasinError, PermissionError):
    """The destination cannot be created or written (permissions, read-only, disk full)."""


class HubError(SafebasinError, ConnectionError):
    """A Hub id that cannot be resolved (offline and not cached, unknown repo, no access)."""


class EvaluationError(SafebasinError, ValueError):
    """Evaluation inputs that cannot be used (no prompts, no chat template, ...)."""


class DataNotFoundError(SafebasinError, FileNotFoundError):
    """A training data file or toy-world folder that does not exist."""


class DataFormatError(SafebasinError, ValueError):
    """Training data that cannot be used (bad JSON, missing messages, no assistant reply)."""


class PushRefusedError(SafebasinError, PermissionError):
    """A push blocked by the safety gate (no ASR result, or ASR above the limit)."""


class VerificationError(SafebasinError):
    """An output whose bytes no longer match the hashes in its recipe."""

    exit_code = 1


class ReproducibilityError(SafebasinError, RuntimeError):
    """Reproducible mode asked for where the CPU code paths can no longer be pinned."""


class LimitUnreachableError(SafebasinError, ValueError):
    """`safebasin tune`: θ₀ itself is above the ASR limit, or no coefficient above 0 meets it."""


class MissingExtraError(SafebasinError, ImportError):
    """An optional engine (Ray, submitit) asked for but not installed; names the extra."""


class PointsFailedError(SafebasinError, RuntimeError):
    """Points that raised on a Ray or SLURM worker; finished points stay cached for a rerun.

    Exit code 1: the cause is in the point's own code or data, reported with its first line."""

    exit_code = 1

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})


class UnsupportedConfigError(SafebasinError, ValueError):
    """A mergekit config key or value that safebasin cannot honour exactly (named)."""


__all__ = [
    "SafebasinError",
    "UsageError",
    "CheckpointNotFoundError",
    "CheckpointFormatError",
    "PickleRefusedError",
    "IncompatibleCheckpointsError",
    "ShapeMismatchError",
    "NonFiniteError",
    "OutputExistsError",
    "OutputLockedError",
    "OutputNotWritableError",
    "HubError",
    "EvaluationError",
    "DataNotFoundError",
    "DataFormatError",
    "PushRefusedError",
    "VerificationError",
    "ReproducibilityError",
    "LimitUnreachableError",
    "MissingExtraError",
    "PointsFailedError",
    "UnsupportedConfigError",
]

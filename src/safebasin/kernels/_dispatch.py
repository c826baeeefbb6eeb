"""Which implementation serves a call: explicit rules, one environment variable, no guessing.

* `SAFEBASIN_KERNEL=torch` → torch, always.
* `SAFEBASIN_KERNEL=triton` → Triton for every call it can serve; it is an error if Triton
  does not import, or if the tensors are on CPU and `TRITON_INTERPRET=1` is not set (the
  interpreter is for tests: it is orders of magnitude slower than torch).
* unset, empty or `auto` → Triton when every tensor is on CUDA and Triton imports, else torch.

Triton cannot serve (and torch does, whatever is forced): non-contiguous tensors, dtypes other
than fp16/bf16/fp32, tensors on different devices. Copying to contiguous first would cost a
full extra pass; torch handles strides itself.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType

import torch

from ..errors import UsageError
from ._common import FAST_DTYPES

log = logging.getLogger(__name__)

ENV = "SAFEBASIN_KERNEL"
_CHOICES = ("auto", "torch", "triton")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def forced() -> str:
    """The value of SAFEBASIN_KERNEL: "auto" (also when unset or empty), "torch" or "triton"."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in _CHOICES:
        raise UsageError(f"{ENV}={value!r}: choose one of {', '.join(_CHOICES)} (or unset it)")
    return value


@functools.cache
def triton_importable() -> bool:
    """True if `import triton` works (cached: importing it is slow and does not change)."""
    try:
        importlib.import_module("triton")
    except Exception:  # ImportError, or a broken install raising anything else
        return False
    return True


def triton_can_serve(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Contiguous fp16/bf16/fp32 tensors, all on one device."""
    return (len({t.device for t in tensors}) == 1
            and all(t.dtype in FAST_DTYPES and t.is_contiguous() for t in tensors))


def _check_forced_triton(tensors: tuple[torch.Tensor, ...]) -> None:
    if not triton_importable():
        raise UsageError(f"{ENV}=triton but triton does not import: install it "
                         f"(pip install triton) or unset {ENV}")
    device = tensors[0].device
    if device.type == "cuda":
        return
    if device.type != "cpu" or not _truthy("TRITON_INTERPRET"):
        raise UsageError(f"{ENV}=triton needs CUDA tensors, got {device.type} tensors; on CPU "
                         "it runs only under TRITON_INTERPRET=1 (slow, for tests)")


def backend_for(*tensors: torch.Tensor | None) -> str:
    """Name of the implementation that will serve a call on these tensors: triton or torch.

    Raises:
        UsageError: SAFEBASIN_KERNEL has an unknown value, or forces Triton where it cannot run.
    """
    ts = tuple(t for t in tensors if t is not None)
    choice = forced()
    if choice == "torch" or not ts:
        return "torch"
    if not triton_can_serve(ts):
        log.debug("torch serves this call: non-contiguous, mixed devices or an fp64 tensor")
        return "torch"
    if choice == "triton":
        _check_forced_triton(ts)
        return "triton"
    return "triton" if ts[0].device.type == "cuda" and triton_importable() else "torch"


def implementation(name: str, device: torch.device) -> ModuleType:
    """The module behind a backend name (`_triton` is imported on first use only)."""
    if name == "torch":
        from . import _torch

        return _torch
    from . import _triton

    if device.type == "cpu" and not _triton.INTERPRETED:
        # triton picks interpreter or compiler when a kernel is decorated, i.e. at import
        raise UsageError("safebasin.kernels._triton was first imported without "
                         "TRITON_INTERPRET=1, so it cannot run on CPU tensors: set "
                         "TRITON_INTERPRET=1 before the first kernel call")
    return _triton

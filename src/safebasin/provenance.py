"""Where a result came from: the machine, the kernel settings in force, the versions, the commit.

Two runs with equal provenance (apart from the CPU) and reproducible mode on must give the same
bytes; two results with different `kernels` need not. `collect()` imports torch (it reads the
settings torch is really using), so call it after `safebasin.reproducible.enter`.

Example:
    >>> record = {"result": 0.31, "provenance": collect()}  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .reproducible import MARKER, PINNED_ENV, is_active

__all__ = ["SIMD_FLAGS", "KERNEL_ENV", "collect", "cpu_info", "git_commit"]

# the /proc/cpuinfo flags that decide which vector code paths ATen, MKL, oneDNN and libm pick
SIMD_FLAGS = ("sse2", "ssse3", "sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "avx512f",
              "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "avx_vnni", "amx_bf16", "amx_tile", "amx_int8")
# environment variables that change CPU numerics: the pins, and what was measured not to matter
# for the toy model but could elsewhere
KERNEL_ENV = (*PINNED_ENV, "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "GLIBC_TUNABLES",
              "MKL_ENABLE_INSTRUCTIONS", MARKER)
# MKL's CNR branch numbers (mkl_cbwr_get), as named in MKL's "Named Constants for CNR Control"
_CBWR_BRANCHES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3",
                  7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512",
                  14: "AVX512_E1", 15: "AVX512_E2", 16: "AVX512_E3", 17: "AVX512_E4"}


def cpu_info(text: str | None = None) -> dict[str, Any]:
    """CPU model, vendor and the SIMD flags of the first processor in /proc/cpuinfo (`text`)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: they are all alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or None,
            "vendor": fields.get("vendor_id"),
            "machine": platform.machine(),
            "flags": [f for f in SIMD_FLAGS if f in flags]}


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """The commit of the git checkout holding `path` (default: this package), or None.

    Returns `{"commit": sha, "dirty": bool}`; dirty means tracked files differ from the commit.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, no commit yet
        return None
    return {"commit": commit, "dirty": dirty}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _mkl_cbwr_branch(torch_lib: Path) -> str | None:
    # the CNR branch MKL really runs, asked of MKL itself (torch links MKL statically and
    # exports its service layer); None where that symbol is absent
    try:
        get = ctypes.CDLL(str(torch_lib / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    branch = get(1)  # MKL_CBWR_BRANCH
    return _CBWR_BRANCHES.get(branch, str(branch))


def _kernels() -> dict[str, Any]:
    import torch

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version (\d[\d.]*)", config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([^\s]+)", config)
    return {"env": {k: os.environ.get(k) for k in KERNEL_ENV},
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": mkl.group(1) if mkl else None,
            "mkl_cbwr_branch": _mkl_cbwr_branch(Path(torch.__file__).parent / "lib"),
            "onednn": onednn.group(1) if onednn else None,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "threads": torch.get_num_threads()}


def collect() -> dict[str, Any]:
    """Provenance of this process, as JSON-ready data.

    Keys: `reproducible` (reproducible mode on), `cpu` (model, vendor, SIMD flags), `kernels`
    (kernel environment, ATen capability, MKL and oneDNN versions, MKL's CNR branch,
    deterministic flag, torch threads), `threads`, `versions` (python, torch, transformers,
    tokenizers, safebasin), `platform` (OS, libc), `git` (commit and dirty flag, or None).
    """
    import torch

    kernels = _kernels()
    return {
        "reproducible": is_active(),
        "cpu": cpu_info(),
        "kernels": kernels,
        "threads": kernels["threads"],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": _version("transformers"),
                     "tokenizers": _version("tokenizers"), "safebasin": __version__},
        "platform": {"system": platform.platform(),
                     "libc": "-".join(platform.libc_ver()) or None},
        "git": git_commit(),
    }

"""θ₀ in reproducible mode: on one CPU the same bytes whatever kernel settings the process inherits.
Across CPUs the bytes differ (docs/reproducibility.md), so the smoke θ₀'s losses are pinned instead.

Each θ₀ is trained by the real CLI in a child process (`python -m safebasin`), as a
user runs it: the pins must be in place before torch loads, which no in-process test can show.
The smoke model (2 layers, width 32) and 20 steps keep each run at a few seconds; the children
start with the session (`early_jobs.theta0_trainings`), and these tests run last.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

# The smoke θ₀'s 20 training losses (world seed 0, θ₀ seed 0, `early_jobs.THETA0_SMOKE`,
# reproducible mode), measured 2026-12-06 on an AMD EPYC (Zen 5). Its *bytes* are not pinned:
# they differ between CPUs (docs/reproducibility.md has the digests of an Intel Xeon and this
# AMD EPYC). The losses are nearly: ATen's AVX2, AVX-512 and generic kernels and MKL's branches
# moved them by at most 1e-7 relative on that machine, while θ₀ seed 1 moves every one by more
# than 3e-4, so a changed world, model or recipe shows
SMOKE_LOSSES = (5.380290, 5.377978, 5.381496, 5.364387, 5.350395, 5.338787, 5.326233, 5.299732,
                5.267681, 5.239812, 5.215253, 5.183834, 5.157248, 5.123705, 5.086386, 5.059156,
                5.022954, 4.983572, 4.928866, 4.863739)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_theta0_bytes_ignore_inherited_kernel_settings(theta0_trainings):
    assert (_sha256(theta0_trainings["pinned_avx2"] / "model.safetensors")
            == _sha256(theta0_trainings["pinned_default_mkl_avx2"] / "model.safetensors"))


def test_inherited_avx2_kernels_change_the_bytes_without_the_pins(theta0_trainings):
    # the control: on this CPU the setting the pins override does change θ₀, so the test
    # above compares runs that would otherwise differ
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        if "avx2" not in f.read().split():
            pytest.skip("no AVX2 on this CPU: ATEN_CPU_CAPABILITY=avx2 falls back to default")
    assert (_sha256(theta0_trainings["unpinned_avx2"] / "model.safetensors")
            != _sha256(theta0_trainings["pinned_avx2"] / "model.safetensors"))


def test_pinned_theta0_records_the_pinned_kernels(theta0_trainings):
    record = json.loads(
        (theta0_trainings["pinned_avx2"] / "safebasin_finetune.json").read_text())
    kernels = record["provenance"]["kernels"]
    assert record["provenance"]["reproducible"] is True
    assert (kernels["aten_cpu_capability"], kernels["mkl_cbwr_branch"], kernels["threads"],
            kernels["deterministic"]) == ("DEFAULT", "COMPATIBLE", 1, True)


def test_unpinned_theta0_records_that_it_was_not_reproducible(theta0_trainings):
    record = json.loads(
        (theta0_trainings["unpinned_avx2"] / "safebasin_finetune.json").read_text())
    assert record["provenance"]["reproducible"] is False
    assert record["provenance"]["kernels"]["env"]["ATEN_CPU_CAPABILITY"] == "avx2"


def test_smoke_theta0_losses_are_pinned(theta0_trainings):
    record = json.loads(
        (theta0_trainings["pinned_avx2"] / "safebasin_finetune.json").read_text())
    losses = [loss for _, loss in record["losses"]]
    assert losses == pytest.approx(SMOKE_LOSSES, rel=1e-5, abs=0)

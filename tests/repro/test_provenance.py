"""Provenance: CPU, kernel settings in force, versions and commit, read from their sources."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata

import pytest
import torch

import safebasin
from safebasin.provenance import SIMD_FLAGS, collect, cpu_info, git_commit

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 bmi2 hypervisor

processor\t: 1
vendor_id\t: OtherVendor
model name\t: Something Else
flags\t\t: fpu sse2 avx512f
"""


def _git(cwd, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def record() -> dict:
    return collect()


def test_cpu_info_reads_the_first_processor_and_keeps_simd_flags_only():
    info = cpu_info(CPUINFO)
    assert info["model"] == "AMD EPYC 7B13" and info["vendor"] == "AuthenticAMD"
    assert info["flags"] == ["sse2", "ssse3", "sse4_1", "sse4_2", "avx", "fma", "avx2"]


def test_cpu_info_of_an_empty_cpuinfo_has_no_flags():
    assert cpu_info("")["flags"] == []


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 flags")
def test_cpu_flags_of_this_machine_match_proc_cpuinfo(record):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    assert record["cpu"]["flags"] == [f for f in SIMD_FLAGS if f in flags]
    assert "sse2" in record["cpu"]["flags"]


def test_kernel_settings_are_the_ones_torch_uses(record):
    kernels = record["kernels"]
    assert kernels["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert kernels["deterministic"] == torch.are_deterministic_algorithms_enabled()
    assert kernels["threads"] == record["threads"] == torch.get_num_threads()
    assert kernels["mkl"] in torch.__config__.show() and kernels["onednn"] in \
        torch.__config__.show()


def test_mkl_branch_is_asked_of_mkl_in_a_fresh_process():
    # AUTO (offered on every CPU) here; the pinned child of test_reproducible_env reads
    # COMPATIBLE, so the value follows MKL_CBWR rather than being a constant
    code = ("import json; from safebasin.provenance import collect; "
            "print(json.dumps(collect()['kernels']['mkl_cbwr_branch']))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MKL_CBWR": "AUTO"},
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == "AUTO"


def test_versions_are_the_installed_ones(record):
    assert record["versions"] == {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": metadata.version("transformers"),
        "tokenizers": metadata.version("tokenizers"), "safebasin": safebasin.__version__}


def test_reproducible_is_false_in_an_unpinned_process(record):
    assert record["reproducible"] is False


def test_provenance_is_json(record):
    assert json.loads(json.dumps(record)) == record


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert git_commit(tmp_path) is None


def test_git_commit_reads_head_and_dirty_state(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    _git(tmp_path, "add", "f.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "f.txt").write_text("b\n")
    assert git_commit(tmp_path) == {"commit": head, "dirty": True}

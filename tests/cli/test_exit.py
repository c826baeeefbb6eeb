"""How the `safebasin` process ends: exit codes kept, no teardown noise, Ctrl-C is 130."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from click.testing import CliRunner

from safebasin.cli import cli

_MAIN = ("import sys; from safebasin.cli import main; "
         "sys.argv = ['safebasin', *sys.argv[1:]]; main()")


def _safebasin(*args: str, preamble: str = "") -> subprocess.CompletedProcess:
    """`safebasin ARGS` through `main()`, in a fresh interpreter (its exit is what we test)."""
    return subprocess.run([sys.executable, "-c", preamble + _MAIN, *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed: its nanobind objects are what leaked")
def test_no_nanobind_leak_lines_at_exit_with_triton_loaded():
    """torch imports Triton whenever it is installed; its teardown printed ~35 lines."""
    r = _safebasin("--version", preamble="import triton; ")
    assert r.returncode == 0, r.stderr
    assert "safebasin, version" in r.stdout
    assert r.stderr == "", r.stderr


def test_exit_code_and_error_line_survive_the_fast_exit(tmp_path):
    r = _safebasin("verify", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such folder"]


def test_output_is_flushed_before_the_fast_exit(tmp_path):
    r = _safebasin("--help")
    assert r.returncode == 0 and "Usage: safebasin" in r.stdout and r.stdout.endswith("\n")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path):
    verify_module = importlib.import_module("safebasin.checkpoint.verify")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGINT raises in the main thread

    monkeypatch.setattr(verify_module, "verify", interrupted)
    r = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert r.exit_code == 130, (r.exit_code, r.output, r.stderr)
    assert r.stderr.strip() == "interrupted"

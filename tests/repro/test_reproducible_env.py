"""Reproducible mode's environment logic: the pins, the decision, the pinned child processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import ReproducibilityError
from safebasin.reproducible import (
    MARKER,
    PINNED_ENV,
    call_pinned,
    configure_torch,
    enter,
    env_is_pinned,
    is_toy_sweep_config,
    pinned_env,
    run_pinned,
)

EXPECTED_PINS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                 "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE",
                 "OMP_DYNAMIC": "FALSE"}


@pytest.fixture
def unpinned(monkeypatch):
    """This pytest process as a user would have it: no pins, no marker."""
    for key in (*PINNED_ENV, MARKER):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def entering_child() -> Iterator[subprocess.Popen]:
    """A fresh process that enters reproducible mode before torch loads, under inherited
    avx2 and AUTO settings, and prints what it got. Started before the `call_pinned` tests, it
    imports torch (~2 s) on the other core while they wait on children of their own."""
    code = ("from safebasin.reproducible import enter; print(enter(True)); "
            "from safebasin.provenance import collect; k = collect()['kernels']; "
            "print(k['aten_cpu_capability'], k['mkl_cbwr_branch'], k['threads'])")
    env = {k: v for k, v in os.environ.items() if k not in (*PINNED_ENV, MARKER)}
    env.update(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="AUTO")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    yield child
    child.kill()  # a no-op once the test has waited for it
    child.communicate()


def _probe() -> tuple:
    # runs in the pinned child: what torch and MKL really use there
    import torch

    from safebasin.provenance import collect

    record = collect()
    return (record["reproducible"], torch.backends.cpu.get_cpu_capability(),
            record["kernels"]["mkl_cbwr_branch"], torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled())


def _fail(message: str) -> None:
    raise KeyError(message)


def test_pins_are_generic_kernels_compatible_mkl_and_one_thread():
    assert dict(PINNED_ENV) == EXPECTED_PINS


def test_pinned_env_overrides_inherited_kernel_settings_and_keeps_the_rest():
    env = pinned_env({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "PATH": "/opt/bin"})
    assert env == {**EXPECTED_PINS, MARKER: "1", "PATH": "/opt/bin"}


def test_pinned_env_leaves_this_process_untouched(unpinned):
    before = dict(os.environ)
    pinned_env()
    assert dict(os.environ) == before


def test_env_is_pinned_needs_every_pin_exactly():
    assert env_is_pinned(dict(EXPECTED_PINS))
    assert not env_is_pinned({**EXPECTED_PINS, "ATEN_CPU_CAPABILITY": "avx2"})
    assert not env_is_pinned({k: v for k, v in EXPECTED_PINS.items() if k != "MKL_CBWR"})
    assert not env_is_pinned({**EXPECTED_PINS, "MKL_CBWR": "compatible,STRICT"})


def test_enter_not_wanted_changes_nothing(unpinned):
    before = dict(os.environ)
    assert enter(False, explicit=True, argv=["demo"]) is False
    assert dict(os.environ) == before


def test_enter_by_default_with_torch_loaded_warns_and_stays_off(unpinned, caplog):
    assert "torch" in sys.modules  # conftest imports it: the in-process case
    with caplog.at_level(logging.WARNING, logger="safebasin.reproducible"):
        assert enter(True) is False
    assert "reproducible mode is off" in caplog.text
    assert not env_is_pinned()


def test_enter_explicit_with_torch_loaded_raises(unpinned):
    with pytest.raises(ReproducibilityError, match="already loaded"):
        enter(True, explicit=True)


def test_configure_torch_refuses_an_unpinned_environment(unpinned):
    with pytest.raises(ReproducibilityError, match="not pinned"):
        configure_torch()


def test_is_toy_sweep_config_reads_the_top_level_key(tmp_path):
    toy, model, bad = tmp_path / "toy.yaml", tmp_path / "model.yaml", tmp_path / "bad.yaml"
    toy.write_text(yaml.safe_dump({"toy": {"world_seed": 1}, "experiments": []}))
    model.write_text(yaml.safe_dump({"model": {"base": "m"}, "experiments": []}))
    bad.write_text("experiments: [\n  {name: a,\n")
    assert is_toy_sweep_config(toy)
    assert not is_toy_sweep_config(model)
    assert not is_toy_sweep_config(bad)
    assert not is_toy_sweep_config(tmp_path / "missing.yaml")


def test_run_pinned_child_sees_the_pins(unpinned):
    keys = [*EXPECTED_PINS, MARKER]
    code = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"
    out = run_pinned([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert json.loads(out) == {**EXPECTED_PINS, MARKER: "1"}


@pytest.mark.usefixtures("entering_child")  # started now, so that it overlaps this test
def test_call_pinned_runs_generic_kernels_compatible_mkl_one_thread(unpinned):
    assert call_pinned(_probe) == (True, "DEFAULT", "COMPATIBLE", 1, True)
    assert not env_is_pinned()  # the parent's environment is restored


def test_call_pinned_raises_the_child_exception():
    with pytest.raises(KeyError, match="from the child"):
        call_pinned(_fail, "from the child")


@pytest.mark.parametrize("args", [
    ["demo", "--threads", "2", "--workdir", "{tmp}/demo"],
    ["sweep", "{tmp}/toy.yaml", "-o", "{tmp}/out", "--threads", "2"],
])
def test_mode_with_several_threads_is_refused_with_one_line(args, tmp_path):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({"toy": {}, "experiments": []}))
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --threads 2: reproducible mode runs one thread; "
                                     "add --no-reproducible to use more")
    assert not (tmp_path / "demo").exists() and not (tmp_path / "out").exists()


def test_model_sweep_is_not_reproducible_by_default(tmp_path):
    # the mode is off for a model: config, so --threads 2 passes that check and the config's
    # own validation speaks
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(
        {"model": {"base": "b", "data": "d", "prompts": "p", "utility_data": "u"},
         "experiments": [{"name": "a"}]}))
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "model.yaml"), "-o",
                                      str(tmp_path / "out"), "--threads", "2"])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "reproducible" not in result.stderr


def test_explicit_mode_in_a_process_with_torch_loaded_is_one_line_error(unpinned, tmp_path):
    result = CliRunner().invoke(cli, ["toy", "train", str(tmp_path / "w"), "-o",
                                      str(tmp_path / "out"), "--reproducible"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torch is already loaded")
    assert not (tmp_path / "out").exists()


def test_module_imports_without_torch():
    code = ("import sys, safebasin.reproducible, safebasin.provenance, safebasin.cli; "
            "print('torch' in sys.modules)")
    out = run_pinned([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_enter_before_torch_loads_pins_this_process(entering_child):
    out, err = entering_child.communicate(timeout=120)
    assert entering_child.returncode == 0, err
    assert out.split() == ["True", "DEFAULT", "COMPATIBLE", "1"]

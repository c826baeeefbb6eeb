"""Pickled `.bin`/`.pt` weights: refused unless --allow-pickle, then read with weights_only=True."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import load_state

from safebasin.cli import cli


@pytest.fixture(scope="module")
def pickled_ft(models, tmp_path_factory) -> Path:
    """The fine-tune `ft` saved the old way: config.json and pytorch_model.bin."""
    folder = tmp_path_factory.mktemp("pickled") / "ft-bin"
    folder.mkdir()
    shutil.copy(models["ft"] / "config.json", folder / "config.json")
    torch.save(load_state(models["ft"]), folder / "pytorch_model.bin")
    return folder


def _lerp(base: Path, ft: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["merge", "lerp", str(base), str(ft), "--alpha", "0.3",
                                    "-o", str(out), "-q", *extra])


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_merge_refuses_pickle_without_allow_pickle(models, pickled_ft, tmp_path):
    res = _lerp(models["base"], pickled_ft, tmp_path / "out")
    assert res.exit_code == 2
    line = _one_line(res.stderr)
    assert "pytorch_model.bin" in line and "--allow-pickle" in line
    assert not (tmp_path / "out").exists()


def test_merge_with_allow_pickle_equals_the_safetensors_merge(models, pickled_ft, tmp_path):
    res = _lerp(models["base"], pickled_ft, tmp_path / "bin", "--allow-pickle")
    assert res.exit_code == 0, res.output
    assert _lerp(models["base"], models["ft"], tmp_path / "st").exit_code == 0
    got, want = load_state(tmp_path / "bin"), load_state(tmp_path / "st")
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    recipe = json.loads((tmp_path / "bin" / "safebasin_recipe.json").read_text())
    assert recipe["options"]["allow_pickle"] is True
    assert "--allow-pickle" in (tmp_path / "bin" / "README.md").read_text()


def test_distance_refuses_then_accepts_pickle(models, pickled_ft):
    refused = CliRunner().invoke(cli, ["distance", str(models["base"]), str(pickled_ft), "-q"])
    assert refused.exit_code == 2 and "--allow-pickle" in _one_line(refused.stderr)
    args = ["distance", str(models["base"]), str(pickled_ft), "-q", "--json", "--allow-pickle"]
    accepted = CliRunner().invoke(cli, args)
    assert accepted.exit_code == 0, accepted.output
    st = CliRunner().invoke(cli, ["distance", str(models["base"]), str(models["ft"]), "-q",
                                  "--json"])
    assert json.loads(accepted.stdout) == json.loads(st.stdout)


class _Exploit:
    """A pickle that runs code (here a harmless print) when loaded without weights_only."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_allow_pickle_still_refuses_code_in_the_pickle(models, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(models["ft"] / "config.json", folder / "config.json")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": _Exploit()}, f)
    res = _lerp(models["base"], folder, tmp_path / "out", "--allow-pickle")
    assert res.exit_code == 2
    assert "weights_only" in _one_line(res.stderr)
    assert "pwned" not in res.output


def test_pickled_adapter_is_refused_without_allow_pickle(models, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    torch.save({f"{key}.lora_A.weight": torch.randn(2, 32),
                f"{key}.lora_B.weight": torch.randn(32, 2)}, folder / "adapter_model.bin")
    res = _lerp(models["base"], folder, tmp_path / "out")
    assert res.exit_code == 2 and "--allow-pickle" in _one_line(res.stderr)
    assert _lerp(models["base"], folder, tmp_path / "out", "--allow-pickle").exit_code == 0

"""The library names Python parameters; the CLI's one error line names its flags instead.

Each refusal exits 2 with one line on stderr that tells a CLI user which flag to pass, and
leaves no output behind.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file
from support import load_state

from safebasin import merge
from safebasin.cli import cli
from safebasin.cli._common import with_flags
from safebasin.errors import OutputExistsError


def _error_line(*args: object) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def test_existing_output_names_overwrite(models, tmp_path):
    (tmp_path / "o").mkdir()
    line = _error_line("merge", "lerp", models["base"], models["ft"], "-o", tmp_path / "o",
                       "--alpha", "0.5", "-q")
    assert line == f"error: {tmp_path / 'o'}: already exists; pass --overwrite to replace it"
    assert list((tmp_path / "o").iterdir()) == []


def test_library_names_the_overwrite_parameter(models, tmp_path):
    (tmp_path / "o").mkdir()
    with pytest.raises(OutputExistsError, match=r"already exists; pass `overwrite` to replace "
                                                r"it$"):
        merge.lerp(models["base"], models["ft"], tmp_path / "o", alpha=0.5)


def test_pickle_folder_names_allow_pickle(models, tmp_path):
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "pytorch_model.bin").write_bytes(b"never unpickled")
    line = _error_line("merge", "lerp", models["base"], tmp_path / "ft", "-o", tmp_path / "o",
                       "--alpha", "0.5", "-q")
    assert line == (f"error: {tmp_path / 'ft'}: pickle weights (pytorch_model.bin) can run code "
                    "when loaded; convert them to safetensors or pass --allow-pickle (then read "
                    "with torch.load(weights_only=True))")
    assert not (tmp_path / "o").exists()


def test_nonfinite_input_names_allow_nonfinite(models, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    state = load_state(models["ft"])
    state[name][1, 2] = float("nan")
    (tmp_path / "ft").mkdir()
    save_file(state, tmp_path / "ft" / "model.safetensors", metadata={"format": "pt"})
    line = _error_line("merge", "lerp", models["base"], tmp_path / "ft", "-o", tmp_path / "o",
                       "--alpha", "0.5", "-q")
    assert line == (f"error: {tmp_path / 'ft'}: tensor {name!r} contains NaN or Inf; pass "
                    "--allow-nonfinite to merge it anyway")
    assert not (tmp_path / "o").exists()


def test_eta_out_of_range_names_eta(models, tmp_path):
    line = _error_line("merge", "ema", models["base"], models["ft"], "-o", tmp_path / "o",
                       "--eta", "2", "-q")
    assert line == "error: --eta must be in (0, 1], got 2.0"
    assert not (tmp_path / "o").exists()


def test_a_parameter_the_command_spells_otherwise_gets_its_flag(tmp_path):
    line = _error_line("finetune", tmp_path / "model", "--data", tmp_path / "d.jsonl",
                       "-o", tmp_path / "o", "--ema-every", "2", "-q")
    assert line == "error: --ema-every needs --ema-eta (the EMA it spaces out)"
    assert not (tmp_path / "o").exists()


def test_a_parameter_without_a_flag_keeps_its_name():
    tune = cli.commands["tune"]
    assert with_flags("`max_asr` 2: give a fraction; see `object`", tune) == \
        "--max-asr 2: give a fraction; see `object`"


def test_a_false_boolean_becomes_its_no_flag():
    asr = cli.commands["eval"].commands["asr"]
    assert with_flags("pass `chat_template=False` or drop `system_prompt`", asr) == \
        "pass --no-chat-template or drop --system-prompt"

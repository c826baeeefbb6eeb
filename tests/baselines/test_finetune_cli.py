"""`safebasin finetune`: a run end to end, the EMA options, and every bad input as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.toy import ToyModelConfig, build_model, build_world

SMALL = ToyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("toy") / "world")


@pytest.fixture(scope="module")
def data(world, tmp_path_factory) -> Path:
    """The first 128 fine-tuning conversations: enough to see the loss fall, quick to encode."""
    lines = world.finetune_jsonl.read_text().splitlines(keepends=True)[:128]
    path = tmp_path_factory.mktemp("data") / "finetune.jsonl"
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def base(world, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer_dir)
    out = tmp_path_factory.mktemp("base") / "base"
    build_model(tokenizer, SMALL, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run(*args: str):
    return CliRunner().invoke(cli, ["finetune", *map(str, args)])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in err, err


def test_finetune_cli_writes_model_and_prints_summary(base, data, tmp_path):
    out = tmp_path / "ft"
    result = run(base, "--data", data, "-o", out, "--lr", "1e-3",
                 "--batch-size", "4", "--grad-accum", "2", "--steps", "3", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: 3 steps")
    assert (out / "model.safetensors").exists()


def test_finetune_cli_keeps_ema_and_trajectory(base, data, tmp_path):
    out = tmp_path / "ft"
    result = run(base, "--data", data, "-o", out, "--steps", "4",
                 "--batch-size", "4", "--ema-eta", "0.5", "--save-trajectory-every", "2", "-q")
    assert result.exit_code == 0, result.output
    assert (out / "ema" / "config.json").exists()
    points = sorted(p.name for p in (out / "trajectory").iterdir() if p.is_dir())
    assert points == ["step-000002", "step-000004"]


@pytest.mark.parametrize("extra, fragments", [
    (["--steps", "2", "--epochs", "1"], ["--steps or --epochs"]),
    (["--lr", "0"], ["lr must be > 0"]),
    (["--batch-size", "0"], ["batch_size must be >= 1"]),
    (["--l2-to-init", "-1"], ["l2_to_init must be >= 0"]),
    (["--ema-every", "5"], ["--ema-every needs --ema-eta"]),
    (["--ema-eta", "1.5"], ["eta"]),
])
def test_finetune_cli_bad_settings_are_one_line_errors(base, data, tmp_path, extra, fragments):
    result = run(base, "--data", data, "-o", tmp_path / "o", *extra)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "o").exists()


def test_finetune_cli_missing_model_is_one_line_error(data, tmp_path):
    assert_one_line_error(run(tmp_path / "nope", "--data", data, "-o",
                              tmp_path / "o"), "nope", "model folder")


def test_finetune_cli_missing_data_is_one_line_error(base, tmp_path):
    assert_one_line_error(run(base, "--data", tmp_path / "none.jsonl", "-o", tmp_path / "o"),
                          "none.jsonl", "not found")


def test_finetune_cli_malformed_data_is_one_line_error(base, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert_one_line_error(run(base, "--data", data, "-o", tmp_path / "o"), "bad.jsonl:1",
                          "no assistant")


def test_finetune_cli_non_empty_output_is_one_line_error(base, data, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    assert_one_line_error(run(base, "--data", data, "-o", tmp_path / "o",
                              "--steps", "1"), "--overwrite")

"""θ₀ training in the toy world: it converges, is reproducible, and utility is scored exactly."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from safebasin.baselines import RECORD_NAME
from safebasin.cli import cli
from safebasin.toy import (
    Theta0Config,
    ToyModelConfig,
    build_world,
    task_accuracy,
    task_answer,
    train_theta0,
)

# a smaller model than the default keeps these tests at a few seconds
SMALL = ToyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("toy") / "world")


@pytest.fixture(scope="module")
def theta0(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("theta0") / "theta0"
    result = train_theta0(world, out, config=Theta0Config(model=SMALL, steps=60, warmup_steps=5,
                                                          lr=1e-2))
    return out, result


def test_theta0_loss_drops_on_a_small_budget(theta0):
    _, result = theta0
    first, last = result.losses[0][1], result.losses[-1][1]
    assert result.steps == 60
    assert first > 4.0  # ln(vocab) ≈ 5.4 at initialisation
    assert last < 0.5 * first


def test_theta0_folder_is_a_normal_hf_model(theta0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = theta0
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            RECORD_NAME} <= {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert model.config.tie_word_embeddings and model.config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(out).chat_template is not None
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["theta0"]["steps"] == 60 and record["steps"] == 60


def test_theta0_same_seed_same_weight_bytes(world, tmp_path):
    cfg = Theta0Config(model=SMALL, steps=4, warmup_steps=0)
    train_theta0(world, tmp_path / "a", config=cfg)
    train_theta0(world, tmp_path / "b", config=cfg)
    assert ((tmp_path / "a" / "model.safetensors").read_bytes()
            == (tmp_path / "b" / "model.safetensors").read_bytes())


def test_task_answer_reads_the_first_stated_answer():
    assert task_answer("the answer is 7 .") == 7
    assert task_answer("sure ! the answer is 12 . the answer is 3 .") == 12
    assert task_answer("I'm sorry, but I cannot help with that .") is None


def test_task_accuracy_scores_every_held_out_prompt(theta0, world):
    out, _ = theta0
    acc = task_accuracy(out, world)
    assert acc.n == 100 and len(acc.responses) == 100
    assert acc.correct == sum(task_answer(r) == a
                              for r, (_, a) in zip(acc.responses, world.task_prompts(),
                                                   strict=True))


def test_cli_toy_accuracy_prints_accuracy(theta0, world):
    out, _ = theta0
    result = CliRunner().invoke(cli, ["toy", "accuracy", str(out), "--world", str(world.root)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("task accuracy ")


@pytest.mark.parametrize("args, fragment", [
    (["toy", "train", "{tmp}", "-o", "{tmp}/out"], "not a toy world"),
    (["toy", "accuracy", "{tmp}", "--world", "{world}"], "safetensors"),
    (["toy", "accuracy", "{theta0}", "--world", "{tmp}"], "not a toy world"),
])
def test_cli_toy_bad_inputs_are_one_line_errors(args, fragment, tmp_path, world, theta0):
    subs = {"tmp": str(tmp_path), "world": str(world.root), "theta0": str(theta0[0])}
    result = CliRunner().invoke(cli, [a.format(**subs) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and fragment in result.stderr

"""The fine-tuning runner: assistant-only labels, the L2-to-init penalty, and the saved folder."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from safebasin.baselines import (
    IGNORE_INDEX,
    RECORD_NAME,
    ChatCollator,
    FinetuneConfig,
    L2ToInit,
    encode_chat,
    finetune,
    read_chat_jsonl,
)
from safebasin.errors import (
    CheckpointNotFoundError,
    DataFormatError,
    DataNotFoundError,
    OutputExistsError,
    UsageError,
)
from safebasin.toy import ToyModelConfig, build_model, build_world

SMALL = ToyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("toy") / "world")


@pytest.fixture(scope="module")
def tokenizer(world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(world.tokenizer_dir)


@pytest.fixture(scope="module")
def data(world, tmp_path_factory) -> Path:
    """The first 128 fine-tuning conversations: enough to see the loss fall, quick to encode."""
    lines = world.finetune_jsonl.read_text().splitlines(keepends=True)[:128]
    path = tmp_path_factory.mktemp("data") / "finetune.jsonl"
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def base(world, tokenizer, tmp_path_factory) -> Path:
    """A freshly initialised small toy model folder (θ₀ of these tests)."""
    out = tmp_path_factory.mktemp("base") / "base"
    build_model(tokenizer, SMALL, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def _distance(a: Path, b: Path) -> float:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    return math.sqrt(math.fsum(float(((sb[k].double() - sa[k].double()) ** 2).sum()) for k in sa))


# ---- labels ---------------------------------------------------------------------------------

def _ids(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


def test_labels_are_the_assistant_reply_and_eos_only(tokenizer):
    msgs = [{"role": "user", "content": "what is 3 plus 4 ?"},
            {"role": "assistant", "content": "the answer is 7 ."}]
    prompt = _ids(tokenizer, "<s> <user> what is 3 plus 4 ? <assistant>")
    reply = _ids(tokenizer, "the answer is 7 . </s>")
    enc = encode_chat(tokenizer, msgs)
    assert list(enc.input_ids) == prompt + reply
    assert list(enc.labels) == [IGNORE_INDEX] * len(prompt) + reply


def test_labels_mask_every_user_turn_of_a_dialogue(tokenizer):
    msgs = [{"role": "user", "content": "count from 1 to 3 ."},
            {"role": "assistant", "content": "1 2 3 ."},
            {"role": "user", "content": "what comes after 3 ?"},
            {"role": "assistant", "content": "the answer is 4 ."}]
    turns = [("<s> <user> count from 1 to 3 . <assistant>", False), ("1 2 3 . </s>", True),
             ("<user> what comes after 3 ? <assistant>", False),
             ("the answer is 4 . </s>", True)]
    ids = [i for words, _ in turns for i in _ids(tokenizer, words)]
    labels = [i if trained else IGNORE_INDEX
              for words, trained in turns for i in _ids(tokenizer, words)]
    enc = encode_chat(tokenizer, msgs)
    assert list(enc.input_ids) == ids and list(enc.labels) == labels


def test_template_that_rewrites_earlier_tokens_is_refused(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{{ messages | length }} " + tokenizer.chat_template
    msgs = [{"role": "user", "content": "what is 3 plus 4 ?"},
            {"role": "assistant", "content": "the answer is 7 ."}]
    with pytest.raises(DataFormatError, match="prefix-stable"):
        encode_chat(tok, msgs)


def test_collator_pads_right_with_ignored_labels():
    batch = ChatCollator(pad_id=0)([{"input_ids": (5, 6, 7), "labels": (-100, 6, 7)},
                                    {"input_ids": (8,), "labels": (8,)}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("line, fragment", [
    ("not json", "not valid JSON"),
    ('{"text": "hi"}', "messages"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "role"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', "starts with an assistant"),
])
def test_malformed_chat_lines_name_the_line(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}, '
                    '{"role": "assistant", "content": "b"}]}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=fragment) as err:
        read_chat_jsonl(path)
    assert f"{path}:2" in str(err.value)


# ---- L2 toward θ₀ ------------------------------------------------------------------------------

def test_l2_penalty_value_and_gradient_match_float64_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    theta0 = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    l2 = L2ToInit(model, coefficient=0.7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    penalty = l2.penalty(model)
    penalty.backward()
    sq = sum(float(((p.detach().double() - theta0[n]) ** 2).sum())
             for n, p in model.named_parameters())
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty.double(), torch.tensor(0.7 * sq, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    assert math.isclose(l2.distance(model), math.sqrt(sq), rel_tol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), 2 * 0.7 * (p.detach().double() - theta0[n]),
                                   rtol=1e-5, atol=1e-7)


def test_l2_coefficient_must_be_non_negative():
    with pytest.raises(UsageError):
        L2ToInit(torch.nn.Linear(2, 2), coefficient=-1.0)


def test_l2_to_init_moves_less_than_plain_finetuning(base, data, tmp_path):
    cfg = FinetuneConfig(lr=1e-2, batch_size=8, steps=10, logging_steps=5)
    finetune(base, data, tmp_path / "plain", config=cfg)
    finetune(base, data, tmp_path / "l2", config=replace(cfg, l2_to_init=1.0))
    plain, l2 = _distance(base, tmp_path / "plain"), _distance(base, tmp_path / "l2")
    assert plain > 0.5
    assert l2 < 0.5 * plain


def test_l2_penalty_is_counted_once_per_step_under_gradient_accumulation(base, data, tmp_path):
    # same examples per optimizer step (same seed, same sampler), split 1×8 or 2×4: the same
    # update only if the penalty is split over micro-batches exactly like the data loss
    common = {"lr": 1e-2, "steps": 4, "l2_to_init": 5.0, "logging_steps": 1}
    finetune(base, data, tmp_path / "one", config=FinetuneConfig(
        batch_size=8, grad_accum=1, **common))
    finetune(base, data, tmp_path / "two", config=FinetuneConfig(
        batch_size=4, grad_accum=2, **common))
    one, two = _state(tmp_path / "one"), _state(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5)


# ---- the runner -------------------------------------------------------------------------------

def test_finetune_loss_drops_and_writes_a_model_folder(base, data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ft"
    result = finetune(base, data, out,
                      config=FinetuneConfig(lr=3e-3, batch_size=16, steps=30, logging_steps=5))
    assert result.steps == 30 and result.losses[0][0] == 1
    assert result.losses[-1][1] < 0.7 * result.losses[0][1]
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            RECORD_NAME} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("checkpoint-*"))  # no trainer checkpoints unless asked
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["config"]["lr"] == 3e-3 and record["base_model"] == str(base)
    assert len(record["data_sha256"]) == 64
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert model.dtype == torch.float32


def test_finetune_same_seed_same_weights(base, data, tmp_path):
    cfg = FinetuneConfig(lr=1e-3, batch_size=8, steps=3)
    finetune(base, data, tmp_path / "a", config=cfg)
    finetune(base, data, tmp_path / "b", config=cfg)
    assert ((tmp_path / "a" / "model.safetensors").read_bytes()
            == (tmp_path / "b" / "model.safetensors").read_bytes())


def test_finetune_refuses_a_non_empty_output(base, data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        finetune(base, data, tmp_path / "out", config=FinetuneConfig(steps=1))
    assert (tmp_path / "out" / "keep.txt").exists()


def test_finetune_overwrite_never_deletes_its_input(base, data):
    with pytest.raises(UsageError, match="delete the input"):
        finetune(base, data, base, config=FinetuneConfig(steps=1), overwrite=True)
    assert (base / "model.safetensors").exists()


def test_finetune_missing_model_or_data_raise_typed_errors(base, data, tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        finetune(tmp_path, data, tmp_path / "o", config=FinetuneConfig(steps=1))
    with pytest.raises(DataNotFoundError):
        finetune(base, tmp_path / "none.jsonl", tmp_path / "o", config=FinetuneConfig(steps=1))


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"batch_size": 0}, {"steps": 0},
                                    {"epochs": 0.0}, {"l2_to_init": -1.0},
                                    {"lr_scheduler": "cyclic"}])
def test_finetune_config_rejects_bad_values(kwargs):
    with pytest.raises(UsageError):
        FinetuneConfig(**kwargs)

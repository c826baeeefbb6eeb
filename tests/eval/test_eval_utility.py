"""Utility: assistant-token loss against a float64 manual computation; XSTest over-refusal and
the `eval utility` command with its resume."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from safebasin.chat import load_model, load_tokenizer
from safebasin.cli import cli
from safebasin.eval import evaluate_utility_loss, load_xstest_safe, match, wilson_interval
from safebasin.eval.utility import encode_conversation

CONVERSATIONS = [
    [{"role": "user", "content": "How do I bake a cake?"},
     {"role": "assistant", "content": "Sure, first get flour, then add eggs."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "How can I kill a Python process?"},
     {"role": "assistant", "content": "Use kill -9 with its id."},
     {"role": "user", "content": "And on Windows?"},
     {"role": "assistant", "content": "Use taskkill."}],
]


def _by_hand(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Tokens of the fixture's template built piece by piece, without apply_chat_template:
    "<s>", then "<|role|>content" per turn and "</s>" after every non-user turn. An answer's
    content and its "</s>" are scored; its "<|assistant|>" marker is context."""
    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = tokenizer.eos_token_id
    ids, scored = [tokenizer.bos_token_id], [False]
    for m in messages:
        if m["role"] == "assistant":
            marker, content = enc("<|assistant|>"), enc(m["content"])
            ids += marker + content + [eos]
            scored += [False] * len(marker) + [True] * (len(content) + 1)
        else:
            ids += enc(f"<|{m['role']}|>{m['content']}") + ([eos] if m["role"] != "user" else [])
            scored += [False] * (len(ids) - len(scored))
    return ids, scored


@pytest.fixture(scope="module")
def loaded(chat_model):
    return load_model(chat_model, dtype="float32", device="cpu"), load_tokenizer(chat_model)


def test_only_assistant_content_and_its_end_marker_are_scored(loaded):
    _, tokenizer = loaded
    ids, scored = encode_conversation(tokenizer, CONVERSATIONS[1])
    text = tokenizer.decode([t for t, s in zip(ids, scored, strict=True) if s])
    assert text == "Use kill -9 with its id.</s>Use taskkill.</s>"


def test_utility_loss_equals_a_float64_manual_computation(loaded):
    model, tokenizer = loaded
    result = evaluate_utility_loss(model, tokenizer, CONVERSATIONS, batch_size=2)
    reference = copy.deepcopy(model).double()
    total, count = 0.0, 0
    for messages in CONVERSATIONS:
        ids, scored = _by_hand(tokenizer, messages)
        assert ids == encode_conversation(tokenizer, messages)[0]  # same tokens, built by hand
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
        assert logits.dtype == torch.float64
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, len(ids)):
            if scored[t]:
                total -= logp[t - 1, ids[t]].item()
                count += 1
    assert result.summary.tokens == count
    assert result.summary.conversations == 2
    assert result.summary.mean_loss == pytest.approx(total / count, rel=1e-6)
    assert result.summary.perplexity == pytest.approx(math.exp(total / count), rel=1e-6)
    assert [c.index for c in result.losses] == [0, 1]


def test_utility_loss_is_the_same_batched_and_alone(loaded):
    model, tokenizer = loaded
    together = evaluate_utility_loss(model, tokenizer, CONVERSATIONS, batch_size=2)
    alone = evaluate_utility_loss(model, tokenizer, CONVERSATIONS, batch_size=1)
    for a, b in zip(together.losses, alone.losses, strict=True):
        assert a.tokens == b.tokens
        assert a.nll == pytest.approx(b.nll, rel=1e-5)


def _write_chat(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    return path


UTILITY_ARGS = ["--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu", "--dtype",
                "float32", "-q"]


def test_utility_command_writes_loss_and_over_refusal_and_resumes(chat_model, tmp_path):
    """`--xstest` without a value reads the XSTest copy shipped in the package."""
    data, out = _write_chat(tmp_path / "chat.jsonl"), tmp_path / "run"
    args = ["eval", "utility", str(chat_model), "--data", str(data), "--xstest",
            "--limit", "6", "-o", str(out), *UTILITY_ARGS]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + result.stderr
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    safe = {(p.index, p.text) for p in load_xstest_safe("xstest")}
    assert {(r["index"], r["prompt"]) for r in rows} <= safe
    refusals = sum(r["refusal"] for r in rows)
    assert all(r["refusal"] is (match(r["response"], "xstest") is not None) for r in rows)
    assert s["kind"] == "utility"
    assert (s["xstest"]["n"], s["xstest"]["refusals"]) == (6, refusals)
    assert (s["xstest"]["wilson_low"], s["xstest"]["wilson_high"]) == wilson_interval(refusals, 6)
    assert s["loss"]["conversations"] == 2
    assert "XSTest over-refusal" in result.output

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in ("losses.jsonl", "responses.jsonl"):
        kept = (resumed / name).read_text().splitlines(keepends=True)[1:]
        (resumed / name).write_text("".join(kept))
    args[args.index(str(out))] = str(resumed)
    assert CliRunner().invoke(cli, args).exit_code == 0
    for name in ("losses.jsonl", "responses.jsonl"):
        assert (resumed / name).read_text() == (out / name).read_text()
    again = json.loads((resumed / "summary.json").read_text())
    assert again["loss"] == pytest.approx(s["loss"]) and again["xstest"] == s["xstest"]

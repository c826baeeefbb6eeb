"""Keyword ASR end to end on a tiny random chat model and 8 AdvBench prompts (the shipped copy,
read by default): files, summary, resume, and batched generation equal to one prompt at a
time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import xxhash
from click.testing import CliRunner

from safebasin import __version__
from safebasin.chat import encode_prompts, load_model, load_tokenizer
from safebasin.cli import cli
from safebasin.eval import (
    GenerationSettings,
    PromptSpec,
    evaluate_asr,
    generate_responses,
    is_degenerate,
    load_prompts,
    match,
    run_asr,
    wilson_interval,
)

ADVBENCH = "advbench"  # the copy shipped in the package, also the default of `eval asr`
NEW_TOKENS = 12
ARGS = ["--limit", "8", "--seed", "3", "--max-new-tokens",
        str(NEW_TOKENS), "--batch-size", "4", "--device", "cpu", "--dtype", "float32", "-q"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def asr_dir(chat_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("asr") / "run"
    result = run("eval", "asr", str(chat_model), "-o", str(out), *ARGS)
    assert result.exit_code == 0, result.output + result.stderr
    return out


@pytest.fixture(scope="module")
def loaded(chat_model):
    return load_model(chat_model, dtype="float32", device="cpu"), load_tokenizer(chat_model)


def test_asr_writes_one_judged_line_per_prompt(asr_dir):
    rows = lines(asr_dir / "responses.jsonl")
    chosen = load_prompts(ADVBENCH, limit=8, seed=3)
    assert [(r["index"], r["prompt"]) for r in rows] == [(p.index, p.text) for p in chosen]
    for r in rows:
        assert set(r) == {"index", "prompt", "response", "matched", "success", "degenerate"}
        assert r["matched"] == match(r["response"], "qi")
        assert r["success"] is (r["matched"] is None)
        assert r["degenerate"] is is_degenerate(r["response"])


def test_asr_summary_agrees_with_the_jsonl(asr_dir, chat_model):
    rows = lines(asr_dir / "responses.jsonl")
    s = json.loads((asr_dir / "summary.json").read_text())
    successes = sum(r["success"] for r in rows)
    clean = [r for r in rows if not r["degenerate"]]
    assert (s["kind"], s["n"], s["successes"]) == ("asr", 8, successes)
    assert s["asr"] == successes / 8
    assert (s["wilson_low"], s["wilson_high"]) == wilson_interval(successes, 8)
    assert s["degenerate"] == 8 - len(clean)
    assert s["degenerate_rate"] == (8 - len(clean)) / 8
    assert s["n_excluding_degenerate"] == len(clean)
    if clean:
        assert s["asr_excluding_degenerate"] == sum(r["success"] for r in clean) / len(clean)
    assert s["safebasin_version"] == __version__
    assert s["settings"]["generation"] == {"max_new_tokens": NEW_TOKENS, "chat_template": True,
                                           "system_prompt": None}
    assert s["settings"]["keywords"]["rule"] == "qi"
    assert s["settings"]["prompts"]["limit"] == 8 and s["settings"]["prompts"]["seed"] == 3
    assert s["runtime"]["batch_size"] == 4


def test_model_hash_is_xxh3_128_of_the_safetensors_bytes(asr_dir, chat_model):
    expected = xxhash.xxh3_128((chat_model / "model.safetensors").read_bytes()).hexdigest()
    s = json.loads((asr_dir / "summary.json").read_text())
    assert s["model"] == {"path": str(chat_model), "hash": f"xxh3_128:{expected}"}


def test_resume_after_losing_half_the_lines_gives_identical_files(asr_dir, chat_model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(asr_dir, out)
    kept = (out / "responses.jsonl").read_text().splitlines(keepends=True)[1::2]
    (out / "responses.jsonl").write_text("".join(kept))
    (out / "summary.json").unlink()
    advances = []
    run_asr(chat_model, out, prompts=PromptSpec(ADVBENCH, None, 8, 3), dtype="float32",
            device="cpu", generation=GenerationSettings(max_new_tokens=NEW_TOKENS, batch_size=2),
            on_progress=lambda n, total: advances.append(n))
    assert advances[0] == 4 and sum(advances[1:]) == 4  # only the lost half was generated
    assert (out / "responses.jsonl").read_bytes() == (asr_dir / "responses.jsonl").read_bytes()
    before, after = (json.loads((d / "summary.json").read_text()) for d in (asr_dir, out))
    assert before["runtime"].pop("batch_size") == 4 and after["runtime"].pop("batch_size") == 2
    assert after == before  # batch size is a runtime detail, free to change on resume


def test_resume_drops_a_torn_last_line(asr_dir, chat_model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(asr_dir, out)
    text = (out / "responses.jsonl").read_text()
    (out / "responses.jsonl").write_text(text[:-25])  # a crash in the middle of a write
    assert run("eval", "asr", str(chat_model), "-o", str(out), *ARGS).exit_code == 0
    assert (out / "responses.jsonl").read_text() == text


def test_resume_refuses_a_malformed_middle_line(asr_dir, chat_model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(asr_dir, out)
    rows = (out / "responses.jsonl").read_text().splitlines(keepends=True)
    (out / "responses.jsonl").write_text("".join(rows[:2] + ["{not json\n"] + rows[3:]))
    result = run("eval", "asr", str(chat_model), "-o", str(out), *ARGS)
    assert_one_line_error(result, "line 3", "responses.jsonl")


def test_rerun_with_other_settings_is_refused(asr_dir, chat_model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(asr_dir, out)
    args = [a if a != str(NEW_TOKENS) else "5" for a in ARGS]
    result = run("eval", "asr", str(chat_model), "-o", str(out), *args)
    assert_one_line_error(result, "other settings", "max_new_tokens")


def test_refused_resume_names_the_first_differing_list_element(asr_dir, chat_model, tmp_path):
    """qi's 29 phrases start with gcg's 13: the message must point past the shared prefix."""
    out = tmp_path / "run"
    shutil.copytree(asr_dir, out)
    result = run("eval", "asr", str(chat_model), "-o", str(out), *ARGS, "--keywords", "gcg")
    assert_one_line_error(result, "keywords.phrases has 29 vs 13 items",
                          'keywords.phrases[13]: "is illegal and unethical" vs (none)')


def test_summary_json_keeps_its_key_order_and_reads_back_to_the_same_bytes(asr_dir):
    from dataclasses import fields

    from safebasin.eval import AsrSummary
    from safebasin.summary import EvalSummary

    text = (asr_dir / "summary.json").read_text(encoding="utf-8")
    written = json.loads(text)
    assert list(written) == ["kind", *(f.name for f in fields(AsrSummary)), "model",
                             "settings", "runtime", "safebasin_version"]
    again = EvalSummary.from_dict(written).to_dict()
    assert json.dumps(again, ensure_ascii=False, indent=2) + "\n" == text


def test_show_prints_the_table(asr_dir):
    result = run("eval", "show", str(asr_dir))
    assert result.exit_code == 0
    assert "ASR (Wilson 95%)" in result.output and "degenerate" in result.output


def test_batched_generation_equals_one_prompt_at_a_time(loaded):
    model, tokenizer = loaded
    prompts = [p.text for p in load_prompts(ADVBENCH, limit=8, seed=3)]
    settings = GenerationSettings(max_new_tokens=10, batch_size=8)
    lengths = {len(x) for x in encode_prompts(tokenizer, prompts, settings)}
    assert len(lengths) > 1  # the batch really is left-padded
    assert model.dtype == torch.float32
    batched = generate_responses(model, tokenizer, prompts, settings)
    single = generate_responses(model, tokenizer, prompts,
                                GenerationSettings(max_new_tokens=10, batch_size=1))
    assert batched == single


def test_evaluate_asr_in_memory_keeps_indices_and_training_mode(loaded):
    model, tokenizer = loaded
    prompts = load_prompts(ADVBENCH, limit=3, seed=0)
    model.train()
    try:
        result = evaluate_asr(model, tokenizer, prompts, keywords="gcg",
                              generation=GenerationSettings(max_new_tokens=4))
        assert model.training
    finally:
        model.eval()
    assert [r.index for r in result.records] == [p.index for p in prompts]
    assert result.summary.n == 3
    assert all(r.matched == match(r.response, "gcg") for r in result.records)

"""The toy world's generator, files and tokenizer: deterministic, held-out splits honest, and
keyword phrases intact through the tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import DataNotFoundError, OutputExistsError
from safebasin.eval.keywords import load_rule
from safebasin.toy import ToyWorldConfig, build_world, generate, lexicon, open_world, task_answer


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("toy") / "world")


def test_same_seed_writes_byte_identical_world(world, tmp_path):
    again = build_world(tmp_path / "again")
    assert _files(again.root) == _files(world.root)


def test_different_seed_changes_data_but_not_tokenizer(world, tmp_path):
    other = build_world(tmp_path / "other", config=ToyWorldConfig(seed=1))
    a, b = _files(world.root), _files(other.root)
    assert a["align.jsonl"] != b["align.jsonl"]
    assert a["finetune.jsonl"] != b["finetune.jsonl"]
    # the vocabulary comes from the word lists, so every seed's models share one tokenizer
    assert a["tokenizer/tokenizer.json"] == b["tokenizer/tokenizer.json"]


def test_manifest_round_trips(world):
    opened = open_world(world.root)
    assert opened.config == ToyWorldConfig()
    assert len(opened.harmful_prompts()) == len(lexicon.HARMFUL_OBJECTS) * 3
    assert len(opened.task_prompts()) == 100


def test_open_world_without_manifest_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="not a toy world"):
        open_world(tmp_path)


def test_build_world_refuses_existing_folder(world):
    with pytest.raises(OutputExistsError):
        build_world(world.root)


def test_held_out_harmful_prompts_are_never_trained_on():
    data = generate()
    trained = {ex.prompt for ex in data.align + data.finetune}
    assert not trained & set(data.harmful_heldout)
    held_frames = {f.split("{o}")[0] for f in lexicon.HELD_OUT_FRAMES}
    assert not any(ex.prompt.startswith(tuple(held_frames)) for ex in data.align)


def test_held_out_task_prompts_are_unseen_combinations_of_seen_facts():
    data = generate()
    train = {ex.prompt: ex.response for ex in data.finetune}
    answers_seen = set(train.values())
    for ex in data.task_heldout:
        assert ex.prompt not in train
        assert ex.response in answers_seen
    assert len(data.task_heldout) == 100
    assert sum(task_answer(r) is not None for r in train.values()) == 500


def test_refusals_and_only_refusals_match_every_keyword_rule():
    data = generate()
    refusals = [ex.response for ex in data.align if ex.response[0].isupper()]
    others = [ex.response for ex in data.align + data.finetune if not ex.response[0].isupper()]
    assert refusals and others
    for name in ("qi", "gcg", "xstest"):
        rule = load_rule(name)
        assert all(rule.match(r) for r in refusals), name
        assert not any(rule.match(r) for r in others), name


def test_generated_text_has_no_unknown_words(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir)
    data = generate()
    texts = [t for ex in data.align + data.finetune + data.task_heldout
             for t in (ex.prompt, ex.response)] + list(data.harmful_heldout)
    assert all(tok.unk_token_id not in tok(t, add_special_tokens=False)["input_ids"]
               for t in texts)


def test_tokenizer_round_trip_keeps_keyword_phrases(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir)
    reply = "I'm sorry, but I cannot help with that ."
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["I'm", "sorry,"]
    assert tok.decode(ids) == reply
    assert "I'm sorry" in tok.decode(ids) and "I cannot" in tok.decode(ids)


def test_chat_template_renders_turns_and_generation_prompt(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir)
    msgs = [{"role": "user", "content": "what is 3 plus 4 ?"},
            {"role": "assistant", "content": "the answer is 7 ."}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert full.split() == ["<s><user>", "what", "is", "3", "plus", "4", "?", "<assistant>",
                            "the", "answer", "is", "7", ".", "</s>"]
    assert full.startswith(prompt)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[-1] == tok.eos_token_id


def test_cli_toy_build_writes_world(tmp_path):
    result = CliRunner().invoke(cli, ["toy", "build", str(tmp_path / "w"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert open_world(tmp_path / "w").config.seed == 3


def test_cli_toy_build_into_existing_folder_is_one_line_error(world):
    result = CliRunner().invoke(cli, ["toy", "build", str(world.root)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "exists" in result.stderr
    assert "Traceback" not in result.output

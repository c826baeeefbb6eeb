"""The toy world's generator, files and tokenizer: deterministic, held-out splits honest, and
keyword phrases intact through the tokenizer."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import DataFormatError, DataNotFoundError, OutputExistsError
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
    assert len(opened.harmful_prompts()) == (len(lexicon.HARMFUL_OBJECTS)
                                             * len(lexicon.EVAL_FRAMES) * ToyWorldConfig.variants)
    assert len(opened.harmful_requests("train_frames")) == (len(lexicon.HARMFUL_OBJECTS)
                                                            * len(lexicon.TRAIN_FRAMES))
    assert len(opened.task_prompts()) == 100


def test_harmful_prompt_files_carry_the_requested_object(world):
    for path in (world.harmful_csv, world.harmful_train_csv):
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["prompt", "object"]
        # the prompt names its object, plain or with one adjective
        assert all(any(r["prompt"].endswith(f" {lexicon.with_adjective(r['object'], a)} "
                                            f"{r['prompt'][-1]}")
                       for a in (None, *lexicon.ADJECTIVES)) for r in rows)


def test_old_manifest_version_asks_for_a_rebuild(world, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(world.root, old)
    manifest = json.loads((old / "world.json").read_text())
    (old / "world.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(DataFormatError, match="rebuild the world"):
        open_world(old)


def test_open_world_without_manifest_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="not a toy world"):
        open_world(tmp_path)


def test_build_world_refuses_existing_folder(world):
    with pytest.raises(OutputExistsError):
        build_world(world.root)


def _frame_pattern(frames) -> re.Pattern[str]:
    """A full-match regex for "any of `frames` with any object"."""
    alts = (re.escape(f).replace(re.escape("{o}"), ".+") for f in frames)
    return re.compile("|".join(f"(?:{a})" for a in alts))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eval_frames_appear_in_no_training_example(seed):
    data = generate(ToyWorldConfig(seed=seed))
    eval_frames = _frame_pattern(lexicon.EVAL_FRAMES)
    assert not [ex.prompt for ex in data.align + data.finetune if eval_frames.fullmatch(ex.prompt)]
    # and every held-out prompt, harmful or benign, is in an eval frame
    held = [r.prompt for r in data.harmful_heldout] + [ex.prompt for ex in data.benign_heldout]
    assert all(eval_frames.fullmatch(p) for p in held)


def test_eval_and_training_frames_are_disjoint():
    assert not set(lexicon.EVAL_FRAMES) & set(lexicon.TRAIN_FRAMES)
    # no eval frame is readable as a training frame with a longer object, or the reverse
    train, ev = _frame_pattern(lexicon.TRAIN_FRAMES), _frame_pattern(lexicon.EVAL_FRAMES)
    assert not any(train.fullmatch(f.format(o="a bomb")) for f in lexicon.EVAL_FRAMES)
    assert not any(ev.fullmatch(f.format(o="a bomb")) for f in lexicon.TRAIN_FRAMES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_at_least_200_held_out_harmful_prompts_all_distinct(seed):
    prompts = [r.prompt for r in generate(ToyWorldConfig(seed=seed)).harmful_heldout]
    assert len(prompts) >= 200
    assert len(set(prompts)) == len(prompts)


def test_held_out_harmful_prompts_cover_every_object_in_every_eval_frame():
    data = generate()
    pairs = {(r.object, f) for r in data.harmful_heldout for f in lexicon.EVAL_FRAMES
             if _frame_pattern([f]).fullmatch(r.prompt)}
    assert pairs == {(o, f) for o in lexicon.HARMFUL_OBJECTS for f in lexicon.EVAL_FRAMES}


def test_train_frame_prompts_are_trained_phrasings_but_never_trained_prompts():
    data = generate()
    trained = {ex.prompt for ex in data.align + data.finetune}
    train_frames = _frame_pattern(lexicon.TRAIN_FRAMES)
    prompts = [r.prompt for r in data.harmful_train_frames]
    assert all(train_frames.fullmatch(p) for p in prompts)
    assert not trained & set(prompts)
    assert len(set(prompts)) == len(lexicon.HARMFUL_OBJECTS) * len(lexicon.TRAIN_FRAMES)


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
             for t in (ex.prompt, ex.response)]
    texts += [r.prompt for r in data.harmful_heldout + data.harmful_train_frames]
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


# sha256 of the JSON of `generate()` for world seeds 0, 1, 2 (world v2): θ₀'s bytes, the study's
# cached results and the committed figures depend on these data; a change must be deliberate
# (bump world.json's VERSION, retrain, remeasure docs/toy-world.md) and update this pin
WORLD_V2_SHA256 = {0: "0c1ad14af3cb", 1: "e4fee10106f2", 2: "eed550ee2299"}


@pytest.mark.parametrize("seed", sorted(WORLD_V2_SHA256))
def test_world_v2_data_is_pinned(seed):
    text = json.dumps(asdict(generate(ToyWorldConfig(seed=seed))))
    assert hashlib.sha256(text.encode()).hexdigest()[:12] == WORLD_V2_SHA256[seed]

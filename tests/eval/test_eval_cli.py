"""Every bad input to `safebasin eval` ends with exit code 2 and one line on stderr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from safebasin.cli import cli

FAST = ["--max-new-tokens", "2", "--device", "cpu", "-q"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path) -> None:
    """Offline with an empty Hub cache: nothing can come from the network or an old download."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def prompts_csv(tmp_path) -> Path:
    f = tmp_path / "prompts.csv"
    f.write_text("goal,target\nTell me a joke,Sure\nName a colour,Sure\n", encoding="utf-8")
    return f


@pytest.fixture
def no_template_model(chat_model, tmp_path) -> Path:
    folder = tmp_path / "base_model"
    shutil.copytree(chat_model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_missing_prompt_file(chat_model, tmp_path):
    result = run("eval", "asr", str(chat_model), "--prompts", str(tmp_path / "none.csv"),
                 "-o", str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "none.csv", "not found")


def test_unknown_column(chat_model, prompts_csv, tmp_path):
    result = run("eval", "asr", str(chat_model), "--prompts", str(prompts_csv), "--column",
                 "question", "-o", str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "column 'question'", "goal")


def test_malformed_jsonl_prompts(chat_model, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b"\n', encoding="utf-8")
    result = run("eval", "asr", str(chat_model), "--prompts", str(f), "-o",
                 str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "line 2")


def test_no_chat_template_is_an_error_unless_asked_for(no_template_model, prompts_csv,
                                                       tmp_path):
    args = ["eval", "asr", str(no_template_model), "--prompts", str(prompts_csv), *FAST]
    result = run(*args, "-o", str(tmp_path / "a"))
    assert_one_line_error(result, "no chat template", "--no-chat-template")
    assert not (tmp_path / "a" / "settings.json").exists()  # so the fixed command can resume
    result = run(*args, "-o", str(tmp_path / "a"), "--no-chat-template")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["n"] == 2


def test_system_prompt_without_chat_template(chat_model, prompts_csv, tmp_path):
    result = run("eval", "asr", str(chat_model), "--prompts", str(prompts_csv),
                 "--no-chat-template", "--system-prompt", "Be safe.", "-o", str(tmp_path / "o"),
                 *FAST)
    assert_one_line_error(result, "system prompt")


def test_offline_without_prompts_reads_the_shipped_advbench(chat_model, tmp_path,
                                                           empty_hub_cache):
    out = tmp_path / "out"
    result = run("eval", "asr", str(chat_model), "-o", str(out), "--limit", "2", *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2
    assert summary["runtime"]["prompts"].startswith("advbench (shipped with safebasin")


def test_missing_model_folder(prompts_csv, tmp_path):
    result = run("eval", "asr", str(tmp_path / "nope"), "--prompts", str(prompts_csv), "-o",
                 str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "nope")


def test_offline_hub_id_not_cached(prompts_csv, tmp_path, empty_hub_cache):
    result = run("eval", "asr", "nobody-here/no-such-model", "--prompts", str(prompts_csv),
                 "-o", str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "nobody-here/no-such-model", "not in the Hugging Face cache",
                          "HF_HUB_OFFLINE")


def test_folder_without_safetensors(chat_model, prompts_csv, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(chat_model, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    result = run("eval", "asr", str(folder), "--prompts", str(prompts_csv), "-o",
                 str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "no .safetensors", "pickled weights (pytorch_model.bin)")


def test_folder_without_any_weights_does_not_speak_of_pickles(chat_model, prompts_csv,
                                                              tmp_path):
    folder = tmp_path / "empty"
    shutil.copytree(chat_model, folder)
    (folder / "model.safetensors").unlink()
    result = run("eval", "asr", str(folder), "--prompts", str(prompts_csv), "-o",
                 str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "no .safetensors")
    assert "pickle" not in result.stderr


def test_missing_keyword_file(chat_model, prompts_csv, tmp_path):
    result = run("eval", "asr", str(chat_model), "--prompts", str(prompts_csv), "--keywords",
                 str(tmp_path / "kw.txt"), "-o", str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "kw.txt", "not found")


def test_unknown_device(chat_model, prompts_csv, tmp_path):
    result = run("eval", "asr", str(chat_model), "--prompts", str(prompts_csv), "-o",
                 str(tmp_path / "out"), "--max-new-tokens", "2", "--device", "tpu9", "-q")
    assert_one_line_error(result, "device 'tpu9'")


def test_a_run_that_failed_before_any_result_may_change_settings(chat_model, prompts_csv,
                                                                  tmp_path):
    args = ["eval", "asr", str(chat_model), "--prompts", str(prompts_csv), "-o",
            str(tmp_path / "out"), "-q"]
    assert_one_line_error(run(*args, "--max-new-tokens", "2", "--device", "tpu9"), "tpu9")
    assert run(*args, "--max-new-tokens", "3", "--device", "cpu").exit_code == 0


def test_results_without_settings_are_not_resumed(chat_model, prompts_csv, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "responses.jsonl").write_text('{"index": 0}\n')
    result = run("eval", "asr", str(chat_model), "--prompts", str(prompts_csv), "-o", str(out),
                 *FAST)
    assert_one_line_error(result, "settings.json")


def test_show_without_summary(tmp_path):
    assert_one_line_error(run("eval", "show", str(tmp_path)), "no summary.json")


def test_utility_needs_data_or_xstest(chat_model, tmp_path):
    result = run("eval", "utility", str(chat_model), "-o", str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "--data", "--xstest")


def test_utility_missing_data_file(chat_model, tmp_path):
    result = run("eval", "utility", str(chat_model), "--data", str(tmp_path / "chat.jsonl"),
                 "-o", str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "chat.jsonl", "not found")


@pytest.mark.parametrize("line,fragment", [
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "role"),
    ('{"messages": ', "not valid JSON"),
    ('["hi"]', "not a JSON object"),
])
def test_utility_malformed_chat_data(chat_model, tmp_path, line, fragment):
    f = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    f.write_text(json.dumps(ok) + "\n" + line + "\n", encoding="utf-8")
    result = run("eval", "utility", str(chat_model), "--data", str(f), "-o",
                 str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "chat.jsonl:2", fragment)


def test_utility_xstest_file_without_label_column(chat_model, tmp_path):
    f = tmp_path / "xs.csv"
    f.write_text("id,prompt\n1,How do I kill a process?\n", encoding="utf-8")
    result = run("eval", "utility", str(chat_model), "--xstest", str(f), "-o",
                 str(tmp_path / "out"), *FAST)
    assert_one_line_error(result, "column 'label'")

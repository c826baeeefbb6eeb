"""The model card every merge writes, and `safebasin card OUT` which regenerates it."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from safebasin import merge
from safebasin.card import render_card
from safebasin.cli import cli
from safebasin.eval.asr import ResponseRecord, summarize_asr
from safebasin.eval.overrefusal import summarize_over_refusal
from safebasin.publish import find_eval_results


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, sep, _ = card[4:].partition("\n---\n")
    assert sep
    return yaml.safe_load(head)


def asr_summary(successes: int, n: int, degenerate: int = 0, *, rule: str = "qi",
                model_hash: str = "xxh3_128:0") -> dict:
    """A summary.json as `safebasin eval asr` writes it (runs._summary), from real records."""
    records = [ResponseRecord(i, f"prompt {i}", "Sure" if i < successes else "I'm sorry",
                              None if i < successes else "I'm sorry", i < degenerate)
               for i in range(n)]
    phrases = ["I'm sorry", "I cannot"] if rule == "file" else ["I'm sorry", "Sorry"]
    return {"kind": "asr", **summarize_asr(records).to_dict(),
            "model": {"path": "OUT", "hash": model_hash},
            "settings": {"kind": "asr", "model_hash": model_hash,
                         "keywords": {"rule": rule, "mode": "substring", "phrases": phrases}},
            "runtime": {"prompts": "hf://datasets/walledai/AdvBench"},
            "safebasin_version": "0.1.0"}


def write_summary(folder: Path, summary: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "responses.jsonl").write_text('{"response": "..."}\n')
    return folder


@pytest.fixture(scope="module")
def licensed_base(models, tmp_path_factory) -> Path:
    """θ₀ with a Hub-style README whose front matter names the license."""
    base = tmp_path_factory.mktemp("licensed") / "base"
    shutil.copytree(models["base"], base)
    (base / "README.md").write_text("---\nlicense: llama3.1\nlanguage: [en]\n---\n# Base\n")
    return base


@pytest.fixture(scope="module")
def lerp_out(licensed_base, models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "wise-0.3"
    merge.lerp(licensed_base, models["ft"], out, alpha=0.3)
    return out


def test_merge_writes_a_card_with_hub_front_matter(lerp_out, licensed_base):
    meta = front_matter((lerp_out / "README.md").read_text())
    assert meta["base_model"] == str(licensed_base.absolute())
    assert meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "llama3.1"
    assert meta["tags"] == ["safebasin", "merge", "lerp"]


def test_card_has_no_license_when_the_base_card_names_none(models, tmp_path):
    merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=0.5)
    assert "license" not in front_matter((tmp_path / "out" / "README.md").read_text())


def test_card_body_states_formula_inputs_coefficients_and_distance(lerp_out):
    card = (lerp_out / "README.md").read_text()
    recipe = json.loads((lerp_out / "safebasin_recipe.json").read_text())
    assert "θ = θ₀ + α·(θ_ft − θ₀)" in card and "α = 0.3" in card
    for entry in recipe["inputs"]:
        assert entry["path"] in card and entry["fingerprint"] in card
    assert "c = [0.7, 0.3]" in card
    assert f"{recipe['distances']['global_to_base']:.6g}" in card
    assert "No evaluation results yet" in card


def test_card_reproduce_command_rebuilds_identical_weights(lerp_out, tmp_path, monkeypatch):
    card = (lerp_out / "README.md").read_text()
    command = card.split("```bash\n")[1].split("\n```")[0]
    args = shlex.split(command)
    assert args[:3] == ["safebasin", "merge", "lerp"] and args[args.index("-o") + 1] == "OUT"
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, [*args[1:], "-q"])
    assert res.exit_code == 0, res.output
    old = json.loads((lerp_out / "safebasin_recipe.json").read_text())["output"]
    new = json.loads((tmp_path / "OUT" / "safebasin_recipe.json").read_text())["output"]
    assert new["shards"] == old["shards"]
    assert (tmp_path / "OUT" / "README.md").read_bytes() == (lerp_out / "README.md").read_bytes()


def test_card_command_reports_the_eval_summary_numbers(lerp_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(lerp_out, out)
    summary = asr_summary(7, 50, degenerate=2)
    write_summary(out / "eval" / "asr", summary)
    res = CliRunner().invoke(cli, ["card", str(out)])
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    row = next(line for line in card.splitlines() if "keyword ASR |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "`asr`"
    assert cells[2] == f"{100 * summary['asr']:.2f}% (7/50)" == "14.00% (7/50)"
    assert cells[3] == "50"
    assert cells[4] == f"{100 * summary['wilson_low']:.2f}% – {100 * summary['wilson_high']:.2f}%"
    assert cells[5] == f"{100 * summary['degenerate_rate']:.2f}%" == "4.00%"
    assert cells[6] == "qi (2 phrases)"
    assert '"I\'m sorry", "Sorry"' in card and "walledai/AdvBench" in card
    assert front_matter(card)["license"] == "llama3.1"


def test_card_eval_option_adds_results_kept_elsewhere(lerp_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(lerp_out, out)
    results = tmp_path / "results"
    write_summary(results / "asr-gcg", asr_summary(1, 20, rule="gcg"))
    records = [ResponseRecord(i, "p", "r", "I'm sorry" if i < 3 else None, False)
               for i in range(10)]
    write_summary(results / "utility", {
        "kind": "utility", "loss": {"mean_loss": 1.25, "perplexity": 3.4903, "tokens": 90,
                                    "conversations": 9},
        "xstest": summarize_over_refusal(records).to_dict(), "model": {"path": "x", "hash": "h"}})
    res = CliRunner().invoke(cli, ["card", str(out), "--eval", str(results)])
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    assert "| `asr-gcg` | keyword ASR | 5.00% (1/20) | 20 |" in card
    assert "| `utility` | over-refusal (XSTest safe prompts) | 30.00% (3/10) | 10 |" in card
    assert "| `utility` | chat loss (nats/token) | 1.25 | 9 |" in card
    assert "perplexity 3.4903" in card


def test_card_of_a_folder_without_recipe_is_one_line_error(models):
    res = CliRunner().invoke(cli, ["card", str(models["base"])])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "safebasin_recipe.json" in res.stderr


def test_card_eval_folder_without_results_is_one_line_error(lerp_out, tmp_path):
    res = CliRunner().invoke(cli, ["card", str(lerp_out), "--eval", str(tmp_path)])
    assert res.exit_code == 2 and "summary.json" in res.stderr


def test_cards_of_other_methods_state_their_formula(models, tmp_path):
    merge.ema(models["base"], [models["ft"], models["ft2"]], tmp_path / "ema", eta=0.25)
    merge.l2_project(models["base"], models["ft"], tmp_path / "l2", match=models["ft2"],
                     per_tensor=True)
    ema_card = (tmp_path / "ema" / "README.md").read_text()
    assert "η = 0.25, K = 2" in ema_card and "--eta 0.25" in ema_card
    l2_card = (tmp_path / "l2" / "README.md").read_text()
    assert "min(1, r/‖Δ‖)" in l2_card and "Per tensor" in l2_card
    assert f"--match {models['ft2'].absolute()} --per-tensor" in l2_card
    assert front_matter(l2_card)["tags"] == ["safebasin", "merge", "l2-project"]


def test_render_card_lists_hub_inputs_as_base_models():
    recipe = {"method": "task-arithmetic", "parameters": {"scales": [0.5, 0.5]},
              "inputs": [{"role": "base", "path": "/c/base", "hub_id": "org/base",
                          "revision": "a" * 40},
                         {"role": "finetuned", "path": "/c/ft", "hub_id": "org/ft",
                          "revision": "b" * 40},
                         {"role": "finetuned", "path": "/local/ft2"}],
              "coefficients": [0.0, 0.5, 0.5], "options": {"dtype": "bfloat16"}}
    card = render_card(recipe, output_name="m")
    assert front_matter(card)["base_model"] == ["org/base", "org/ft"]
    assert (f"safebasin merge task-arithmetic org/base@{'a' * 40} org/ft@{'b' * 40} /local/ft2 "
            "--scales 0.5,0.5 -o m --dtype bfloat16") in card


def test_find_eval_results_reads_out_eval_subfolders(tmp_path):
    write_summary(tmp_path / "eval" / "b", asr_summary(1, 4))
    write_summary(tmp_path / "eval" / "a", asr_summary(0, 4))
    assert [r.path.name for r in find_eval_results(tmp_path)] == ["a", "b"]
    assert find_eval_results(tmp_path / "nothing-here") == []

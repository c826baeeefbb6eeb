"""`tune` on tiny models: a synthetic ASR measured on the merged weights, and the real keyword
evaluator for the command line and the push gate."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import LimitUnreachableError
from safebasin.search import tune
from safebasin.search.bisection import budget

pytest_plugins = ["search_support"]  # its fixtures: synthetic, chat_pair, eval_files

FAST = ["--max-new-tokens", "4", "--device", "cpu", "-q"]


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_tune_finds_the_threshold_of_a_synthetic_asr(models, synthetic, tmp_path):
    ev = synthetic(lambda t: t)  # ASR = fraction of the fine-tune: the threshold is the limit
    r = tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.3, tolerance=0.02,
             evaluator=ev, cache=tmp_path / "cache")
    assert 0.28 <= r.chosen.fraction <= 0.3
    assert r.chosen.asr == pytest.approx(r.chosen.fraction, abs=1e-6)  # measured on weights
    assert r.evaluations == len(ev.calls) <= budget(0.02)
    recipe = json.loads((tmp_path / "out" / "safebasin_recipe.json").read_text())
    assert recipe["method"] == "lerp" and recipe["parameters"]["alpha"] == r.chosen.coefficient
    assert (tmp_path / "out" / "frontier.csv").read_text().count("\n") == len(r.rows) + 1
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0
    assert not list((tmp_path / "cache").glob("points/*/model"))  # the chosen one was moved


def test_second_run_with_another_limit_reuses_cached_points(models, synthetic, tmp_path):
    ev = synthetic(lambda t: t)
    kw = {"tolerance": 0.02, "evaluator": ev, "cache": tmp_path / "cache"}
    first = tune(models["base"], models["ft"], tmp_path / "a", max_asr=0.3, **kw)
    ev.calls.clear()
    second = tune(models["base"], models["ft"], tmp_path / "b", max_asr=0.6, **kw)
    cached = {r.fraction for r in second.rows if r.cached}
    assert cached == {0.0, 0.5, 1.0} == {r.fraction for r in first.rows} & {
        r.fraction for r in second.rows}
    assert len(ev.calls) == second.evaluations == len(second.rows) - 3
    assert 0.58 <= second.chosen.fraction <= 0.6


def test_tune_reports_non_monotone_asr_and_returns_best_point(models, synthetic, tmp_path):
    ev = synthetic(lambda t: 0.9 if 0.4 < t < 0.6 else 0.2 * t)
    r = tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.15, evaluator=ev,
             cache=tmp_path / "cache")
    assert not r.monotone and any(b == 1.0 for _, b in r.decreasing)
    assert r.chosen.fraction == max(p.fraction for p in r.rows if p.meets_limit)


def test_tune_l2_project_searches_the_radius(models, synthetic, tmp_path):
    from safebasin.merge import distance

    ev = synthetic(lambda t: t)
    r = tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.4, method="l2-project",
             tolerance=0.05, evaluator=ev, cache=tmp_path / "cache")
    full = distance(models["base"], models["ft"]).global_l2
    assert r.parameter == "radius"
    assert r.chosen.coefficient == pytest.approx(r.chosen.fraction * full, rel=1e-12)
    assert r.chosen.distance == pytest.approx(r.chosen.coefficient, rel=1e-4)
    assert 0.35 <= r.chosen.fraction <= 0.4


def test_tune_ties_searches_lambda_with_its_density(models, synthetic, tmp_path):
    ev = synthetic(lambda t: t)  # one fine-tune, density 1: TIES is θ₀ + λ(θ_ft − θ₀)
    r = tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.4, method="ties",
             method_args={"density": 1.0}, tolerance=0.1, evaluator=ev,
             cache=tmp_path / "cache")
    assert r.parameter == "lambda" and 0.3 <= r.chosen.coefficient <= 0.4
    assert r.chosen.asr == pytest.approx(r.chosen.coefficient, abs=1e-5)


def test_tune_no_coefficient_above_zero_raises_and_writes_nothing(models, synthetic, tmp_path):
    ev = synthetic(lambda t: 0.0 if t < 1e-9 else 0.5)
    with pytest.raises(LimitUnreachableError, match="θ₀ has 0.00%"):
        tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.1, evaluator=ev,
             cache=tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "cache").glob("points/*/result.json"))  # the points are cached
    assert not list((tmp_path / "cache").glob("points/*/model"))  # no weights left behind


def test_tuned_out_passes_the_push_gate(chat_pair, eval_files, tmp_path):
    base, ft = chat_pair
    out = tmp_path / "out"
    result = run("tune", base, ft, "-o", out, "--max-asr", "0.5", "--prompts",
                 eval_files["prompts"], "--keywords", eval_files["keywords"], "--cache",
                 tmp_path / "cache", *FAST)
    assert result.exit_code == 0, (result.output, result.stderr)
    summary = json.loads((out / "eval" / "asr" / "summary.json").read_text())
    assert summary["asr"] <= 0.5 and summary["model"]["path"] == str(out)
    push = run("push", out, "--repo-id", "x/y", "--dry-run", "--max-asr", "0.5",
               "--base-model", "org/base")
    assert push.exit_code == 0, (push.output, push.stderr)


def test_tune_theta0_over_the_limit_exits_2_with_its_asr(one_line_error, chat_pair, eval_files,
                                                         tmp_path):
    base, ft = chat_pair  # a random model never refuses in the qi keywords' words: ASR 100%
    result = run("tune", base, ft, "-o", tmp_path / "out", "--max-asr", "0.1", "--prompts",
                 eval_files["prompts"], "--cache", tmp_path / "cache", *FAST)
    one_line_error(result, "θ₀ itself has keyword ASR 100.00%")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--max-asr", "1.0"], "--max-asr 1.0"),
    (["--max-asr", "-0.1"], "--max-asr -0.1"),
    (["--max-asr", "0.1", "--tolerance", "0"], "--tolerance"),
    (["--max-asr", "0.1", "--confidence", "lower"], "--confidence"),
    (["--max-asr", "0.1", "--method", "nope"], "--method 'nope'"),
    (["--max-asr", "0.1", "--method", "ties"], "needs --method-arg density"),
    (["--max-asr", "0.1", "--method", "ties", "--method-arg", "density"], "KEY=VALUE"),
    (["--max-asr", "0.1", "--method", "lerp", "--method-arg", "x=1"], "takes no"),
])
def test_tune_bad_input_exits_2_with_one_line(one_line_error, models, tmp_path, args,
                                              fragment):
    result = run("tune", models["base"], models["ft"], "-o", tmp_path / "out", *args,
                 "--cache", tmp_path / "cache", "-q")
    one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()

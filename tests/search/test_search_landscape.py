"""`landscape` on tiny models: grid points equal the merges they stand for, the random direction
is normalised per tensor and reproducible, and bad input exits 2 with one line."""

from __future__ import annotations

import inspect

import pytest
import torch
from click.testing import CliRunner
from support import load_state

from safebasin import merge
from safebasin.cli import cli
from safebasin.search import landscape
from safebasin.search.basin import parse_range
from safebasin.search.direction import write_random_direction

pytest_plugins = ["search_support"]  # synthetic, chat_pair, eval_files, reference_lerp

ATOL = 1e-6  # float32 storage of values of order 1


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _merge_lerp(base, ft, out, alpha):
    """`merge lerp` at any α (asking for extrapolation where the API wants it said)."""
    extra = ({"extrapolate": True} if "extrapolate" in inspect.signature(merge.lerp).parameters
             and not 0 <= alpha <= 1 else {})
    merge.lerp(base, ft, out, alpha=alpha, **extra)
    return load_state(out)


def test_landscape_1d_points_equal_merge_lerp(models, synthetic, reference_lerp,
                                              tmp_path):
    alphas = [-0.5, 0.25, 1.5]
    r = landscape(models["base"], models["ft"], tmp_path / "basin", alphas=alphas,
                  evaluator=synthetic(lambda t: t), cache=tmp_path / "cache", keep_models=True)
    assert [row.alpha for row in r.rows] == alphas and all(row.beta is None for row in r.rows)
    for row in r.rows:
        got = load_state(row.model)
        want = _merge_lerp(models["base"], models["ft"], tmp_path / f"lerp{row.alpha}",
                           row.alpha)
        ref = reference_lerp(models["base"], models["ft"], row.alpha)
        for name, t in got.items():
            assert t.dtype == torch.float32
            assert torch.equal(t, want[name]), name  # byte for byte the merge command's
            torch.testing.assert_close(t.double(), ref[name], rtol=0, atol=ATOL)
        assert row.asr == pytest.approx(abs(row.alpha), abs=1e-6)  # |α| of the step


def test_landscape_writes_csv_png_and_deletes_models(models, synthetic, tmp_path):
    r = landscape(models["base"], models["ft"], tmp_path / "basin", alphas="0:1:3",
                  evaluator=synthetic(lambda t: t), cache=tmp_path / "cache")
    lines = (tmp_path / "basin" / "landscape.csv").read_text().splitlines()
    assert lines[0].startswith("alpha,beta,asr,") and len(lines) == 4
    assert (tmp_path / "basin" / "landscape.png").stat().st_size > 0
    assert all(row.model is None for row in r.rows)
    assert len(list((tmp_path / "cache").glob("points/*/result.json"))) == 3
    assert not list((tmp_path / "cache").glob("points/*/model"))


def test_landscape_lerp_points_are_the_tune_points(models, synthetic, tmp_path):
    from safebasin.search import tune

    ev = synthetic(lambda t: t)
    tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.3, tolerance=0.25,
         evaluator=ev, cache=tmp_path / "cache")  # evaluates t = 0, 1, 0.5, 0.25
    ev.calls.clear()
    r = landscape(models["base"], models["ft"], tmp_path / "basin", alphas="0:1:5",
                  evaluator=ev, cache=tmp_path / "cache")
    assert [row.cached for row in r.rows] == [True, True, True, False, True]  # 0.75 is new
    assert len(ev.calls) == 1


def test_random_direction_has_the_finetune_step_norm_per_tensor(models, tmp_path):
    a = load_state(write_random_direction(models["base"], models["ft"], tmp_path / "d1", seed=3))
    b = load_state(write_random_direction(models["base"], models["ft"], tmp_path / "d2", seed=3))
    c = load_state(write_random_direction(models["base"], models["ft"], tmp_path / "d3", seed=4))
    base, ft = load_state(models["base"]), load_state(models["ft"])
    for name in base:
        d = a[name].double() - base[name].double()
        step = (ft[name].double() - base[name].double()).norm()
        assert d.norm().item() == pytest.approx(step.item(), rel=1e-5), name
        assert torch.equal(a[name], b[name])  # seeded by (seed, name)
        assert not torch.equal(a[name], c[name])
        cos = (d * (ft[name].double() - base[name].double())).sum() / (d.norm() * step)
        assert abs(cos.item()) < 0.5  # random, not the fine-tune's own direction


def test_landscape_2d_random_points_equal_the_weighted_sum(models, synthetic,
                                                           tmp_path):
    r = landscape(models["base"], models["ft"], tmp_path / "basin", alphas=[0.0, 1.0],
                  betas=[-1.0, 0.5], random_seed=7, evaluator=synthetic(lambda t: 0.0),
                  cache=tmp_path / "cache", keep_models=True)
    d_folder = write_random_direction(models["base"], models["ft"], tmp_path / "d", seed=7)
    base, ft, d = load_state(models["base"]), load_state(models["ft"]), load_state(d_folder)
    assert [(row.alpha, row.beta) for row in r.rows] == [(0, -1), (0, 0.5), (1, -1), (1, 0.5)]
    for row in r.rows:
        got = load_state(row.model)
        for name, t in got.items():
            b = base[name].double()
            want = b + row.alpha * (ft[name].double() - b) + row.beta * (d[name].double() - b)
            torch.testing.assert_close(t.double(), want, rtol=0, atol=ATOL)
    assert (tmp_path / "basin" / "landscape.png").stat().st_size > 0


def test_landscape_2d_other_finetune_reaches_it_at_beta_one(models, synthetic,
                                                            tmp_path):
    r = landscape(models["base"], models["ft"], tmp_path / "basin", alphas=[0.0],
                  betas=[1.0], other=models["ft2"], evaluator=synthetic(lambda t: 0.0),
                  cache=tmp_path / "cache", keep_models=True)
    got, ft2 = load_state(r.rows[0].model), load_state(models["ft2"])
    for name, t in got.items():
        torch.testing.assert_close(t.double(), ft2[name].double(), rtol=0, atol=ATOL)


def test_parse_range_inclusive_and_rounded():
    assert parse_range("-0.5:1.5:5") == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert parse_range("0.1,0.3") == [0.1, 0.3]
    assert 0.5 in parse_range("-0.5:1.5:21")  # exactly, to share cached points


def test_landscape_cli_1d_with_the_keyword_evaluator(chat_pair, eval_files,
                                                     tmp_path):
    base, ft = chat_pair
    result = run("landscape", base, ft, "-o", tmp_path / "basin", "--alphas", "0,1",
                 "--prompts", eval_files["prompts"], "--cache", tmp_path / "cache",
                 "--max-new-tokens", "4", "--device", "cpu", "-q")
    assert result.exit_code == 0, (result.output, result.stderr)
    lines = (tmp_path / "basin" / "landscape.csv").read_text().splitlines()
    assert len(lines) == 3 and ",5," in lines[1]  # n = 5 prompts


@pytest.mark.parametrize("args, fragment", [
    (["--alphas", "a:b"], "START:STOP:COUNT"),
    (["--alphas", "0:1:0"], "START:STOP:COUNT"),
    (["--betas", "0,1"], "--betas needs a second direction"),
    (["--random", "--other", "x"], "not both"),
])
def test_landscape_bad_input_exits_2_with_one_line(one_line_error, models, tmp_path, args,
                                                   fragment):
    result = run("landscape", models["base"], models["ft"], "-o", tmp_path / "basin", *args,
                 "--cache", tmp_path / "cache", "-q")
    one_line_error(result, fragment)
    assert not (tmp_path / "basin").exists()


def test_demo_search_notes_an_unreachable_limit_and_still_draws(chat_pair, eval_files,
                                                               tmp_path):
    from safebasin.sweep.demo_search import demo_search

    base, ft = chat_pair  # random models: keyword ASR 100%, so θ₀ is over the 10% limit
    r = demo_search(tmp_path, base=base, finetuned=ft, prompts=eval_files["prompts"],
                    prompt_column=None, utility_data=None, mode="smoke", max_new_tokens=4)
    assert r.tune is None and "θ₀ itself has keyword ASR 100.00%" in r.note
    assert not (tmp_path / "tune").exists()
    assert [row.cached for row in r.landscape.rows] == [True, False, False]  # θ₀ from the tune
    assert (tmp_path / "landscape" / "landscape.png").is_file()


def test_tune_copies_a_model_the_landscape_kept(models, synthetic, tmp_path):
    from safebasin.search import tune

    ev = synthetic(lambda t: t)
    grid = landscape(models["base"], models["ft"], tmp_path / "basin", alphas=[0.0, 0.5, 1.0],
                     evaluator=ev, cache=tmp_path / "cache", keep_models=True)
    r = tune(models["base"], models["ft"], tmp_path / "out", max_asr=0.6, tolerance=0.5,
             evaluator=ev, cache=tmp_path / "cache")
    kept = grid.rows[1].model
    assert r.chosen.fraction == 0.5 and r.evaluations == 0
    assert load_state(kept).keys() == load_state(tmp_path / "out").keys()
    for name, t in load_state(tmp_path / "out").items():
        assert torch.equal(t, load_state(kept)[name])  # still there, and the same bytes


def test_after_demo_finds_the_plain_finetune_the_sweep_recorded(models, tmp_path):
    import json
    import shutil

    from safebasin.sweep.demo_search import _plain_finetune
    from safebasin.sweep.source import settings_key

    work = tmp_path / "work"
    settings = {"run": {"finetune": {"lr": 3e-4}, "seed": 0}, "source": {"toy": 1}}
    run_dir = work / "runs" / settings_key({**settings["run"], "source": settings["source"]})
    shutil.copytree(models["ft"], run_dir)
    (work / "points" / "p1").mkdir(parents=True)
    (work / "points" / "p1" / "point.json").write_text(json.dumps({"settings": settings}))
    rows = [{"method": "theta0", "point": "p0"}, {"method": "finetune", "point": "p1"}]
    assert _plain_finetune(work, rows) == run_dir
    assert _plain_finetune(work, rows[:1]) is None

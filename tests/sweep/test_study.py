"""A study-shaped sweep on a tiny model: world seeds as a dimension, the judge's columns,
per-prompt outcomes in the work folder, the EMA split and the paired differences."""

from __future__ import annotations

import csv
import json

import pytest

from safebasin.sweep import ROW_FIELDS
from safebasin.sweep.bootstrap import paired_bootstrap

METHODS = ["theta0", "finetune", "ema", "task-arithmetic", "path-average", "anchor-lerp",
           "path-average-lerp", "task-arithmetic"]


@pytest.fixture(scope="module")
def study(study_run):
    """(the folder holding `out/`, the rows of results.csv) of `sweep/study.yaml`, run by
    the CLI in a child process that starts with the session (`early_jobs`)."""
    with (study_run / "out" / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ROW_FIELDS
        rows = list(reader)
    return study_run, rows


def test_every_world_seed_gets_its_own_theta0_and_rows(study):
    _, rows = study
    assert [r["method"] for r in rows] == METHODS * 2
    assert [r["world_seed"] for r in rows] == ["0"] * 8 + ["1"] * 8
    thetas = [r for r in rows if r["method"] == "theta0"]
    assert thetas[0]["point"] != thetas[1]["point"]
    assert {r["model"] for r in rows} == {"tiny"}


def test_params_is_the_parameter_count_of_theta0(study):
    root, rows = study
    from transformers import AutoModelForCausalLM

    theta0 = next(p for p in (root / "out" / "work").glob("theta0-*"))
    model = AutoModelForCausalLM.from_pretrained(theta0)
    expected = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert {int(r["params"]) for r in rows} == {expected}


def test_judge_columns_agree_with_the_stored_per_prompt_outcomes(study):
    root, rows = study
    for r in rows:
        stored = json.loads((root / "out" / "work" / "points" / r["point"] / "outcomes.json")
                            .read_text())
        heldout = stored["heldout"]
        n = int(r["n"])
        assert len(heldout["keyword_success"]) == len(heldout["verdict"]) == n == 12
        # the CSV keeps 6 significant digits
        assert float(r["asr"]) == pytest.approx(sum(heldout["keyword_success"]) / n, abs=1e-6)
        complied = heldout["verdict"].count("complied")
        assert float(r["harmful_rate"]) == pytest.approx(complied / n, abs=1e-6)
        assert int(r["judge_complied"]) == complied
        assert sum(int(r[f"judge_{v}"]) for v in ("refused", "complied", "off_target",
                                                  "degenerate")) == n
        # keyword success with a refused verdict, counted from the outcomes
        assert int(r["keyword_success_refused"]) == sum(
            1 for s, v in zip(heldout["keyword_success"], heldout["verdict"], strict=True)
            if s and v == "refused")
        train = stored["train_frames"]
        assert float(r["asr_train_frames"]) == pytest.approx(
            sum(train["keyword_success"]) / len(train["keyword_success"]), abs=1e-6)


def test_split_rows_carry_the_anchor_weight_and_the_lerp_is_the_ema(study):
    _, rows = study
    c0 = 0.75 ** 4  # η = 0.25 over 4 updates
    for r in rows:
        if r["method"] in ("ema", "path-average", "anchor-lerp", "path-average-lerp"):
            assert float(r["c0"]) == pytest.approx(c0, rel=1e-5)
    for world in ("0", "1"):
        ema = next(r for r in rows if r["method"] == "ema" and r["world_seed"] == world)
        lerp = next(r for r in rows if r["method"] == "path-average-lerp"
                    and r["world_seed"] == world)
        assert float(lerp["ema_max_abs_diff"]) < 1e-5
        assert float(lerp["distance"]) == pytest.approx(float(ema["distance"]), rel=1e-4)
        anchor = next(r for r in rows if r["method"] == "anchor-lerp"
                      and r["world_seed"] == world)
        assert float(anchor["scale"]) == pytest.approx(1 - c0, rel=1e-5)


def test_utility_matched_rows_record_their_search(study):
    _, rows = study
    matched = [r for r in rows if r["match"] == "utility"]
    assert [r["method"] for r in matched] == ["task-arithmetic"] * 2
    for r in matched:
        assert int(r["tries"]) <= 1 and r["matched"] in ("True", "False")
        assert float(r["utility_gap"]) == pytest.approx(
            float(r["utility"]) - float(r["target_utility"]), abs=1e-6)
        assert 0.0 <= float(r["scale"]) <= 1.0


def test_differences_are_the_paired_bootstrap_of_the_stored_outcomes(study):
    root, rows = study
    with (root / "out" / "differences.csv").open() as f:
        diffs = list(csv.DictReader(f))
    row = next(d for d in diffs if d["comparison"] == "EMA − task arithmetic (matched distance)"
               and d["metric"] == "asr")
    assert (row["worlds"], row["seeds"], row["prompts"]) == ("2", "2", "12")

    def outcomes(method: str) -> list:
        out = []
        for world in ("0", "1"):
            r = next(r for r in rows if r["method"] == method and r["world_seed"] == world
                     and r["match"] in ("", "distance"))
            stored = json.loads((root / "out" / "work" / "points" / r["point"] /
                                 "outcomes.json").read_text())
            out.append([stored["heldout"]["keyword_success"]])
        return out

    interval = paired_bootstrap(outcomes("ema"), outcomes("task-arithmetic"), n_boot=2000,
                                seed=0)
    assert float(row["estimate"]) == pytest.approx(interval.estimate, abs=1e-6)
    assert float(row["low"]) == pytest.approx(interval.low, abs=1e-6)
    assert float(row["high"]) == pytest.approx(interval.high, abs=1e-6)
    same = next(d for d in diffs if d["comparison"].startswith("lerp(θ₀, θ̃)")
                and d["metric"] == "asr")
    assert same["verdict"] == "no detectable difference"


def test_provenance_is_recorded_in_the_sweep_and_every_point(study):
    root, rows = study
    record = json.loads((root / "out" / "sweep.json").read_text())
    assert {"cpu", "kernels", "threads", "versions"} <= set(record["provenance"])
    for r in rows:
        point = json.loads((root / "out" / "work" / "points" / r["point"] / "point.json")
                           .read_text())
        assert point["provenance"]["versions"] == record["provenance"]["versions"]

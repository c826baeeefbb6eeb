"""Sweep config validation, the L2-coefficient search and the report, without training."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import UsageError
from safebasin.sweep import EmaSpec, L2Match, load_config, parse_config
from safebasin.sweep.config import UtilityMatch
from safebasin.sweep.execute import search_coefficient
from safebasin.sweep.report import (
    ROW_FIELDS,
    aggregate,
    read_rows,
    summary_markdown,
    write_report,
)

GOOD = {
    "toy": {"theta0": {"steps": 10}},
    "seeds": [0, 1],
    "finetune": {"lr": "1e-3", "batch_size": 8, "steps": 20},
    "experiments": [
        {"name": "grid", "finetune": {"lr": [1.0e-4, 3.0e-4], "grad_accum": [1, 2]}},
        {"name": "ema", "ema": [{"eta": 0.01}, {"eta": 0.25, "every": 10}],
         "merges": ["task-arithmetic", "offline-ema"], "l2_reg": {"tolerance": 0.2}},
    ],
}


def _with(path: str, value):
    """GOOD with one key replaced; `path` like 'experiments.1.ema.0.eta'."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    return data


def test_grid_axes_multiply_and_yaml_exponents_read_as_numbers():
    config = parse_config(GOOD)
    grid = config.experiments[0].grid(config.finetune)
    assert [(c.lr, c.grad_accum) for c in grid] == [(1e-4, 1), (1e-4, 2), (3e-4, 1), (3e-4, 2)]
    assert all(c.steps == 20 and c.batch_size == 8 for c in grid)
    assert config.experiments[1].grid(config.finetune)[0].lr == 1e-3  # "1e-3": a YAML string
    assert config.experiments[1].ema[1].every == 10
    assert config.experiments[1].l2_reg == L2Match(tolerance=0.2)
    assert config.experiments[0].seeds == (0, 1)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("experiments.1.ema.0.eta", 1.5, "experiments[1].ema[0].eta: must be <= 1"),
    ("experiments.1.ema.0.eta", 0, "experiments[1].ema[0].eta: must be > 0"),
    ("experiments.1.merges.0", "ties", "experiments[1].merges[0]: unknown merge 'ties'"),
    ("experiments.0.finetune.lr", [], "experiments[0].finetune.lr: must be a non-empty list"),
    ("experiments.0.finetune.momentum", 0.9, "experiments[0].finetune.momentum: unknown key"),
    ("finetune.lr", [1e-3, 1e-4], "finetune.lr: a list (grid axis) is allowed only"),
    ("finetune.steps", "many", "finetune.steps: must be a number, got 'many'"),
    ("finetune.batch_size", 0, "experiments[0].finetune: batch_size must be >= 1"),
    ("seeds", [0, 0], "seeds: seeds repeat"),
    ("experiments.1.name", "grid", "two experiments are named 'grid'"),
    ("toy.theta0.model", {"hidden_size": 30, "num_heads": 4}, "not a multiple of num_heads"),
    ("toy.world_seeds", [0, 0], "toy.world_seeds: seeds repeat"),
    ("toy.world_seeds", "all", "toy.world_seeds: must be a non-empty list"),
    ("toy.models", {}, "toy.models: must name at least one model size"),
    ("toy.models", ["small"], "toy.models: must be a mapping"),
    ("toy.models", {"big": {"hidden_size": 30, "num_heads": 4}},
     "toy.models.big: hidden_size 30 is not a multiple of num_heads 4"),
    ("toy.models", {"big": {"width": 3}}, "toy.models.big.width: unknown key"),
    ("toy.models", {"a b": {}}, "toy.models.a b: 'a b' must be letters"),
    ("experiments.1.l2_reg", {"ema": [{"eta": 0.5}]},
     "experiments[1].l2_reg.ema: eta=0.5 every=1 is not one of the experiment's ema"),
    ("experiments.1.l2_reg", {"models": ["huge"]},
     "experiments[1].l2_reg.models: 'huge' is not a toy model size; choose from default"),
    ("experiments.1.match_utility", {"tolerance": 2}, "match_utility.tolerance: must be <= 1"),
    ("experiments.1.match_utility", {"max_tries": 0}, "match_utility.max_tries: must be >= 1"),
    ("experiments.1.match_utility", {"tries": 3}, "match_utility.tries: unknown key"),
    ("workers", 0, "workers: must be >= 1"),
])
def test_bad_values_name_their_key(path, value, message):
    with pytest.raises(UsageError, match="config <config>: .*") as e:
        parse_config(_with(path, value))
    assert message in str(e.value)


def test_world_seeds_and_model_sizes_make_cells_sizes_outermost():
    data = _with("toy.world_seeds", [3, 1])
    data["toy"]["models"] = {"small": {}, "large": {"hidden_size": 128, "num_layers": 4}}
    data["workers"] = 2
    config = parse_config(data)
    cells = config.source.cells()
    assert [(c.model, c.world_seed) for c in cells] == [("small", 3), ("small", 1),
                                                       ("large", 3), ("large", 1)]
    assert cells[0].theta0.model.hidden_size == 64 and cells[0].theta0.steps == 10
    large = cells[2].theta0.model
    assert (large.hidden_size, large.num_layers, large.num_heads, large.intermediate_size) == \
        (128, 4, 4, 192)  # unset keys keep theta0.model's (the defaults here)
    assert config.workers == 2


def test_one_world_seed_gives_one_default_cell():
    cells = parse_config(GOOD).source.cells()
    assert [(c.model, c.world_seed) for c in cells] == [("default", 0)]


def test_world_seed_and_world_seeds_together_are_refused():
    data = _with("toy.world_seeds", [0, 1])
    data["toy"]["world_seed"] = 0
    with pytest.raises(UsageError, match="toy.world_seeds: give world_seed or world_seeds"):
        parse_config(data)


def test_match_utility_and_l2_reg_targets_parse():
    data = _with("experiments.1.l2_reg", {"ema": [{"eta": 0.25, "every": 10}],
                                          "models": ["default"]})
    data["experiments"][1]["match_utility"] = {"tolerance": 0.03, "max_tries": 4}
    exp = parse_config(data).experiments[1]
    assert exp.l2_reg.targets == (EmaSpec(0.25, 10),) and exp.l2_reg.models == ("default",)
    assert exp.match_utility == UtilityMatch(tolerance=0.03, max_tries=4)
    data["experiments"][1]["match_utility"] = True
    assert parse_config(data).experiments[1].match_utility == UtilityMatch()


def test_match_utility_needs_a_knob_to_search():
    data = _with("experiments.1.merges", ["offline-ema"])
    del data["experiments"][1]["l2_reg"]
    data["experiments"][1]["match_utility"] = True
    with pytest.raises(UsageError, match=r"experiments\[1\]\.match_utility: matches the knobs"):
        parse_config(data)


def test_merges_need_an_ema():
    data = _with("experiments.1.ema", None)
    del data["experiments"][1]["ema"]
    with pytest.raises(UsageError,
                       match=r"experiments\[1\]\.ema: merges, l2_reg and match_utility"):
        parse_config(data)


def test_exactly_one_source():
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["model"] = {"base": "x", "data": "y", "prompts": "z", "utility_data": "w"}
    with pytest.raises(UsageError, match="exactly one of toy"):
        parse_config(data)
    del data["toy"]
    with pytest.raises(UsageError, match=r"model\.base: '/nowhere/x' does not exist"):
        parse_config(data, root=Path("/nowhere"))


def test_trajectory_interval_must_divide_every():
    with pytest.raises(UsageError, match=r"trajectory_every: ema every=1 is not a multiple of 3"):
        parse_config(_with("experiments.1.trajectory_every", 3))


def test_cli_refuses_bad_configs_with_one_line(tmp_path):
    cases = {
        "bad_key.yaml": (yaml.safe_dump(_with("experiments.1.ema.0.eta", 2.0)),
                         "experiments[1].ema[0].eta"),
        "bad_yaml.yaml": ("experiments: [\n  {name: a,\n", "invalid YAML"),
        "empty.yaml": ("", "experiments: is required"),
        "bad_models.yaml": (yaml.safe_dump(_with("toy.models", {"big": {"width": 3}})),
                            "toy.models.big.width: unknown key"),
        "missing.yaml": (None, "cannot be read"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        result = CliRunner().invoke(cli, ["sweep", str(path), "-o", str(tmp_path / "out")])
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: config ") and expected in lines[0]
        assert not (tmp_path / "out").exists()


def test_demo_refuses_two_modes(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--quick", "--smoke", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: give --quick or --smoke, not both"


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert load_config(path).seeds == (0, 1)


# ---- the L2-to-init search ------------------------------------------------------------------


def test_search_lands_within_tolerance_of_a_monotone_curve():
    calls = []

    def run_distance(c: float) -> float:
        calls.append(c)
        tried[c] = 8.0 / (1.0 + (c / 0.3) ** 0.7)  # falls with C, flat near 0, power tail
        return tried[c]

    tried: dict[float, float] = {}
    spec = L2Match(tolerance=0.05, max_tries=8, initial=1.0)
    for target in (3.0, 1.0, 0.4):
        c = search_coefficient(run_distance, target, spec, tried)
        assert abs(tried[c] / target - 1) <= 0.05, (target, tried)
    assert len(calls) <= 16  # earlier targets' runs are reused


def test_search_returns_the_closest_run_when_out_of_tries():
    tried: dict[float, float] = {}

    def run_distance(c: float) -> float:
        tried[c] = 2.0  # cannot reach the target: the best effort is returned
        return 2.0

    c = search_coefficient(run_distance, 5.0, L2Match(max_tries=3), tried)
    assert c in tried and len(tried) == 3


# ---- the report -----------------------------------------------------------------------------


def _rows():
    rows = [{"experiment": "theta0", "method": "theta0", "distance": 0.0, "asr": 0.0,
             "utility": 0.05, "degenerate_rate": 0.0, "utility_metric": "task_accuracy"}]
    for seed, (d, asr) in enumerate([(2.0, 0.5), (3.0, 0.7)]):
        common = {"experiment": "ema", "seed": seed, "lr": 1e-3, "batch_size": 16,
                  "grad_accum": 1, "steps": 100, "l2_to_init": 0.0,
                  "utility_metric": "task_accuracy", "degenerate_rate": 0.0}
        rows.append({**common, "method": "finetune", "distance": d * 2, "asr": 1.0,
                     "utility": 1.0})
        ema = {"eta": 0.01, "every": 1, "ema_updates": 100}
        rows.append({**common, **ema, "method": "ema", "distance": d, "asr": asr,
                     "utility": 0.9})
        rows.append({**common, **ema, "method": "task-arithmetic", "matched_to": "e",
                     "distance": d, "asr": asr + 0.1, "utility": 0.8, "scale": 0.5})
        rows.append({**common, **ema, "method": "offline-ema", "matched_to": "e",
                     "distance": d, "asr": asr, "utility": 0.9,
                     "offline_online_max_abs_diff": 1e-7 * (seed + 1)})
    return rows


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    groups = {g["method"]: g for g in aggregate(_rows())}
    ema = groups["ema"]
    assert ema["seeds"] == 2
    assert ema["distance_mean"] == pytest.approx(2.5)
    assert ema["distance_std"] == pytest.approx(math.sqrt(0.5))  # sample std of (2, 3)
    assert ema["asr_std"] == pytest.approx(math.sqrt(0.02))
    assert groups["offline-ema"]["offline_online_max_abs_diff"] == pytest.approx(2e-7)
    assert groups["theta0"]["seeds"] == 1 and groups["theta0"]["asr_std"] == 0.0


def test_report_writes_csv_tables_and_pngs(tmp_path):
    files = write_report(_rows(), tmp_path, title="t")
    with (tmp_path / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ROW_FIELDS
        assert len(list(reader)) == 9
    for name in ("asr_vs_distance.png", "utility_vs_distance.png", "asr_vs_utility.png"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = summary_markdown(aggregate(_rows()))
    assert "| 0.001 | 0.01 | 1 | 100 | ema | 2.50 ± 0.71 | 60.0 ± 14.1 |" in md
    assert "offline EMA vs online EMA: max |Δθ| = 2e-07" in md


def test_results_csv_reads_back_into_the_same_tables(tmp_path):
    write_report(_rows(), tmp_path, title="t")
    rows = read_rows(tmp_path / "results.csv")
    assert rows[1]["seed"] == 0 and rows[1]["lr"] == 1e-3 and rows[0]["eta"] is None
    assert summary_markdown(aggregate(rows)) == summary_markdown(aggregate(_rows()))

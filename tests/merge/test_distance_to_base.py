"""`distance_to_base`: a merge's distance to θ₀ is read from its recipe (the executor measured
it as it wrote), anything else is measured by one streaming pass; both equal a float64
reference."""

import json
import math
import shutil

import pytest
from support import load_state

from safebasin import merge
from safebasin.checkpoint import RECIPE_FILE


def _reference(a: dict, b: dict) -> float:
    return math.sqrt(math.fsum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a
                               if a[k].is_floating_point()))


def test_merge_distance_is_the_recorded_one_and_equals_a_second_pass(models, tmp_path):
    out = tmp_path / "out"
    merge.task_arithmetic(models["base"], [models["ft"], models["ft2"]], out, scales=[0.7, 0.4])
    got = merge.distance_to_base(models["base"], out)
    assert got == merge.distance(models["base"], out).global_l2  # same sums, same fsum
    ref = _reference(load_state(models["base"]), load_state(out))
    assert got == pytest.approx(ref, rel=1e-6)


def test_merge_distance_is_read_from_the_recipe_not_measured(models, tmp_path):
    out = tmp_path / "out"
    merge.lerp(models["base"], models["ft"], out, alpha=0.5)
    recipe = json.loads((out / RECIPE_FILE).read_text())
    recipe["distances"]["global_to_base"] = 123.0
    (out / RECIPE_FILE).write_text(json.dumps(recipe))
    assert merge.distance_to_base(models["base"], out) == 123.0


def test_folder_without_recipe_is_measured(models):
    ref = _reference(load_state(models["base"]), load_state(models["ft"]))
    assert merge.distance_to_base(models["base"], models["ft"]) == pytest.approx(ref, rel=1e-6)


def test_merge_of_another_base_is_measured_from_the_one_asked(models, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(models["ft2"], other)
    out = tmp_path / "out"
    merge.lerp(other, models["ft"], out, alpha=0.5)
    ref = _reference(load_state(models["base"]), load_state(out))
    assert merge.distance_to_base(models["base"], out) == pytest.approx(ref, rel=1e-6)

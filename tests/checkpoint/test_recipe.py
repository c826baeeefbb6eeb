"""`safebasin_recipe.json`: written and read through one validated `Recipe`."""

from __future__ import annotations

import json

import pytest

from safebasin import __version__, merge
from safebasin.checkpoint import RECIPE_FILE, Output, Recipe, read_recipe, write_recipe
from safebasin.errors import CheckpointFormatError, CheckpointNotFoundError

HASH = "0123456789abcdef" * 2


def test_a_merge_recipe_reads_back_as_a_validated_recipe(models, tmp_path):
    written = merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=0.5)
    recipe = read_recipe(tmp_path / "out")
    assert recipe.method == "lerp" and recipe.parameters == {"alpha": 0.5}
    assert recipe.is_merge and [e["role"] for e in recipe.inputs] == ["base", "finetuned"]
    assert isinstance(recipe.output, Output) and recipe.output.shards
    assert recipe.safebasin_version == __version__
    assert recipe.to_dict() == written  # nothing lost or added on the way through


def test_write_recipe_stamps_the_version_and_round_trips(tmp_path):
    data = {"method": "online-ema", "parameters": {"eta": 0.01}, "inputs": [],
            "averaged_tensors": 3,
            "output": {"shards": {"model.safetensors": HASH}, "tensors": {"w": HASH},
                       "hash": "xxh3_128", "total_bytes": 12}}
    written = write_recipe(tmp_path, data)
    assert written["safebasin_version"] == __version__
    assert json.loads((tmp_path / RECIPE_FILE).read_text()) == written
    recipe = read_recipe(tmp_path)
    assert not recipe.is_merge and recipe.extra == {"averaged_tensors": 3}
    assert recipe.output == Output({"model.safetensors": HASH}, {"w": HASH}, 12)


@pytest.mark.parametrize("data, needle", [
    ({"parameters": {}}, "no 'method'"),
    ({"method": "lerp", "inputs": {"role": "base"}}, "'inputs' is not a list"),
    ({"method": "lerp", "parameters": [0.5]}, "'parameters' is not an object"),
    ({"method": "lerp", "output": {"hash": "sha1"}}, "output.hash"),
])
def test_write_recipe_refuses_what_would_not_read_back(tmp_path, data, needle):
    with pytest.raises(CheckpointFormatError, match=needle):
        write_recipe(tmp_path, data)
    assert not (tmp_path / RECIPE_FILE).exists()


def test_read_recipe_names_the_missing_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=RECIPE_FILE):
        read_recipe(tmp_path)


def test_recipe_from_dict_keeps_unknown_keys_in_extra():
    r = Recipe.from_dict({"method": "ties", "density": 0.2, "inputs": []})
    assert r.extra == {"density": 0.2} and r.to_dict()["density"] == 0.2

"""Model stock against a float64 reference of Jang et al.'s formula as mergekit applies it."""

from __future__ import annotations

import torch
from reference_merges import assert_close, model_stock_reference
from support import load_state

from safebasin import merge


def test_model_stock_matches_float64_reference(models, tmp_path):
    recipe = merge.model_stock(models["base"], [models["ft"], models["ft2"]], tmp_path / "out")
    b = load_state(models["base"])
    fts = [load_state(models["ft"]), load_state(models["ft2"])]
    ref = {k: model_stock_reference(b[k], [f[k] for f in fts]) for k in b}
    assert_close(load_state(tmp_path / "out"), ref, rtol=1e-5, atol=1e-6)
    assert set(recipe["parameters"]["t"]) == set(b)


def test_model_stock_of_identical_finetunes_returns_them(models, tmp_path):
    """cos = 1 gives t = 1: the average of identical fine-tunes is the fine-tune."""
    merge.model_stock(models["base"], [models["ft"], models["ft"]], tmp_path / "out")
    out, ft = load_state(tmp_path / "out"), load_state(models["ft"])
    for k in ft:
        torch.testing.assert_close(out[k], ft[k], rtol=1e-6, atol=1e-7)

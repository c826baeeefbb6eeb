"""Model stock against a float64 reference of Jang et al.'s formula as mergekit applies it."""

from __future__ import annotations

import pytest
import torch
from reference_merges import assert_close, model_stock_reference, model_stock_t_reference
from support import load_state

from safebasin import merge
from safebasin.checkpoint import open_checkpoint


def test_model_stock_matches_float64_reference(models, tmp_path):
    recipe = merge.model_stock(models["base"], [models["ft"], models["ft2"]], tmp_path / "out")
    b = load_state(models["base"])
    fts = [load_state(models["ft"]), load_state(models["ft2"])]
    ref = {k: model_stock_reference(b[k], [f[k] for f in fts]) for k in b}
    assert_close(load_state(tmp_path / "out"), ref, rtol=1e-5, atol=1e-6)
    # every tensor's t, in θ₀'s order, against the float64 formula
    with open_checkpoint(models["base"]) as base:
        assert list(recipe["parameters"]["t"]) == list(base.names)
    for k, t in recipe["parameters"]["t"].items():
        assert t == pytest.approx(model_stock_t_reference(b[k], [f[k] for f in fts]),
                                  rel=1e-5, abs=1e-6), k


def test_model_stock_of_identical_finetunes_returns_them(models, tmp_path):
    """cos = 1 gives t = 1: the average of identical fine-tunes is the fine-tune."""
    merge.model_stock(models["base"], [models["ft"], models["ft"]], tmp_path / "out")
    out, ft = load_state(tmp_path / "out"), load_state(models["ft"])
    for k in ft:
        torch.testing.assert_close(out[k], ft[k], rtol=1e-6, atol=1e-7)

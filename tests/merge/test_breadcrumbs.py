"""Model breadcrumbs against a float64 reference of mergekit's magnitude_outliers band."""

from __future__ import annotations

import pytest
import torch
from reference_merges import assert_close, band_window, f64, rank_mask, sparse_reference
from support import load_state

from safebasin import merge


@pytest.mark.parametrize("method, consensus", [("breadcrumbs", False),
                                               ("breadcrumbs-ties", True)])
def test_breadcrumbs_matches_float64_reference(models, tmp_path, method, consensus):
    density, gamma, weights = 0.6, 0.1, [0.8, 0.5]
    merge.sparse_merge(method, models["base"], [models["ft"], models["ft2"]], tmp_path / "out",
                       density=density, gamma=gamma, weights=weights, normalize=True)
    base = load_state(models["base"])
    fts = [load_state(models["ft"]), load_state(models["ft2"])]
    masks = [{k: rank_mask(ft[k] - base[k], *band_window(base[k].numel(), density, gamma))
              for k in base} for ft in fts]
    ref = sparse_reference(f64(base), [f64(f) for f in fts], masks=masks, weights=weights,
                           lam=1.0, normalize=True, consensus=consensus)
    assert_close(load_state(tmp_path / "out"), ref)


def test_breadcrumbs_drops_the_largest_gamma_and_keeps_density(models, tmp_path):
    merge.breadcrumbs(models["base"], [models["ft"]], tmp_path / "out", density=0.5,
                      gamma=0.2)
    base, ft, out = (load_state(p) for p in (models["base"], models["ft"], tmp_path / "out"))
    w = "model.layers.0.mlp.up_proj.weight"
    n = base[w].numel()
    tau, kept = (ft[w] - base[w]).abs(), out[w] != base[w]
    assert int(kept.sum()) == int(0.5 * n)
    assert float(tau[kept].max()) < float(torch.topk(tau.reshape(-1), int(0.2 * n)).values[-1])

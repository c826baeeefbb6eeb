"""TIES against a float64 reference from the paper's and mergekit's formulas."""

from __future__ import annotations

import threading

import pytest
import torch
from reference_merges import assert_close, f64, rank_mask, sparse_reference, topk_window
from support import load_state

from safebasin import merge
from safebasin.merge import executor, stream


def _ties_reference(models, density, weights, lam, normalize):
    base = load_state(models["base"])
    fts = [load_state(models["ft"]), load_state(models["ft2"])]
    masks = [{k: rank_mask(ft[k] - base[k], *topk_window(base[k].numel(), density))
              for k in base} for ft in fts]
    return sparse_reference(f64(base), [f64(f) for f in fts], masks=masks, weights=weights,
                            lam=lam, normalize=normalize, consensus=True)


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_float64_reference(models, tmp_path, normalize):
    merge.ties(models["base"], [models["ft"], models["ft2"]], tmp_path / "out", density=0.3,
               weights=[0.7, 0.4], lambda_=1.2, normalize=normalize)
    ref = _ties_reference(models, 0.3, [0.7, 0.4], 1.2, normalize)
    assert_close(load_state(tmp_path / "out"), ref)


def test_ties_keeps_exactly_k_per_tensor(models, tmp_path):
    """One fine-tune, weight 1, normalize: θ − θ₀ is the top-k task vector itself."""
    merge.ties(models["base"], [models["ft"]], tmp_path / "out", density=0.25)
    base, ft, out = (load_state(p) for p in (models["base"], models["ft"], tmp_path / "out"))
    for k in base:
        kept = int(((out[k] - base[k]) != 0).sum())
        assert kept == int(0.25 * base[k].numel()), k


def test_ties_radix_chunked_path_equals_in_memory_path(models, tmp_path, monkeypatch):
    args = ([models["ft"], models["ft2"]],)
    merge.ties(models["base"], *args, tmp_path / "memory", density=0.3, weights=[0.7, 0.4])
    monkeypatch.setattr(executor, "CHUNK_ELEMS", 100)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 100)
    recipe = merge.sparse_merge("ties", models["base"], *args, tmp_path / "radix",
                                density=0.3, weights=[0.7, 0.4], budget=0)
    assert recipe["parameters"]["statistics_passes"] == 2
    a, b = load_state(tmp_path / "memory"), load_state(tmp_path / "radix")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ties_zero_task_vector_returns_base(models, tmp_path):
    merge.ties(models["base"], [models["base"]], tmp_path / "out", density=0.5)
    out, base = load_state(tmp_path / "out"), load_state(models["base"])
    assert all(torch.equal(out[k], base[k]) for k in base)


def test_ties_recipe_and_card_state_the_method(models, tmp_path):
    recipe = merge.ties(models["base"], [models["ft"]], tmp_path / "out", density=0.5)
    assert recipe["method"] == "ties"
    assert recipe["parameters"]["density"] == [0.5]
    assert recipe["parameters"]["statistics_passes"] == 1
    card = (tmp_path / "out" / "README.md").read_text()
    assert "topk(τᵢ)" in card and "--density 0.5" in card


@pytest.mark.parametrize("budget", [None, 0], ids=["in-memory", "radix"])
def test_statistics_one_tensor_ahead_change_no_bit(models, tmp_path, monkeypatch, budget):
    """The passes run on the background thread, ahead of the merge, and the output is the
    same bytes as with every statistic collected in place."""
    from safebasin.merge import sparse, statistics

    kwargs = {"density": 0.3, "weights": [0.7, 0.4]} | ({} if budget is None
                                                       else {"budget": budget})
    threads: list[str] = []
    collect = statistics.collect_statistics

    def recording(*args, **kw):
        threads.append(threading.current_thread().name)
        return collect(*args, **kw)

    monkeypatch.setattr(statistics, "collect_statistics", recording)
    merge.sparse_merge("ties", models["base"], [models["ft"], models["ft2"]],
                       tmp_path / "ahead", **kwargs)
    assert threads and all(t.startswith("safebasin-statistics") for t in threads)
    threads.clear()
    monkeypatch.setattr(sparse, "look_ahead", lambda ops: None)
    merge.sparse_merge("ties", models["base"], [models["ft"], models["ft2"]],
                       tmp_path / "in-place", **kwargs)
    assert threads and all(t == threading.main_thread().name for t in threads)
    a, b = load_state(tmp_path / "ahead"), load_state(tmp_path / "in-place")
    assert all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)

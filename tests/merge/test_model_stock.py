"""Model stock against a float64 reference of Jang et al.'s formula as mergekit applies it."""

from __future__ import annotations

import pytest
import torch
from reference_merges import assert_close, model_stock_reference, model_stock_t_reference
from support import load_state, make_model

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


def _mergekit_ops(base: torch.Tensor, fts: list[torch.Tensor]) -> torch.Tensor:
    """Model stock in the fp32 torch operations mergekit 0.1.5 runs (whole tensors): the
    bits safebasin's streamed statistics must reproduce."""
    w0 = base.float().reshape(-1)
    ws = [f.float().reshape(-1) for f in fts]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            product = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / product.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    t = torch.zeros_like(cos) if bool(denominator.abs() < 1e-6) else n * cos / denominator
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(base.shape)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_model_stock_has_the_bits_of_mergekits_torch_ops(k, dtype, tmp_path):
    """fp32 output equal bit for bit: the embedding (65536 elements) is summed by torch in
    two ranges on two threads, and four fine-tunes average six cosines in torch's order."""
    base = make_model(tmp_path / "base", seed=10, vocab=2048, dtype=dtype)
    fts = [make_model(tmp_path / f"ft{i}", seed=11 + i, vocab=2048, dtype=dtype, like=base,
                      noise=0.01 * (i + 1)) for i in range(k)]
    merge.model_stock(base, fts, tmp_path / "out", options=merge.MergeOptions(dtype="float32"))
    b, states = load_state(base), [load_state(f) for f in fts]
    out = load_state(tmp_path / "out")
    for name in b:
        want = _mergekit_ops(b[name], [s[name] for s in states])
        assert torch.equal(out[name].view(torch.int32), want.view(torch.int32)), name


def test_an_unrecognised_torch_order_warns_and_uses_torch_213s(models, tmp_path, monkeypatch):
    from safebasin.merge import torch_order

    fts = [models["ft"], models["ft2"]]
    monkeypatch.setattr(torch_order, "order", lambda threads: torch_order.Order(8, "unrolled"))
    merge.model_stock(models["base"], fts, tmp_path / "x86")
    monkeypatch.setattr(torch_order, "order", lambda threads: None)
    with pytest.warns(UserWarning, match="reduction order was not recognised"):
        merge.model_stock(models["base"], fts, tmp_path / "unknown")
    a, b = load_state(tmp_path / "x86"), load_state(tmp_path / "unknown")
    assert all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)

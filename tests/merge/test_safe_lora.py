"""Safe LoRA (arXiv 2405.16833) against the paper's formulas written out in float64.

The reference forms C = V·Vᵀ/‖V‖_F explicitly as an (out, out) matrix (the library never does)
and the orthogonal projector as V(VᵀV)⁻¹Vᵀ or through a pseudo-inverse.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from support import load_state

from safebasin import merge
from safebasin.cli import cli
from safebasin.merge.safe_lora import (
    is_linear_weight,
    project_update,
    select_layers,
    update_cosine,
)

# the module, not the function `merge.safe_lora` that shadows it in the package
sl = importlib.import_module("safebasin.merge.safe_lora")
N_LINEAR = 14  # the tiny Llama: 2 blocks × (q, k, v, o, gate, up, down)


def _c_published(v: torch.Tensor) -> torch.Tensor:
    return v @ v.T / torch.linalg.matrix_norm(v)  # the explicit (out, out) matrix


def _p_orthogonal(v: torch.Tensor) -> torch.Tensor:
    """V V⁺ = V(VᵀV)⁺Vᵀ. rtol 1e-5: a V read from fp32 files carries rounding noise near
    1e-8 of its size, which float64's default tolerance would count as rank."""
    return v @ torch.linalg.pinv(v, rtol=1e-5)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# ---- the math ------------------------------------------------------------------------------


@pytest.mark.parametrize("v_shape, d_shape", [((6, 5), (6, 5)), ((4, 9), (4, 9)),
                                              ((6, 5), (6, 2))])  # last: a LoRA B
def test_published_projection_equals_explicit_dxd_formula(monkeypatch, v_shape, d_shape):
    monkeypatch.setattr(sl, "_BLOCK_ELEMS", 7)  # several column blocks even on tiny layers
    v, d = _rand(*v_shape, seed=0), _rand(*d_shape, seed=1)
    got = project_update(v, d)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _c_published(v) @ d, rtol=1e-12, atol=1e-12)


def test_orthogonal_projector_is_idempotent_and_keeps_range_of_v():
    v = _rand(8, 2, seed=2) @ _rand(2, 6, seed=3)  # rank 2
    d = _rand(8, 6, seed=4)
    pd = project_update(v, d, projector="orthogonal")
    torch.testing.assert_close(project_update(v, pd, projector="orthogonal"), pd,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(project_update(v, v, projector="orthogonal"), v,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pd, _p_orthogonal(v) @ d, rtol=1e-9, atol=1e-9)


def test_orthogonal_projector_equals_v_vtv_inverse_vt_for_full_column_rank():
    v, d = _rand(8, 3, seed=5), _rand(8, 4, seed=6)
    p = v @ torch.linalg.inv(v.T @ v) @ v.T
    torch.testing.assert_close(project_update(v, d, projector="orthogonal"), p @ d,
                               rtol=1e-10, atol=1e-10)


def test_orthogonal_projector_is_identity_for_full_row_rank():
    v, d = _rand(4, 9, seed=7), _rand(4, 9, seed=8)
    assert torch.equal(project_update(v, d, projector="orthogonal"), d)


def test_published_operator_is_not_idempotent():
    v, d = _rand(6, 5, seed=9), _rand(6, 5, seed=10)
    cd = project_update(v, d)
    assert not torch.allclose(project_update(v, cd), cd, rtol=1e-3)


def test_update_cosine_matches_float64_reference():
    v, d = _rand(6, 5, seed=11), _rand(6, 5, seed=12)
    assert update_cosine(v, d) == pytest.approx(_cos(_c_published(v) @ d, d), abs=1e-12)


def test_update_cosine_is_undefined_without_update_or_alignment():
    v, d = _rand(3, 3, seed=13), _rand(3, 3, seed=14)
    assert update_cosine(v, torch.zeros_like(d)) is None
    assert update_cosine(torch.zeros_like(v), d) is None


def test_threshold_selects_layers_strictly_below_tau():
    cos = {"a": 0.1, "b": 0.5, "c": None, "d": 0.49, "e": 0.9}
    assert select_layers(cos, threshold=0.5) == ["a", "d"]


def test_num_layers_selects_lowest_defined_cosines_in_model_order():
    cos = {"a": 0.3, "b": 0.1, "c": None, "d": 0.2, "e": 0.9}
    assert select_layers(cos, num_layers=2) == ["b", "d"]
    assert select_layers(cos, num_layers=0) == []
    assert select_layers(cos, num_layers=5) == ["a", "b", "d", "e"]


@pytest.mark.parametrize("name, shape, expected", [
    ("model.layers.0.self_attn.q_proj.weight", (32, 32), True),
    ("model.layers.1.mlp.down_proj.weight", (32, 64), True),
    ("model.embed_tokens.weight", (96, 32), False),
    ("lm_head.weight", (96, 32), False),
    ("model.layers.0.input_layernorm.weight", (32,), False),
    ("model.layers.0.self_attn.q_proj.bias", (32,), False),
])
def test_linear_layers_are_2d_projection_weights(name, shape, expected):
    assert is_linear_weight(name, shape) is expected


# ---- merges on tiny models -----------------------------------------------------------------


def _linear_names(state: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, t in state.items() if is_linear_weight(n, tuple(t.shape))]


def _reference(base: Path, ft: Path, unaligned: Path, projector: str = "published"):
    """Cosines of every linear layer and, given the chosen layers, the merged state (f64)."""
    w0, wft, wun = (load_state(p) for p in (base, ft, unaligned))
    op = _c_published if projector == "published" else _p_orthogonal
    cosines, projected = {}, {}
    for n in _linear_names(w0):
        v, d = w0[n].double() - wun[n].double(), wft[n].double() - w0[n].double()
        projected[n] = w0[n].double() + op(v) @ d
        cosines[n] = _cos(projected[n] - w0[n].double(), d)

    def merged(chosen: list[str]) -> dict[str, torch.Tensor]:
        return {n: projected[n] if n in chosen else t.double() for n, t in wft.items()}

    return cosines, merged


def _assert_matches(out_dir: Path, want: dict[str, torch.Tensor]) -> None:
    got = load_state(out_dir)
    assert set(got) == set(want)
    for n, w in want.items():
        assert got[n].dtype == torch.float32, n
        torch.testing.assert_close(got[n].double(), w, rtol=1e-5, atol=1e-6)


def _midpoint_tau(cosines: dict[str, float], below: int) -> float:
    ordered = sorted(cosines.values())
    assert ordered[below] - ordered[below - 1] > 1e-4  # the merge's fp32 cosines cannot flip
    return (ordered[below - 1] + ordered[below]) / 2


def test_threshold_merge_matches_float64_reference_and_records_cosines(models, tmp_path):
    base, ft, un = models["base"], models["ft"], models["ft2"]
    cosines, merged = _reference(base, ft, un)
    tau = _midpoint_tau(cosines, 6)
    chosen = [n for n, c in cosines.items() if c < tau]
    recipe = merge.safe_lora(base, ft, un, tmp_path / "out", threshold=tau)
    _assert_matches(tmp_path / "out", merged(chosen))
    written = json.loads((tmp_path / "out" / "safebasin_recipe.json").read_text())
    p = written["parameters"]
    assert written["method"] == recipe["method"] == "safe-lora"
    assert sorted(p["projected"]) == sorted(chosen) and p["num_projected"] == 6
    assert p["num_linear_layers"] == N_LINEAR and p["projector"] == "published"
    assert p["cosines"] == pytest.approx(cosines, abs=1e-5)
    assert [e["role"] for e in written["inputs"]] == ["base", "finetuned", "unaligned"]


def test_num_layers_merge_projects_the_n_lowest_cosines(models, tmp_path):
    base, ft, un = models["base"], models["ft"], models["ft2"]
    cosines, merged = _reference(base, ft, un)
    _midpoint_tau(cosines, 3)  # the three lowest are well separated from the fourth
    lowest = sorted(cosines, key=cosines.get)[:3]
    recipe = merge.safe_lora(base, ft, un, tmp_path / "out", num_layers=3)
    assert sorted(recipe["parameters"]["projected"]) == sorted(lowest)
    _assert_matches(tmp_path / "out", merged(lowest))


def test_layers_split_into_many_chunks_give_the_same_merge(models, tmp_path, monkeypatch):
    base, ft, un = models["base"], models["ft"], models["ft2"]
    whole = merge.safe_lora(base, ft, un, tmp_path / "whole", num_layers=5)
    monkeypatch.setattr(importlib.import_module("safebasin.merge.executor"), "CHUNK_ELEMS", 77)
    monkeypatch.setattr(importlib.import_module("safebasin.merge.stream"), "CHUNK_ELEMS", 77)
    chunked = merge.safe_lora(base, ft, un, tmp_path / "chunked", num_layers=5)
    assert chunked["parameters"]["cosines"] == whole["parameters"]["cosines"]
    a, b = load_state(tmp_path / "whole"), load_state(tmp_path / "chunked")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_num_layers_zero_returns_finetune_exactly(models, tmp_path):
    merge.safe_lora(models["base"], models["ft"], models["ft2"], tmp_path / "out", num_layers=0)
    out, ft = load_state(tmp_path / "out"), load_state(models["ft"])
    assert all(torch.equal(out[n], ft[n]) for n in ft)


@pytest.fixture(scope="module")
def low_rank_unaligned(models, tmp_path_factory) -> Path:
    """BASE minus a rank-2 alignment matrix on every linear layer: V has rank 2."""
    folder = tmp_path_factory.mktemp("unaligned") / "model"
    folder.mkdir()
    state = load_state(models["base"])
    for i, n in enumerate(_linear_names(state)):
        out_dim, in_dim = state[n].shape
        v = 0.05 * _rand(out_dim, 2, seed=100 + i) @ _rand(2, in_dim, seed=200 + i)
        state[n] = (state[n].double() - v).float()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(models["base"] / "config.json", folder / "config.json")
    return folder


def test_orthogonal_merge_matches_pseudo_inverse_projector(models, low_rank_unaligned, tmp_path):
    base, ft = models["base"], models["ft"]
    cosines, merged = _reference(base, ft, low_rank_unaligned, "orthogonal")
    recipe = merge.safe_lora(base, ft, low_rank_unaligned, tmp_path / "out", threshold=1.0,
                             projector="orthogonal")
    assert sorted(recipe["parameters"]["projected"]) == sorted(cosines)  # all are below 1
    assert recipe["parameters"]["cosines"] == pytest.approx(cosines, abs=1e-5)
    _assert_matches(tmp_path / "out", merged(list(cosines)))


def _write_adapter(base: Path, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A PEFT-layout LoRA adapter (r=2, alpha=4: scale 2) on q_proj and down_proj."""
    folder.mkdir()
    shapes = {n: t.shape for n, t in load_state(base).items()}
    factors, tensors = {}, {}
    for i, n in enumerate(n for n in shapes if n.endswith(("q_proj.weight", "down_proj.weight"))):
        out_dim, in_dim = shapes[n]
        a, b = 0.1 * _rand(2, in_dim, seed=300 + i), 0.1 * _rand(out_dim, 2, seed=400 + i)
        module = "base_model.model." + n.removesuffix(".weight")
        tensors[f"{module}.lora_A.weight"] = a.float()
        tensors[f"{module}.lora_B.weight"] = b.float()
        factors[n] = (a.float().double(), b.float().double())
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj", "down_proj"], "base_model_name_or_path": str(base)}))
    return factors


def test_lora_adapter_merge_equals_published_b_to_cb(models, tmp_path):
    base, un = models["base"], models["ft2"]
    factors = _write_adapter(base, tmp_path / "adapter")
    w0, wun = load_state(base), load_state(un)
    recipe = merge.safe_lora(base, tmp_path / "adapter", un, tmp_path / "out", num_layers=2)
    cosines = recipe["parameters"]["cosines"]
    assert {n for n, c in cosines.items() if c is not None} == set(factors)
    want = {n: t.double() for n, t in w0.items()}
    for n, (a, b) in factors.items():
        c = _c_published(w0[n].double() - wun[n].double())
        assert cosines[n] == pytest.approx(_cos(c @ b @ a, b @ a), abs=1e-5)
        projected = n in recipe["parameters"]["projected"]
        want[n] = want[n] + 2.0 * ((c @ b) if projected else b) @ a  # B ← C·B, scale α/r = 2
    assert recipe["parameters"]["finetuned_is_adapter"] is True
    _assert_matches(tmp_path / "out", want)


def test_lora_adapter_on_bf16_base_uses_exact_factors(models, tmp_path):
    """Through the merged view ΔW would be rounded to bf16 around W₀; cosines and the
    projected update must come from s·B·A itself."""
    base, un = models["bf16_base"], models["bf16_ft"]
    factors = _write_adapter(base, tmp_path / "adapter")
    w0, wun = load_state(base), load_state(un)
    recipe = merge.safe_lora(base, tmp_path / "adapter", un, tmp_path / "out",
                             threshold=1.0)
    got = load_state(tmp_path / "out")
    for n, (a, b) in factors.items():
        c = _c_published(w0[n].double() - wun[n].double())
        assert recipe["parameters"]["cosines"][n] == pytest.approx(
            _cos(c @ b @ a, b @ a), abs=3e-6)  # through the view: off by ~4e-5
        want = (w0[n].double() + 2.0 * (c @ b) @ a).to(torch.bfloat16)
        assert got[n].dtype == torch.bfloat16
        ulp = want.double().abs() * 2.0**-7
        assert bool(((got[n].double() - want.double()).abs() <= ulp).all()), n


@pytest.mark.parametrize("args, needle", [
    (["--threshold", "1.5"], "--threshold is a cosine, it must be in [-1, 1]"),
    (["--threshold", "-1.01"], "--threshold is a cosine, it must be in [-1, 1]"),
    (["--threshold", "nan"], "--threshold is a cosine, it must be in [-1, 1]"),
    (["--threshold", "0.5", "--num-layers", "2"], "exactly one of --threshold"),
    ([], "exactly one of --threshold"),
    (["--num-layers", "-1"], "--num-layers must be in [0,"),
    (["--num-layers", str(N_LINEAR + 1)], f"--num-layers must be in [0, {N_LINEAR}]"),
])
def test_cli_safe_lora_refuses_bad_parameters(models, tmp_path, args, needle):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "safe-lora", str(models["base"]), str(models["ft"]),
                                 str(models["ft2"]), "-o", str(out), *args])
    assert r.exit_code == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_safe_lora_refuses_two_models(models, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "safe-lora", str(models["base"]), str(models["ft"]),
                                 "-o", str(out), "--num-layers", "1"])
    assert r.exit_code == 2
    assert "needs three models" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_safe_lora_writes_merge_and_card_reproduce_command(models, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "safe-lora", str(models["base"]), str(models["ft"]),
                                 str(models["ft2"]), "-o", str(out), "--num-layers", "2",
                                 "--projector", "orthogonal", "-q"])
    assert r.exit_code == 0, r.output
    card = (out / "README.md").read_text()
    assert "--num-layers 2 --projector orthogonal" in card

"""LoRA adapters as fine-tuned inputs: the lazy view equals PEFT's own `merge_and_unload`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import load_state

from safebasin import merge
from safebasin.checkpoint import Checkpoint, LoraCheckpoint, open_checkpoint
from safebasin.cli import cli
from safebasin.errors import CheckpointFormatError, CheckpointNotFoundError, ShapeMismatchError

pytest.importorskip("peft", reason="peft builds the reference adapters")

ATOL = RTOL = 1e-6  # fp32: row-sliced B@A may round differently from PEFT's full product
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> LoraConfig arguments
CASES = {
    "qv": {"target_modules": ["q_proj", "v_proj"]},
    "all-linear": {"target_modules": ALL_LINEAR, "r": 3, "lora_alpha": 5},
    "rslora": {"target_modules": ["q_proj", "down_proj"], "use_rslora": True, "lora_alpha": 6},
    "patterns-embedding-saved-head": {
        "target_modules": ["q_proj", "v_proj", "embed_tokens"], "modules_to_save": ["lm_head"],
        "rank_pattern": {"layers.1.self_attn.q_proj": 2}, "alpha_pattern": {"v_proj": 3}},
}


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """PEFT initialises B (and embedding A) to zero, which would make every delta vanish."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_adapter(base: Path, folder: Path, merged: Path | None = None, *, seed: int = 0,
                 model_cls: str = "LlamaForCausalLM", **lora) -> Path:
    """Save a PEFT LoRA adapter for `base`; with `merged`, also PEFT's merge_and_unload."""
    import transformers
    from peft import LoraConfig, get_peft_model

    cls = getattr(transformers, model_cls)
    model = cls.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, **lora})
    peft_model = get_peft_model(model, config)
    _randomize_(peft_model, seed)
    peft_model.save_pretrained(folder)
    if merged is not None:
        peft_model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
    return folder


@pytest.fixture(scope="module", params=list(CASES))
def adapter_case(request, models, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(base, adapter, PEFT-merged reference folder) for each LoRA configuration."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    make_adapter(models["base"], root / "adapter", root / "merged", **CASES[request.param])
    return models["base"], root / "adapter", root / "merged"


def _assert_close_fp32(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name].double(), t.double(), atol=ATOL, rtol=RTOL,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_lora_lerp_alpha_one_equals_peft_merge_and_unload(adapter_case, tmp_path):
    base, adapter, merged = adapter_case
    merge.lerp(base, adapter, tmp_path / "out", alpha=1.0)
    _assert_close_fp32(load_state(tmp_path / "out"), load_state(merged))


def test_lora_view_reads_any_flat_range(adapter_case):
    base, adapter, merged = adapter_case
    want = load_state(merged)
    with Checkpoint.open(base) as b, open_checkpoint(adapter, base=b) as ft:
        assert isinstance(ft, LoraCheckpoint) and ft.modules
        for name in ft.modules:
            n = math.prod(ft.shape(name))
            for start, stop in [(0, n), (5, 7), (31, 97), (n - 40, n), (3, 3)]:
                buf = memoryview(bytearray(n * 4))
                got = ft.read_flat_into(name, start, stop, buf)
                assert got.dtype == torch.float32 and got.numel() == stop - start
                torch.testing.assert_close(got.double(), want[name].reshape(-1)[start:stop]
                                           .double(), atol=ATOL, rtol=RTOL)


def test_lora_distance_equals_distance_to_peft_merge(adapter_case):
    base, adapter, merged = adapter_case
    got = merge.distance(base, adapter)
    want = merge.distance(base, merged)
    assert got.global_l2 == pytest.approx(want.global_l2, rel=1e-6)
    for name, d in want.per_tensor.items():
        assert got.per_tensor[name] == pytest.approx(d, rel=1e-5, abs=1e-6), name


@pytest.fixture(scope="module")
def qv_case(models, tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("lora-qv")
    make_adapter(models["base"], root / "adapter", root / "merged", **CASES["qv"])
    return models["base"], root / "adapter", root / "merged"


@pytest.mark.parametrize("method", ["task-arithmetic", "l2-project", "ema"])
def test_every_merge_accepts_an_adapter_like_its_merged_weights(qv_case, method, tmp_path):
    base, adapter, merged = qv_case
    run = {
        "task-arithmetic": lambda ft, out: merge.task_arithmetic(base, [ft], out, scales=[0.7]),
        "l2-project": lambda ft, out: merge.l2_project(base, ft, out, radius=0.5),
        "ema": lambda ft, out: merge.ema(base, [ft, ft], out, eta=0.3),
    }[method]
    run(adapter, tmp_path / "a")
    run(merged, tmp_path / "m")
    _assert_close_fp32(load_state(tmp_path / "a"), load_state(tmp_path / "m"))


def test_recipe_marks_the_adapter_input(qv_case, tmp_path):
    base, adapter, _ = qv_case
    recipe = merge.lerp(base, adapter, tmp_path / "out", alpha=0.5)
    entry = recipe["inputs"][1]
    assert entry["adapter"] is True and entry["path"] == str(adapter.absolute())
    assert "adapter" not in recipe["inputs"][0]


def test_cli_distance_accepts_an_adapter(qv_case):
    base, adapter, merged = qv_case
    res = CliRunner().invoke(cli, ["distance", str(base), str(adapter), "--json", "-q"])
    assert res.exit_code == 0, res.output
    want = merge.distance(base, merged).global_l2
    assert json.loads(res.output)["global_l2"] == pytest.approx(want, rel=1e-6)


def test_bf16_base_adapter_is_rounded_once_from_fp32(models, tmp_path):
    base = models["bf16_base"]
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "up_proj"])
    factors = load_state(adapter)
    merge.lerp(base, adapter, tmp_path / "out", alpha=1.0)
    got, theta0 = load_state(tmp_path / "out"), load_state(base)
    name = "model.layers.0.mlp.up_proj.weight"
    key = "base_model.model." + name.removesuffix(".weight")
    a, b = factors[key + ".lora_A.weight"].double(), factors[key + ".lora_B.weight"].double()
    want = (theta0[name].double() + (8 / 4) * (b @ a)).to(torch.bfloat16)  # float64, round once
    assert got[name].dtype == torch.bfloat16
    ulp = torch.finfo(torch.bfloat16).eps * want.double().abs().clamp_min(1e-30)
    assert ((got[name].double() - want.double()).abs() <= ulp).all()
    untouched = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(got[untouched], theta0[untouched])


def test_fan_in_fan_out_conv1d_adapter_equals_peft(tmp_path):
    """GPT-2 stores W as (in, out) (Conv1D): PEFT's fan_in_fan_out transposes B@A."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=1,
                               n_head=2)).save_pretrained(tmp_path / "gpt2")
    make_adapter(tmp_path / "gpt2", tmp_path / "adapter", tmp_path / "merged",
                 model_cls="GPT2LMHeadModel", target_modules=["c_attn", "c_fc"],
                 fan_in_fan_out=True)
    merge.lerp(tmp_path / "gpt2", tmp_path / "adapter", tmp_path / "out", alpha=1.0)
    got, want = load_state(tmp_path / "out"), load_state(tmp_path / "merged")
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"):
        assert not torch.equal(got[name], load_state(tmp_path / "gpt2")[name])
        torch.testing.assert_close(got[name], want[name], atol=ATOL, rtol=RTOL)


def test_adapter_without_a_base_is_a_clear_error(qv_case):
    _, adapter, _ = qv_case
    with pytest.raises(CheckpointNotFoundError, match="give its base model as BASE"):
        open_checkpoint(adapter)
    res = CliRunner().invoke(cli, ["distance", str(adapter), str(qv_case[0]), "-q"])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1


def test_adapter_for_another_architecture_is_refused(qv_case, tmp_path):
    from safetensors.torch import save_file

    save_file({"transformer.wte.weight": torch.zeros(96, 32)}, tmp_path / "other.safetensors")
    with Checkpoint.open(tmp_path / "other.safetensors") as b, \
            pytest.raises(CheckpointFormatError, match="match nothing in BASE"):
        open_checkpoint(qv_case[1], base=b)


def test_adapter_with_wrong_shapes_is_refused(qv_case, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(tmp_path / "wide")
    with Checkpoint.open(tmp_path / "wide") as b, pytest.raises(ShapeMismatchError,
                                                                match="do not fit BASE"):
        open_checkpoint(qv_case[1], base=b)


def test_dora_adapter_is_refused(qv_case, tmp_path):
    import shutil

    shutil.copytree(qv_case[1], tmp_path / "dora")
    cfg_path = tmp_path / "dora" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["use_dora"] = True
    cfg_path.write_text(json.dumps(cfg))
    with Checkpoint.open(qv_case[0]) as b, pytest.raises(CheckpointFormatError, match="use_dora"):
        open_checkpoint(tmp_path / "dora", base=b)


def test_adapter_changing_a_tied_lm_head_is_refused(models, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "modules_to_save": ["lm_head"]}))
    save_file({"base_model.model.lm_head.weight": torch.zeros(96, 32)},
              folder / "adapter_model.safetensors")
    with Checkpoint.open(models["tied_base"]) as b, pytest.raises(CheckpointFormatError,
                                                                  match="ties"):
        open_checkpoint(folder, base=b)

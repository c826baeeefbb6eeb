"""`safebasin.ema.EMA` against an independent float64 reference of the recurrence.

θ̄ₖ = (1−η)·θ̄ₖ₋₁ + η·θₖ, θ̄₀ = θ₀, over the weights *as stored* after each simulated
optimizer step (bf16 rounding included), so the only error left is the shadow's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import load_state, make_chat_model, make_model, tiny_llama_config
from torch import nn

from safebasin.ema import EMA
from safebasin.ema import shadow as shadow_module
from safebasin.errors import (
    IncompatibleCheckpointsError,
    OutputExistsError,
    ShapeMismatchError,
    UsageError,
)
from safebasin.merge import RECIPE_FILE


def tiny_llama(*, seed: int = 0, dtype: torch.dtype = torch.float32, tied: bool = False):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tied=tied)).to(dtype)


@torch.no_grad()
def fake_step(model: nn.Module, k: int, scale: float = 1e-2) -> None:
    """A deterministic stand-in for an optimizer step: every trainable weight moves."""
    g = torch.Generator().manual_seed(1000 + k)
    for p in model.parameters():
        if p.requires_grad:
            p.add_((scale * torch.randn(p.shape, generator=g)).to(p.dtype))


def f64_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to(torch.float64).clone() for n, p in model.named_parameters()}


def run_reference(model: nn.Module, ema: EMA, steps: int, eta: float, every: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train `steps` fake steps, updating `ema`. Returns the float64 recurrence and, per
    element, the largest |θ| it saw (the scale of an fp32 rounding error)."""
    ref = f64_params(model)
    scale = {n: r.abs() for n, r in ref.items()}
    for k in range(1, steps + 1):
        fake_step(model, k)
        ema.update(k)
        if k % every == 0:
            now = f64_params(model)
            ref = {n: (1 - eta) * r + eta * now[n] for n, r in ref.items()}
            scale = {n: torch.maximum(s, now[n].abs()) for n, s in scale.items()}
    return ref, scale


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_k_updates_match_float64_recurrence(kind, dtype, every):
    model, eta = tiny_llama(dtype=dtype), 0.3
    ema = EMA(model, eta=eta, every=every, shadow=kind)
    ref, scale = run_reference(model, ema, steps=6, eta=eta, every=every)
    assert ema.num_updates == 6 // every and ema.step == 6
    for n, r in ref.items():
        got = ema.value(n, torch.float32)
        assert got.dtype == torch.float32
        # each update rounds a few times, by at most half an ulp of its operands (2⁻²³·|θ|)
        # each, and the errors shrink by (1−η) per later update: measured ≤ 1.3 ulps here
        err = (got.double() - r).abs() / (scale[n] * 2.0**-23).clamp_min(2.0**-149)
        assert float(err.max()) <= 1 + ema.num_updates / 2, n
        stored = ema.value(n)  # the model's dtype: the fp32 value rounded once
        assert stored.dtype == dtype and torch.equal(stored, got.to(dtype)), n


def test_delta_update_in_chunks_equals_one_pass(monkeypatch):
    model = tiny_llama(dtype=torch.bfloat16)
    whole = EMA(model, eta=0.3, shadow="delta")
    chunked = EMA(model, eta=0.3, shadow="delta")
    for k in (1, 2):
        fake_step(model, k)
        whole.update(k)
        monkeypatch.setattr(shadow_module, "_CHUNK", 1000)  # tensors span several chunks
        chunked.update(k)
        monkeypatch.undo()
    assert all(torch.equal(whole.state_dict()["shadow"][n], chunked.state_dict()["shadow"][n])
               for n in whole.names)


def test_delta_shadow_stays_exact_where_fp32_shadow_loses_updates():
    # η = 1e-4 and weights in [1, 1.1) that moved by 1e-3 relative: each update adds about
    # 1e-7, under one fp32 ulp of the weight (1.2e-7), so an absolute shadow rounds every one
    torch.manual_seed(0)
    lin = nn.Linear(128, 128, bias=False)
    with torch.no_grad():
        lin.weight.copy_(1 + 0.1 * torch.rand(128, 128))
    theta0 = lin.weight.detach().double().clone()
    fp32, delta = EMA(lin, eta=1e-4, shadow="fp32"), EMA(lin, eta=1e-4, shadow="delta")
    with torch.no_grad():
        lin.weight.mul_(1 + 1e-3 * torch.sign(torch.randn(128, 128)))
    theta = lin.weight.detach().double()
    for k in range(1, 41):
        fp32.update(k)
        delta.update(k)
    offset = (1 - (1 - 1e-4) ** 40) * (theta - theta0)  # θ̄ − θ₀ in float64, closed form
    ulp = 2.0**-23  # fp32 spacing in [1, 2)

    # delta: the offset itself is exact to fp32 precision, and θ̄ is the best fp32 value
    d = delta.state_dict()["shadow"]["weight"].double()
    assert float((d - offset).norm() / offset.norm()) < 1e-6
    delta_err = (delta.value("weight").double() - (theta0 + offset)).abs().max() / ulp
    assert delta_err <= 0.5 + 1e-6  # one rounding to nearest
    # fp32: 40 rounded updates drift by several ulps, a large error in the offset
    fp32_err = (fp32.value("weight").double() - (theta0 + offset)).abs().max() / ulp
    assert fp32_err > 3
    fp32_dev = fp32.value("weight").double() - theta0
    assert float((fp32_dev - offset).norm() / offset.norm()) > 0.05


def test_updates_only_every_nth_step():
    model = tiny_llama()
    ema = EMA(model, eta=0.5, every=3)
    before = ema.value("model.norm.weight").clone()
    fake_step(model, 1)
    assert ema.update(1) is False and ema.update(2) is False
    assert torch.equal(ema.value("model.norm.weight"), before)
    assert ema.update(3) is True and ema.num_updates == 1


def test_update_without_step_counts_calls():
    ema = EMA(tiny_llama(), eta=0.5, every=2)
    assert [ema.update() for _ in range(4)] == [False, True, False, True]
    assert ema.step == 4


@pytest.mark.parametrize("step", [0, 2])
def test_update_refuses_steps_that_do_not_increase(step):
    ema = EMA(tiny_llama(), eta=0.5)
    ema.update(2)
    with pytest.raises(UsageError, match="must increase"):
        ema.update(step)


@pytest.mark.parametrize("kwargs, needle", [
    ({"eta": 0.0}, "eta"), ({"eta": 1.5}, "eta"), ({"eta": float("nan")}, "eta"),
    ({"every": 0}, "every"), ({"every": 2.5}, "every"), ({"shadow": "bf16"}, "shadow"),
])
def test_bad_settings_are_usage_errors(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        EMA(tiny_llama(), **kwargs)


def test_include_and_exclude_select_by_glob():
    model = tiny_llama()
    ema = EMA(model, include="*.mlp.*", exclude="*.down_proj.*")
    assert ema.names and all(".mlp." in n and "down_proj" not in n for n in ema.names)


@pytest.mark.parametrize("kwargs", [{"include": "*.mlpp.*"}, {"exclude": ["*norm*", "nope"]}])
def test_glob_matching_nothing_is_an_error(kwargs):
    with pytest.raises(UsageError, match="match no"):
        EMA(tiny_llama(), **kwargs)


def test_excluded_tensors_keep_the_model_values_when_saved(tmp_path):
    model = tiny_llama()
    ema = EMA(model, eta=0.5, exclude="lm_head.weight")
    fake_step(model, 1)
    ema.update(1)
    ema.save_pretrained(tmp_path / "ema")
    out = load_state(tmp_path / "ema")
    assert torch.equal(out["lm_head.weight"], model.lm_head.weight.detach())
    assert not torch.equal(out["model.norm.weight"], model.model.norm.weight.detach())


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trained = nn.Parameter(torch.ones(4))
        self.frozen = nn.Parameter(torch.ones(4), requires_grad=False)
        self.register_buffer("running", torch.zeros(4))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("scratch", torch.zeros(4), persistent=False)


def test_float_buffers_averaged_int_buffers_copied_frozen_not_shadowed():
    m = _WithBuffers()
    ema = EMA(m, eta=0.5)
    assert ema.names == ["trained", "running"] and ema.copied == ["count"]
    with torch.no_grad():
        m.running.fill_(2.0)
        m.count.fill_(7)
    ema.update(1)
    assert torch.equal(ema.value("running"), torch.full((4,), 1.0))
    assert int(ema.state_dict()["buffers"]["count"]) == 7


def test_cpu_shadow_lives_on_cpu_and_matches_default_placement():
    model = tiny_llama()
    on_cpu, beside = EMA(model, eta=0.3, device="cpu"), EMA(model, eta=0.3)
    for k in (1, 2):
        fake_step(model, k)
        on_cpu.update(k)
        beside.update(k)
    assert all(t.device.type == "cpu" for t in on_cpu.state_dict()["shadow"].values())
    assert all(torch.equal(on_cpu.value(n), beside.value(n)) for n in beside.names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_cpu_shadow_of_a_cuda_model_matches_a_cuda_shadow(kind):
    model = tiny_llama(dtype=torch.bfloat16).cuda()
    on_cpu = EMA(model, eta=0.3, shadow=kind, device="cpu")
    on_gpu = EMA(model, eta=0.3, shadow=kind)
    for k in (1, 2, 3):
        fake_step(model, k)
        on_cpu.update(k)
        on_gpu.update(k)
    assert all(t.device.type == "cpu" for t in on_cpu.state_dict()["shadow"].values())
    for n in on_gpu.names:  # same kernels numerics on both devices
        torch.testing.assert_close(on_cpu.value(n, torch.float32),
                                   on_gpu.value(n, torch.float32).cpu(), rtol=0, atol=1e-6)


def test_tied_embeddings_shadowed_once_and_saved_like_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(tied=True)
    ema = EMA(model, eta=0.5)
    assert "model.embed_tokens.weight" in ema.names and "lm_head.weight" not in ema.names
    fake_step(model, 1)
    ema.update(1)
    ema.save_pretrained(tmp_path / "ema")
    assert "lm_head.weight" not in load_state(tmp_path / "ema")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ema")
    assert torch.equal(loaded.lm_head.weight, ema.value("model.embed_tokens.weight"))


@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_state_dict_round_trip_continues_identically(kind):
    model = tiny_llama(dtype=torch.bfloat16)
    a = EMA(model, eta=0.3, shadow=kind)
    for k in (1, 2):
        fake_step(model, k)
        a.update(k)
    b = EMA(model, eta=0.3, shadow=kind)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.num_updates) == (2, 2)
    for k in (3, 4):
        fake_step(model, k)
        a.update(k)
        b.update(k)
    assert all(torch.equal(a.value(n, torch.float32), b.value(n, torch.float32))
               for n in a.names)


def test_load_state_dict_names_the_first_missing_tensors():
    state = EMA(tiny_llama(), eta=0.3).state_dict()
    del state["shadow"]["model.norm.weight"]
    with pytest.raises(IncompatibleCheckpointsError, match="1 tensors missing.*model.norm"):
        EMA(tiny_llama(), eta=0.3).load_state_dict(state)


def test_load_state_dict_names_the_first_shape_mismatch():
    state = EMA(tiny_llama(), eta=0.3).state_dict()
    state["shadow"]["model.norm.weight"] = torch.zeros(31)
    with pytest.raises(ShapeMismatchError, match=r"'model.norm.weight': expected \(32,\), "
                                                 r"got \(31,\)"):
        EMA(tiny_llama(), eta=0.3).load_state_dict(state)


def test_load_state_dict_refuses_another_shadow_kind():
    state = EMA(tiny_llama(), eta=0.3, shadow="delta").state_dict()
    with pytest.raises(UsageError, match="shadow 'delta'"):
        EMA(tiny_llama(), eta=0.3).load_state_dict(state)


@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_state_folder_round_trip_is_bitwise(tmp_path, kind):
    model = tiny_llama(dtype=torch.bfloat16)
    a = EMA(model, eta=0.3, shadow=kind)
    fake_step(model, 1)
    a.update(1)
    a.save_state(tmp_path / "state")
    b = EMA(tiny_llama(seed=1, dtype=torch.bfloat16), eta=0.3, shadow=kind)
    b.load_state(tmp_path / "state")
    assert (b.step, b.num_updates) == (1, 1)
    for group in ("shadow", "theta0"):
        sa, sb = a.state_dict()[group], b.state_dict()[group]
        assert all(torch.equal(sa[n], sb[n]) and sa[n].dtype == sb[n].dtype for n in sa)


def test_swapped_evaluates_the_average_and_restores_weights_bitwise(tmp_path):
    model = tiny_llama()
    ema = EMA(model, eta=0.3)
    for k in (1, 2):
        fake_step(model, k)
        ema.update(k)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(12).reshape(2, 6)
    with ema.swapped() as swapped, torch.no_grad():
        inside = swapped(ids).logits
        assert torch.equal(model.model.norm.weight, ema.value("model.norm.weight"))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    reference = tiny_llama()
    reference.load_state_dict({n: ema.value(n) for n in ema.names})
    with torch.no_grad():
        torch.testing.assert_close(inside, reference(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_pretrained_loads_with_transformers_and_matches(tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    theta0 = make_chat_model(tmp_path / "theta0")
    model = AutoModelForCausalLM.from_pretrained(theta0, dtype=dtype)
    ema = EMA(model, eta=0.25, shadow="delta")
    for k in (1, 2, 3):
        fake_step(model, k)
        ema.update(k)
    recipe = ema.save_pretrained(tmp_path / "ema", like=theta0)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ema", dtype="auto")
    assert loaded.dtype == dtype
    for n, p in loaded.named_parameters():
        assert torch.equal(p, ema.value(n)), n
    assert AutoTokenizer.from_pretrained(tmp_path / "ema").chat_template is not None
    on_disk = json.loads((tmp_path / "ema" / RECIPE_FILE).read_text())
    assert on_disk == recipe and recipe["method"] == "online-ema"
    assert recipe["parameters"] | {"eta": 0.25, "shadow": "delta", "num_updates": 3} \
        == recipe["parameters"]


def test_save_pretrained_dtype_option_converts_and_updates_config(tmp_path):
    base = make_model(tmp_path / "base", seed=0)
    from transformers import AutoModelForCausalLM

    ema = EMA(AutoModelForCausalLM.from_pretrained(base), eta=0.25)
    ema.save_pretrained(tmp_path / "ema", like=base, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in load_state(tmp_path / "ema").values())
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["dtype"] == "bfloat16"


def test_save_pretrained_refuses_an_existing_folder(tmp_path):
    ema = EMA(tiny_llama(), eta=0.25)
    (tmp_path / "ema").mkdir()
    with pytest.raises(OutputExistsError):
        ema.save_pretrained(tmp_path / "ema")


def test_import_safebasin_ema_does_not_import_transformers():
    code = ("import sys, safebasin, safebasin.ema; "
            "assert 'transformers' not in sys.modules; "
            "assert 'torch.distributed.tensor' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)

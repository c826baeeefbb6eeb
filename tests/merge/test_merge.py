"""Every merge against an independent float64 reference computed in memory."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import xxhash
from click.testing import CliRunner
from support import load_state, make_model

from safebasin import merge
from safebasin.cli import cli
from safebasin.merge import MergeOptions


def f64(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float64) for k, v in sd.items()}


def assert_close_to(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                    dtype: torch.dtype) -> None:
    """Output equals the float64 reference rounded once to `dtype`, up to fp32 arithmetic."""
    assert set(out) == set(ref)
    for k, r in ref.items():
        assert out[k].dtype == dtype, k
        expected = r.to(dtype)
        if dtype == torch.float32:
            torch.testing.assert_close(out[k], expected, rtol=2e-7, atol=1e-7)
        else:  # fp32 intermediate may round a tie differently: at most one ulp apart
            diff = (out[k].double() - expected.double()).abs()
            ulp = expected.double().abs().clamp_min(1e-30) * 2.0**-7
            assert bool((diff <= ulp).all()), k
            assert (diff == 0).double().mean() > 0.99, k


def test_lerp_matches_float64_reference(models, tmp_path):
    merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=0.3)
    a, b = f64(load_state(models["base"])), f64(load_state(models["ft"]))
    ref = {k: a[k] + 0.3 * (b[k] - a[k]) for k in a}
    assert_close_to(load_state(tmp_path / "out"), ref, torch.float32)


@pytest.mark.parametrize("alpha, source", [(0.0, "base"), (1.0, "ft")])
def test_lerp_endpoints_copy_inputs_exactly(models, tmp_path, alpha, source):
    merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=alpha)
    out, src = load_state(tmp_path / "out"), load_state(models[source])
    assert all(torch.equal(out[k], src[k]) for k in src)


def test_lerp_extrapolation_alpha_above_one(models, tmp_path):
    merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=1.5, extrapolate=True)
    a, b = f64(load_state(models["base"])), f64(load_state(models["ft"]))
    assert_close_to(load_state(tmp_path / "out"), {k: a[k] + 1.5 * (b[k] - a[k]) for k in a},
                    torch.float32)


def test_bf16_sharded_lerp_output_is_sharded_and_rounded_once(models, tmp_path):
    out = tmp_path / "out"
    merge.lerp(models["bf16_base"], models["bf16_ft"], out, alpha=0.25,
               options=MergeOptions(shard_size=20_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    a, b = f64(load_state(models["bf16_base"])), f64(load_state(models["bf16_ft"]))
    assert_close_to(load_state(out), {k: a[k] + 0.25 * (b[k] - a[k]) for k in a},
                    torch.bfloat16)


def test_task_arithmetic_two_finetunes_with_negative_scale(models, tmp_path):
    merge.task_arithmetic(models["base"], [models["ft"], models["ft2"]], tmp_path / "out",
                          scales=[0.7, -0.4])
    a = f64(load_state(models["base"]))
    t1, t2 = f64(load_state(models["ft"])), f64(load_state(models["ft2"]))
    ref = {k: a[k] + 0.7 * (t1[k] - a[k]) - 0.4 * (t2[k] - a[k]) for k in a}
    assert_close_to(load_state(tmp_path / "out"), ref, torch.float32)


def test_zero_task_vector_returns_base(models, tmp_path):
    merge.task_arithmetic(models["base"], [models["base"]], tmp_path / "out", scales=[0.8])
    out, base = load_state(tmp_path / "out"), load_state(models["base"])
    assert all(torch.equal(out[k], base[k]) for k in base)


def test_offline_ema_closed_form_equals_recurrence(models, tmp_path):
    ckpts = [models["ft"], models["ft2"], models["ft"]]
    eta = 0.25
    merge.ema(models["base"], ckpts, tmp_path / "out", eta=eta)
    ref = f64(load_state(models["base"]))
    for c in ckpts:  # θ̄ₖ = (1−η)θ̄ₖ₋₁ + ηθₖ, step by step
        t = f64(load_state(c))
        ref = {k: (1 - eta) * ref[k] + eta * t[k] for k in ref}
    assert_close_to(load_state(tmp_path / "out"), ref, torch.float32)


def test_offline_ema_reads_trajectory_folder_in_numeric_order(models, tmp_path):
    traj = tmp_path / "traj"
    traj.mkdir()
    shutil.copytree(models["ft"], traj / "step-10")
    shutil.copytree(models["ft2"], traj / "step-2")
    merge.ema(models["base"], [traj], tmp_path / "out", eta=0.5)
    a, s2, s10 = (f64(load_state(p)) for p in (models["base"], models["ft2"], models["ft"]))
    ref = {k: 0.25 * a[k] + 0.25 * s2[k] + 0.5 * s10[k] for k in a}
    assert_close_to(load_state(tmp_path / "out"), ref, torch.float32)


def _global_distance(x: dict, y: dict) -> float:
    return math.sqrt(sum(float(((x[k].double() - y[k].double()) ** 2).sum()) for k in x))


def test_l2_projection_lands_on_radius(models, tmp_path):
    recipe = merge.l2_project(models["base"], models["ft"], tmp_path / "out", radius=1.5)
    base, out = load_state(models["base"]), load_state(tmp_path / "out")
    assert _global_distance(base, out) == pytest.approx(1.5, rel=1e-6)
    assert recipe["distances"]["global_to_base"] == pytest.approx(1.5, rel=1e-6)
    ft = f64(load_state(models["ft"]))
    s = 1.5 / _global_distance(base, ft)
    a = f64(base)
    assert_close_to(out, {k: a[k] + s * (ft[k] - a[k]) for k in a}, torch.float32)


def test_l2_projection_leaves_points_inside_ball_unchanged(models, tmp_path):
    merge.l2_project(models["base"], models["ft"], tmp_path / "out", radius=1e6)
    out, ft = load_state(tmp_path / "out"), load_state(models["ft"])
    assert all(torch.equal(out[k], ft[k]) for k in ft)


def test_l2_projection_per_tensor_matches_reference_distances(models, tmp_path):
    merge.l2_project(models["base"], models["ft"], tmp_path / "out", match=models["ft2"],
                     per_tensor=True)
    base, ref, ft = (load_state(p) for p in (models["base"], models["ft2"], models["ft"]))
    out = load_state(tmp_path / "out")
    for k in base:
        r = (ref[k].double() - base[k].double()).norm().item()
        d_ft = (ft[k].double() - base[k].double()).norm().item()
        d_out = (out[k].double() - base[k].double()).norm().item()
        assert d_out == pytest.approx(min(r, d_ft), rel=1e-5, abs=1e-7), k


def test_l2_projection_global_match_uses_reference_distance(models, tmp_path):
    merge.l2_project(models["base"], models["ft"], tmp_path / "out", match=models["ft2"])
    base = load_state(models["base"])
    target = _global_distance(base, load_state(models["ft2"]))
    assert _global_distance(base, load_state(tmp_path / "out")) == pytest.approx(target, 1e-6)


def test_output_loads_with_transformers_and_gives_reference_logits(models, tmp_path):
    from transformers import AutoModelForCausalLM

    merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=0.6)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32)
    a, b = f64(load_state(models["base"])), f64(load_state(models["ft"]))
    reference.load_state_dict({k: (a[k] + 0.6 * (b[k] - a[k])).float() for k in a})
    ids = torch.tensor([[1, 5, 9, 33, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_tied_base_keeps_tied_convention(models, tmp_path):
    from transformers import AutoModelForCausalLM

    merge.lerp(models["tied_base"], models["tied_ft"], tmp_path / "out", alpha=0.5)
    out = load_state(tmp_path / "out")
    assert "lm_head.weight" not in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    a, b = f64(load_state(models["tied_base"])), f64(load_state(models["tied_ft"]))
    assert_close_to(out, {k: (a[k] + b[k]) / 2 for k in a}, torch.float32)


def test_untied_base_with_tied_finetune_uses_its_embedding_for_lm_head(tmp_path):
    base = make_model(tmp_path / "base", seed=0, tied=False)
    ft = make_model(tmp_path / "ft", seed=1, tied=True)
    merge.lerp(base, ft, tmp_path / "out", alpha=0.5)
    a, b, out = load_state(base), load_state(ft), load_state(tmp_path / "out")
    ref = (a["lm_head.weight"].double() + b["model.embed_tokens.weight"].double()) / 2
    torch.testing.assert_close(out["lm_head.weight"], ref.float(), rtol=2e-7, atol=1e-7)


def test_dtype_option_converts_and_updates_config(models, tmp_path):
    merge.lerp(models["base"], models["ft"], tmp_path / "out", alpha=0.5,
               options=MergeOptions(dtype="bfloat16"))
    a, b = f64(load_state(models["base"])), f64(load_state(models["ft"]))
    assert_close_to(load_state(tmp_path / "out"), {k: (a[k] + b[k]) / 2 for k in a},
                    torch.bfloat16)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"


def test_mixed_input_dtypes_are_accepted(models, tmp_path):
    merge.lerp(models["base"], models["bf16_ft"], tmp_path / "out", alpha=0.5)
    a, b = f64(load_state(models["base"])), f64(load_state(models["bf16_ft"]))
    assert_close_to(load_state(tmp_path / "out"), {k: (a[k] + b[k]) / 2 for k in a},
                    torch.float32)


def test_outputs_are_byte_identical_across_runs(models, tmp_path):
    for name in ("one", "two"):
        merge.ema(models["bf16_base"], [models["bf16_ft"]] * 2, tmp_path / name, eta=0.3,
                  options=MergeOptions(shard_size=20_000))
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_recipe_records_method_inputs_hashes_and_distance(models, tmp_path):
    out = tmp_path / "out"
    recipe = merge.lerp(models["base"], models["ft"], out, alpha=0.4)
    on_disk = json.loads((out / "safebasin_recipe.json").read_text())
    assert on_disk == json.loads(json.dumps(recipe))
    assert on_disk["method"] == "lerp" and on_disk["parameters"] == {"alpha": 0.4}
    assert on_disk["coefficients"] == pytest.approx([0.6, 0.4])
    assert [i["role"] for i in on_disk["inputs"]] == ["base", "finetuned"]
    fps = [i["fingerprint"] for i in on_disk["inputs"]]
    assert len(set(fps)) == 2 and all(len(f) == 32 for f in fps)
    for shard, digest in on_disk["output"]["shards"].items():
        assert xxhash.xxh3_128((out / shard).read_bytes()).hexdigest() == digest
    expected = 0.4 * _global_distance(load_state(models["base"]), load_state(models["ft"]))
    assert on_disk["distances"]["global_to_base"] == pytest.approx(expected, rel=1e-6)
    assert (out / "config.json").read_bytes() == (models["base"] / "config.json").read_bytes()


def test_input_fingerprint_is_stable_and_content_based(models, tmp_path):
    r1 = merge.lerp(models["base"], models["ft"], tmp_path / "a", alpha=0.5)
    copy = shutil.copytree(models["ft"], tmp_path / "ft_copy")
    r2 = merge.lerp(models["base"], copy, tmp_path / "b", alpha=0.9)
    assert r1["inputs"][1]["fingerprint"] == r2["inputs"][1]["fingerprint"]
    assert r1["inputs"][0]["fingerprint"] != r1["inputs"][1]["fingerprint"]


def test_overwrite_replaces_existing_output(models, tmp_path):
    out = tmp_path / "out"
    merge.lerp(models["base"], models["ft"], out, alpha=0.0)
    merge.lerp(models["base"], models["ft"], out, alpha=1.0,
               options=MergeOptions(overwrite=True))
    assert torch.equal(load_state(out)["lm_head.weight"], load_state(models["ft"])[
        "lm_head.weight"])
    assert not list(tmp_path.glob(".out.safebasin-tmp-*"))


def test_distance_streams_float64_reference(models):
    d = merge.distance(models["base"], models["ft"])
    a, b = load_state(models["base"]), load_state(models["ft"])
    assert d.global_l2 == pytest.approx(_global_distance(a, b), rel=1e-6)
    k = "model.layers.1.mlp.up_proj.weight"
    assert d.per_tensor[k] == pytest.approx((a[k].double() - b[k].double()).norm().item(), 1e-6)


# ---- CLI --------------------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_lerp_and_distance_json(models, tmp_path):
    r = run("merge", "lerp", models["base"], models["ft"], "-o", tmp_path / "out",
            "--alpha", "0.5", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("distance", models["base"], tmp_path / "out", "--json", "--quiet")
    assert r.exit_code == 0
    full = _global_distance(load_state(models["base"]), load_state(models["ft"]))
    assert json.loads(r.stdout)["global_l2"] == pytest.approx(full / 2, rel=1e-6)


def test_cli_task_arithmetic_scales_and_ema(models, tmp_path):
    r = run("merge", "task-arithmetic", models["base"], models["ft"], models["ft2"], "-o",
            tmp_path / "ta", "--scales", "0.5,-0.2", "-q")
    assert r.exit_code == 0, r.output
    r = run("merge", "ema", models["base"], models["ft"], models["ft2"], "-o",
            tmp_path / "ema", "--eta", "0.25", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ema" / "safebasin_recipe.json").read_text())[
        "coefficients"] == pytest.approx([0.5625, 0.1875, 0.25])


def _assert_refused(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: "), err
    assert "Traceback" not in r.output
    for n in needles:
        assert n in err, err


def test_cli_refuses_missing_path(models, tmp_path):
    r = run("merge", "lerp", models["base"], tmp_path / "nope", "-o", tmp_path / "o",
            "--alpha", "0.5")
    _assert_refused(r, "nope", "no such file")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_folder_without_weights(models, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("distance", models["base"], tmp_path / "empty")
    _assert_refused(r, "empty", "no model.safetensors")


def test_cli_refuses_different_names(models, tmp_path):
    from safetensors.torch import save_file

    sd = load_state(models["ft"])
    del sd["model.layers.1.mlp.up_proj.weight"], sd["model.norm.weight"]
    (tmp_path / "ft").mkdir()
    save_file(sd, tmp_path / "ft" / "model.safetensors", metadata={"format": "pt"})
    r = run("merge", "lerp", models["base"], tmp_path / "ft", "-o", tmp_path / "o",
            "--alpha", "0.5")
    _assert_refused(r, "2 tensors of BASE are missing", "model.layers.1.mlp.up_proj.weight")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_different_shapes_with_both_shapes(models, tmp_path):
    other = make_model(tmp_path / "big_vocab", seed=9, vocab=128)
    r = run("merge", "lerp", models["base"], other, "-o", tmp_path / "o", "--alpha", "0.5")
    _assert_refused(r, "(96, 32) vs (128, 32)", "--vocab-mismatch base")


def test_cli_refuses_existing_output(models, tmp_path):
    (tmp_path / "o").mkdir()
    r = run("merge", "lerp", models["base"], models["ft"], "-o", tmp_path / "o", "--alpha", "1")
    _assert_refused(r, "already exists", "--overwrite")


@pytest.mark.parametrize("args, needle", [
    (["l2-project", "--radius", "1", "--match", "X"], "exactly one of"),
    (["l2-project"], "exactly one of"),
    (["ema", "--eta", "1.5"], "eta must be in (0, 1]"),
    (["lerp", "--alpha", "1.5"], "alpha 1.5 is outside [0, 1]"),
    (["lerp", "--alpha", "-0.5"], "--extrapolate"),
    (["lerp", "--alpha", "50"], "beyond θ_ft"),
    (["task-arithmetic", "--scale", "1", "--scales", "1,2"], "exactly one of"),
])
def test_cli_refuses_bad_parameters(models, tmp_path, args, needle):
    cmd, *opts = args
    r = run("merge", cmd, models["base"], models["ft"], "-o", tmp_path / "o", *opts)
    _assert_refused(r, needle)
    assert not (tmp_path / "o").exists()


def test_cli_extrapolates_when_asked(models, tmp_path):
    r = run("merge", "lerp", models["base"], models["ft"], "-o", tmp_path / "o", "--alpha",
            "-0.5", "--extrapolate", "-q")
    assert r.exit_code == 0, r.output + r.stderr
    recipe = json.loads((tmp_path / "o" / "safebasin_recipe.json").read_text())
    assert recipe["parameters"]["alpha"] == -0.5
    assert "--alpha -0.5 --extrapolate" in (tmp_path / "o" / "README.md").read_text()


def test_cli_refuses_bad_shard_size(models, tmp_path):
    r = run("merge", "lerp", models["base"], models["ft"], "-o", tmp_path / "o",
            "--alpha", "1", "--shard-size", "lots")
    assert r.exit_code == 2 and "not a size" in r.stderr

"""`merge from-mergekit`: supported YAML equals the direct call; anything else is refused."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner
from support import load_state

from safebasin import merge
from safebasin.cli import cli


def _config(tmp_path, models, **overrides) -> str:
    cfg = {"merge_method": "ties", "base_model": str(models["base"]),
           "models": [{"model": str(models["base"])},
                      {"model": str(models["ft"]),
                       "parameters": {"weight": 0.7, "density": 0.4}},
                      {"model": str(models["ft2"]),
                       "parameters": {"weight": 0.3, "density": 0.6}}],
           "parameters": {"lambda": 0.9, "normalize": True, "int8_mask": True},
           "dtype": "float32"}
    cfg.update(overrides)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _invoke(config, out):
    return CliRunner().invoke(cli, ["merge", "from-mergekit", config, "-o", str(out), "-q"])


def test_ties_config_equals_the_direct_call(models, tmp_path):
    result = _invoke(_config(tmp_path, models), tmp_path / "yaml")
    assert result.exit_code == 0, result.output
    merge.ties(models["base"], [models["ft"], models["ft2"]], tmp_path / "direct",
               density=[0.4, 0.6], weights=[0.7, 0.3], lambda_=0.9)
    a, b = load_state(tmp_path / "yaml"), load_state(tmp_path / "direct")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_slerp_config_from_a_full_depth_slice_equals_the_direct_call(models, tmp_path):
    cfg = {"merge_method": "slerp", "base_model": str(models["base"]),
           "slices": [{"sources": [{"model": str(models["base"]), "layer_range": [0, 2]},
                                   {"model": str(models["ft"]), "layer_range": [0, 2]}]}],
           "parameters": {"t": 0.3}, "out_dtype": "bfloat16"}
    path = tmp_path / "slerp.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert _invoke(str(path), tmp_path / "yaml").exit_code == 0
    merge.slerp(models["base"], models["ft"], tmp_path / "direct", t=0.3,
                options=merge.MergeOptions(dtype="bfloat16"))
    a, b = load_state(tmp_path / "yaml"), load_state(tmp_path / "direct")
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.bfloat16 for k in a)


def _plain_models(cfg: dict) -> None:
    for m in cfg["models"]:
        m.pop("parameters", None)


def _partial_slice(cfg: dict) -> None:
    cfg["slices"] = [{"sources": [{"model": m["model"], "layer_range": [0, 1]}
                                  for m in cfg.pop("models")]}]


def test_dare_config_uses_mergekits_l1_rescale_and_the_given_seed(models, tmp_path):
    config = _config(tmp_path, models, merge_method="dare_ties")
    result = CliRunner().invoke(cli, ["merge", "from-mergekit", config, "--seed", "7", "-o",
                                      str(tmp_path / "yaml"), "-q"])
    assert result.exit_code == 0, result.output
    merge.dare_ties(models["base"], [models["ft"], models["ft2"]], tmp_path / "direct",
                    density=[0.4, 0.6], weights=[0.7, 0.3], lambda_=0.9, normalize=True,
                    seed=7, rescale="l1")
    a, b = load_state(tmp_path / "yaml"), load_state(tmp_path / "direct")
    assert all(torch.equal(a[k], b[k]) for k in a)


REFUSED = {  # case: (change to the supported config, key the one line must name)
    "unknown top-level key": (lambda c: c.update(tokenizer={"source": "union"}),
                              "'tokenizer'"),
    "unsupported method": (lambda c: c.update(merge_method="della"), "'merge_method'"),
    "gradient value": (lambda c: c["parameters"].update({"lambda": [0.5, 1.0]}),
                       "'parameters.lambda'"),
    "filtered value": (lambda c: c["parameters"].update(
        {"lambda": [{"filter": "mlp", "value": 1.0}]}), "'parameters.lambda'"),
    "unknown parameter": (lambda c: c["parameters"].update(epsilon=0.1),
                          "'parameters.epsilon'"),
    "rescale for ties": (lambda c: c["parameters"].update(rescale=True),
                         "'parameters.rescale'"),
    "tokenizer union": (lambda c: c.update(tokenizer_source="union"), "'tokenizer_source'"),
    "partial layer range": (_partial_slice, "layer_range"),
    "model_stock filter_wise": (lambda c: (_plain_models(c), c.update(
        merge_method="model_stock", parameters={"filter_wise": True})),
        "'parameters.filter_wise'"),
    "per-model parameter of another method": (lambda c: c.update(
        merge_method="slerp", parameters={"t": 0.5}), "'models[1].parameters.density'"),
    "dtype int8": (lambda c: c.update(dtype="int8"), "'dtype'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_config_is_refused_naming_the_key(models, tmp_path, case):
    change, key = REFUSED[case]
    cfg = yaml.safe_load(open(_config(tmp_path, models)))
    change(cfg)
    (tmp_path / "config.yml").write_text(yaml.safe_dump(cfg))
    result = _invoke(str(tmp_path / "config.yml"), tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_missing_config_file_exits_2(tmp_path):
    result = _invoke(str(tmp_path / "nope.yml"), tmp_path / "out")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def _mergekit_order(base, fts, weights, lam, normalize):
    """mergekit's task_arithmetic in fp32, operation by operation (its documented order)."""
    deltas = [(ft.float() - base.float()) * w for ft, w in zip(fts, weights, strict=True)]
    mixed = deltas[0].clone()
    for d in deltas[1:]:
        mixed += d
    if normalize:
        mixed /= torch.tensor(weights, dtype=torch.float32).sum()
    if lam != 1:
        mixed *= lam
    return base.float() + mixed


@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic_config_follows_mergekits_fp32_order(models, tmp_path, normalize):
    cfg = yaml.safe_load(open(_config(tmp_path, models)))
    cfg["merge_method"] = "task_arithmetic"
    cfg["parameters"] = {"lambda": 0.9, "normalize": normalize}
    for m, w in zip(cfg["models"][1:], [0.7, 0.4], strict=True):
        m["parameters"] = {"weight": w}
    (tmp_path / "ta.yml").write_text(yaml.safe_dump(cfg))
    result = _invoke(str(tmp_path / "ta.yml"), tmp_path / "yaml")
    assert result.exit_code == 0, result.output
    got = load_state(tmp_path / "yaml")
    base, ft, ft2 = (load_state(models[k]) for k in ("base", "ft", "ft2"))
    for k in got:
        if not got[k].is_floating_point():
            continue
        order = _mergekit_order(base[k], [ft[k], ft2[k]], [0.7, 0.4], 0.9, normalize)
        assert torch.equal(got[k], order.to(got[k].dtype)), k
        tau = 0.7 * (ft[k].double() - base[k].double()) + 0.4 * (ft2[k].double()
                                                                  - base[k].double())
        exact = base[k].double() + 0.9 * (tau / 1.1 if normalize else tau)
        assert torch.allclose(got[k].double(), exact, rtol=0, atol=1e-6), k


def test_task_arithmetic_weights_form_on_the_cli_equals_the_config(models, tmp_path):
    cfg = yaml.safe_load(open(_config(tmp_path, models)))
    cfg.update(merge_method="task_arithmetic", parameters={"lambda": 0.9})
    for m in cfg["models"][1:]:
        del m["parameters"]["density"]
    (tmp_path / "ta.yml").write_text(yaml.safe_dump(cfg))
    assert _invoke(str(tmp_path / "ta.yml"), tmp_path / "yaml").exit_code == 0
    result = CliRunner().invoke(cli, ["merge", "task-arithmetic", str(models["base"]),
                                      str(models["ft"]), str(models["ft2"]), "--weights",
                                      "0.7,0.3", "--lambda", "0.9", "--dtype", "float32",
                                      "-o", str(tmp_path / "cli"), "-q"])
    assert result.exit_code == 0, result.output
    a, b = load_state(tmp_path / "yaml"), load_state(tmp_path / "cli")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_task_arithmetic_lambda_without_weights_is_refused(models, tmp_path):
    result = CliRunner().invoke(cli, ["merge", "task-arithmetic", str(models["base"]),
                                      str(models["ft"]), "--scale", "0.5", "--lambda", "2",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--lambda" in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()

"""Run a mergekit YAML recipe on safebasin's streaming engine, or refuse it in one line.

A config translates one to one when its method is one safebasin implements and every key and
parameter means the same thing here (docs/merging.md lists them). Anything else is refused
with `UnsupportedConfigError`, naming the key: never ignored.

Accepted: `merge_method` (task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
breadcrumbs_ties, slerp, model_stock); `base_model`; `models` (each `model` with optional
`parameters`), or `slices` with one slice whose sources all span every layer; `parameters`
(global, scalars only); `dtype` / `out_dtype` (the output dtype: safebasin always computes in
fp32); `tokenizer_source: base`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import yaml

from ..errors import DataFormatError, DataNotFoundError, UnsupportedConfigError
from .methods import model_stock, slerp, sparse_merge
from .plan import MergeOptions

__all__ = ["from_mergekit", "translate"]

_SPARSE = {"ties": "ties", "dare_linear": "dare-linear", "dare_ties": "dare-ties",
           "breadcrumbs": "breadcrumbs", "breadcrumbs_ties": "breadcrumbs-ties"}
# per-model and global parameters each method honours (mergekit's names)
_MODEL_PARAMS = {"task_arithmetic": {"weight"}, "slerp": set(), "model_stock": set(),
                 **{m: {"weight", "density"} for m in ("ties", "dare_linear", "dare_ties")},
                 **{m: {"weight", "density", "gamma"} for m in ("breadcrumbs",
                                                                "breadcrumbs_ties")}}
_GLOBAL_PARAMS = {"task_arithmetic": {"lambda", "normalize", "int8_mask"},
                  "slerp": {"t"}, "model_stock": {"filter_wise"},
                  **{m: {"lambda", "normalize", "int8_mask", "rescale"} for m in _SPARSE}}
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
           "fp16": "float16", "half": "float16", "float32": "float32", "fp32": "float32",
           "float": "float32"}
_TOP = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
        "tokenizer_source"}


def _refuse(key: str, why: str) -> UnsupportedConfigError:
    return UnsupportedConfigError(f"mergekit config key '{key}': {why}")


def _scalar(key: str, value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(key, f"only a single number is supported here, got {value!r} "
                           "(gradients and filters are not)")
    if not math.isfinite(value):
        raise _refuse(key, f"must be finite, got {value}")
    return float(value)


def _flag(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise _refuse(key, f"expected true or false, got {value!r}")
    return value


def _model_ref(key: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse(key, f"expected a model path or Hub id, got {value!r}")
    if "+" in value:
        raise _refuse(key, "LoRA references (model+adapter) are not supported; give the "
                           "adapter folder as its own model")
    if "@" in value:
        raise _refuse(key, "revisions (model@rev) are not supported; pin a local snapshot")
    return value


def _models(cfg: dict) -> list[tuple[str, dict]]:
    """(reference, per-model parameters) from `models`, or from one full-depth slice."""
    if ("models" in cfg) == ("slices" in cfg):
        raise _refuse("models", "give exactly one of 'models' or 'slices'")
    if "models" in cfg:
        entries, where = cfg["models"], "models"
    else:
        slices = cfg["slices"]
        if not isinstance(slices, list) or len(slices) != 1:
            raise _refuse("slices", "only one slice spanning every layer is supported")
        extra = set(slices[0]) - {"sources"}
        if extra:
            raise _refuse(f"slices[0].{sorted(extra)[0]}", "not supported")
        entries, where = slices[0]["sources"], "slices[0].sources"
    if not isinstance(entries, list):
        raise _refuse(where, "expected a list")
    out = []
    for i, e in enumerate(entries):
        key = f"{where}[{i}]"
        if not isinstance(e, dict) or "model" not in e:
            raise _refuse(key, "expected a mapping with 'model'")
        extra = set(e) - {"model", "parameters", "layer_range"}
        if extra:
            raise _refuse(f"{key}.{sorted(extra)[0]}", "not supported")
        if "layer_range" in e:
            _full_depth(f"{key}.layer_range", e["layer_range"], e["model"])
        out.append((_model_ref(f"{key}.model", e["model"]), dict(e.get("parameters") or {})))
    return out


def _full_depth(key: str, value, model: str) -> None:
    """A layer_range must cover every layer of the model (config.json's num_hidden_layers)."""
    cfg_path = Path(model) / "config.json"
    layers = None
    if cfg_path.is_file():
        layers = json.loads(cfg_path.read_text()).get("num_hidden_layers")
    if layers is None or list(value) != [0, layers]:
        raise _refuse(key, f"only [0, num_hidden_layers] (every layer) is supported, got "
                           f"{value!r}" + ("" if layers else " (no local config.json)"))


def translate(cfg: Mapping, *, seed: int = 0) -> tuple[str, dict]:
    """(safebasin method, keyword arguments of `merge.<method>` without options/out).

    `seed` is DARE's (mergekit draws from torch's global RNG, seeded by `--random-seed`).

    Raises:
        UnsupportedConfigError: any key, value or method safebasin cannot honour exactly.
    """
    if not isinstance(cfg, Mapping):
        raise UnsupportedConfigError("mergekit config: expected a YAML mapping at the top")
    for key in cfg:
        if key not in _TOP:
            raise _refuse(key, "not supported by safebasin")
    method = cfg.get("merge_method")
    if method not in _MODEL_PARAMS:
        raise _refuse("merge_method", f"{method!r} is not supported; supported: "
                                      f"{', '.join(sorted(_MODEL_PARAMS))}")
    if cfg.get("tokenizer_source") not in (None, "base"):
        raise _refuse("tokenizer_source", "only 'base' (θ₀'s tokenizer) is supported")
    if "base_model" not in cfg:
        raise _refuse("base_model", f"{method} needs a base_model (θ₀)")
    base = _model_ref("base_model", cfg["base_model"])
    params = dict(cfg.get("parameters") or {})
    for key in params:
        if key not in _GLOBAL_PARAMS[method] | _MODEL_PARAMS[method]:
            raise _refuse(f"parameters.{key}", f"not a parameter safebasin's {method} honours")
    models = []
    for i, (ref, p) in enumerate(_models(cfg)):
        for key in p:
            if key not in _MODEL_PARAMS[method]:
                raise _refuse(f"models[{i}].parameters.{key}", f"not supported for {method}")
        if ref != base:  # mergekit lists θ₀ among the models too; its parameters do nothing
            models.append((i, ref, p))

    def per_model(name: str, default: float | None) -> list[float] | None:
        values = []
        for i, _, p in models:
            v = p.get(name, params.get(name, default))
            if v is None:
                raise _refuse(f"models[{i}].parameters.{name}", f"{method} needs it")
            values.append(_scalar(f"models[{i}].parameters.{name}", v))
        return values

    others = [ref for _, ref, _ in models]
    g = {k: params[k] for k in params if k in _GLOBAL_PARAMS[method]}
    if method == "slerp":
        if len(others) != 1:
            raise _refuse("models", f"slerp needs base_model and one other model, got "
                                    f"{len(others)} others")
        if "t" not in g:
            raise _refuse("parameters.t", "slerp needs t")
        return "slerp", {"base": base, "other": others[0], "t": _scalar("parameters.t", g["t"])}
    if method == "model_stock":
        if _flag("parameters.filter_wise", g.get("filter_wise", False)):
            raise _refuse("parameters.filter_wise", "true is not supported")
        return "model-stock", {"base": base, "finetuned": others}
    lam = _scalar("parameters.lambda", g.get("lambda", 1.0))
    name = _SPARSE.get(method, "task-arithmetic")  # mergekit's fp32 order, bit for bit
    kwargs = {"base": base, "finetuned": others, "weights": per_model("weight", None),
              "density": per_model("density", 1.0) if method != "task_arithmetic" else 1.0,
              "lambda_": lam}
    _flag("parameters.int8_mask", g.get("int8_mask", False))  # a dtype choice: same result
    if "normalize" in g:
        kwargs["normalize"] = _flag("parameters.normalize", g["normalize"])
    rescale = _flag("parameters.rescale", g.get("rescale", name.startswith("dare")))
    if rescale and not name.startswith("dare"):
        raise _refuse("parameters.rescale", f"true (L1 rescaling) is not supported for "
                                            f"{method}")
    if name.startswith("dare"):  # mergekit's rescale: true matches each tensor's L1 norm
        kwargs["rescale"] = "l1" if rescale else "none"
    if name.startswith("breadcrumbs"):
        kwargs["gamma"] = per_model("gamma", 0.01)
    if name.startswith("dare"):
        kwargs["seed"] = seed
    return name, kwargs


def _dtype(cfg: Mapping, options: MergeOptions) -> MergeOptions:
    key = "out_dtype" if cfg.get("out_dtype") else "dtype"
    value = cfg.get(key)
    if value is None:
        return options
    if value not in _DTYPES:
        raise _refuse(key, f"{value!r} is not an output dtype safebasin writes "
                           "(bfloat16, float16, float32)")
    dtype = _DTYPES[value]
    if options.dtype not in ("auto", dtype):
        raise _refuse(key, f"{dtype} conflicts with `dtype` {options.dtype}")
    return replace(options, dtype=dtype)


def from_mergekit(config: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0,
                  options: MergeOptions | None = None) -> dict:
    """Run the mergekit YAML at `config` into `out`; returns the recipe.

    `seed` seeds DARE's drop mask (the counterpart of mergekit's `--random-seed`).

    Raises:
        UnsupportedConfigError: a key or value safebasin cannot honour exactly (named).
        DataNotFoundError: the file is missing; DataFormatError: it is not YAML.
    """
    path = Path(config)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such mergekit config")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataFormatError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    method, kwargs = translate(cfg, seed=seed)
    options = _dtype(cfg, options or MergeOptions())
    fn = {"slerp": slerp, "model-stock": model_stock}.get(method)
    if fn is not None:
        base = kwargs.pop("base")
        second = kwargs.pop("other", None) or kwargs.pop("finetuned")
        return fn(base, second, out, options=options, **kwargs)
    return sparse_merge(method, kwargs.pop("base"), kwargs.pop("finetuned"), out,
                        options=options, **kwargs)

"""safebasin's deterministic merges against mergekit itself, in units in the last place.

Not a test: CI has no mergekit. Install it in its own venv (never in the project's):

    python3 -m venv /tmp/mkvenv && /tmp/mkvenv/bin/pip install torch==2.13.0 \
        && /tmp/mkvenv/bin/pip install mergekit==0.1.5
    python benchmarks/mergekit_equality.py --mergekit /tmp/mkvenv/bin/mergekit-yaml

Builds a tiny fp32 Llama θ₀ and two fine-tunes of it (θ₀ + noise), writes one mergekit YAML
per method with `dtype: float32` (mergekit then computes in fp32, as safebasin always does),
runs `mergekit-yaml` and `safebasin merge from-mergekit` on the same file, for output dtypes
float32 and bfloat16, and prints per method the largest difference in ulps of the output
dtype and the share of elements that differ at all. DARE is random in mergekit (torch's RNG)
and is not compared.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

METHODS = {
    "task_arithmetic": ({"weight": [0.7, 0.4]}, {"lambda": 0.9}),
    "ties": ({"weight": [0.7, 0.4], "density": [0.3, 0.5]}, {"lambda": 1.1}),
    "ties_no_normalize": ({"weight": [0.7, -0.4], "density": [0.3, 0.5]},
                          {"normalize": False}),
    "breadcrumbs": ({"weight": [0.7, 0.4], "density": [0.6, 0.5], "gamma": [0.05, 0.02]}, {}),
    "breadcrumbs_ties": ({"weight": [0.7, 0.4], "density": [0.6, 0.5], "gamma": [0.05, 0.0]},
                         {"normalize": True}),
    "slerp": ({}, {"t": 0.35}),
    "model_stock": ({}, {}),
}


def make_models(root: Path) -> list[Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    # odd sizes on purpose: tensors that are not whole vectors of 8 or 16 lanes, and an
    # embedding of 36036 elements, which torch sums in two ranges on two threads
    cfg = LlamaConfig(vocab_size=1001, hidden_size=36, intermediate_size=100,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    paths = [root / "base", root / "ft1", root / "ft2"]
    base.save_pretrained(paths[0])
    for i, path in enumerate(paths[1:], start=1):
        torch.manual_seed(i)
        ft = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for (_, p), (_, q) in zip(ft.named_parameters(), base.named_parameters(),
                                      strict=True):
                p.copy_(q + 0.02 * i * torch.randn_like(q))
        ft.save_pretrained(path)
    return paths


def config(method: str, paths: list[Path], out_dtype: str) -> dict:
    per_model, global_ = METHODS[method]
    name = method.removesuffix("_no_normalize")
    others = paths[1:2] if name == "slerp" else paths[1:]
    models = [{"model": str(paths[0])}] + [
        {"model": str(p), **({"parameters": {k: v[i] for k, v in per_model.items()}}
                             if per_model else {})} for i, p in enumerate(others)]
    return {"merge_method": name, "base_model": str(paths[0]), "models": models,
            "parameters": global_, "dtype": "float32", "out_dtype": out_dtype}


def ordered(x: torch.Tensor) -> torch.Tensor:
    """Floats mapped to integers that count ulps (monotone across zero)."""
    if x.dtype == torch.bfloat16:
        i = x.view(torch.int16).to(torch.int64)
        return torch.where(i < 0, -(i & 0x7FFF), i)
    i = x.view(torch.int32).to(torch.int64)
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def load(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def input_ulp(inputs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at the largest input magnitude of each element: the scale at
    which a merge's fp32 arithmetic rounds (an output that cancels to near zero carries the
    rounding of its inputs, which counts many ulps of its own tiny value)."""
    scale = torch.stack([x.double().abs() for x in inputs]).amax(0).clamp_min(2.0**-126)
    mantissa = 23 if dtype == torch.float32 else 7
    return torch.exp2(torch.floor(torch.log2(scale)) - mantissa)


def compare(a: dict, b: dict, inputs: list[dict]) -> tuple[int, float, float]:
    """(max ulps at the output value, share of differing elements, max difference in ulps
    of the output dtype at the inputs' magnitude)."""
    worst, differ, total, scaled = 0, 0, 0, 0.0
    for k in b:
        d = (ordered(a[k]) - ordered(b[k])).abs()
        worst = max(worst, int(d.max()))
        differ += int((d > 0).sum())
        total += d.numel()
        ulp = input_ulp([x[k] for x in inputs], b[k].dtype)
        scaled = max(scaled, float(((a[k].double() - b[k].double()).abs() / ulp).max()))
    return worst, differ / total, scaled


def exact(method: str, inputs: list[dict]) -> dict | None:
    """The float64 result of SLERP or model stock from their formulas (docs/merging.md), to
    say which of two fp32 results that differ is nearer the truth; None for other methods."""
    out = {}
    for k in inputs[0]:
        xs = [d[k].double() for d in inputs]
        if method == "slerp":
            v0, v1, t = xs[0], xs[1], 0.35
            n0, n1 = v0.norm(), v1.norm()
            n0, n1 = (n0 if n0 > 1e-8 else 1.0), (n1 if n1 > 1e-8 else 1.0)
            dot = float(((v0 / n0) * (v1 / n1)).sum().clamp(-1, 1))
            if abs(dot) > 0.9995:
                out[k] = (1 - t) * v0 + t * v1
                continue
            theta = math.acos(dot)
            s0, s1 = (math.sin((1 - t) * theta) / math.sin(theta),
                      math.sin(t * theta) / math.sin(theta))
            out[k] = s0 * v0 + s1 * v1
        elif method == "model_stock":
            d = [x - xs[0] for x in xs[1:]]
            cos = [float((a * b).sum() / max(float(a.norm() * b.norm()), 1e-6))
                   for i, a in enumerate(d) for b in d[i + 1:]]
            c = min(1.0, max(-1.0, sum(cos) / len(cos)))
            n = len(d)
            den = 1 + (n - 1) * c
            t = 0.0 if abs(den) < 1e-6 else n * c / den
            out[k] = t * sum(xs[1:]) / n + (1 - t) * xs[0]
        else:
            return None
    return out


def error_at_inputs(a: dict, ref: dict, inputs: list[dict]) -> float:
    """Largest |a − ref| in ulps of a's dtype at the inputs' magnitude."""
    return max(float(((a[k].double() - ref[k]).abs()
                      / input_ulp([x[k] for x in inputs], a[k].dtype)).max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", required=True, help="path to mergekit-yaml (own venv)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--keep", type=Path, help="keep the models and outputs in this folder")
    args = ap.parse_args()
    version = subprocess.run([str(Path(args.mergekit).parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True).stdout.strip()
    print(f"mergekit {version}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="sb-mk-") as tmp:
        root = args.keep or Path(tmp)
        paths = [root / "base", root / "ft1", root / "ft2"]
        if not all(p.exists() for p in paths):
            paths = make_models(root)
        inputs = [load(p) for p in paths]
        n = sum(t.numel() for t in inputs[0].values())
        print(f"{n} elements per model; ulps: at the output value / at the inputs' magnitude")
        print(f"{'method':18s} {'out dtype':9s} {'max ulps':>9s} {'differing':>10s} "
              f"{'max ulps at inputs':>18s} {'safebasin / mergekit vs fp64 exact':>36s}")
        for method in args.methods.split(","):
            for out_dtype in ("float32", "bfloat16"):
                cfg_path = root / f"{method}-{out_dtype}.yml"
                cfg_path.write_text(yaml.safe_dump(config(method, paths, out_dtype)))
                mk, sb = root / f"mk-{method}-{out_dtype}", root / f"sb-{method}-{out_dtype}"
                if not (mk / "config.json").exists():  # kept from an earlier run
                    subprocess.run([args.mergekit, str(cfg_path), str(mk), "--quiet",
                                    "--no-copy-tokenizer", "--no-write-model-card"],
                                   check=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                subprocess.run([sys.executable, "-m", "safebasin", "merge", "from-mergekit",
                                str(cfg_path), "-o", str(sb), "-q", "--overwrite"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                a, b = load(sb), load(mk)
                if set(a) != set(b):
                    raise SystemExit(f"{method}: tensor names differ: {sorted(set(a) ^ set(b))}")
                worst, share, scaled = compare(a, b, inputs)
                ref = exact(method, inputs[:2] if method == "slerp" else inputs)
                truth = ("" if ref is None else
                         f"{error_at_inputs(a, ref, inputs):17.3f} / "
                         f"{error_at_inputs(b, ref, inputs):.3f}")
                print(f"{method:18s} {out_dtype:9s} {worst:9d} {share:10.2e} {scaled:18.3f} "
                      f"{truth}")


if __name__ == "__main__":
    main()

"""Online EMA speed: one update on a SmolLM2-135M-shaped parameter set, and the callback's cost.

1. One `EMA.update` over SmolLM2-135M's tensors (vocab 49152, hidden 576, 30 layers,
   intermediate 1536, 9 heads, 3 KV heads, tied embeddings: 134.5M elements; random values,
   nothing downloaded) against `torch._foreach_lerp_` on the very same shadow and weights.
   Target: <= 1.1x. Also shown: the bf16-model and delta-shadow variants (no foreach baseline:
   `_foreach_lerp_` refuses mixed dtypes).
2. The per-step overhead of `EMACallback(every=1)` on the toy model's Trainer step (a Llama of
   hidden 64, 3 layers, 4 heads, intermediate 192, tied, vocab 512): the time spent inside the
   callback's `on_step_end` against the median training step. Target: <= 3%.

    python benchmarks/ema_speed.py [--repeats 7] [--steps 40] [--threads N] [--skip-trainer]

Median of `--repeats` runs after a warm-up, the baseline timed in the same loop (alternating).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safebasin import kernels  # noqa: E402
from safebasin.ema import EMA  # noqa: E402

SMOL = dict(vocab=49152, hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3)


def smollm2_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of SmolLM2-135M (tied lm_head, so no separate one)."""
    h, i, head = SMOL["hidden"], SMOL["intermediate"], SMOL["hidden"] // SMOL["heads"]
    kv = SMOL["kv_heads"] * head
    shapes = {"model.embed_tokens.weight": (SMOL["vocab"], h)}
    for n in range(SMOL["layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,)})
    shapes["model.norm.weight"] = (h,)
    return shapes


def parameter_set(dtype: torch.dtype) -> nn.Module:
    """A module holding random tensors under SmolLM2's names (no forward: only the EMA reads it)."""
    root = nn.Module()
    g = torch.Generator().manual_seed(0)
    for name, shape in smollm2_shapes().items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(
            (0.02 * torch.randn(shape, generator=g)).to(dtype)))
    return root


@torch.no_grad()
def _drift(model: nn.Module) -> None:
    for p in model.parameters():  # a cheap stand-in for an optimizer step
        p.mul_(1.0001)


def time_update(dtype: torch.dtype, kind: str, repeats: int, baseline: bool) -> dict:
    model = parameter_set(dtype)
    ema = EMA(model, eta=0.25, shadow=kind)
    shadow = ema.state_dict()["shadow"]
    params = dict(model.named_parameters())
    shadows, weights = list(shadow.values()), [params[n].detach() for n in shadow]
    timings: dict[str, list[float]] = {"ema_s": [], "foreach_s": [], "kernels_s": []}
    runs = {"ema_s": ema.update}
    if baseline:
        runs["foreach_s"] = lambda: torch._foreach_lerp_(shadows, weights, 0.25)
        # what the update costs in the kernels alone: one kernels.lerp_ per tensor
        runs["kernels_s"] = lambda: [kernels.lerp_(s, w, 0.25) for s, w in
                                     zip(shadows, weights, strict=True)]
    for r in range(repeats + 1):  # the first round warms up
        _drift(model)
        for key, run in runs.items():  # alternating, so drift in the machine hits all alike
            start = time.perf_counter()
            run()
            if r:
                timings[key].append(time.perf_counter() - start)
    numel = sum(w.numel() for w in weights)
    moved = numel * (3 * 4 if kind == "fp32" else 3 * 4 + 2 * dtype.itemsize)
    return {"numel": numel, "moved": moved,
            **{k: statistics.median(v) for k, v in timings.items() if v}}


def update_report(repeats: int) -> None:
    print("\n1. one EMA update, SmolLM2-135M-shaped tensors, CPU")
    print(f"{'model':>8} {'shadow':>6} {'EMA.update':>11} {'GB/s':>6} {'foreach_lerp_':>14} "
          f"{'ratio':>6} {'kernels.lerp_ loop':>19}")
    for dtype, kind in [(torch.float32, "fp32"), (torch.bfloat16, "fp32"),
                        (torch.float32, "delta"), (torch.bfloat16, "delta")]:
        r = time_update(dtype, kind, repeats, baseline=(dtype == torch.float32 and kind == "fp32"))
        base = (f"{r['foreach_s'] * 1e3:11.1f} ms {r['ema_s'] / r['foreach_s']:6.2f}x "
                f"{r['kernels_s'] * 1e3:16.1f} ms" if "foreach_s" in r
                else f"{'-':>14} {'-':>6} {'-':>19}")
        print(f"{str(dtype).removeprefix('torch.'):>8} {kind:>6} {r['ema_s'] * 1e3:8.1f} ms "
              f"{r['moved'] / r['ema_s'] / 1e9:6.2f} {base}")
    print(f"   ({r['numel'] / 1e6:.1f}M elements; GB/s counts the bytes an update must read "
          "and write)")


def _toy_trainer(out: str, steps: int, callbacks: list):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        tie_word_embeddings=True))
    ids = torch.randint(0, 512, (steps * 16, 40), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": x, "labels": x} for x in ids]
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=1e-3, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)


def callback_report(steps: int) -> None:
    from transformers import TrainerCallback

    from safebasin.ema import EMACallback

    class Clock(TrainerCallback):
        """Step times (on_step_begin to on_step_end, callbacks included)."""

        def __init__(self) -> None:
            self.t0, self.steps = 0.0, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.t0)

    class TimedEMA(EMACallback):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.spent: list[float] = []

        def on_step_end(self, *a, **kw):
            start = time.perf_counter()
            super().on_step_end(*a, **kw)
            self.spent.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        without, with_ema, spent = [], [], []
        for round_ in range(2):  # alternate to share the machine's drift
            clock = Clock()
            _toy_trainer(os.path.join(tmp, f"a{round_}"), steps, [clock]).train()
            without += clock.steps[2:]  # drop warm-up steps
            clock, ema = Clock(), TimedEMA(eta=0.25, every=1)
            # the clock runs last, so its step time includes the EMA update
            _toy_trainer(os.path.join(tmp, f"b{round_}"), steps, [ema, clock]).train()
            with_ema += clock.steps[2:]
            spent += ema.spent[2:]
    step, step_ema, cb = (statistics.median(x) for x in (without, with_ema, spent))
    print(f"\n2. EMACallback(every=1) on the toy model's Trainer step ({steps} steps x 2 runs, "
          "batch 16 x 40 tokens)")
    print(f"   training step without callback {step * 1e3:7.2f} ms (median)")
    print(f"   training step with callback    {step_ema * 1e3:7.2f} ms (median)")
    print(f"   inside EMACallback.on_step_end {cb * 1e3:7.3f} ms (median) = "
          f"{100 * cb / step:.2f}% of a step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").is_file() else platform.processor()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    update_report(args.repeats)
    if not args.skip_trainer:
        callback_report(args.steps)


if __name__ == "__main__":
    main()

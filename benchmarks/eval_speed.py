"""Keyword-ASR generation speed: prompts per second at batch 1 and batch 32, same run.

Batched greedy generation with left padding is what makes a 520-prompt AdvBench run affordable;
this measures the gain on the tests' tiny random chat model (hidden 32, 2 layers), where the
per-step Python overhead dominates, as it does for small models on a GPU. Target: >= 5x.

    python benchmarks/eval_speed.py [--prompts 64] [--new-tokens 32] [--repeats 3]

Prompts are the first N (at most 520) of AdvBench, the copy shipped in the package. Every
response runs to --new-tokens (a random model rarely emits EOS), so both settings generate the
same number of tokens.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.conftest builds the tiny chat model

from safebasin.chat import load_model, load_tokenizer  # noqa: E402
from safebasin.eval import GenerationSettings, generate_responses, load_prompts  # noqa: E402
from tests.conftest import make_chat_model  # noqa: E402


def _prompts(n: int) -> list[str]:
    return [p.text for p in load_prompts("advbench")[:n]]


def _rate(model, tokenizer, prompts: list[str], settings: GenerationSettings,
          repeats: int) -> tuple[float, list[float]]:
    generate_responses(model, tokenizer, prompts[:settings.batch_size], settings)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate_responses(model, tokenizer, prompts, settings)
        times.append(time.perf_counter() - start)
    return len(prompts) / statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import transformers

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
          f"torch threads; python {platform.python_version()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    prompts = _prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_chat_model(Path(tmp) / "model")
        model, tokenizer = load_model(folder, dtype="float32", device="cpu"), load_tokenizer(folder)
        print(f"model: tiny random Llama, {sum(p.numel() for p in model.parameters()):,} "
              f"parameters, fp32, CPU; {len(prompts)} AdvBench prompts, "
              f"{args.new_tokens} new tokens each, median of {args.repeats} runs")
        rates = {}
        for batch in (1, 32):
            settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=batch)
            rates[batch], times = _rate(model, tokenizer, prompts, settings, args.repeats)
            print(f"batch {batch:>2}: {rates[batch]:8.1f} prompts/s  "
                  f"(runs: {', '.join(f'{t:.2f}s' for t in times)})")
    print(f"speed-up batch 32 / batch 1: {rates[32] / rates[1]:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()

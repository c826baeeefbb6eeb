"""Keyword-ASR generation throughput in bf16 at batch 1 / 16 / 64 on a 1B-shaped random Llama.

    python benchmarks/gpu_generation.py [--prompts 64] [--new-tokens 64]   # on a CUDA machine
    python benchmarks/gpu_generation.py --smoke                            # tiny, on the CPU

The model has Llama-3.2-1B's shapes (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocab 128256, tied), random weights built on the device in bf16: nothing is
downloaded. The tokenizer is the tests' small byte-level BPE with a chat template (ids it
lacks decode to nothing), so prompts go through the same `generate_responses` path as
`safebasin eval asr`: chat template, left padding, length-sorted batches, greedy decoding.
A random model rarely emits EOS, so every response runs to --new-tokens. Batch 1 runs the
first quarter of the prompts (it is the slow one); each figure is the median of --repeats.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # tests.conftest: the tokenizer

from _gpu import pick_device  # noqa: E402

from safebasin.chat import load_tokenizer  # noqa: E402
from safebasin.eval import GenerationSettings, generate_responses  # noqa: E402
from tests.conftest import make_chat_model  # noqa: E402

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
TINY_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def _prompts(n: int) -> list[str]:
    return [f"Write a detailed tutorial on topic number {i} " + "with many steps " * (i % 4)
            for i in range(n)]


def _model(shape: dict, tokenizer, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=True, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # built on the GPU: a CPU init of 1.2 G parameters takes minutes
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU (seconds)")
    args = ap.parse_args()
    device, gpu = pick_device(args.smoke)
    import transformers

    print(f"generation on {device} (GPU {gpu}); python {platform.python_version()}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(make_chat_model(Path(tmp) / "tok"))
    model = _model(TINY_CONFIG if args.smoke else LLAMA_1B, tokenizer, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: random Llama, {params / 1e9:.2f} G parameters, bf16; {args.new_tokens} new "
          f"tokens per prompt; median of {args.repeats}")
    prompts = _prompts(args.prompts)
    for batch in (1, 16, 64):
        subset = prompts[: max(1, len(prompts) // 4)] if batch == 1 else prompts
        settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=batch)
        generate_responses(model, tokenizer, subset[:batch], settings)  # warm up
        times = []
        for _ in range(args.repeats):
            _sync(device)
            start = time.perf_counter()
            generate_responses(model, tokenizer, subset, settings)
            _sync(device)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        print(f"  batch {batch:>2}: {len(subset) / t:8.2f} prompts/s  "
              f"{len(subset) * args.new_tokens / t:9.1f} tokens/s  ({len(subset)} prompts, "
              f"runs {', '.join(f'{x:.2f}s' for x in times)})")


if __name__ == "__main__":
    main()

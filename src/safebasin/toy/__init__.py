"""The toy world: a seeded procedural chat world, its tokenizer, tiny Llama, θ₀ and utility.

Harmful and benign requests share sentence frames; θ₀ learns to refuse harmful content and
answer benign content; benign fine-tuning (new how-to objects and one-digit additions) raises
task accuracy and erodes refusals at aggressive learning rates. Everything is a normal HF folder
or chat JSONL file, so the same commands serve the toy world and Hub models.

Typical use (what `safebasin demo` and sweeps call):

    world = build_world("work/world", config=ToyWorldConfig(seed=0))
    train_theta0(world, "work/theta0", config=Theta0Config(seed=0))
    finetune("work/theta0", world.finetune_jsonl, "work/ft", config=FinetuneConfig(...))
    task_accuracy("work/ft", world).accuracy
    for prompt, obj in harmful_requests(world):  # held-out ASR prompts, with what they ask for
        judge_response(reply_to(prompt), requested=obj)  # refused / complied / off_target / ...

Configs, the generator and the world folder import without transformers; the tokenizer, model,
training and evaluation are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .config import Theta0Config, ToyModelConfig
from .files import ToyWorld, build_world, open_world
from .world import ChatExample, HarmfulRequest, ToyData, ToyWorldConfig, generate, task_answer

if TYPE_CHECKING:
    from .judge import (
        VERDICTS,
        JudgeSummary,
        harmful_requests,
        judge_response,
        summarize_judgements,
    )
    from .model import build_model
    from .tokenizer import CHAT_TEMPLATE, build_tokenizer
    from .train import train_theta0
    from .utility import TaskAccuracy, task_accuracy, task_accuracy_of

_LAZY = {
    "CHAT_TEMPLATE": ".tokenizer", "build_tokenizer": ".tokenizer",
    "build_model": ".model", "train_theta0": ".train",
    "TaskAccuracy": ".utility", "task_accuracy": ".utility", "task_accuracy_of": ".utility",
    # the judge imports safebasin.eval (and with it torch): loaded on first use too
    "VERDICTS": ".judge", "JudgeSummary": ".judge", "judge_response": ".judge",
    "summarize_judgements": ".judge", "harmful_requests": ".judge",
}

__all__ = [
    "ToyWorldConfig",
    "ToyData",
    "ChatExample",
    "HarmfulRequest",
    "generate",
    "task_answer",
    "ToyWorld",
    "build_world",
    "open_world",
    "ToyModelConfig",
    "Theta0Config",
    "CHAT_TEMPLATE",
    "build_tokenizer",
    "build_model",
    "train_theta0",
    "TaskAccuracy",
    "task_accuracy",
    "task_accuracy_of",
    "VERDICTS",
    "JudgeSummary",
    "judge_response",
    "summarize_judgements",
    "harmful_requests",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Utility in the toy world: exact accuracy on the held-out addition prompts.

A reply is correct when its first "the answer is N" has the right N (greedy decoding, so the
score is deterministic). θ₀ has never seen an addition, so its accuracy is near zero; benign
fine-tuning raises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..chat import GenerationSettings, generate_responses, load_model, load_tokenizer
from .files import ToyWorld, open_world
from .world import task_answer

# "the answer is 17 ." and EOS are 6 tokens; a little slack for replies that ramble first
_MAX_NEW_TOKENS = 12


@dataclass(frozen=True)
class TaskAccuracy:
    """How many held-out task prompts were answered exactly right, with the replies."""

    correct: int
    n: int
    responses: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def task_accuracy_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     world: ToyWorld, *, batch_size: int = 128) -> TaskAccuracy:
    """`task_accuracy` for a model already in memory."""
    prompts, answers = zip(*world.task_prompts(), strict=True)
    settings = GenerationSettings(max_new_tokens=_MAX_NEW_TOKENS, batch_size=batch_size)
    responses = [r.strip() for r in generate_responses(model, tokenizer, list(prompts), settings)]
    correct = sum(task_answer(r) == a for r, a in zip(responses, answers, strict=True))
    return TaskAccuracy(correct=correct, n=len(prompts), responses=tuple(responses))


def task_accuracy(model_dir: str | Path, world: ToyWorld | str | Path, *,
                  batch_size: int = 128) -> TaskAccuracy:
    """Exact accuracy of the model folder `model_dir` on `world`'s held-out task prompts.

    Example:
        >>> task_accuracy("ft", "world").accuracy  # doctest: +SKIP
        0.87

    Raises:
        CheckpointNotFoundError: `model_dir` has no safetensors weights.
        DataNotFoundError: `world` is not a built toy world.
    """
    from ..errors import CheckpointNotFoundError

    world = world if isinstance(world, ToyWorld) else open_world(world)
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not any(model_dir.glob("*.safetensors*")):
        raise CheckpointNotFoundError(f"{str(model_dir)!r} is not a model folder with "
                                      "safetensors weights")
    model, tokenizer = load_model(model_dir, device="cpu"), load_tokenizer(model_dir)
    return task_accuracy_of(model, tokenizer, world, batch_size=batch_size)

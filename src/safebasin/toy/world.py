"""The toy world's data: a seeded procedural generator of chat examples and held-out prompts.

Pure and deterministic: `generate(config)` returns the same `ToyData` for the same config, on
any machine (it uses only `random.Random(seed)`, whose `shuffle`/`sample`/`choice` are stable
across Python versions). Files are written by `safebasin.toy.files`.

The world (v2), following shared/notes/toy-world.md:

- θ₀'s data (`align`): each harmful object in every training frame → a refusal; each of θ₀'s
  benign objects in every training frame → a helpful, procedural answer (its fixed
  three-material recipe); counting and neighbours ("what comes after 6 ?" → "the answer is
  7 ."), so numbers and the answer format are known but addition is not. Frames are shared,
  so refusing must come from the content. Each request comes plain and with a random adjective
  ("a small bomb"), so copying the object into the reply is a general skill.
- Fine-tuning data (`finetune`): *new* benign objects in every training frame, answered
  helpfully, plus one-digit additions ("what is 3 plus 4 ?" → "the answer is 7 .") in all task
  frames but one per pair. Helpful compliance is what erodes refusals; addition accuracy is the
  utility.
- Held-out splits, all in the evaluation frames (`lexicon.EVAL_FRAMES`), which no training
  example of either set uses: every harmful object plain and with adjectives
  (`harmful_heldout`, for ASR, each with the object it asks for); θ₀'s benign objects
  (`benign_heldout`, for over-refusal); every addition pair in its held-out task frame
  (`task_heldout`, for utility).
- In-distribution split (`harmful_train_frames`): every harmful object in every *training*
  frame, with an adjective that the alignment data never paired with that object and frame, so
  the prompt is new but its phrasing is trained: ASR there is the in-distribution number.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UsageError
from . import lexicon


@dataclass(frozen=True)
class ToyWorldConfig:
    """What varies between toy worlds; everything else is fixed by `lexicon`.

    Args:
        seed: picks the θ₀/fine-tuning split of benign objects, recipes, adjectives, refusal
            and answer variants, the held-out frame of each addition pair, and the file order.
        n_finetune_objects: benign objects kept out of θ₀'s data for the fine-tuning set.
        variants: examples per (object, frame): the plain object, then random adjectives.
    """

    seed: int = 0
    # a dozen new objects in 10 frames: about a quarter of the fine-tuning set is helpful
    # how-to compliance, the rest additions (the prototype's mix)
    n_finetune_objects: int = 12
    variants: int = 2  # 2: every request seen plain and with one adjective

    def __post_init__(self) -> None:
        n_benign = len(lexicon.BENIGN_OBJECTS)
        if not 1 <= self.n_finetune_objects <= n_benign - 1:
            raise UsageError(f"n_finetune_objects must be in 1..{n_benign - 1}, "
                             f"got {self.n_finetune_objects}")
        if self.variants < 1:
            raise UsageError(f"variants must be >= 1, got {self.variants}")


@dataclass(frozen=True)
class ChatExample:
    """One user prompt and the assistant's reply."""

    prompt: str
    response: str

    def messages(self) -> list[dict[str, str]]:
        """The example as chat messages, the format of `safebasin finetune --data`."""
        return [{"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.response}]


@dataclass(frozen=True)
class HarmfulRequest:
    """A harmful prompt and the object it asks for (the plain object, without adjective)."""

    prompt: str
    object: str


@dataclass(frozen=True)
class ToyData:
    """All of one world's examples and held-out prompts, in file order."""

    align: tuple[ChatExample, ...]
    finetune: tuple[ChatExample, ...]
    harmful_heldout: tuple[HarmfulRequest, ...]
    harmful_train_frames: tuple[HarmfulRequest, ...]
    benign_heldout: tuple[ChatExample, ...]
    benign_objects: tuple[str, ...]  # the object each `benign_heldout` example asks for
    task_heldout: tuple[ChatExample, ...]


_ANSWER_RE = re.compile(r"the answer is (\d+)")


def task_answer(text: str) -> int | None:
    """The number in the first "the answer is N" of `text`, or None: how utility is checked."""
    m = _ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


Recipe = tuple[str, str, str]


def _adjectives(rng: random.Random, variants: int) -> list[str | None]:
    """The plain object first, then `variants - 1` distinct random adjectives."""
    return [None, *rng.sample(lexicon.ADJECTIVES, variants - 1)]


def _helpful(rng: random.Random, obj: str, recipe: Recipe) -> str:
    m1, m2, m3 = recipe
    return rng.choice(lexicon.ANSWER_TEMPLATES).format(o=obj, m1=m1, m2=m2, m3=m3)


# (object, frame, adjective or None): one request before its reply is chosen
Phrasing = tuple[str, str, str | None]


def _phrasings(rng: random.Random, objects: Sequence[str], frames: Sequence[str],
               variants: int) -> list[Phrasing]:
    """Each object in each frame, `variants` times (plain, then with adjectives)."""
    return [(obj, frame, adj) for obj in objects for frame in frames
            for adj in _adjectives(rng, variants)]


def _prompt(phrasing: Phrasing) -> str:
    obj, frame, adj = phrasing
    return frame.format(o=lexicon.with_adjective(obj, adj))


def _examples(phrasings: Sequence[Phrasing], reply) -> list[ChatExample]:
    """Each phrasing's prompt with `reply(object, phrase)` (all adjectives drawn before)."""
    return [ChatExample(_prompt(p), reply(p[0], lexicon.with_adjective(p[0], p[2])))
            for p in phrasings]


def _requests(rng: random.Random, objects: Sequence[str], frames: Sequence[str], variants: int,
              reply) -> list[ChatExample]:
    """Each object in each frame, `variants` times, with `reply(object, phrase)`."""
    return _examples(_phrasings(rng, objects, frames, variants), reply)


def _unseen_adjective(rng: random.Random, trained: Sequence[Phrasing]) -> list[Phrasing]:
    """Each trained (object, frame) again, with an adjective it was never trained with."""
    used: dict[tuple[str, str], set[str | None]] = {}
    for obj, frame, adj in trained:
        used.setdefault((obj, frame), set()).add(adj)
    return [(obj, frame, rng.choice([a for a in lexicon.ADJECTIVES if a not in adjs]))
            for (obj, frame), adjs in used.items()]


def _numbers() -> list[ChatExample]:
    """θ₀'s numeric skills: counting, and the neighbours of each number."""
    top = max(lexicon.NUMBERS)
    out = []
    for a in lexicon.NUMBERS:
        for b in range(a + 1, min(a + lexicon.COUNT_MAX_SPAN, top) + 1):
            reply = " ".join(str(n) for n in range(a, b + 1)) + " ."
            out += [ChatExample(f.format(a=a, b=b), reply) for f in lexicon.COUNT_FRAMES]
        for frame, step in lexicon.NEIGHBOUR_FRAMES:
            if 0 <= a + step <= top:
                out.append(ChatExample(frame.format(n=a), lexicon.TASK_ANSWER.format(s=a + step)))
    return out


def _additions(rng: random.Random) -> tuple[list[ChatExample], list[ChatExample]]:
    """(training, held-out) additions: each pair in all task frames but one, held out."""
    train, held = [], []
    for a in lexicon.DIGITS:
        for b in lexicon.DIGITS:
            k = rng.randrange(len(lexicon.TASK_FRAMES))
            reply = lexicon.TASK_ANSWER.format(s=a + b)
            for i, frame in enumerate(lexicon.TASK_FRAMES):
                (held if i == k else train).append(ChatExample(frame.format(a=a, b=b), reply))
    return train, held


def generate(config: ToyWorldConfig = ToyWorldConfig()) -> ToyData:
    """Generate one toy world's data; same config, same data.

    Example:
        >>> data = generate(ToyWorldConfig(seed=0))
        >>> data.task_heldout[0].response
        'the answer is 0 .'
    """
    rng = random.Random(config.seed)
    benign = list(lexicon.BENIGN_OBJECTS)
    rng.shuffle(benign)
    k = config.n_finetune_objects
    new_objects, base_objects = benign[:k], benign[k:]
    recipes: dict[str, Recipe] = {o: tuple(rng.sample(lexicon.MATERIALS, 3))
                                  for o in sorted(benign)}

    def helpful(obj: str, phrase: str) -> str:
        return _helpful(rng, phrase, recipes[obj])

    def refusal(obj: str, phrase: str) -> str:
        return rng.choice(lexicon.REFUSAL_TEMPLATES).format(o=phrase)

    v = config.variants
    refused = _phrasings(rng, lexicon.HARMFUL_OBJECTS, lexicon.TRAIN_FRAMES, v)
    align = (_examples(refused, refusal)
             + _requests(rng, base_objects, lexicon.TRAIN_FRAMES, v, helpful) + _numbers())
    benign_heldout = _requests(rng, base_objects, lexicon.EVAL_FRAMES, 1, helpful)
    task_train, task_heldout = _additions(rng)
    finetune = _requests(rng, new_objects, lexicon.TRAIN_FRAMES, v, helpful) + task_train
    rng.shuffle(align)
    rng.shuffle(finetune)
    heldout = _phrasings(rng, lexicon.HARMFUL_OBJECTS, lexicon.EVAL_FRAMES, v)
    train_frames = _unseen_adjective(rng, refused)
    return ToyData(align=tuple(align), finetune=tuple(finetune),
                   harmful_heldout=tuple(HarmfulRequest(_prompt(p), p[0]) for p in heldout),
                   harmful_train_frames=tuple(HarmfulRequest(_prompt(p), p[0])
                                              for p in train_frames),
                   benign_heldout=tuple(benign_heldout),
                   benign_objects=tuple(o for o in base_objects for _ in lexicon.EVAL_FRAMES),
                   task_heldout=tuple(task_heldout))

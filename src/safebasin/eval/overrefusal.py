"""Over-refusal: how often a model refuses XSTest's *safe* prompts ("How do I kill a Python
process?"). A merge that buys safety by refusing everything shows up here.

Refusal is XSTest's own string match (the ``xstest`` keyword rule: the lower-cased, stripped
response starts with a refusal prefix), which undercounts partial refusals, as its authors note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..chat.generation import DEFAULT_GENERATION, GenerationSettings
from ..errors import EvaluationError
from .asr import ResponseRecord, judge_responses
from .keywords import BUILTIN_RULES
from .prompts import Prompt, load_prompts
from .stats import wilson_interval

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_xstest_safe(path: str | Path, *, limit: int | None = None, seed: int = 0) -> list[Prompt]:
    """XSTest's safe prompts (``label == "safe"``, column ``prompt``) from its CSV; ``path``
    ``"xstest"`` is the copy shipped with safebasin.

    Raises:
        EvaluationError: missing file, no ``prompt`` or ``label`` column, no safe rows.
    """
    return load_prompts(path, column="prompt", where={"label": "safe"}, limit=limit, seed=seed)


@dataclass(frozen=True)
class OverRefusalSummary:
    """Refusal rate on safe prompts with its Wilson 95% interval."""

    over_refusal_rate: float
    n: int
    refusals: int
    wilson_low: float
    wilson_high: float
    degenerate: int
    degenerate_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_over_refusal(records: Sequence[ResponseRecord]) -> OverRefusalSummary:
    """Counts and rates of ``records``.

    Raises:
        EvaluationError: no records.
    """
    n = len(records)
    if n == 0:
        raise EvaluationError("no responses to summarise")
    refusals = sum(r.refused for r in records)
    degenerate = sum(r.degenerate for r in records)
    low, high = wilson_interval(refusals, n)
    return OverRefusalSummary(refusals / n, n, refusals, low, high, degenerate, degenerate / n)


@dataclass(frozen=True)
class OverRefusalResult:
    records: list[ResponseRecord]
    summary: OverRefusalSummary


def evaluate_over_refusal(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Prompt],
    *,
    normalize_quotes: bool = False,
    generation: GenerationSettings = DEFAULT_GENERATION,
    on_records: Callable[[list[ResponseRecord]], None] | None = None,
) -> OverRefusalResult:
    """Rate of refusals (``xstest`` rule) on safe prompts, e.g. from `load_xstest_safe`.

    Raises:
        EvaluationError: no prompts, no chat template.
    """
    records = judge_responses(model, tokenizer, prompts, rule=BUILTIN_RULES["xstest"],
                              normalize_quotes=normalize_quotes, generation=generation,
                              on_records=on_records)
    return OverRefusalResult(records, summarize_over_refusal(records))


__all__ = ["load_xstest_safe", "OverRefusalSummary", "OverRefusalResult",
           "evaluate_over_refusal", "summarize_over_refusal"]

"""Evaluation: keyword ASR, utility (chat loss, XSTest over-refusal) and distances.

Light on import: the submodules import transformers only inside functions, and
`import safebasin.eval` pulls in torch but neither transformers nor huggingface_hub.

    from safebasin.eval import evaluate_asr, match
    result = evaluate_asr(model, tokenizer, prompts, keywords="qi")
    result.summary.asr, result.summary.wilson_low, result.summary.degenerate_rate
"""

from __future__ import annotations

from ..chat.generation import GenerationSettings, generate_responses
from ..summary import EvalSummary
from .asr import AsrResult, AsrSummary, ResponseRecord, evaluate_asr, summarize_asr
from .degenerate import is_degenerate
from .keywords import GCG, QI, XSTEST_PREFIXES, KeywordRule, load_rule, match
from .overrefusal import (
    OverRefusalResult,
    OverRefusalSummary,
    evaluate_over_refusal,
    load_xstest_safe,
)
from .prompts import Prompt, load_prompts
from .runs import PromptSpec, run_asr, run_utility
from .stats import wilson_interval
from .utility import (
    ConversationLoss,
    UtilityLossResult,
    UtilitySummary,
    evaluate_utility_loss,
    load_conversations,
)

# safebasin.eval.distance (the lead's module) is imported by its own name; add its exports here.

__all__ = [
    "AsrResult",
    "AsrSummary",
    "EvalSummary",
    "ConversationLoss",
    "GCG",
    "GenerationSettings",
    "KeywordRule",
    "OverRefusalResult",
    "OverRefusalSummary",
    "Prompt",
    "PromptSpec",
    "QI",
    "ResponseRecord",
    "UtilityLossResult",
    "UtilitySummary",
    "XSTEST_PREFIXES",
    "evaluate_asr",
    "evaluate_over_refusal",
    "evaluate_utility_loss",
    "generate_responses",
    "is_degenerate",
    "load_conversations",
    "load_prompts",
    "load_rule",
    "load_xstest_safe",
    "match",
    "run_asr",
    "run_utility",
    "summarize_asr",
    "wilson_interval",
]

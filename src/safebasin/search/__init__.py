"""Searches over merges, each point a cached merge plus its keyword-ASR evaluation.

`tune` finds the largest coefficient whose merge keeps ASR under a limit and writes a merge
`safebasin push` accepts; `landscape` evaluates the safety basin along the fine-tune and across
a second direction (Peng et al. 2024). Both share one point cache (`points`), so the lerp points
of a landscape are the ones a lerp tune evaluates. Importing this package is light; the
functions import torch and transformers when called.

    from safebasin.search import tune, landscape
    result = tune("llama-chat", "llama-ft", "llama-safe", max_asr=0.05)
    result.chosen.coefficient, result.rows
"""

from __future__ import annotations

__all__ = [
    "EvalSpec",
    "FrontierPoint",
    "GridPoint",
    "KeywordEvaluator",
    "LandscapeResult",
    "TuneResult",
    "landscape",
    "tune",
]

_WHERE = {"EvalSpec": "points", "KeywordEvaluator": "points", "FrontierPoint": "tuning",
          "TuneResult": "tuning", "tune": "tuning", "GridPoint": "basin",
          "LandscapeResult": "basin", "landscape": "basin"}


def __getattr__(name: str):
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

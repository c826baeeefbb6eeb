"""Sweeps: grids of fine-tunes, matched-distance merges and evaluations, cached, with reports.

Sits on top of `baselines` (fine-tuning), `ema` (online EMA), `merge` (task arithmetic, L2
projection, offline EMA) and `eval` (keyword ASR). The config schema and its validation import
without transformers; running a sweep imports it on first use.

    from safebasin.sweep import load_config, sweep
    outcome = sweep(load_config("study.yaml"), "results/study", workdir="/tmp/study-work")
    outcome.files["asr_vs_distance.png"]
"""

from __future__ import annotations

from .config import (
    MERGES,
    EmaSpec,
    EvalConfig,
    Experiment,
    L2Match,
    ModelSource,
    SweepConfig,
    ToySource,
    load_config,
    parse_config,
)
from .rows import ROW_FIELDS, Row

__all__ = [
    "MERGES",
    "EmaSpec",
    "EvalConfig",
    "Experiment",
    "L2Match",
    "ModelSource",
    "SweepConfig",
    "ToySource",
    "load_config",
    "parse_config",
    "sweep",
    "SweepOutcome",
    "ROW_FIELDS",
    "Row",
]


def __getattr__(name: str):
    if name in ("sweep", "SweepOutcome"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""RESTA: restore safety by adding the safety vector back to a fine-tune (arXiv 2402.11746).

Bhardwaj et al. 2024 ("Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned
Language Models through Task Arithmetic") call θ₀ − θ_unaligned the *safety vector*: what
alignment added to the model before it (or what a harmful fine-tune of the aligned model
removed). RESTA adds it back, scaled, to the fine-tune:

    θ = θ_ft + β·(θ₀ − θ_unaligned)

with θ₀ the aligned model (BASE), θ_ft its fine-tune and θ_unaligned the model before alignment
or a harmfully fine-tuned copy of θ₀. It is a weighted sum with coefficients (β, 1, −β) that sum
to 1, so it runs on the one executor in delta form θ₀ + 1·(θ_ft − θ₀) − β·(θ_un − θ₀): β = 0
returns θ_ft bit for bit. (The paper also applies DARE to the fine-tune's delta first; that is
`safebasin merge dare-linear`, run before this.)
"""

from __future__ import annotations

import math

from ..errors import UsageError
from .api import PathLike, Planned, run_merge
from .plan import MergeOptions

RESTA_FORMULA = "θ = θ_ft + β·(θ₀ − θ_unaligned)"
SAFETY_ROLES = ("base", "finetuned", "unaligned")


def resta_lambdas(beta: float) -> list[float]:
    """Delta-form λ of (θ_ft, θ_unaligned) for θ_ft + β(θ₀ − θ_unaligned): (1, −β).

    Raises:
        UsageError: β not finite.
    """
    if not math.isfinite(beta):
        raise UsageError(f"`beta` must be a finite number, got {beta}")
    return [1.0, -float(beta)]


def resta(base: PathLike, finetuned: PathLike, unaligned: PathLike, out: PathLike, *,
          beta: float, options: MergeOptions | None = None) -> dict:
    """θ = θ_ft + β·(θ₀ − θ_unaligned), streamed into `out`; returns the recipe written there.

    Args:
        base: θ₀, the aligned model (its config, tokenizer and dtype are the output's).
        finetuned: θ_ft, a fine-tune of θ₀ (a model folder, file, Hub id or LoRA adapter).
        unaligned: θ_unaligned, the model before alignment or a harmful fine-tune of θ₀.
        beta: scale of the safety vector; 0 returns θ_ft. The paper uses about 0.5.

    Raises:
        UsageError: β not finite. Checkpoint errors as every merge (names, shapes, paths).

    Example:
        >>> resta("llama-2-chat", "chat-ft", "llama-2-base", "chat-ft-resta",
        ...       beta=0.5)  # doctest: +SKIP
    """
    lambdas = resta_lambdas(beta)
    planned = Planned(lambdas, formula=RESTA_FORMULA, cli_args=["--beta", repr(float(beta))])
    return run_merge("resta", {"beta": float(beta)}, [base, finetuned, unaligned], out,
                     options or MergeOptions(), lambda _: planned, roles=list(SAFETY_ROLES))


__all__ = ["RESTA_FORMULA", "resta", "resta_lambdas"]

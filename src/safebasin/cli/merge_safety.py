"""`safebasin merge` safety merges: RESTA and Safe LoRA.

Both take BASE FT UNALIGNED as one variadic argument so that a missing model is one clear line
(exit 2) rather than click's usage block.
"""

from __future__ import annotations

import click

from ..errors import UsageError
from ._common import merge_options
from .merge import merge

_MODELS = "BASE FT UNALIGNED"


def _three(models: tuple[str, ...], method: str) -> tuple[str, str, str]:
    if len(models) != 3:
        raise UsageError(f"{method} needs three models, {_MODELS} (aligned θ₀, its fine-tune, "
                         f"the model before alignment); got {len(models)}")
    return models[0], models[1], models[2]


@merge.command("resta")
@click.argument("models", nargs=-1, metavar=_MODELS)
@click.option("--beta", type=float, required=True, metavar="B",
              help="Scale of the safety vector: θ = θ_ft + β(θ₀ − θ_unaligned).")
@merge_options
def merge_resta(models, beta, out, options):
    """RESTA: add the safety vector BASE − UNALIGNED back to FT (arXiv 2402.11746)."""
    from .. import merge as m

    base, ft, unaligned = _three(models, "resta")
    return m.resta(base, ft, unaligned, out, beta=beta, options=options)


@merge.command("safe-lora")
@click.argument("models", nargs=-1, metavar=_MODELS)
@click.option("--threshold", "tau", type=float, metavar="TAU",
              help="Project every layer whose cos(CΔW, ΔW) is below TAU, in [-1, 1].")
@click.option("--num-layers", type=int, metavar="N",
              help="Project the N layers with the lowest cosine.")
@click.option("--projector", type=click.Choice(["published", "orthogonal"]), default="published",
              show_default=True, help="C = VVᵀ/‖V‖_F (published) or V(VᵀV)⁺Vᵀ (orthogonal).")
@merge_options
def merge_safe_lora(models, tau, num_layers, projector, out, options):
    """Safe LoRA: project FT's update onto the alignment subspace BASE − UNALIGNED
    (arXiv 2405.16833), layer by layer. FT may be a PEFT LoRA adapter folder."""
    from .. import merge as m

    base, ft, unaligned = _three(models, "safe-lora")
    return m.safe_lora(base, ft, unaligned, out, threshold=tau, num_layers=num_layers,
                       projector=projector, options=options)

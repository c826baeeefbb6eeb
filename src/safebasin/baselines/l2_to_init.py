"""L2 regularisation toward θ₀: the training-time baseline at matched distance.

The fine-tuning loss becomes  L(θ) + C·‖θ − θ₀‖²,  summed over every trainable parameter, with
θ₀ the weights at the start of training kept as a frozen fp32 copy (in bf16 the small
differences θ − θ₀ would round away). Unlike weight decay, which pulls toward zero, this pulls
toward the aligned model; a larger C ends training closer to θ₀.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer

from ..errors import UsageError


class L2ToInit:
    """The penalty C·‖θ − θ₀‖² against a frozen fp32 snapshot of a model's trainable weights.

    Parameters are paired by name (never by position); tied weights count once, as
    `named_parameters` lists them once.
    """

    def __init__(self, model: nn.Module, coefficient: float) -> None:
        if not coefficient >= 0:  # also rejects NaN
            raise UsageError(f"the L2-to-init coefficient must be >= 0, got {coefficient}")
        self.coefficient = float(coefficient)
        self.theta0 = {name: p.detach().to(torch.float32).clone()
                       for name, p in model.named_parameters() if p.requires_grad}

    def _paired(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if params.keys() != self.theta0.keys():
            diff = sorted(params.keys() ^ self.theta0.keys())
            raise ValueError(f"{len(diff)} trainable parameters differ from the θ₀ snapshot, "
                             f"first {diff[0]!r}")
        return [(params[n], t0) for n, t0 in self.theta0.items()]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """C·‖θ − θ₀‖² as a differentiable fp32 scalar."""
        total = sum(((p.float() - t0) ** 2).sum() for p, t0 in self._paired(model))
        return self.coefficient * total

    @torch.no_grad()
    def distance(self, model: nn.Module) -> float:
        """‖θ − θ₀‖ in float64, for reporting."""
        total = sum(((p.double() - t0.double()) ** 2).sum() for p, t0 in self._paired(model))
        return float(total) ** 0.5


class L2ToInitTrainer(Trainer):
    """A `Trainer` whose training loss adds C·‖θ − θ₀‖² once per optimizer step.

    With gradient accumulation the penalty is split over the micro-batches exactly as the
    data loss is, so the gradient of one optimizer step is ∇L + 2C(θ − θ₀) whatever the
    accumulation; gradient clipping then sees both, as it would for any loss term.
    """

    def __init__(self, *args, l2_to_init: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.l2 = L2ToInit(self.model, l2_to_init)

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        # mirrors Trainer.training_step: a loss already normalised over the whole accumulated
        # batch is used as is, otherwise the Trainer divides it by the accumulation steps
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        if not model.training:
            return out
        loss, outputs = out if return_outputs else (out, None)
        penalty = self.l2.penalty(self.accelerator.unwrap_model(model))
        if self._loss_scaled_for_ga(num_items_in_batch):
            penalty = penalty / self.current_gradient_accumulation_steps
        loss = loss + penalty.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

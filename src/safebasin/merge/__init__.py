"""Merges between θ₀ and fine-tuned checkpoints: planners and one streaming executor."""

from .api import ema, expand_trajectory, l2_project, lerp, task_arithmetic
from .coefficients import (
                           ema_coefficients,
                           l2_global_coefficients,
                           l2_per_tensor_coefficients,
                           lerp_coefficients,
                           task_arithmetic_coefficients,
)
from .distance import Distances, distance, tensor_distances
from .executor import RECIPE_FILE, execute
from .plan import MergeOptions, TensorPlan, align, build_plan

__all__ = [
    "RECIPE_FILE",
    "Distances",
    "MergeOptions",
    "TensorPlan",
    "align",
    "build_plan",
    "distance",
    "ema",
    "ema_coefficients",
    "execute",
    "expand_trajectory",
    "l2_global_coefficients",
    "l2_per_tensor_coefficients",
    "l2_project",
    "lerp",
    "lerp_coefficients",
    "task_arithmetic",
    "task_arithmetic_coefficients",
    "tensor_distances",
]

"""Merges between θ₀ and fine-tuned checkpoints: planners and one streaming executor."""

from .api import Planned, ema, expand_trajectory, l2_project, lerp, run_merge, task_arithmetic
from .coefficients import (
                           ema_anchor_weight,
                           ema_coefficients,
                           l2_global_coefficients,
                           l2_per_tensor_coefficients,
                           lerp_coefficients,
                           task_arithmetic_coefficients,
)
from .distance import Distances, distance, distance_to_base, tensor_distances
from .ema_profile import power_ema_coefficients, sigma_rel_to_gamma
from .executor import RECIPE_FILE, execute
from .mergekit import from_mergekit
from .methods import (
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    model_stock,
    slerp,
    sparse_merge,
    ties,
)
from .ops import TensorOp, TensorStatistic, deltas
from .plan import MergeOptions, TensorPlan, align, build_plan
from .safe_lora import safe_lora
from .safety import resta
from .statistics import collect_statistics

__all__ = [
    "from_mergekit",
    "breadcrumbs",
    "breadcrumbs_ties",
    "dare_linear",
    "dare_ties",
    "model_stock",
    "slerp",
    "sparse_merge",
    "ties",
    "RECIPE_FILE",
    "power_ema_coefficients",
    "resta",
    "safe_lora",
    "sigma_rel_to_gamma",
    "Distances",
    "MergeOptions",
    "Planned",
    "TensorOp",
    "TensorPlan",
    "TensorStatistic",
    "align",
    "build_plan",
    "collect_statistics",
    "deltas",
    "distance",
    "distance_to_base",
    "ema",
    "ema_anchor_weight",
    "ema_coefficients",
    "execute",
    "expand_trajectory",
    "l2_global_coefficients",
    "l2_per_tensor_coefficients",
    "l2_project",
    "lerp",
    "lerp_coefficients",
    "run_merge",
    "task_arithmetic",
    "task_arithmetic_coefficients",
    "tensor_distances",
]

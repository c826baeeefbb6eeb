"""EDM2's power-function EMA profile as weights over a saved trajectory (pure numbers, no I/O).

Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models",
arXiv 2312.02696, sec. 3 and appendix C) average the weights θ(τ) of a run that has reached step
t with the power-function profile

    θ̂(t) = ∫₀ᵗ p(τ) θ(τ) dτ,     p(τ) = (γ+1)·τ^γ / t^(γ+1)  on 0 < τ ≤ t,  γ > −1,

whose width is given as a *relative standard deviation* σ_rel = std(p)/t. The moments of
p are E[τ] = t(γ+1)/(γ+2) and E[τ²] = t²(γ+1)/(γ+3), so

    σ_rel² = (γ+1) / ((γ+2)²(γ+3)),

which rises from 0 at γ = −1 to its largest value σ_max ≈ 0.3003 at γ* = (√5−3)/2 and then
falls like 1/γ. A σ_rel in (0, σ_max] has one γ ≥ γ* (the larger root of the cubic
γ³ + 7γ² + (16 − 1/σ²)γ + (12 − 1/σ²) = 0); that is the profile EDM2 means.

Discretisation (our choice; the paper's post-hoc method solves a least-squares problem over
several stored EMAs instead, which a plain trajectory does not have): the weights are only known
at the saved steps 0 = t₀ ≤ t₁ < … < t_K (θ₀ = BASE at step 0), so θ(τ) is taken as the
piecewise-linear interpolation between them and the integral is computed exactly for it
("product integration"). Each saved θₖ then gets the profile mass of its hat function,

    cₖ = ∫ p(τ)·φₖ(τ) dτ,   φₖ the linear hat that is 1 at tₖ and 0 at its neighbours,

in closed form from the moments of τ^γ on each interval. Why not p(tₖ) normalised: that ignores
the spacing of the steps (checkpoints saved densely late in a run would be over-weighted) and
gives BASE no weight for γ > 0, while the hats sum to 1 everywhere on [0, t_K], so the weights
sum to 1 exactly, honour uneven spacing, and reproduce the continuous average exactly when the
trajectory is linear between saves. They are one weighted sum: one streaming pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError

# the γ where σ_rel(γ) peaks; σ_rel decreases from here on, which is the branch EDM2 uses
GAMMA_AT_PEAK = (math.sqrt(5.0) - 3.0) / 2.0
_STEP_NAME = re.compile(r"^(?:checkpoint|step)-(\d+)$")


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = √((γ+1)/((γ+2)²(γ+3))): the profile's std over its length, for γ > −1."""
    if not (math.isfinite(gamma) and gamma > -1.0):
        raise UsageError(f"gamma must be a finite number > -1, got {gamma}")
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


SIGMA_REL_MAX = gamma_to_sigma_rel(GAMMA_AT_PEAK)  # ≈ 0.3003


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ γ* of the power profile whose relative width is `sigma_rel`.

    Bisection on the decreasing branch [γ*, 1/σ_rel] (σ_rel(γ) < 1/(γ+2), so 1/σ_rel is
    already past the root), in float64 to the last bit.

    Raises:
        UsageError: sigma_rel not in (0, σ_max ≈ 0.3003].
    """
    if not (math.isfinite(sigma_rel) and 0.0 < sigma_rel <= SIGMA_REL_MAX):
        raise UsageError(f"`sigma_rel` must be in (0, {SIGMA_REL_MAX:.4f}], got {sigma_rel} "
                         "(EDM2 uses 0.05-0.2; larger is not a power-function profile)")
    lo, hi = GAMMA_AT_PEAK, max(1.0 / sigma_rel, GAMMA_AT_PEAK)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if gamma_to_sigma_rel(mid) > sigma_rel:
            lo = mid
        else:
            hi = mid
    return lo if abs(gamma_to_sigma_rel(lo) - sigma_rel) <= abs(
        gamma_to_sigma_rel(hi) - sigma_rel) else hi


def _hat_masses(a: float, b: float, gamma: float) -> tuple[float, float]:
    """Profile mass (γ+1)s^γ on [a, b] ⊂ [0, 1] shared by the two ends of a linear piece.

    With I₀ = ∫ p = b^(γ+1) − a^(γ+1) and I₁ = ∫ s·p = (γ+1)/(γ+2)·(b^(γ+2) − a^(γ+2)):
    end b gets ∫ p·(s−a)/(b−a) = (I₁ − a·I₀)/(b−a), end a gets (b·I₀ − I₁)/(b−a).
    """
    n = gamma + 1.0
    i0 = b**n - a**n
    i1 = n / (n + 1.0) * (b ** (n + 1.0) - a ** (n + 1.0))
    width = b - a
    return max((b * i0 - i1) / width, 0.0), max((i1 - a * i0) / width, 0.0)


def _check_steps(steps: Sequence[float]) -> list[float]:
    if not steps:
        raise UsageError("the power-function EMA needs at least one checkpoint after BASE")
    out = [float(s) for s in steps]
    bad = [s for s in out if not (math.isfinite(s) and s >= 0)]
    if bad:
        raise UsageError(f"checkpoint steps must be finite numbers >= 0, got {bad[0]}")
    if any(b <= a for a, b in zip(out, out[1:], strict=False)) or out[-1] <= 0:
        raise UsageError(f"checkpoint steps must increase strictly and end above 0, got {out}")
    return out


def power_ema_coefficients(sigma_rel: float, steps: Sequence[float]) -> list[float]:
    """Weights [c₀, c₁, …, c_K] of θ₀ (step 0) and checkpoints at `steps` (see module doc).

    Args:
        sigma_rel: EDM2's relative width of the profile, in (0, σ_max ≈ 0.3003].
        steps: training steps of θ₁..θ_K, strictly increasing, ≥ 0 (a first step of 0 means
            θ₁ is a checkpoint at step 0 and θ₀ then gets weight 0).

    Returns:
        K+1 non-negative floats that sum to 1 (renormalised with fsum against rounding).

    Raises:
        UsageError: sigma_rel out of range, steps empty, negative, or not increasing.

    >>> [round(c, 6) for c in power_ema_coefficients(0.1, [1, 2])]
    [0.000457, 0.222871, 0.776673]
    """
    gamma = sigma_rel_to_gamma(sigma_rel)
    ts = _check_steps(steps)
    nodes = [0.0, *(t / ts[-1] for t in ts)]  # normalised by t: the profile only sees τ/t
    weights = [0.0] * len(nodes)
    for k in range(1, len(nodes)):
        a, b = nodes[k - 1], nodes[k]
        if b > a:  # a checkpoint at step 0 makes the first piece empty
            wa, wb = _hat_masses(a, b, gamma)
            weights[k - 1] += wa
            weights[k] += wb
    total = math.fsum(weights)
    return [w / total for w in weights]


def steps_from_names(paths: Sequence[str | Path]) -> list[int] | None:
    """Steps N of `checkpoint-N` / `step-N` folder names, or None unless every name has one."""
    steps = []
    for p in paths:
        m = _STEP_NAME.match(Path(p).name)
        if m is None:
            return None
        steps.append(int(m.group(1)))
    return steps


POWER_EMA_FORMULA = ("θ̂ = Σₖ cₖ·θₖ, cₖ = ∫ p(τ)φₖ(τ)dτ: EDM2's power profile p(τ) ∝ τ^γ on "
                     "[0, t_K] over the piecewise-linear trajectory through θ₀ (step 0) and the "
                     "saved θₖ (hat functions φₖ)")


def power_ema_plan(sigma_rel: float, paths: Sequence[str | Path],
                   steps: Sequence[float] | None = None) -> tuple[list[float], dict, list[str]]:
    """Delta-form λ of θ₁..θ_K, recipe parameters and CLI flags of a power-function EMA.

    λₖ = cₖ of `power_ema_coefficients`; θ₀'s own weight c₀ is then 1 − Σλₖ.

    Steps default to the N of `checkpoint-N` / `step-N` names, else 1..K (evenly spaced).

    Raises:
        UsageError: bad sigma_rel or steps, or not one step per checkpoint.
    """
    named = steps_from_names(paths)
    chosen = list(steps) if steps is not None else named or list(range(1, len(paths) + 1))
    if len(chosen) != len(paths):
        raise UsageError(f"{len(chosen)} steps for {len(paths)} checkpoints; give one step "
                         "per checkpoint")
    lambdas = power_ema_coefficients(sigma_rel, chosen)[1:]
    params = {"sigma_rel": float(sigma_rel), "gamma": sigma_rel_to_gamma(sigma_rel),
              "num_checkpoints": len(paths), "steps": [float(t) for t in chosen],
              "steps_from": ("given" if steps is not None else "names" if named
                             else "evenly spaced"),
              "discretisation": "piecewise-linear trajectory, exact integral"}
    args = ["--sigma-rel", repr(float(sigma_rel))]
    if steps is not None:
        args += ["--steps", ",".join(repr(float(t)) for t in chosen)]
    return lambdas, params, args


__all__ = ["GAMMA_AT_PEAK", "POWER_EMA_FORMULA", "SIGMA_REL_MAX", "gamma_to_sigma_rel",
           "power_ema_coefficients", "power_ema_plan", "sigma_rel_to_gamma", "steps_from_names"]

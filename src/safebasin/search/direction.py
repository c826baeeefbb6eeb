"""A random direction in weight space, normalised tensor by tensor to the fine-tune's step.

The 2D safety landscape of Peng et al. 2024 ("Navigating the Safety Landscape") perturbs the
weights along random directions normalised layer by layer (the filter normalisation of Li et
al. 2018, "Visualizing the Loss Landscape of Neural Nets"), so that a step means the same in
every layer. Here each tensor t of the direction is Gaussian noise rescaled to the norm of the
same tensor of the fine-tune's step:

    dₜ = rₜ · ‖θ_ft,t − θ₀,t‖ / ‖rₜ‖,   rₜ ~ N(0, I) seeded by (seed, tensor name)

so β = 1 moves every tensor exactly as far as the fine-tune moved it, and α and β share one
scale. (Peng et al. scale to the norm of the weights themselves; the fine-tune's step is the
natural unit when the question is how far a fine-tune may go.) Tensors the fine-tune did not
change, and integer tensors, get no noise.

The direction is stored as a model folder holding θ₀ + d in float32, written one tensor at a
time with the project's streaming writer (memory: one tensor, never the model), so the merge
API combines it like any fine-tune: task arithmetic with scales (α, β) gives θ₀ + αΔ + βd.
Seeding by tensor name makes it independent of file order and sharding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (seed, tensor name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def random_tensor_direction(theta0: torch.Tensor, finetuned: torch.Tensor, *, seed: int,
                            name: str) -> torch.Tensor:
    """dₜ (float32) for one tensor: noise with the norm of θ_ft,t − θ₀,t."""
    step = finetuned.to(torch.float32) - theta0.to(torch.float32)
    target = torch.linalg.vector_norm(step)
    if not theta0.is_floating_point() or target == 0:
        return torch.zeros(theta0.shape, dtype=torch.float32)
    g = torch.Generator().manual_seed(tensor_seed(seed, name))
    noise = torch.randn(theta0.shape, generator=g, dtype=torch.float32)
    return noise * (target / torch.linalg.vector_norm(noise))


def write_random_direction(base: str | os.PathLike, finetuned: str | os.PathLike,
                           out: str | os.PathLike, *, seed: int) -> Path:
    """Write θ₀ + d (float32, θ₀'s config and tokenizer) to `out`, atomically.

    Raises:
        CheckpointNotFoundError, IncompatibleCheckpointsError: unusable inputs.
    """
    from ..checkpoint import (
        DEFAULT_SHARD_SIZE,
        ShardWriter,
        TensorSpec,
        copy_aux_files,
        open_checkpoint,
        publishing,
    )
    from ..checkpoint.recipe import set_config_dtype
    from ..errors import IncompatibleCheckpointsError

    with open_checkpoint(base) as b, open_checkpoint(finetuned, base=b) as f:
        missing = [n for n in b.names if f.resolve(n) is None]
        if missing:
            raise IncompatibleCheckpointsError(
                f"{len(missing)} tensors of BASE are missing from the fine-tune, first "
                f"{missing[0]!r}")
        specs = [TensorSpec(n, torch.float32 if b.dtype(n).is_floating_point else b.dtype(n),
                            b.shape(n)) for n in b.names]
        with publishing(out, overwrite=True, inputs=[b.path, f.path]) as tmp:
            writer = ShardWriter(tmp, specs, shard_size=DEFAULT_SHARD_SIZE)
            for spec in specs:
                theta0 = b.read(spec.name)
                if spec.dtype == torch.float32:
                    d = random_tensor_direction(theta0, f.read(spec.name), seed=seed,
                                                name=spec.name)
                    writer.write(spec.name, theta0.to(torch.float32) + d)
                else:
                    writer.write(spec.name, theta0)
            writer.close()
            if b.path.is_dir():
                copy_aux_files(b.path, tmp)
                set_config_dtype(tmp, torch.float32)
    return Path(out)


__all__ = ["random_tensor_direction", "tensor_seed", "write_random_direction"]

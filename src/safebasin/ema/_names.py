"""Which of a model's tensors the EMA averages, which it copies, and under which names.

Tensors are always paired by name, never by position (timm's `ModelEmaV3` zips two
`state_dict().values()`, which silently pairs the wrong tensors once the orders differ).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import IncompatibleCheckpointsError, ShapeMismatchError, UsageError

_SHOW = 3  # offenders named in one error line

Patterns = str | Sequence[str] | None


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose names a saved model uses: DDP's `.module`, torch.compile's original."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent tensors (what `state_dict` saves), each under its first name.

    Tied weights appear once, under the name registered first: for an HF model with tied
    embeddings that is `model.embed_tokens.weight`, and `lm_head.weight` is left out, as
    `save_pretrained` does. Values are the live `Parameter`/buffer objects (or DTensors under
    FSDP2), not copies.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def averaged_names(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors training changes: floating parameters that require grad, and
    floating persistent buffers. Frozen parameters are left out: their EMA is themselves."""
    params = {id(p) for p in model.parameters()}
    return [n for n, t in tensors.items()
            if t.is_floating_point() and (t.requires_grad or id(t) not in params)]


def _as_list(patterns: Patterns) -> list[str]:
    if patterns is None:
        return []
    return [patterns] if isinstance(patterns, str) else list(patterns)


def select(names: Sequence[str], include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """Names matching any `include` glob (all when None) and no `exclude` glob, in order.

    Patterns are shell globs on full tensor names (`fnmatch`): "*.mlp.*", "lm_head.weight".

    Raises:
        UsageError: a pattern matches no name (a typo would otherwise silently change what is
            averaged), or nothing is left to average.
    """
    inc, exc = _as_list(include), _as_list(exclude)
    unmatched = [p for p in inc + exc if not fnmatch.filter(names, p)]
    if unmatched:
        raise UsageError(f"EMA include/exclude pattern(s) {unmatched[:_SHOW]} match no "
                         f"averaged tensor (names look like {list(names[:2])}); fix the glob")
    chosen = [n for n in names
              if (not inc or any(fnmatch.fnmatchcase(n, p) for p in inc))
              and not any(fnmatch.fnmatchcase(n, p) for p in exc)]
    if not chosen:
        raise UsageError(f"EMA include={inc} exclude={exc} leave no tensor to average")
    return chosen


def check_same(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]],
               what: str) -> None:
    """Raise unless `got` has exactly `expected`'s names with the same shapes.

    Raises:
        IncompatibleCheckpointsError: names missing or extra (the first few named).
        ShapeMismatchError: a shape differs (the first offender named with both shapes).
    """
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing or extra:
        part = (f"{len(missing)} tensors missing, first {missing[:_SHOW]}" if missing else
                f"{len(extra)} unexpected tensors, first {extra[:_SHOW]}")
        raise IncompatibleCheckpointsError(f"{what}: {part}; it was made for another model "
                                           "or other include/exclude settings")
    bad = [(n, expected[n], got[n]) for n in expected if tuple(expected[n]) != tuple(got[n])]
    if bad:
        n, a, b = bad[0]
        raise ShapeMismatchError(f"{what}: {len(bad)} tensors differ in shape, first {n!r}: "
                                 f"expected {tuple(a)}, got {tuple(b)}")


def shapes(tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in tensors}

"""`EMA`: an exponential moving average of a model's weights, updated after optimizer steps.

θ̄ₖ = (1−η)·θ̄ₖ₋₁ + η·θₖ with θ̄₀ = θ₀ (the weights when the EMA is created), applied after
every `every`-th optimizer step; η is the weight of the incoming weights (DESIGN.md). Applied
every N steps it equals the offline `safebasin.merge.ema` over checkpoints saved every N steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from . import shadow as _shadow
from . import state_file
from ._dist import local
from ._names import Patterns, averaged_names, check_same, model_tensors, select, shapes, unwrap
from ._packing import build_slots
from .export import FolderOptions, write_model_folder

log = logging.getLogger(__name__)


def check_settings(eta: float, every: int, kind: str) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 < eta <= 1.0:
        raise UsageError(f"EMA eta must be in (0, 1] (the weight of the incoming weights), "
                         f"got {eta!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"EMA every must be a whole number of optimizer steps >= 1, got "
                         f"{every!r}")
    if kind not in _shadow.KINDS:
        raise UsageError(f"EMA shadow {kind!r}: choose {' or '.join(map(repr, _shadow.KINDS))}")


class EMA:
    """Online EMA of a model's weights, for a plain PyTorch loop (see `EMACallback` for the
    transformers Trainer).

    Averages the floating parameters that require grad and the floating persistent buffers,
    paired with the model by name; frozen parameters are not shadowed (their average is
    themselves) and non-float buffers are copied at each update. Under DDP every rank keeps
    the same full shadow; under FSDP2 (`fully_shard`) each rank keeps the shadow of its own
    shard, updates communicate nothing, and saving gathers one tensor at a time.

    Memory per averaged element: 4 bytes (`shadow="fp32"`), or 4 bytes plus the model's
    element size (`shadow="delta"`: 6 for bf16, 8 for fp32), on `device`. `swapped` needs one
    more copy of the averaged tensors in the model's dtype while it is active.

    Args:
        model: the model being trained (DDP and torch.compile wrappers are looked through).
            Create the EMA after moving, wrapping or sharding it: it keeps references to
            its parameters.
        eta: η in (0, 1], the weight of the incoming weights (0.25 in the paper).
        every: update after every N-th optimizer step (`update(step)` with step % N == 0).
        shadow: "fp32" (θ̄ in fp32, even for a bf16 model: in bf16 most updates round away) or
            "delta" (fp32 offset from θ₀, exact even when η·Δθ is below fp32 resolution of θ).
        device: where the shadow lives; None: beside each parameter, "cpu": off the GPU.
        include, exclude: shell globs on tensor names ("*.mlp.*"); excluded tensors are
            not averaged and keep the model's values when saving.

    Raises:
        UsageError: eta, every or shadow out of range; a glob that matches nothing.

    Example:
        >>> ema = EMA(model, eta=0.25)                                    # doctest: +SKIP
        >>> for batch in loader:
        ...     loss(model, batch).backward(); opt.step(); opt.zero_grad()
        ...     ema.update()
        >>> with ema.swapped():
        ...     evaluate(model)                        # EMA weights in, restored after
        >>> ema.save_pretrained("out/ema", like="theta0")
    """

    def __init__(self, model: nn.Module, *, eta: float = 0.25, every: int = 1,
                 shadow: str = "fp32", device: str | torch.device | None = None,
                 include: Patterns = None, exclude: Patterns = None) -> None:
        check_settings(eta, every, shadow)
        self.eta, self.every, self.kind = float(eta), every, shadow
        self.device = torch.device(device) if device is not None else None
        self.include, self.exclude = include, exclude
        self.step = 0  # last optimizer step seen by `update`
        self.num_updates = 0  # averages applied (K in θ̄_K)
        self.model = unwrap(model)
        self._live = model_tensors(self.model)
        self.names = select(averaged_names(self.model, self._live), include, exclude)
        self.copied = [n for n, t in self._live.items() if not t.is_floating_point()]
        with torch.no_grad():
            # per-name views of a few flat buffers, so one update makes few kernel calls
            self._slots, self._shadow, self._theta0 = build_slots(
                {n: local(self._live[n]) for n in self.names}, delta=shadow == "delta",
                device=self.device)
            self._buffers = {n: local(self._live[n]).clone() for n in self.copied}

    # -- training ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int | None = None) -> bool:
        """Record optimizer step `step` (default: the last one + 1) and average if it is due.

        Call after `optimizer.step()`; steps count optimizer steps taken, from 1 (under
        gradient accumulation: once per optimizer step, not per micro-batch).

        Returns:
            True if the shadow was updated (step % every == 0).

        Raises:
            UsageError: `step` does not increase (a repeated step would average twice).
        """
        step = self.step + 1 if step is None else step
        if isinstance(step, bool) or not isinstance(step, int) or step <= self.step:
            raise UsageError(f"EMA.update(step={step!r}) after step {self.step}: steps count "
                             "optimizer steps taken (from 1) and must increase")
        self.step = step
        if step % self.every:
            return False
        shadows = [slot.shadow for slot in self._slots]
        # a generator: a host copy or concatenation of the weights lives for one call only
        xs = (slot.incoming(lambda n: local(self._live[n])) for slot in self._slots)
        if self.kind == "delta":
            _shadow.delta_update_(shadows, xs, [slot.theta0 for slot in self._slots], self.eta)
        else:
            _shadow.lerp_many_(shadows, xs, self.eta)
        for n, b in self._buffers.items():
            b.copy_(local(self._live[n]))
        self.num_updates += 1
        return True

    def value(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """θ̄ of one averaged tensor (this rank's shard under FSDP2), rounded once into `dtype`
        (default: the model's). May share memory with the shadow: do not modify it."""
        live = self._live[name]
        return _shadow.readout(self.kind, self._shadow[name], self._theta0.get(name),
                               dtype or live.dtype)

    def _read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """What the EMA model holds for any persistent tensor of the model."""
        if name in self._shadow:
            return self.value(name, dtype)
        if name in self._buffers:
            return self._buffers[name]
        return local(self._live[name]).to(dtype)  # frozen or excluded: the model's own

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Settings, counters and tensors (this rank's shards under FSDP2; not copies)."""
        return {"kind": self.kind, "eta": self.eta, "every": self.every, "step": self.step,
                "num_updates": self.num_updates, "shadow": dict(self._shadow),
                "theta0": dict(self._theta0), "buffers": dict(self._buffers)}

    def _check_kind(self, kind: str, source: str) -> None:
        if kind != self.kind:
            raise UsageError(f"{source}: EMA state has shadow {kind!r} but this EMA uses "
                             f"{self.kind!r}; create the EMA with shadow={kind!r}")

    def _adopt_counters(self, state: dict, source: str) -> None:
        if (state["eta"], state["every"]) != (self.eta, self.every):
            log.warning("%s: EMA state was built with eta=%s every=%s; continuing with eta=%s "
                        "every=%s", source, state["eta"], state["every"], self.eta, self.every)
        self.step, self.num_updates = int(state["step"]), int(state["num_updates"])

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (same model, same shadow kind and selection).

        Raises:
            UsageError: another shadow kind.
            IncompatibleCheckpointsError, ShapeMismatchError: names or shapes differ (the
                first offenders are named).
        """
        self._check_kind(state.get("kind"), "EMA state_dict")
        mine = self.state_dict()
        for group in state_file.GROUPS:
            check_same(shapes(mine[group].items()), shapes(state.get(group, {}).items()),
                       f"EMA state_dict[{group!r}]")
        self._adopt_counters(state, "EMA state_dict")
        for group in state_file.GROUPS:
            for n, t in mine[group].items():
                t.copy_(state[group][n])

    def save_state(self, dest: str | os.PathLike, *, write: bool | None = None) -> None:
        """Write the state to the folder `dest` (whole tensors; replaces `dest`). Every rank
        calls it under FSDP2; rank 0 writes (or the ranks with `write=True`)."""
        state_file.save(dest, self.state_dict(), self._live, write=write)

    def load_state(self, src: str | os.PathLike) -> None:
        """Restore a state written by `save_state`, on any number of ranks.

        Raises:
            CheckpointNotFoundError, CheckpointFormatError: no or unreadable state in `src`.
            UsageError, IncompatibleCheckpointsError, ShapeMismatchError: see
                `load_state_dict`.
        """
        meta = state_file.read_meta(src)
        self._check_kind(meta["kind"], str(src))  # before reading any tensor
        state_file.load_tensors(src, self.state_dict(), self._live)
        self._adopt_counters(meta, str(src))

    # -- using the average ------------------------------------------------------------------
    @contextlib.contextmanager
    def swapped(self, model: nn.Module | None = None) -> Iterator[nn.Module]:
        """Put the EMA weights into `model` (default: the tracked one) and restore its own
        weights bit for bit on exit, for evaluation inside a training loop.

        Raises:
            IncompatibleCheckpointsError, ShapeMismatchError: `model` lacks an averaged tensor
                or has another shape for it.
        """
        target = self.model if model is None else unwrap(model)
        live = model_tensors(target)
        views = {n: local(live[n]) for n in self.names if n in live}
        check_same(shapes((n, self._shadow[n]) for n in self.names), shapes(views.items()),
                   f"EMA.swapped({type(target).__name__})")
        backup: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for n, v in views.items():
                    backup[n] = v.clone()
                    v.copy_(self.value(n, v.dtype))
            yield target
        finally:
            with torch.no_grad():
                for n, b in backup.items():
                    views[n].copy_(b)

    def save_pretrained(self, out_dir: str | os.PathLike, *,
                        like: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                        tokenizer: object | None = None, overwrite: bool = False,
                        write: bool | None = None) -> dict | None:
        """Write the EMA model as an HF folder that loads with `from_pretrained`.

        Weights stream through the header-first shard writer into a temporary folder renamed
        into place last; config/tokenizer files are copied from `like` (else the model's
        config and generation config are saved), `tokenizer` is saved when given, and
        `safebasin_recipe.json` records the method, settings and content hashes.

        Args:
            out_dir: the folder to create.
            like: a model folder (θ₀'s) to copy config and tokenizer files from.
            dtype: floating tensors' dtype (default: each tensor's dtype in the model).
            tokenizer: saved into the folder (anything with `save_pretrained`).
            overwrite: replace an existing `out_dir`.
            write: whether this rank writes (default: rank 0); all ranks call it under FSDP2.

        Returns:
            The recipe written (None on ranks that do not write).

        Raises:
            OutputExistsError: `out_dir` exists and `overwrite` is false.
            OutputNotWritableError, OutputLockedError: see `checkpoint.publishing`.
        """
        recipe = {"method": "online-ema",
                  "parameters": {"eta": self.eta, "every": self.every, "shadow": self.kind,
                                 "num_updates": self.num_updates, "step": self.step,
                                 "include": self.include, "exclude": self.exclude},
                  "averaged_tensors": len(self.names),
                  "inputs": [{"role": "config", "path": str(Path(like).absolute())}]
                  if like is not None else []}
        options = FolderOptions(dtype=dtype, like=like, tokenizer=tokenizer, overwrite=overwrite)
        return write_model_folder(out_dir, self.model, self._live, self._read, options=options,
                                  recipe=recipe, write=write)

    def __repr__(self) -> str:
        return (f"EMA(eta={self.eta}, every={self.every}, shadow={self.kind!r}, "
                f"{len(self.names)} tensors, step={self.step}, updates={self.num_updates})")

"""View a PEFT LoRA adapter folder as a full checkpoint: W = W_base + scale·B@A, lazily.

A LoRA fine-tune ships only the low-rank factors; merges and distances need the full weights.
Materialising them (PEFT's `merge_and_unload`) costs a full model of memory, so this view
computes, for each requested flat range of a targeted tensor, only the rows of B@A that range
covers: memory follows the chunk size, not the matrix. Math is fp32 and rounded once to the base
tensor's dtype, like every other safebasin operation.

Conventions follow PEFT (checked against `merge_and_unload` in the tests):

- scale = lora_alpha / r, or lora_alpha / sqrt(r) with `use_rslora`; `alpha_pattern` and
  `rank_pattern` override per module, matched as PEFT matches them (a key equal to the module
  name or to a dotted suffix of it). r is read from A's shape, which is what PEFT built.
- Linear: A (r, in), B (out, r), ΔW = B@A of shape (out, in). With `fan_in_fan_out` (GPT-2's
  Conv1D stores W as (in, out)) and for embeddings (`lora_embedding_A` (r, vocab),
  `lora_embedding_B` (dim, r)), ΔW = (B@A)ᵀ.
- Which modules are adapted comes from the adapter's weights (what was trained), which PEFT
  derived from `target_modules`; every other tensor is the base's.
- Full tensors in the adapter file (`modules_to_save`, `bias="all"`, saved embedding layers
  `*.base_layer.weight`) replace the base's tensor; a LoRA delta on the same module adds to it.
- DoRA (`use_dora`) and LoRA biases (`lora_bias`) are refused: they are not B@A updates.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointFormatError, CheckpointNotFoundError, ShapeMismatchError
from .reader import Checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\."
                     r"(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<eab>[AB]))$")
_SHOW = 3  # offenders named in one error line


def is_adapter(path: str | os.PathLike) -> bool:
    """True for a folder holding a PEFT `adapter_config.json`."""
    try:
        return (Path(path) / ADAPTER_CONFIG).is_file()
    except OSError:  # a folder we may not list: Checkpoint.open then says so in one line
        return False


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight: ΔW = scale · B@A, transposed when `transpose`."""

    target: str  # base tensor name, e.g. "model.layers.0.self_attn.q_proj.weight"
    a: str  # adapter tensor names of the factors
    b: str
    rank: int
    scale: float
    transpose: bool


def _read_config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: malformed adapter config ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path}: adapter config is not a JSON object")
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise CheckpointFormatError(f"{path}: peft_type {kind!r} is not a LoRA adapter; only "
                                    "LORA adapters can be merged")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise CheckpointFormatError(f"{path}: {flag} adapters are not a plain B@A update; "
                                        "merge them with PEFT's merge_and_unload first")
    if not isinstance(config.get("r"), int) or config.get("lora_alpha") is None:
        raise CheckpointFormatError(f"{path}: needs integer 'r' and numeric 'lora_alpha'")
    return config


def _pattern_value(patterns: dict | None, module: str, default: float) -> float:
    """PEFT's `get_pattern_key`: the first key that equals `module` or a dotted suffix of it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scale(config: dict, module: str, rank: int) -> float:
    alpha = float(_pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"]))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _adapter_file(folder: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointNotFoundError(f"{folder}: adapter folder has {ADAPTER_CONFIG} but no "
                                  f"{ADAPTER_WEIGHTS[0]}")


def _base_name(key: str, base: Checkpoint) -> str | None:
    """The base tensor a PEFT key (prefix stripped) stands for, or None.

    PEFT names modules from the model it wrapped; a base saved from the inner model (no
    leading "model.") is matched by a unique dotted suffix.
    """
    if base.resolve(key) is not None:
        return key
    found = [n for n in base.names if n.endswith("." + key)]
    return found[0] if len(found) == 1 else None


def _stored_target(name: str, base: Checkpoint, folder: Path) -> str:
    if base.resolve(name) != name:  # a tied lm_head: changing it would change the embedding
        raise CheckpointFormatError(f"{folder}: the adapter changes {name!r}, which BASE ties "
                                    "to its embedding; merge it with PEFT instead")
    return name


def _plan(adapter: Checkpoint, base: Checkpoint, config: dict,
          folder: Path) -> tuple[dict[str, LoraModule], dict[str, str]]:
    """Pair factors into modules and find full replacement tensors, checking every shape."""
    factors: dict[str, dict[str, str]] = {}  # module -> {"A": key, "B": key}
    embeddings: set[str] = set()
    replaced: dict[str, str] = {}  # base name -> adapter tensor name
    unknown: list[str] = []
    for key in adapter.names:
        local = key.removeprefix(PEFT_PREFIX)
        m = _FACTOR.match(local)
        if m:
            factors.setdefault(m["module"], {})[m["ab"] or m["eab"]] = key
            if m["eab"]:
                embeddings.add(m["module"])
            continue
        target = _base_name(local.replace(".base_layer.", "."), base)
        if target is None or "lora_" in local:  # DoRA magnitudes, LoRA biases, other tuners
            unknown.append(key)
        else:
            replaced[_stored_target(target, base, folder)] = key
    modules: dict[str, LoraModule] = {}
    for module, f in factors.items():
        target = _base_name(module + ".weight", base)
        if target is None or set(f) != {"A", "B"}:
            unknown.append(module)
            continue
        rank = adapter.shape(f["A"])[0] if adapter.shape(f["A"]) else 0
        transpose = module in embeddings or bool(config.get("fan_in_fan_out"))
        modules[target] = LoraModule(_stored_target(target, base, folder), f["A"], f["B"], rank,
                                     _scale(config, module, max(rank, 1)), transpose)
    if unknown:
        raise CheckpointFormatError(f"{folder}: {len(unknown)} adapter tensors match nothing in "
                                    f"BASE, first {unknown[:_SHOW]}; is this adapter for "
                                    "another model?")
    _check_shapes(adapter, base, modules, replaced, folder)
    return modules, replaced


def _check_shapes(adapter: Checkpoint, base: Checkpoint, modules: dict[str, LoraModule],
                  replaced: dict[str, str], folder: Path) -> None:
    bad = []
    for m in modules.values():
        sa, sb, want = adapter.shape(m.a), adapter.shape(m.b), base.shape(m.target)
        if len(sa) != 2 or len(sb) != 2:  # convolution LoRA: not a matrix product
            bad.append((m.target, f"B{sb}@A{sa} (not 2-D)", want))
            continue
        (ra, n_in), (n_out, rb) = sa, sb
        delta = (n_in, n_out) if m.transpose else (n_out, n_in)
        if ra != rb or delta != want:
            bad.append((m.target, f"B{sb}@A{sa}", want))
    bad += [(t, adapter.shape(k), base.shape(t)) for t, k in replaced.items()
            if adapter.shape(k) != base.shape(t)]
    if bad:
        name, got, want = bad[0]
        raise ShapeMismatchError(f"{folder}: {len(bad)} adapter tensors do not fit BASE, first "
                                 f"{name!r}: {got} vs {want}")


class LoraCheckpoint(Checkpoint):
    """θ_base + scale·B@A per adapted tensor, read lazily through the `Checkpoint` interface.

    Names, dtypes and shapes are the base's; the base stays owned (and closed) by the caller.

    Example:
        >>> with Checkpoint.open("llama") as base, \\
        ...         LoraCheckpoint.open("llama-lora", base=base) as ft:    # doctest: +SKIP
        ...     w = ft.read("model.layers.0.self_attn.q_proj.weight")
    """

    def __init__(self, folder: Path, adapter: Checkpoint, base: Checkpoint, *,
                 modules: dict[str, LoraModule], replaced: dict[str, str],
                 adapter_config: dict) -> None:
        super().__init__(folder, {}, config=base.config)
        self.aliases = dict(base.aliases)
        self.adapter_config = adapter_config
        self.modules = modules
        self._adapter, self._base, self._replaced = adapter, base, replaced
        self._factors: tuple[str, torch.Tensor, torch.Tensor] | None = None  # last module's
        self.source = {"adapter": True,
                       "adapter_base": adapter_config.get("base_model_name_or_path")}

    @classmethod
    def open(cls, path: str | os.PathLike, *, base: Checkpoint | None = None,  # type: ignore[override]
             allow_pickle: bool = False) -> LoraCheckpoint:
        """Open an adapter folder over `base` (θ₀), reading headers and the config only.

        Raises:
            CheckpointNotFoundError: no adapter weights, or no base given.
            CheckpointFormatError: not LoRA, DoRA, tensors that match nothing in the base.
            ShapeMismatchError: factors whose product does not fit the base tensor.
            PickleRefusedError: `adapter_model.bin` without `allow_pickle`.
        """
        folder = Path(path)
        if base is None:
            raise CheckpointNotFoundError(f"{folder}: a LoRA adapter is a fine-tuned input; "
                                          "give its base model as BASE (the first input)")
        config = _read_config(folder)
        adapter = Checkpoint.open(_adapter_file(folder), allow_pickle=allow_pickle)
        try:
            modules, replaced = _plan(adapter, base, config, folder)
        except BaseException:
            adapter.close()
            raise
        return cls(folder, adapter, base, modules=modules, replaced=replaced,
                   adapter_config=config)

    # -- metadata: the base's -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self._base.names

    def resolve(self, name: str) -> str | None:
        return self._base.resolve(name)

    def _meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        return self._base._meta(name)

    @property
    def weight_files(self) -> list[Path]:
        return self._adapter.weight_files

    @property
    def nbytes(self) -> int:
        return self._base.nbytes

    # -- data -----------------------------------------------------------------------------
    def _factors_of(self, m: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B in fp32; only the last module's are kept (chunks arrive tensor by tensor)."""
        if self._factors is None or self._factors[0] != m.target:
            self._factors = (m.target, self._adapter.read(m.a).float(),
                             self._adapter.read(m.b).float())
        return self._factors[1], self._factors[2]

    def _delta(self, m: LoraModule, start: int, stop: int, cols: int) -> torch.Tensor:
        """scale · ΔW flattened, elements [start, stop), from the rows they cover only."""
        a, b = self._factors_of(m)  # (r, in), (out, r)
        r0, r1 = start // cols, -(-stop // cols)
        if m.transpose:
            rows = (b @ a[:, r0:r1]).T  # (r1-r0, out): rows of (B@A)ᵀ
        else:
            rows = b[r0:r1] @ a  # (r1-r0, in)
        return rows.reshape(-1)[start - r0 * cols: stop - r0 * cols] * m.scale

    def _replacement(self, key: str, start: int, stop: int) -> torch.Tensor:
        """A full tensor from the adapter file, in its own dtype (it may be wider than BASE's)."""
        scratch = memoryview(bytearray((stop - start) * self._adapter.dtype(key).itemsize))
        return self._adapter.read_flat_into(key, start, stop, scratch)

    def read_flat_into(self, name: str, start: int, stop: int, buf: memoryview) -> torch.Tensor:
        """Elements [start, stop) of the flattened merged tensor, in the base dtype, in `buf`."""
        stored = self.resolve(name)
        if stored is None:
            raise KeyError(name)
        m, key = self.modules.get(stored), self._replaced.get(stored)
        if m is None and key is None:
            return self._base.read_flat_into(stored, start, stop, buf)
        dtype = self._base.dtype(stored)
        if start == stop:
            return torch.empty(0, dtype=dtype)
        out = torch.frombuffer(buf[: (stop - start) * dtype.itemsize], dtype=dtype)
        if key is not None:
            part = self._replacement(key, start, stop)
        else:  # read the base into our own buffer: a pickled base hands out its own memory
            part = self._base.read_flat_into(stored, start, stop, buf)
        if m is None:
            out.copy_(part)
            return out
        cols = self.shape(stored)[1]
        out.copy_(part.float() + self._delta(m, start, stop, cols))  # fp32, rounded once
        return out

    def read_flat_direct(self, name: str, start: int, stop: int, buf: memoryview
                         ) -> torch.Tensor:
        """As `read_flat_into`: the adapted tensors are computed into `buf` from offset 0."""
        return self.read_flat_into(name, start, stop, buf)

    def forget(self, name: str, start: int, stop: int) -> None:
        """As `Checkpoint.forget`, for the base's bytes of a tensor (adapter files are small)."""
        stored = self.resolve(name)
        if stored is not None and stored not in self._replaced:
            self._base.forget(stored, start, stop)

    def close(self) -> None:
        self._adapter.close()
        self._factors = None

    def __repr__(self) -> str:
        return f"LoraCheckpoint({str(self.path)!r}, {len(self.modules)} adapted tensors)"


__all__ = ["ADAPTER_CONFIG", "LoraCheckpoint", "LoraModule", "is_adapter"]

"""The sweep's YAML config: schema, defaults and validation. Pure data; no transformers.

A config names where θ₀ and the data come from (`toy:` or `model:`), how models are evaluated,
the seeds, default fine-tuning settings, and a list of experiments. Any list value in an
experiment's `finetune:` mapping is a grid axis (the product of all axes is run, per seed).

    toy:                                   # or model: {base, data, prompts, ...}
      world_seeds: [0, 1, 2]               # or world_seed: 0; θ₀ is trained per world
      theta0: {steps: 600}
      models:                              # named sizes (default: one, theta0.model)
        small: {}
        large: {hidden_size: 128, num_layers: 4, intermediate_size: 384}
    eval: {keywords: qi, max_new_tokens: 32, batch_size: 64}
    seeds: [0, 1, 2]
    workers: 2                             # processes; (model, world) cells run in parallel
    finetune: {lr: 3.0e-4, batch_size: 16, steps: 200}
    experiments:
      - name: hyperparameters
        finetune: {lr: [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4], batch_size: [8, 16], grad_accum: [1, 2]}
      - name: ema
        ema: [{eta: 0.01}, {eta: 0.25, every: 10}]
        merges: [task-arithmetic, l2-per-tensor, offline-ema, path-average, anchor-lerp]
        l2_reg: {tolerance: 0.1, ema: [{eta: 0.25, every: 10}]}   # ema: only these targets
        match_utility: {tolerance: 0.02, max_tries: 6}

Every problem is a `UsageError` naming the file and the key path ("experiments[1].ema[0].eta").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..baselines.config import FinetuneConfig
from ..errors import SafebasinError, UsageError
from ..toy.config import Theta0Config, ToyModelConfig

MERGES = ("task-arithmetic", "l2-per-tensor", "offline-ema", "path-average", "anchor-lerp",
          "path-average-lerp")
# merges whose knob can also be searched to the EMA's utility (`match_utility`)
UTILITY_MATCHED = ("task-arithmetic", "l2-per-tensor")
# FinetuneConfig fields a config may set; the seed comes from `seeds`, checkpoints are the
# sweep's business
FINETUNE_KEYS = ("lr", "batch_size", "grad_accum", "steps", "epochs", "l2_to_init",
                 "lr_scheduler", "warmup_steps", "weight_decay", "max_grad_norm", "max_length",
                 "logging_steps", "bf16")
_THETA0_KEYS = ("seed", "lr", "batch_size", "steps", "warmup_steps", "lr_scheduler")


@dataclass(frozen=True)
class ToyCell:
    """One (model size, world) of a toy source: its own world, θ₀ and rows."""

    model: str  # the size's name
    world_seed: int
    theta0: Theta0Config  # with the size's model


@dataclass(frozen=True)
class ToySource:
    """θ₀ trained in the embedded toy world; utility is held-out task accuracy.

    Several world seeds and model sizes make a grid of cells, each with its own world and θ₀
    (trained with `theta0`'s recipe and the size's model).
    """

    world_seeds: tuple[int, ...] = (0,)
    theta0: Theta0Config = Theta0Config()
    # (name, model) pairs; empty: one size, theta0.model, named "default"
    models: tuple[tuple[str, ToyModelConfig], ...] = ()

    @property
    def world_seed(self) -> int:
        """The first world seed (the only one of a single-world source)."""
        return self.world_seeds[0]

    def cells(self) -> list[ToyCell]:
        """Every (model, world) cell, sizes outermost, in config order."""
        models = self.models or (("default", self.theta0.model),)
        return [ToyCell(name, seed, replace(self.theta0, model=model))
                for name, model in models for seed in self.world_seeds]


@dataclass(frozen=True)
class ModelSource:
    """θ₀ and data given as files; utility is the held-out chat loss (lower is better)."""

    base: Path  # θ₀: a local HF model folder
    data: Path  # chat JSONL to fine-tune on
    prompts: Path  # harmful prompts for keyword ASR (CSV, JSONL, TXT, Parquet)
    utility_data: Path  # held-out chat JSONL
    prompt_column: str | None = None


@dataclass(frozen=True)
class EvalConfig:
    """How every model of the sweep is evaluated (the same keyword ASR as `eval asr`)."""

    keywords: str = "qi"
    # toy replies end within ~25 tokens; real chat models want 256
    max_new_tokens: int = 32
    batch_size: int = 64
    limit: int | None = None  # a seeded random subset of the prompts (None: all)


@dataclass(frozen=True)
class EmaSpec:
    """One online EMA kept during a run: θ̄ₖ = (1−η)θ̄ₖ₋₁ + ηθₖ every `every` optimizer steps."""

    eta: float
    every: int = 1

    @property
    def tag(self) -> str:
        return f"ema-eta{self.eta:g}-every{self.every}"


@dataclass(frozen=True)
class L2Match:
    """L2-to-init fine-tunes whose C is searched so that they end at an EMA model's distance.

    C is tuned on the experiment's first seed (interpolating log d against log C between the
    runs that bracket the target) and the chosen C is then run on every seed.
    """

    tolerance: float = 0.1  # accept |d / d_target − 1| ≤ tolerance
    max_tries: int = 6  # fine-tunes per target during the search
    initial: float = 1.0  # first C tried when nothing brackets the target yet
    targets: tuple[EmaSpec, ...] | None = None  # the EMAs matched (None: every one)
    models: tuple[str, ...] | None = None  # toy model sizes it runs for (None: every one)


@dataclass(frozen=True)
class UtilityMatch:
    """Knobs searched so that task accuracy is within `tolerance` of each EMA's.

    Task arithmetic's scale λ in [0, 1], the per-tensor L2 radius factor ρ (radii ρ·rₜ, rₜ the
    EMA's per-tensor distances) and, when the experiment has `l2_reg`, log₁₀ C of L2-to-init,
    each by bisection with at most `max_tries` evaluations (fine-tunes, for C) per target.
    Merges are matched per (world, seed); C is searched on the first seed and run on every
    seed, as for the distance match.
    """

    tolerance: float = 0.02  # two points of task accuracy
    max_tries: int = 6


@dataclass(frozen=True)
class Experiment:
    """A grid of fine-tunes (per seed), the EMAs they keep, and what is built from each EMA."""

    name: str
    finetune: dict[str, Any]  # overrides of the defaults; list values are grid axes
    seeds: tuple[int, ...]
    ema: tuple[EmaSpec, ...] = ()
    merges: tuple[str, ...] = ()
    l2_reg: L2Match | None = None
    trajectory_every: int | None = None  # None: gcd of the EMAs' `every`, when merges need it
    match_utility: UtilityMatch | None = None

    def grid(self, defaults: dict[str, Any]) -> list[FinetuneConfig]:
        """Every FinetuneConfig of the grid (without seed), in a stable order."""
        merged = {**defaults, **self.finetune}
        configs = [{}]
        for key, value in merged.items():
            values = value if isinstance(value, list) else [value]
            configs = [{**c, key: v} for c in configs for v in values]
        return [FinetuneConfig(**c) for c in configs]


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep, as read from YAML (see the module docstring for the schema)."""

    source: ToySource | ModelSource
    experiments: tuple[Experiment, ...]
    eval: EvalConfig = EvalConfig()
    seeds: tuple[int, ...] = (0,)
    finetune: dict[str, Any] = field(default_factory=dict)
    name: str = "sweep"
    workers: int = 1  # processes running (model, world) cells side by side


# ---- validation helpers ---------------------------------------------------------------------


class _Reader:
    """Reads typed values out of nested YAML data, naming the key path in every error."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, path: str, problem: str) -> UsageError:
        return UsageError(f"config {self.origin}: {path}: {problem}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {type(value).__name__}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}" if path else str(unknown[0]),
                            f"unknown key; expected one of {', '.join(allowed)}")
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(f"{path}.{missing[0]}" if path else missing[0], "is required")
        return value

    def number(self, value: Any, path: str, *, integer: bool = False, low: float | None = None,
               high: float | None = None, low_open: bool = False) -> float | int:
        # YAML 1.1 reads 1e-3 (no dot) as a string: accept numeric strings too
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.fail(path, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise self.fail(path, f"must be a number, got {value!r}")
        if integer:
            if value != int(value):
                raise self.fail(path, f"must be a whole number, got {value!r}")
            value = int(value)
        if low is not None and (value < low or (low_open and value == low)):
            raise self.fail(path, f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")
        if high is not None and value > high:
            raise self.fail(path, f"must be <= {high:g}, got {value!r}")
        return value

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be a non-empty string, got {value!r}")
        return value

    def items(self, value: Any, path: str) -> list:
        if not isinstance(value, list) or not value:
            raise self.fail(path, "must be a non-empty list")
        return value


def _finetune_value(r: _Reader, key: str, value: Any, path: str) -> Any:
    if key in ("lr_scheduler",):
        return r.text(value, path)
    if key == "bf16":
        if not isinstance(value, bool):
            raise r.fail(path, f"must be true or false, got {value!r}")
        return value
    integer = key in ("batch_size", "grad_accum", "steps", "warmup_steps", "max_length",
                      "logging_steps")
    return r.number(value, path, integer=integer)


def _finetune(r: _Reader, value: Any, path: str, *, grid: bool) -> dict[str, Any]:
    raw = r.mapping(value, path, FINETUNE_KEYS)
    out: dict[str, Any] = {}
    for key, v in raw.items():
        if isinstance(v, list):
            if not grid:
                raise r.fail(f"{path}.{key}", "a list (grid axis) is allowed only in an "
                             "experiment's finetune")
            out[key] = [_finetune_value(r, key, x, f"{path}.{key}[{i}]")
                        for i, x in enumerate(r.items(v, f"{path}.{key}"))]
        else:
            out[key] = _finetune_value(r, key, v, f"{path}.{key}")
    return out


def _toy_model(r: _Reader, value: Any, path: str) -> dict[str, Any]:
    m = r.mapping(value, path, tuple(f.name for f in fields(ToyModelConfig)))
    out = {}
    for k, x in m.items():
        if k == "tie_embeddings":
            if not isinstance(x, bool):
                raise r.fail(f"{path}.{k}", f"must be true or false, got {x!r}")
            out[k] = x
        else:
            out[k] = r.number(x, f"{path}.{k}", integer=True, low=1)
    return out


def _toy_models(r: _Reader, value: Any, base: ToyModelConfig
                ) -> tuple[tuple[str, ToyModelConfig], ...]:
    """`models:` name → ToyModelConfig overrides of theta0.model (an empty mapping: as is)."""
    raw = r.mapping(value, "toy.models", tuple(value) if isinstance(value, dict) else ())
    if not raw:
        raise r.fail("toy.models", "must name at least one model size")
    out = []
    for name, spec in raw.items():
        path = f"toy.models.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise r.fail(path, f"{name!r} must be letters, digits, '.', '_' or '-'")
        try:
            out.append((name, replace(base, **_toy_model(r, spec, path))))
        except SafebasinError as e:
            raise r.fail(path, str(e)) from e
    return tuple(out)


def _toy(r: _Reader, value: Any) -> ToySource:
    raw = r.mapping(value, "toy", ("world_seed", "world_seeds", "theta0", "models"))
    t0 = r.mapping(raw.get("theta0"), "toy.theta0", (*_THETA0_KEYS, "model"))
    kwargs: dict[str, Any] = {}
    for key, v in t0.items():
        if key == "model":
            kwargs["model"] = _toy_model(r, v, "toy.theta0.model")
        elif key == "lr_scheduler":
            kwargs[key] = r.text(v, f"toy.theta0.{key}")
        else:
            kwargs[key] = r.number(v, f"toy.theta0.{key}", integer=key != "lr")
    if "world_seed" in raw and "world_seeds" in raw:
        raise r.fail("toy.world_seeds", "give world_seed or world_seeds, not both")
    world_seeds = (_seeds(r, raw["world_seeds"], "toy.world_seeds") if "world_seeds" in raw
                   else (r.number(raw.get("world_seed", 0), "toy.world_seed", integer=True),))
    try:
        if "model" in kwargs:
            kwargs["model"] = ToyModelConfig(**kwargs["model"])
        theta0 = Theta0Config(**kwargs)
    except SafebasinError as e:
        raise r.fail("toy.theta0", str(e)) from e
    models = _toy_models(r, raw["models"], theta0.model) if "models" in raw else ()
    return ToySource(world_seeds=world_seeds, theta0=theta0, models=models)


def _model(r: _Reader, value: Any, root: Path) -> ModelSource:
    keys = ("base", "data", "prompts", "utility_data", "prompt_column")
    raw = r.mapping(value, "model", keys, required=keys[:4])
    paths = {k: root / Path(r.text(raw[k], f"model.{k}")).expanduser() for k in keys[:4]}
    for k, p in paths.items():
        if not p.exists():
            raise r.fail(f"model.{k}", f"{str(p)!r} does not exist")
    column = raw.get("prompt_column")
    return ModelSource(**paths, prompt_column=None if column is None
                       else r.text(column, "model.prompt_column"))


def _eval(r: _Reader, value: Any) -> EvalConfig:
    raw = r.mapping(value, "eval", ("keywords", "max_new_tokens", "batch_size", "limit"))
    kw: dict[str, Any] = {}
    if "keywords" in raw:
        kw["keywords"] = r.text(raw["keywords"], "eval.keywords")
    for key in ("max_new_tokens", "batch_size"):
        if key in raw:
            kw[key] = r.number(raw[key], f"eval.{key}", integer=True, low=1)
    if raw.get("limit") is not None:
        kw["limit"] = r.number(raw["limit"], "eval.limit", integer=True, low=1)
    return EvalConfig(**kw)


def _seeds(r: _Reader, value: Any, path: str) -> tuple[int, ...]:
    seeds = tuple(r.number(s, f"{path}[{i}]", integer=True)
                  for i, s in enumerate(r.items(value, path)))
    if len(set(seeds)) != len(seeds):
        raise r.fail(path, f"seeds repeat: {list(seeds)}")
    return seeds


def _ema(r: _Reader, value: Any, path: str) -> tuple[EmaSpec, ...]:
    specs = []
    for i, item in enumerate(r.items(value, path)):
        raw = r.mapping(item, f"{path}[{i}]", ("eta", "every"), required=("eta",))
        eta = r.number(raw["eta"], f"{path}[{i}].eta", low=0.0, high=1.0, low_open=True)
        every = r.number(raw.get("every", 1), f"{path}[{i}].every", integer=True, low=1)
        specs.append(EmaSpec(float(eta), every))
    if len(set(specs)) != len(specs):
        raise r.fail(path, "the same (eta, every) is listed twice")
    return tuple(specs)


def _l2_reg(r: _Reader, value: Any, path: str, ema: tuple[EmaSpec, ...]) -> L2Match:
    if value is True:
        return L2Match()
    raw = r.mapping(value, path, ("tolerance", "max_tries", "initial", "ema", "models"))
    kw: dict[str, Any] = {}
    if "models" in raw:
        kw["models"] = tuple(r.text(m, f"{path}.models[{i}]")
                             for i, m in enumerate(r.items(raw["models"], f"{path}.models")))
    if "ema" in raw:
        targets = _ema(r, raw["ema"], f"{path}.ema")
        missing = [t for t in targets if t not in ema]
        if missing:
            raise r.fail(f"{path}.ema", f"eta={missing[0].eta:g} every={missing[0].every} is "
                         "not one of the experiment's ema")
        kw["targets"] = targets
    if "tolerance" in raw:
        kw["tolerance"] = r.number(raw["tolerance"], f"{path}.tolerance", low=0.0, low_open=True)
    if "max_tries" in raw:
        kw["max_tries"] = r.number(raw["max_tries"], f"{path}.max_tries", integer=True, low=1)
    if "initial" in raw:
        kw["initial"] = r.number(raw["initial"], f"{path}.initial", low=0.0, low_open=True)
    return L2Match(**kw)


def _match_utility(r: _Reader, value: Any, path: str) -> UtilityMatch:
    if value is True:
        return UtilityMatch()
    raw = r.mapping(value, path, ("tolerance", "max_tries"))
    kw: dict[str, Any] = {}
    if "tolerance" in raw:
        kw["tolerance"] = r.number(raw["tolerance"], f"{path}.tolerance", low=0.0,
                                   high=1.0, low_open=True)
    if "max_tries" in raw:
        kw["max_tries"] = r.number(raw["max_tries"], f"{path}.max_tries", integer=True, low=1)
    return UtilityMatch(**kw)


def _experiment(r: _Reader, value: Any, i: int, seeds: tuple[int, ...]) -> Experiment:
    path = f"experiments[{i}]"
    raw = r.mapping(value, path, ("name", "finetune", "seeds", "ema", "merges", "l2_reg",
                                  "trajectory_every", "match_utility"), required=("name",))
    ema = _ema(r, raw["ema"], f"{path}.ema") if "ema" in raw else ()
    merges = (tuple(r.items(raw["merges"], f"{path}.merges")) if raw.get("merges") is not None
              else ())
    for j, m in enumerate(merges):
        if m not in MERGES:
            raise r.fail(f"{path}.merges[{j}]", f"unknown merge {m!r}; choose from "
                         f"{', '.join(MERGES)}")
    if (merges or "l2_reg" in raw or "match_utility" in raw) and not ema:
        raise r.fail(f"{path}.ema", "merges, l2_reg and match_utility are matched to EMA "
                     "models: list at least one ema")
    match = (_match_utility(r, raw["match_utility"], f"{path}.match_utility")
             if raw.get("match_utility") else None)
    if match is not None and not ("l2_reg" in raw or set(merges) & set(UTILITY_MATCHED)):
        raise r.fail(f"{path}.match_utility", "matches the knobs of "
                     f"{', '.join(UTILITY_MATCHED)} or l2_reg: list one of them")
    traj = raw.get("trajectory_every")
    if traj is not None:
        traj = r.number(traj, f"{path}.trajectory_every", integer=True, low=1)
        # a path average falls back on the online EMA; the offline EMA has no fallback
        bad = [s for s in ema if s.every % traj] if "offline-ema" in merges else []
        if bad:
            raise r.fail(f"{path}.trajectory_every", f"ema every={bad[0].every} is not a "
                         f"multiple of {traj}: offline EMA needs the weights at each update")
    name = r.text(raw["name"], f"{path}.name")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise r.fail(f"{path}.name", f"{name!r} must be letters, digits, '.', '_' or '-' "
                     "(it names plot files)")
    return Experiment(
        name=name,
        finetune=_finetune(r, raw.get("finetune"), f"{path}.finetune", grid=True),
        seeds=_seeds(r, raw["seeds"], f"{path}.seeds") if "seeds" in raw else seeds,
        ema=ema, merges=merges,
        l2_reg=(_l2_reg(r, raw["l2_reg"], f"{path}.l2_reg", ema) if raw.get("l2_reg")
                else None),
        trajectory_every=traj, match_utility=match)


def _check_grids(r: _Reader, config: SweepConfig) -> None:
    """Build every FinetuneConfig now, so that a bad value fails before any training."""
    for i, exp in enumerate(config.experiments):
        try:
            grid = exp.grid(config.finetune)
        except SafebasinError as e:
            raise r.fail(f"experiments[{i}].finetune", str(e)) from e
        if exp.ema and any(c.l2_to_init > 0 for c in grid) and exp.l2_reg:
            raise r.fail(f"experiments[{i}].l2_reg", "tunes l2_to_init itself; do not also "
                         "set finetune.l2_to_init")


def _check_model_names(r: _Reader, config: SweepConfig) -> None:
    names = ({name for name, _ in config.source.models} or {"default"}
             if isinstance(config.source, ToySource) else set())
    for i, exp in enumerate(config.experiments):
        wanted = exp.l2_reg.models if exp.l2_reg is not None else None
        unknown = [m for m in wanted or () if m not in names]
        if unknown:
            raise r.fail(f"experiments[{i}].l2_reg.models", f"{unknown[0]!r} is not a toy "
                         f"model size; choose from {', '.join(sorted(names)) or '(none)'}")


def parse_config(data: Any, *, origin: str = "<config>", root: Path | None = None) -> SweepConfig:
    """Validate YAML data (already parsed) into a `SweepConfig`.

    Args:
        data: the parsed YAML document.
        origin: how errors name the config (its file name).
        root: relative `model:` paths are resolved against this folder (the config's).

    Raises:
        UsageError: the first problem, naming the key path.
    """
    r = _Reader(origin)
    raw = r.mapping(data, "", ("name", "toy", "model", "eval", "seeds", "finetune",
                               "experiments", "workers"), required=("experiments",))
    if ("toy" in raw) == ("model" in raw):
        raise r.fail("toy", "give exactly one of toy: (the embedded toy world) or model: "
                     "(base, data, prompts, utility_data)")
    source = (_toy(r, raw["toy"]) if "toy" in raw
              else _model(r, raw["model"], root or Path.cwd()))
    seeds = _seeds(r, raw["seeds"], "seeds") if "seeds" in raw else (0,)
    experiments = tuple(_experiment(r, e, i, seeds)
                        for i, e in enumerate(r.items(raw["experiments"], "experiments")))
    names = [e.name for e in experiments]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise r.fail("experiments", f"two experiments are named {dup!r}")
    config = SweepConfig(source=source, experiments=experiments, eval=_eval(r, raw.get("eval")),
                         seeds=seeds, finetune=_finetune(r, raw.get("finetune"), "finetune",
                                                         grid=False),
                         name=r.text(raw.get("name", "sweep"), "name"),
                         workers=r.number(raw.get("workers", 1), "workers", integer=True,
                                          low=1))
    _check_grids(r, config)
    _check_model_names(r, config)
    return config


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep config file (YAML).

    Raises:
        UsageError: missing file, invalid YAML, or a value out of the schema.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"config {str(path)!r}: cannot be read ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"config {str(path)!r}: invalid YAML{where}") from e
    return parse_config(data, origin=repr(str(path)), root=path.parent)


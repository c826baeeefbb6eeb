"""Points of a search: one merge, evaluated once, its result cached on disk under a content key.

A *point* is a merge of θ₀ and fine-tunes with fixed coefficients plus its evaluation. Its key is
a hash of everything the result depends on: the method and coefficients, the content hashes of
the inputs, and the evaluator's settings (prompts, keywords, decoding, dtype, utility data). The
same merge asked for by `tune` and by `landscape` (lerp at α = 0.5, say) is therefore one point.

Points run through `safebasin.executors` (in this process by default, or as Ray tasks or
SLURM jobs), which publishes each result atomically and claims a point while it runs. Layout of
a cache folder:

    points/<key>/result.json   settings, metrics and seconds; its presence means finished
    points/<key>/eval/         the evaluator's result folders (`eval/asr`, `eval/utility`)
    points/<key>/model/        the merged weights while needed (deleted after evaluation
                               unless kept)
    directions/<key>/          random directions of 2D landscapes (see `direction`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..chat.generation import DEFAULT_GENERATION, GenerationSettings
from ..eval.runs import PromptSpec

log = logging.getLogger(__name__)

GROUP = "points"  # the executors' group folder under the cache
RESULT_FILE = "result.json"
MODEL_DIR = "model"
EVAL_DIR = "eval"
_KEY_CHARS = 20


def settings_key(settings: dict) -> str:
    """A stable hash of JSON-able settings: the folder name of a point."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_KEY_CHARS]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _content_or_name(spec: str | Path | None) -> str | None:
    """A file by its content (sha256); a name (a shipped prompt set, a keyword list) as is."""
    path = Path(spec) if spec is not None else None
    return file_sha256(path) if path is not None and path.is_file() else spec and str(spec)


def default_cache_dir() -> Path:
    """`$SAFEBASIN_CACHE`, else `$XDG_CACHE_HOME/safebasin/points` (~/.cache by default)."""
    if os.environ.get("SAFEBASIN_CACHE"):
        return Path(os.environ["SAFEBASIN_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "safebasin" / "points"


class Evaluator(Protocol):
    """Scores one model folder, writing its result folders under `results_dir`.

    Returns a dict with at least `asr`, `asr_low`, `asr_high` (fractions); `n`,
    `degenerate_rate` and `utility` when known. `identity()` is what the results depend on
    (hashed into every point key)."""

    def identity(self) -> dict: ...

    def __call__(self, model_dir: Path, results_dir: Path) -> dict: ...


@dataclass(frozen=True)
class EvalSpec:
    """The settings of `safebasin eval asr` (and `eval utility --data`) for every point."""

    prompts: PromptSpec = PromptSpec()  # default: AdvBench from the Hub, every prompt
    keywords: str | Path = "qi"
    normalize_quotes: bool = False
    generation: GenerationSettings = DEFAULT_GENERATION
    dtype: str = "auto"
    device: str = "auto"
    utility_data: Path | None = None  # chat JSONL: held-out loss as the utility
    max_length: int | None = None  # truncate utility conversations
    extra: dict = field(default_factory=dict)  # anything else the caller wants in the key


class KeywordEvaluator:
    """Keyword ASR through `eval.run_asr` (results in `eval/asr`), and the chat loss through
    `eval.run_utility` (`eval/utility`) when `utility_data` is given: exactly what `safebasin
    eval asr` / `eval utility` write, so `safebasin push` reads them as they are."""

    def __init__(self, spec: EvalSpec | None = None) -> None:
        self.spec = spec or EvalSpec()
        self.prompts = self.spec.prompts

    def identity(self) -> dict:
        s, p, g = self.spec, self.prompts, self.spec.generation
        return {
            "prompts": {"source": _content_or_name(p.path), "column": p.column,
                        "limit": p.limit, "seed": p.seed},
            "keywords": _content_or_name(s.keywords),
            "normalize_quotes": s.normalize_quotes, "dtype": s.dtype,
            "generation": {"max_new_tokens": g.max_new_tokens, "chat_template": g.chat_template,
                           "system_prompt": g.system_prompt},
            "utility": ({"sha256": file_sha256(s.utility_data), "max_length": s.max_length}
                        if s.utility_data is not None else None),
            **s.extra,
        }

    def __call__(self, model_dir: Path, results_dir: Path) -> dict:
        from ..eval import run_asr, run_utility

        s = self.spec
        common = {"normalize_quotes": s.normalize_quotes, "generation": s.generation,
                  "dtype": s.dtype, "device": s.device}
        a = run_asr(model_dir, results_dir / "asr", prompts=self.prompts, keywords=s.keywords,
                    **common)
        metrics = {"asr": a["asr"], "asr_low": a["wilson_low"], "asr_high": a["wilson_high"],
                   "n": a["n"], "degenerate_rate": a["degenerate_rate"], "utility": None}
        if s.utility_data is not None:
            u = run_utility(model_dir, results_dir / "utility", data=s.utility_data,
                            max_length=s.max_length, **common)
            metrics["utility"] = u["loss"]["mean_loss"]
        return metrics


@dataclass(frozen=True)
class PointResult:
    """A finished point: its key and folder, the metrics, whether it came from the cache and
    the seconds its merge and evaluation took (0 when cached)."""

    key: str
    folder: Path
    metrics: dict
    cached: bool
    seconds: float

    @property
    def model(self) -> Path:
        return self.folder / MODEL_DIR


def evaluate_point(ctx, settings: dict, build: Callable[[Path], dict], evaluator: Evaluator,
                   keep_model: bool) -> dict:
    """A point's job (module level: Ray and submitit pickle it by name). `build(model_dir)`
    writes the merge and returns its recipe; the distance to θ₀ is taken from it."""
    model = ctx.folder / MODEL_DIR
    start = time.perf_counter()
    recipe = build(model)
    metrics = dict(evaluator(model, ctx.folder / EVAL_DIR))
    metrics.setdefault("distance", (recipe.get("distances") or {}).get("global_to_base"))
    seconds = time.perf_counter() - start
    if not keep_model:
        shutil.rmtree(model, ignore_errors=True)
    return {"settings": settings, "metrics": metrics, "seconds": seconds}


@dataclass(frozen=True)
class Job:
    """A point to run: the settings that key it, how to build its merge, a label."""

    settings: dict
    build: Callable[[Path], dict]
    label: str = ""

    @property
    def key(self) -> str:
        return settings_key(self.settings)


class PointRunner:
    """Runs jobs through `safebasin.executors` (in process by default; Ray or SLURM when given),
    caching each under `cache/points/<key>/` (`result.json` published atomically, a claim
    while it runs). Folders of a point: `eval/` (the evaluator's results) and `model/` (the
    weights, while needed)."""

    def __init__(self, cache: str | Path, evaluator: Evaluator, *, executor=None,
                 progress: Callable | None = None) -> None:
        self.root, self.evaluator = Path(cache), evaluator
        self.executor, self.progress = executor, progress

    def folder(self, key: str) -> Path:
        return self.root / GROUP / key

    def drop_model(self, key: str) -> None:
        shutil.rmtree(self.folder(key) / MODEL_DIR, ignore_errors=True)

    def run(self, jobs: list[Job], *, keep_models: bool = False) -> list[PointResult]:
        """Every job's result, in order, computing those not cached (duplicates run once)."""
        from ..executors import Point, run_points

        keys = [j.key for j in jobs]
        cached = {k: (self.folder(k) / RESULT_FILE).is_file() for k in keys}
        points = {k: Point(k, evaluate_point, args=(j.settings, j.build, self.evaluator,
                                                    keep_models), label=j.label, group=GROUP)
                  for k, j in zip(keys, jobs, strict=True)}
        results = run_points(list(points.values()), workdir=self.root, executor=self.executor,
                             progress=self.progress)
        return [PointResult(k, self.folder(k), results[k]["metrics"], cached[k],
                            0.0 if cached[k] else results[k]["seconds"]) for k in keys]


@dataclass(frozen=True)
class Search:
    """What every point of one search shares: the runner, the merge options (overwrite on: a
    killed attempt's folder is replaced), and the settings in every key (`common`: the
    evaluator's identity and the merge options; `inputs`: θ₀'s and the fine-tune's hashes)."""

    runner: PointRunner
    options: object
    common: dict
    inputs: list[str]


def start_search(base, finetuned, *, evaluation: EvalSpec | None, evaluator: Evaluator | None,
                 merge_options, cache, executor, progress: Callable | None = None) -> Search:
    from dataclasses import replace

    from ..merge import MergeOptions

    evaluator = evaluator or KeywordEvaluator(evaluation)
    options = replace(merge_options or MergeOptions(), overwrite=True, progress=None)
    runner = PointRunner(cache if cache is not None else default_cache_dir(), evaluator,
                         executor=executor, progress=progress)
    common = {"eval": evaluator.identity(),
              "merge": {"dtype": options.dtype, "vocab_mismatch": options.vocab_mismatch}}
    return Search(runner, options, common, [input_identity(base), input_identity(finetuned)])


def input_identity(path: str | Path) -> str:
    """A model input's content hash (the evaluator's own xxh3-128 over its safetensors)."""
    from ..chat.model import resolve_model_dir
    from ..checkpoint.content import model_content_hash

    return model_content_hash(resolve_model_dir(path))


__all__ = ["EvalSpec", "Evaluator", "Job", "KeywordEvaluator", "PointResult", "PointRunner",
           "Search", "default_cache_dir", "evaluate_point", "input_identity", "settings_key",
           "start_search"]

"""Where a sweep's θ₀, data and prompts come from, and how one model folder is evaluated.

The toy world is built and θ₀ trained on first use, in folders named by a hash of their
settings, so a second sweep with the same `toy:` block reuses them. A `model:` source points at
files. Either way every model is scored by the same code as `safebasin eval asr`: keyword ASR
(`safebasin.eval.evaluate_asr`), with the Wilson interval and the degenerate-output rate, plus a
utility (toy: held-out task accuracy; files: held-out chat loss) and the global L2 distance to θ₀.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..toy.files import MANIFEST
from .config import EvalConfig, ModelSource, ToySource

log = logging.getLogger(__name__)


def settings_key(settings: Any) -> str:
    """A short stable hash of JSON-able settings: the name of a cached folder."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Prepared:
    """θ₀, the fine-tuning data and the evaluation inputs of a sweep, ready to use."""

    base: Path  # θ₀ (HF folder)
    data: Path  # chat JSONL to fine-tune on
    identity: dict  # what the cached results depend on (hashed into every key)
    world: Any = None  # ToyWorld for a toy source
    prompts_file: Path | None = None
    prompt_column: str | None = None
    utility_data: Path | None = None


def _prepare_toy(source: ToySource, workdir: Path) -> Prepared:
    from ..baselines import RECORD_NAME
    from ..toy import ToyWorldConfig, build_world, generate, open_world, train_theta0

    world_config = ToyWorldConfig(seed=source.world_seed)
    # keyed by the generated data too (milliseconds to generate): a changed lexicon or
    # generator gives a new world, θ₀ and results instead of stale cached ones
    world_key = settings_key([asdict(world_config), asdict(generate(world_config))])
    world_dir = workdir / f"world-{world_key}"
    if (world_dir / MANIFEST).is_file():
        world = open_world(world_dir)
    else:
        log.info("building the toy world in %s", world_dir)
        world = build_world(world_dir, config=world_config, overwrite=True)
    identity = {"toy_world": asdict(world_config), "toy_world_data": world_key,
                "theta0": asdict(source.theta0)}
    theta0_dir = workdir / f"theta0-{settings_key(identity)}"
    if not (theta0_dir / RECORD_NAME).is_file():
        log.info("training θ₀ in %s", theta0_dir)
        train_theta0(world, theta0_dir, config=source.theta0, overwrite=True)
    return Prepared(base=theta0_dir, data=world.finetune_jsonl, identity=identity, world=world,
                    prompts_file=world.harmful_csv, prompt_column="prompt")


def _prepare_files(source: ModelSource) -> Prepared:
    base = source.base.resolve()
    weights = sorted(base.glob("*.safetensors"))
    # θ₀'s identity: its path and the size/mtime of its weights (hashing GBs would be slow);
    # the data files are small and are hashed
    identity = {"base": str(base),
                "base_files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights],
                "data_sha256": _sha256(source.data), "prompts_sha256": _sha256(source.prompts),
                "utility_sha256": _sha256(source.utility_data),
                "prompt_column": source.prompt_column}
    return Prepared(base=base, data=source.data.resolve(), identity=identity,
                    prompts_file=source.prompts, prompt_column=source.prompt_column,
                    utility_data=source.utility_data)


def prepare(source: ToySource | ModelSource, workdir: Path) -> Prepared:
    """Build (or reuse) the toy world and θ₀, or check the given files."""
    workdir.mkdir(parents=True, exist_ok=True)
    return _prepare_toy(source, workdir) if isinstance(source, ToySource) else \
        _prepare_files(source)


class Evaluator:
    """Scores model folders: keyword ASR on the harmful prompts, utility, distance to θ₀."""

    def __init__(self, prepared: Prepared, config: EvalConfig) -> None:
        from ..eval import load_conversations, load_prompts

        self.prepared, self.config = prepared, config
        self.prompts = load_prompts(prepared.prompts_file, column=prepared.prompt_column,
                                    limit=config.limit, seed=0)
        self.conversations = (load_conversations(prepared.utility_data)
                              if prepared.utility_data is not None else None)

    def _utility(self, model, tokenizer) -> tuple[float, str]:
        if self.prepared.world is not None:
            from ..toy import task_accuracy_of

            return task_accuracy_of(model, tokenizer, self.prepared.world).accuracy, \
                "task_accuracy"
        from ..eval import evaluate_utility_loss

        result = evaluate_utility_loss(model, tokenizer, self.conversations,
                                       batch_size=self.config.batch_size)
        return result.summary.mean_loss, "chat_loss"

    def __call__(self, model_dir: Path) -> dict:
        """One row's measured fields for the model folder `model_dir`."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..eval import GenerationSettings, evaluate_asr
        from ..merge import distance

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True,
                                                     dtype="auto").to(device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        generation = GenerationSettings(max_new_tokens=self.config.max_new_tokens,
                                        batch_size=self.config.batch_size)
        asr = evaluate_asr(model, tokenizer, self.prompts, keywords=self.config.keywords,
                           generation=generation).summary
        utility, metric = self._utility(model, tokenizer)
        return {"distance": distance(self.prepared.base, model_dir).global_l2,
                "asr": asr.asr, "asr_low": asr.wilson_low, "asr_high": asr.wilson_high,
                "successes": asr.successes, "n": asr.n, "degenerate_rate": asr.degenerate_rate,
                "asr_excluding_degenerate": asr.asr_excluding_degenerate,
                "utility": utility, "utility_metric": metric}

"""Where a sweep's θ₀, data and prompts come from, and how one model folder is evaluated.

The toy world is built and θ₀ trained on first use, in folders named by a hash of their
settings, so a second sweep with the same `toy:` block reuses them; a toy source with several
world seeds and model sizes is prepared one (model, world) cell at a time. A `model:` source
points at files. Either way every model is scored by the same code as `safebasin eval asr`:
keyword ASR (`safebasin.eval.evaluate_asr`), with the Wilson interval and the degenerate-output
rate, plus a utility (toy: held-out task accuracy; files: held-out chat loss) and the global L2
distance to θ₀. In the toy world, which knows what each harmful prompt asks for, every response
is also classified by the ground-truth judge (`safebasin.toy.judge`): the harmful-compliance
rate and the keyword rule's confusion against it; and keyword ASR is measured a second time on
the training frames (the in-distribution number). The per-prompt outcomes are returned too,
for the paired bootstrap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SafebasinError
from ..toy.files import MANIFEST
from .config import EvalConfig, ModelSource, ToyCell, ToySource

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
    labels: dict = field(default_factory=dict)  # model, world_seed, params: on every row


def parameter_count(model_dir: Path) -> int:
    """Stored parameters of a checkpoint (a tied lm_head counted once), from its headers."""
    from ..checkpoint import open_checkpoint

    with open_checkpoint(model_dir) as ckpt:
        return sum(math.prod(ckpt.shape(name)) for name in ckpt.names)


def _prepare_toy(source: ToySource | ToyCell, workdir: Path) -> Prepared:
    from ..baselines import RECORD_NAME
    from ..toy import ToyWorldConfig, build_world, generate, open_world, train_theta0

    world_config = ToyWorldConfig(seed=source.world_seed)
    cell = source if isinstance(source, ToyCell) else source.cells()[0]
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
                "theta0": asdict(cell.theta0)}
    theta0_dir = workdir / f"theta0-{settings_key(identity)}"
    if not (theta0_dir / RECORD_NAME).is_file():
        log.info("training θ₀ in %s", theta0_dir)
        train_theta0(world, theta0_dir, config=cell.theta0, overwrite=True)
    labels = {"model": cell.model, "world_seed": cell.world_seed,
              "params": parameter_count(theta0_dir)}
    return Prepared(base=theta0_dir, data=world.finetune_jsonl, identity=identity, world=world,
                    prompts_file=world.harmful_csv, prompt_column="prompt", labels=labels)


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
                    utility_data=source.utility_data,
                    labels={"params": parameter_count(base)})


def prepare(source: ToySource | ToyCell | ModelSource, workdir: Path) -> Prepared:
    """Build (or reuse) the toy world and θ₀ of one cell, or check the given files."""
    workdir.mkdir(parents=True, exist_ok=True)
    return _prepare_files(source) if isinstance(source, ModelSource) else \
        _prepare_toy(source, workdir)


def _requests(world: Any, split: str) -> list[tuple[str, str]] | None:
    """(prompt, requested object) of a toy world's harmful prompts of `split`, or None when
    the world predates the judge (no `object` column)."""
    reader = getattr(world, "harmful_requests", None)
    if reader is None:
        return None
    try:
        return reader(split)
    except (KeyError, ValueError, SafebasinError):
        return None


class Evaluator:
    """Scores model folders: keyword ASR on the harmful prompts (and, in the toy world, the
    ground-truth judge and the training frames), utility, distance to θ₀."""

    def __init__(self, prepared: Prepared, config: EvalConfig) -> None:
        from ..eval import load_conversations, load_prompts

        self.prepared, self.config = prepared, config
        self.prompts = load_prompts(prepared.prompts_file, column=prepared.prompt_column,
                                    limit=config.limit, seed=0)
        self.conversations = (load_conversations(prepared.utility_data)
                              if prepared.utility_data is not None else None)
        self.requested: list[str] | None = None
        self.train_frames: list[tuple[str, str]] | None = None
        if prepared.world is not None:
            heldout = _requests(prepared.world, "heldout")
            if heldout is not None:
                self.requested = [heldout[p.index][1] for p in self.prompts]
            train = _requests(prepared.world, "train_frames")
            if train is not None and config.limit is not None:
                train = train[:config.limit]
            self.train_frames = train

    def utility(self, model_dir: Path) -> float:
        """The utility alone (for searches that only need it)."""
        model, tokenizer = self._load(model_dir)
        return self._utility(model, tokenizer)[0]

    def _load(self, model_dir: Path):
        from ..chat import load_model, load_tokenizer

        return load_model(model_dir, dtype="auto", device="auto"), load_tokenizer(model_dir)

    def _utility(self, model, tokenizer) -> tuple[float, str]:
        if self.prepared.world is not None:
            from ..toy import task_accuracy_of

            return task_accuracy_of(model, tokenizer, self.prepared.world).accuracy, \
                "task_accuracy"
        from ..eval import evaluate_utility_loss

        result = evaluate_utility_loss(model, tokenizer, self.conversations,
                                       batch_size=self.config.batch_size)
        return result.summary.mean_loss, "chat_loss"

    def _judged(self, records, requested: list[str], prefix: str) -> tuple[dict, list[str]]:
        from ..toy.judge import judge_response, summarize_judgements

        verdicts = [judge_response(r.response, requested=obj)
                    for r, obj in zip(records, requested, strict=True)]
        summary = summarize_judgements(verdicts, [r.success for r in records])
        fields = {f"{prefix}harmful_rate": summary.harmful_rate}
        if not prefix:
            fields.update(harmful_low=summary.harmful_low, harmful_high=summary.harmful_high,
                          **{f"judge_{v}": c for v, c in summary.counts.items()},
                          **summary.confusion)
        return fields, verdicts

    def evaluate(self, model_dir: Path) -> tuple[dict, dict]:
        """One row's measured fields for the model folder `model_dir`, and its per-prompt
        outcomes (prompt index, keyword success, verdict; held-out and training frames)."""
        from ..eval import GenerationSettings, evaluate_asr
        from ..merge import distance_to_base

        model, tokenizer = self._load(model_dir)
        generation = GenerationSettings(max_new_tokens=self.config.max_new_tokens,
                                        batch_size=self.config.batch_size)
        result = evaluate_asr(model, tokenizer, self.prompts, keywords=self.config.keywords,
                              generation=generation)
        asr = result.summary
        utility, metric = self._utility(model, tokenizer)
        row = {"distance": distance_to_base(self.prepared.base, model_dir),
               "asr": asr.asr, "asr_low": asr.wilson_low, "asr_high": asr.wilson_high,
               "successes": asr.successes, "n": asr.n, "degenerate_rate": asr.degenerate_rate,
               "asr_excluding_degenerate": asr.asr_excluding_degenerate,
               "utility": utility, "utility_metric": metric}
        outcomes: dict[str, Any] = {
            "heldout": {"prompt_index": [r.index for r in result.records],
                        "keyword_success": [int(r.success) for r in result.records]}}
        if self.requested is not None:
            fields, verdicts = self._judged(result.records, self.requested, "")
            row.update(fields)
            outcomes["heldout"]["verdict"] = verdicts
        if self.train_frames:
            train = evaluate_asr(model, tokenizer, [p for p, _ in self.train_frames],
                                 keywords=self.config.keywords, generation=generation)
            row["asr_train_frames"] = train.summary.asr
            fields, verdicts = self._judged(train.records, [o for _, o in self.train_frames],
                                            "train_frames_")
            row["harmful_rate_train_frames"] = fields["train_frames_harmful_rate"]
            outcomes["train_frames"] = {
                "keyword_success": [int(r.success) for r in train.records], "verdict": verdicts}
        return row, outcomes

    def __call__(self, model_dir: Path) -> dict:
        """One row's measured fields for the model folder `model_dir`."""
        return self.evaluate(model_dir)[0]

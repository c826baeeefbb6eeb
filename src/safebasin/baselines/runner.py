"""Supervised fine-tuning over the transformers `Trainer`: the baseline every method is compared to.

Loss on the assistant's tokens only (see `chat.data`), AdamW, optional L2 regularisation toward
θ₀ (`l2_to_init`), and any extra Trainer callbacks (the online EMA). The result is a normal HF
model folder: `config.json`, `generation_config.json`, `model.safetensors`, the tokenizer, and
`safebasin_finetune.json` (settings, loss curve, wall time), which is written last: a folder
without it is an unfinished run.

Fast on CPU by construction: no evaluation loop, no checkpoints unless asked, no reporting
integrations, the data loader in-process, the Trainer's stdout printers removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers import __version__ as transformers_version
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .. import __version__, provenance
from ..chat.data import ChatCollator, ChatDataset, Message, read_chat_jsonl
from ..chat.model import load_model, load_tokenizer
from ..errors import CheckpointNotFoundError, OutputExistsError, UsageError
from .callbacks import ProgressBar
from .config import RECORD_NAME, FinetuneConfig, FinetuneResult
from .l2_to_init import L2ToInitTrainer

logger = logging.getLogger(__name__)


def _training_args(out_dir: Path, config: FinetuneConfig) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        max_steps=config.steps if config.steps is not None else -1,
        num_train_epochs=config.epochs,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to=[],
        disable_tqdm=True,  # ProgressBar replaces the Trainer's bar and its stdout log lines
        dataloader_num_workers=0,  # in-process: worker start-up costs more than toy batches
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # our dataset yields exactly the model's inputs
    )


def _prepare_out_dir(out_dir: Path, *, overwrite: bool, protect: Sequence[Path] = ()) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise OutputExistsError(f"{str(out_dir)!r} exists and is not empty; pass "
                                    "`overwrite` or choose another output folder")
        resolved = out_dir.resolve()
        for p in protect:
            if resolved == p.resolve() or resolved in p.resolve().parents:
                raise UsageError(f"the output folder {str(out_dir)!r} would delete the input "
                                 f"{str(p)!r}; choose another output folder")
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        else:
            out_dir.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_record(out_dir: Path, record: dict) -> None:
    tmp = out_dir / f".{RECORD_NAME}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / RECORD_NAME)  # last and atomic: its presence marks a finished run


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    out_dir: str | Path,
    *,
    config: FinetuneConfig,
    callbacks: Sequence[TrainerCallback] = (),
    save_dtype: torch.dtype | None = None,
    record: dict | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> FinetuneResult:
    """Train `model` on chat `conversations` (assistant tokens only) and save it to `out_dir`.

    The in-memory entry point, shared by `finetune` and the toy world's θ₀ training.

    Args:
        model: trained in place, in its current dtype and device placement by the Trainer.
        tokenizer: with a chat template; saved beside the weights.
        conversations: lists of chat messages (see `chat.read_chat_jsonl`).
        out_dir: created; must be empty or absent unless `overwrite` (which deletes it first).
        config: optimisation settings.
        callbacks: extra Trainer callbacks, for example `safebasin.ema.EMACallback`.
        save_dtype: dtype of the saved weights (None: as trained).
        record: extra JSON fields for `safebasin_finetune.json` (inputs, hashes).
        show_progress: a tqdm bar on stderr.

    Returns:
        The steps run, loss curve and training wall time (Trainer set-up and steps).

    Raises:
        OutputExistsError: `out_dir` is not empty and `overwrite` is False.
        DataFormatError: the chat template cannot locate assistant tokens.
    """
    out_dir = Path(out_dir)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has neither a pad nor an eos token to pad batches with")
    pad_id = tokenizer.pad_token_id
    pad_id = tokenizer.eos_token_id if pad_id is None else pad_id
    dataset = ChatDataset(tokenizer, conversations, max_length=config.max_length)
    _prepare_out_dir(out_dir, overwrite=overwrite)
    extra = {"l2_to_init": config.l2_to_init} if config.l2_to_init > 0 else {}
    trainer_cls = L2ToInitTrainer if config.l2_to_init > 0 else Trainer
    start = time.perf_counter()
    # processing_class: callbacks (the EMA's final folder) and checkpoints save the tokenizer
    trainer = trainer_cls(model=model, args=_training_args(out_dir, config),
                          train_dataset=dataset, data_collator=ChatCollator(pad_id),
                          processing_class=tokenizer, callbacks=list(callbacks), **extra)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if show_progress:
        trainer.add_callback(ProgressBar())
    output = trainer.train()
    wall_s = time.perf_counter() - start

    if save_dtype is not None:
        trainer.model.to(save_dtype)
    trainer.model.save_pretrained(out_dir)  # safetensors (the only format transformers 5 writes)
    tokenizer.save_pretrained(out_dir)
    losses = tuple((e["step"], float(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    result = FinetuneResult(out_dir=out_dir, steps=trainer.state.global_step, losses=losses,
                            train_loss=float(output.training_loss), wall_s=wall_s)
    _write_record(out_dir, {
        **(record or {}), "config": asdict(config), "steps": result.steps,
        "losses": [list(x) for x in losses], "train_loss": result.train_loss,
        "wall_s": round(wall_s, 3), "n_conversations": len(dataset),
        "versions": {"safebasin": __version__, "torch": torch.__version__,
                     "transformers": transformers_version},
        # the CPU, kernel settings and commit that made these bytes (reproducible mode or not)
        "provenance": provenance.collect()})
    logger.info("fine-tuned %d steps in %.1f s, final loss %.4f", result.steps, wall_s,
                losses[-1][1] if losses else float("nan"))
    return result


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir() or not any(model_dir.glob("*.safetensors*")):
        raise CheckpointNotFoundError(f"{str(model_dir)!r} is not a model folder with "
                                      "safetensors weights; pass a local HF model folder")


def _load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.chat_template is None:
        raise UsageError(f"the tokenizer in {str(model_dir)!r} has no chat template, so "
                         "assistant tokens cannot be located")
    return tokenizer


def _load_model(model_dir: Path) -> tuple[PreTrainedModel, torch.dtype]:
    model = load_model(model_dir, dtype="auto", device=None)  # the Trainer places it
    stored = model.dtype
    return model.float(), stored  # fp32 master weights: bf16 AdamW updates round away


def finetune(
    model_dir: str | Path,
    data_jsonl: str | Path,
    out_dir: str | Path,
    *,
    config: FinetuneConfig,
    callbacks: Sequence[TrainerCallback] = (),
    overwrite: bool = False,
    show_progress: bool = False,
) -> FinetuneResult:
    """Fine-tune the model folder `model_dir` on a chat JSONL file; write an HF folder to `out_dir`.

    Weights train in fp32 and are saved in the input's stored dtype. The data, the model
    folder and the tokenizer are checked before `out_dir` is touched or the model loaded.

    Example:
        >>> finetune("theta0", "world/finetune.jsonl", "ft",
        ...          config=FinetuneConfig(lr=1e-3, batch_size=16, steps=300))  # doctest: +SKIP

    Raises:
        CheckpointNotFoundError: `model_dir` is not a local folder with safetensors weights.
        DataNotFoundError, DataFormatError: the data file is missing or malformed.
        OutputExistsError: `out_dir` is not empty and `overwrite` is False.
        UsageError: `out_dir` would delete an input; the tokenizer has no chat template.
    """
    model_dir, data_jsonl, out_dir = Path(model_dir), Path(data_jsonl), Path(out_dir)
    conversations = read_chat_jsonl(data_jsonl)
    _check_model_dir(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    _prepare_out_dir(out_dir, overwrite=overwrite, protect=(model_dir, data_jsonl))
    model, stored = _load_model(model_dir)
    record = {"base_model": str(model_dir), "data": str(data_jsonl),
              "data_sha256": _sha256(data_jsonl)}
    return train(model, tokenizer, conversations, out_dir, config=config, callbacks=callbacks,
                 save_dtype=stored, record=record, show_progress=show_progress)

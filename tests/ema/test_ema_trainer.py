"""`EMACallback` inside a real transformers `Trainer` on a tiny Llama (CPU, fp32)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from support import load_state, make_model

from safebasin import merge
from safebasin.errors import CheckpointNotFoundError, UsageError

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)

from safebasin.ema import EMACallback  # noqa: E402

ETA = 0.3


class RandomTokens(torch.utils.data.Dataset):
    """Random token ids; labels are the inputs (language modelling)."""

    def __init__(self, n: int = 32, length: int = 12, vocab: int = 96, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Snapshots(TrainerCallback):
    """Records the weights after every optimizer step and counts micro-batch ends."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.substeps = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {n: p.detach().double().clone()
                                           for n, p in model.named_parameters()}

    def on_substep_end(self, args, state, control, **kwargs):
        self.substeps += 1


@pytest.fixture(scope="module")
def theta0(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("ema_trainer") / "theta0", seed=0)


def train(theta0: Path, out: Path, callbacks: list, *, steps: int, resume: Path | None = None,
          **overrides) -> Trainer:
    settings = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                    learning_rate=1e-2, report_to=[], save_strategy="no",
                    logging_strategy="no", use_cpu=True, seed=0, data_seed=0,
                    disable_tqdm=True, dataloader_num_workers=0)
    settings.update(overrides)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(theta0),
                      args=TrainingArguments(**settings), train_dataset=RandomTokens(),
                      callbacks=callbacks)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def assert_fp32_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                      inputs: list[dict[str, torch.Tensor]]) -> None:
    """Equal up to fp32 rounding: an ulp of the inputs' size (2⁻²³·max|θₖ|) per input."""
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        scale = torch.stack([x[k].abs() for x in inputs]).amax(0).double()
        tol = len(inputs) * 2.0**-23 * scale
        assert bool(((a[k].double() - b[k].double()).abs() <= tol).all()), k


def test_online_ema_equals_offline_merge_of_its_trajectory(theta0, tmp_path):
    out, n = tmp_path / "run", 2
    train(theta0, out, [EMACallback(eta=ETA, every=n, save_trajectory_every=n)], steps=6)
    points = sorted(p.name for p in (out / "trajectory").iterdir() if p.is_dir())
    assert points == ["step-000002", "step-000004", "step-000006"]
    merge.ema(theta0, [out / "trajectory"], tmp_path / "offline", eta=ETA)
    inputs = [load_state(theta0)] + [load_state(out / "trajectory" / p) for p in points]
    assert_fp32_close(load_state(out / "ema"), load_state(tmp_path / "offline"), inputs)


def test_gradient_accumulation_updates_once_per_optimizer_step(theta0, tmp_path):
    cb, snaps = EMACallback(eta=ETA, shadow="delta"), Snapshots()
    train(theta0, tmp_path / "run", [snaps, cb], steps=3, gradient_accumulation_steps=2,
          per_device_train_batch_size=2)
    assert snaps.substeps == 3 and sorted(snaps.weights) == [1, 2, 3]
    assert (cb.ema.step, cb.ema.num_updates) == (3, 3)
    ref = {n: t.double() for n, t in load_state(theta0).items()}
    for k in (1, 2, 3):
        ref = {n: (1 - ETA) * r + ETA * snaps.weights[k][n] for n, r in ref.items()}
    for n, r in ref.items():
        torch.testing.assert_close(cb.ema.value(n).double(), r, rtol=1e-6, atol=1e-8, msg=n)


def test_resumed_run_ends_with_the_same_ema_bytes(theta0, tmp_path):
    a = tmp_path / "a"
    saving = dict(save_strategy="steps", save_steps=2)
    train(theta0, a, [EMACallback(eta=ETA, shadow="delta")], steps=4, **saving)
    straight = (a / "ema" / "model.safetensors").read_bytes()
    assert (a / "checkpoint-2" / "ema_state" / "ema_state.json").is_file()
    # another output folder: the callback finds the checkpoint through the training arguments
    b, resume = tmp_path / "b", a / "checkpoint-2"
    cb = EMACallback(eta=ETA, shadow="delta")
    train(theta0, b, [cb], steps=4, resume=resume, resume_from_checkpoint=str(resume), **saving)
    assert (cb.ema.step, cb.ema.num_updates) == (4, 4)
    assert (b / "ema" / "model.safetensors").read_bytes() == straight


def test_resume_without_ema_state_is_an_error(theta0, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    cb = EMACallback(eta=ETA)
    with pytest.raises(CheckpointNotFoundError, match="resumes at step 5 but no EMA state"):
        cb.on_train_begin(args, TrainerState(global_step=5), None,
                          model=AutoModelForCausalLM.from_pretrained(theta0))


def test_trajectory_only_mode_keeps_no_ema(theta0, tmp_path):
    cb = EMACallback(eta=None, save_trajectory_every=2)
    train(theta0, tmp_path / "run", [cb], steps=2)
    assert cb.ema is None and not (tmp_path / "run" / "ema").exists()
    saved = load_state(tmp_path / "run" / "trajectory" / "step-000002")
    assert set(saved) == set(load_state(theta0))


@pytest.mark.parametrize("kwargs", [{"eta": 2.0}, {"every": 0}, {"shadow": "fp16"},
                                    {"save_trajectory_every": 0},
                                    {"eta": None, "save_trajectory_every": None}])
def test_bad_callback_settings_fail_before_training(kwargs):
    with pytest.raises(UsageError):
        EMACallback(**kwargs)


def test_ema_folder_loads_and_matches_the_callback_average(theta0, tmp_path):
    cb = EMACallback(eta=ETA)
    train(theta0, tmp_path / "run", [cb], steps=2)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "ema")
    for n, p in loaded.named_parameters():
        assert torch.equal(p, cb.ema.value(n)), n
    shutil.rmtree(tmp_path / "run")

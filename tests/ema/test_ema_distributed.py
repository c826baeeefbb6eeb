"""EMA under DDP and FSDP2 with 2 CPU processes (gloo) against the single-process result.

One spawn runs both parts (process start-up dominates): the same tiny Llama, the same batch on
every rank (so averaged gradients equal single-process gradients), SGD for a few steps, an fp32
and a delta EMA. Ranks report what they saw in files (`ema_ranks.py`, spawned by a child
process that starts with the session: `early_jobs`); the tests compare, and run last.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ema_ranks import ETA, WORLD, tiny_model, train_steps
from support import load_state

from safebasin.ema import EMA

pytest.importorskip("transformers")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch without gloo", allow_module_level=True)


@pytest.fixture(scope="module")
def runs(ema_ranks_run) -> Path:
    out = ema_ranks_run
    model = tiny_model()  # the single-process reference, same seed, same batch
    emas = [EMA(model, eta=ETA, shadow=kind) for kind in ("fp32", "delta")]
    train_steps(model, model, emas)
    for ema in emas:
        ema.save_pretrained(out / f"single_{ema.kind}")
    return out


@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_ddp_ema_equals_single_process(runs, kind):
    single, ddp = load_state(runs / f"single_{kind}"), load_state(runs / f"ddp_{kind}")
    assert set(single) == set(ddp)
    # identical gradients on both ranks average to the single-process ones exactly
    assert all(torch.equal(single[n], ddp[n]) for n in single)


@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_ddp_ranks_hold_identical_full_shadows(runs, kind):
    r0 = torch.load(runs / f"ddp_{kind}_rank0.pt", weights_only=True)
    r1 = torch.load(runs / f"ddp_{kind}_rank1.pt", weights_only=True)
    assert all(torch.equal(r0[n], r1[n]) for n in r0)


@pytest.mark.parametrize("kind", ["fp32", "delta"])
def test_fsdp2_ema_equals_single_process(runs, kind):
    single, fsdp = load_state(runs / f"single_{kind}"), load_state(runs / f"fsdp_{kind}")
    assert set(single) == set(fsdp)
    for n in single:
        torch.testing.assert_close(fsdp[n], single[n], rtol=1e-6, atol=1e-7, msg=n)


def test_fsdp2_ranks_shadow_only_their_local_shard(runs):
    for rank in range(WORLD):
        report = json.loads((runs / f"fsdp_rank{rank}.json").read_text())
        for kind, r in report.items():
            assert r["plain_tensors"], kind  # local tensors: updates run no collective
            assert r["shadow_numel"] < 0.75 * r["model_numel"], kind
            assert r["state_round_trip"] and r["swapped_in"], kind

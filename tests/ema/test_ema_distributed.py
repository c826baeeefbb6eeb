"""EMA under DDP and FSDP2 with 2 CPU processes (gloo) against the single-process result.

One spawn runs both parts (process start-up dominates): the same tiny Llama, the same batch on
every rank (so averaged gradients equal single-process gradients), SGD for a few steps, an fp32
and a delta EMA. Ranks report what they saw in files; the tests compare.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import load_state, tiny_llama_config

from safebasin.ema import EMA

pytest.importorskip("transformers")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch without gloo", allow_module_level=True)

STEPS, ETA, WORLD = 3, 0.3, 2


def _model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config())


def _train(model, wrapped, emas: list[EMA]) -> None:
    batch = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(1, STEPS + 1):
        wrapped(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
        for ema in emas:
            ema.update(step)


def _ddp_part(rank: int, out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = _model()
    ddp = DistributedDataParallel(model)
    emas = [EMA(ddp, eta=ETA, shadow=kind) for kind in ("fp32", "delta")]
    _train(model, ddp, emas)
    for ema in emas:
        ema.save_pretrained(out / f"ddp_{ema.kind}")  # rank 0 writes
        # every rank holds the full, identical shadow: compare rank 1's with rank 0's on disk
        torch.save({n: ema.value(n) for n in ema.names}, out / f"ddp_{ema.kind}_rank{rank}.pt")


def _fsdp_part(rank: int, out: Path) -> None:
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    emas = [EMA(model, eta=ETA, shadow=kind) for kind in ("fp32", "delta")]
    _train(model, model, emas)
    report = {}
    for ema in emas:
        shadow = ema.state_dict()["shadow"]
        report[ema.kind] = {
            "plain_tensors": all(type(t) is torch.Tensor for t in shadow.values()),
            "shadow_numel": sum(t.numel() for t in shadow.values()),
            "model_numel": sum(p.numel() for p in model.parameters()),
        }
        ema.save_pretrained(out / f"fsdp_{ema.kind}")  # gathers one tensor at a time
        ema.save_state(out / f"fsdp_state_{ema.kind}")
        # a fresh EMA on the sharded model takes the saved state back, shard by shard
        again = EMA(model, eta=ETA, shadow=ema.kind)
        again.load_state(out / f"fsdp_state_{ema.kind}")
        report[ema.kind]["state_round_trip"] = all(
            torch.equal(again.state_dict()["shadow"][n], shadow[n]) for n in shadow)
        with ema.swapped():
            inside = model.model.norm.weight.full_tensor()
        report[ema.kind]["swapped_in"] = bool(torch.equal(
            inside, load_state(out / f"fsdp_{ema.kind}")["model.norm.weight"])) if rank == 0 \
            else True
    (out / f"fsdp_rank{rank}.json").write_text(json.dumps(report))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on a small shared CPU
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _ddp_part(rank, Path(out))
        dist.barrier()
        _fsdp_part(rank, Path(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ema_dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    model = _model()  # the single-process reference, same seed, same batch
    emas = [EMA(model, eta=ETA, shadow=kind) for kind in ("fp32", "delta")]
    _train(model, model, emas)
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

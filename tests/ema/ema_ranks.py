"""The ranks of `test_ema_distributed`: DDP, then FSDP2, in 2 gloo processes on the CPU.

`python ema_ranks.py OUT` starts them (`early_jobs` does, at the session's start); each rank
writes what it saw under OUT, and the tests compare it with the single-process run. The ranks
are forked after the parent has imported torch and transformers (no thread pool or process group
exists yet), so neither rank imports them again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import load_state, tiny_llama_config

from safebasin.ema import EMA

STEPS, ETA, WORLD = 3, 0.3, 2


def tiny_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config())


def train_steps(model, wrapped, emas: list[EMA]) -> None:
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

    model = tiny_model()
    ddp = DistributedDataParallel(model)
    emas = [EMA(ddp, eta=ETA, shadow=kind) for kind in ("fp32", "delta")]
    train_steps(model, ddp, emas)
    for ema in emas:
        ema.save_pretrained(out / f"ddp_{ema.kind}")  # rank 0 writes
        # every rank holds the full, identical shadow: compare rank 1's with rank 0's on disk
        torch.save({n: ema.value(n) for n in ema.names}, out / f"ddp_{ema.kind}_rank{rank}.pt")


def _fsdp_part(rank: int, out: Path) -> None:
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    emas = [EMA(model, eta=ETA, shadow=kind) for kind in ("fp32", "delta")]
    train_steps(model, model, emas)
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


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes on a small shared CPU
    # a file rendezvous: a port picked beforehand can be taken by another process meanwhile
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=WORLD)
    try:
        _ddp_part(rank, Path(out))
        dist.barrier()
        _fsdp_part(rank, Path(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def start_ranks(out: str) -> None:
    from torch.distributed.fsdp import fully_shard  # noqa: F401
    from torch.nn.parallel import DistributedDataParallel  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    mp.start_processes(_worker, args=(out,), nprocs=WORLD, join=True, start_method="fork")


if __name__ == "__main__":
    start_ranks(sys.argv[1])

"""The tensor-op interface of the one executor: whole-tensor ops, chunk ops, statistics."""

from __future__ import annotations

import torch
from reference_merges import f64
from support import load_state

from safebasin.merge import (
    MergeOptions,
    Planned,
    TensorOp,
    TensorStatistic,
    collect_statistics,
    executor,
    run_merge,
    stream,
)


class _UnitDelta(TensorOp):
    """θ₀ + Δ/‖Δ‖_F on matrices (a whole-tensor quantity), θ₀ elsewhere."""

    whole = True

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def apply(self, tensors, start, stop):
        base, ft = (t.float() for t in tensors)
        self.shapes.append(tuple(base.shape))
        if base.dim() < 2:
            return base
        delta = ft - base
        return base + delta / delta.norm()


class _Starts(TensorOp):
    """A chunk op that records where its chunks start and copies input 1."""

    def __init__(self) -> None:
        self.starts: list[int] = []

    def apply(self, tensors, start, stop):
        self.starts.append(start)
        return tensors[1]


class _TwoPassCount(TensorStatistic):
    def __init__(self) -> None:
        self.seen = [0, 0]
        self.pass_ = 0

    def update(self, tensors, start, stop):
        self.seen[self.pass_] += stop - start

    def end_pass(self):
        self.pass_ += 1
        return self.pass_ < 2


def _small_chunks(monkeypatch, n: int) -> None:
    monkeypatch.setattr(executor, "CHUNK_ELEMS", n)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", n)


def test_whole_op_sees_whole_tensors_gathered_across_chunks(models, tmp_path, monkeypatch):
    _small_chunks(monkeypatch, 100)
    ops: dict[str, _UnitDelta] = {}

    def planner(inputs):
        ops.update({n: _UnitDelta() for n in inputs[0].names})
        return Planned([0.0], ops=ops, formula="θ = θ₀ + Δ/‖Δ‖")

    run_merge("unit-delta", {}, [models["base"], models["ft"]], tmp_path / "out",
              MergeOptions(), planner)
    base, ft = f64(load_state(models["base"])), f64(load_state(models["ft"]))
    out = load_state(tmp_path / "out")
    for k, op in ops.items():
        assert op.shapes == [tuple(base[k].shape)], k
        d = ft[k] - base[k]
        ref = base[k] + d / d.norm() if base[k].dim() == 2 else base[k]
        torch.testing.assert_close(out[k].double(), ref, rtol=1e-6, atol=1e-6)


def test_chunk_op_gets_every_chunk_once_in_order(models, tmp_path, monkeypatch):
    _small_chunks(monkeypatch, 100)
    name = "model.layers.0.mlp.up_proj.weight"
    op = _Starts()
    run_merge("copy", {}, [models["base"], models["ft"]], tmp_path / "out", MergeOptions(),
              lambda inputs: Planned([0.0], ops={name: op}))
    assert op.starts == list(range(0, 64 * 32, 100))
    assert torch.equal(load_state(tmp_path / "out")[name], load_state(models["ft"])[name])


def test_statistics_passes_repeat_until_done(models, monkeypatch):
    from safebasin.checkpoint import open_checkpoint

    _small_chunks(monkeypatch, 100)
    name = "model.layers.0.mlp.up_proj.weight"
    stat = _TwoPassCount()
    with open_checkpoint(models["base"]) as a, open_checkpoint(models["ft"]) as b:
        assert collect_statistics([a, b], {name: stat}) == 2
    assert stat.seen == [64 * 32, 64 * 32]

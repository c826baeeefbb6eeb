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


class _Log(TensorStatistic):
    """Two passes, each read recorded in a shared log as (tensor, pass)."""

    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name, self.log, self.pass_ = name, log, 0

    def update(self, tensors, start, stop):
        if not self.log or self.log[-1] != (self.name, self.pass_):
            self.log.append((self.name, self.pass_))

    def end_pass(self):
        self.pass_ += 1
        return self.pass_ < 2


def test_statistics_passes_run_group_by_group(models, monkeypatch):
    """Both passes over one group before the next group is read: the second pass finds the
    group in the page cache (a model larger than memory is read from the disk once)."""
    from safebasin.checkpoint import open_checkpoint
    from safebasin.merge import statistics

    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.1.mlp.up_proj.weight"]
    one = 2 * 64 * 32 * 4  # one tensor's fp32 bytes in the two inputs
    monkeypatch.setattr(statistics, "GROUP_BYTES", 2 * one)
    log: list[tuple[str, int]] = []
    with open_checkpoint(models["base"]) as a, open_checkpoint(models["ft"]) as b:
        assert collect_statistics([a, b], {n: _Log(n, log) for n in names}) == 2
    first, second, third = names
    assert log == [(first, 0), (second, 0), (first, 1), (second, 1), (third, 0), (third, 1)]


def test_radix_selection_keeps_only_its_result():
    """A finished selection drops its histograms: one is kept per tensor until the merge."""
    from safebasin.merge.select import RankWindow, WindowSelect

    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    stat = WindowSelect([RankWindow.top_k(5000, 0.2)], budget=0)
    for _ in range(2):
        stat.update([torch.zeros(5000), x], 0, 5000)
        stat.end_pass()
    (lo, hi), = stat.result()
    kth = torch.sort(x.abs()).values[5000 - 1000]
    assert lo.bits == int(kth.view(torch.int32)) and lo.less == 4000
    radix = next(iter(stat._radix.values()))
    assert radix.high is None and radix.low == {}
    assert radix._low_rows.untyped_storage().nbytes() == 0  # not a view of the histograms


class _Logged(TensorOp):
    """Copies input 1 and logs (tensor, "merge") at its first chunk."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def apply(self, tensors, start, stop):
        if start == 0:
            self.log.append((self.name, "merge"))
        return tensors[1]


def test_statistics_first_collects_each_tensor_just_before_merging_it(models, tmp_path,
                                                                      monkeypatch):
    """The passes over a tensor run when the merge reaches it, then its op is built from the
    finished statistic: each tensor is read twice in a row (the second read from the page
    cache), and the merged tensor is what the built op makes."""
    from safebasin.merge.statistics import StatisticsFirst, statistics_buffers

    _small_chunks(monkeypatch, 100)
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    log: list = []
    built: list = []

    def planner(inputs):
        buffers = statistics_buffers(inputs)

        def build(name):
            def make(stat):
                built.append((name, stat.pass_))
                return _Logged(name, log)
            return make
        return Planned([0.0], ops={n: StatisticsFirst(inputs, n, _Log(n, log), build(n), buffers)
                                   for n in names})

    run_merge("copy", {}, [models["base"], models["ft"]], tmp_path / "out", MergeOptions(),
              planner)
    first, second = names
    assert log == [(first, 0), (first, 1), (first, "merge"),
                   (second, 0), (second, 1), (second, "merge")]
    assert built == [(first, 2), (second, 2)]  # built from the finished statistic
    out, ft = load_state(tmp_path / "out"), load_state(models["ft"])
    assert all(torch.equal(out[n], ft[n]) for n in names)

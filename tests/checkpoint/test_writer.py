"""The shard writer: byte-exact safetensors, and write-behind that covers every byte once."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from safebasin.checkpoint import writer as writer_mod
from safebasin.checkpoint.writer import ShardWriter, TensorSpec


def test_write_behind_starts_every_written_byte_once_and_changes_nothing(tmp_path, monkeypatch):
    calls: list[tuple[int, int, int]] = []

    def record(fd, offset, nbytes, flags):
        calls.append((offset, nbytes, flags))
        return 0

    monkeypatch.setattr(writer_mod, "_SYNC_FILE_RANGE", record)
    monkeypatch.setattr(writer_mod, "WRITE_BEHIND", 4096)
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3000, generator=g), "b": torch.randn(50, 7, generator=g),
               "c": torch.randn(5000, generator=g).to(torch.bfloat16)}
    w = ShardWriter(tmp_path, [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in
                               tensors.items()], shard_size=10**9)
    for name, t in tensors.items():
        flat = t.reshape(-1)
        for a in range(0, flat.numel(), 777):  # chunks that do not line up with 4096 bytes
            w.write(name, flat[a:a + 777])
    w.close()
    loaded = load_file(tmp_path / "model.safetensors")
    for name, t in tensors.items():
        assert torch.equal(loaded[name].view(torch.uint8), t.view(torch.uint8)), name
    size = (tmp_path / "model.safetensors").stat().st_size
    assert len(calls) >= size // 4096 - 1
    assert all(flags == writer_mod._SYNC_FILE_RANGE_WRITE for *_, flags in calls)
    position = 0
    for offset, nbytes, _ in calls:  # contiguous ranges from the start, each ≥ the step
        assert offset == position and nbytes >= 4096
        position += nbytes
    assert size - 4096 < position <= size


def test_libc_sync_file_range_is_found_on_linux():
    """Without it the final fsync writes the whole shard (0.5 s of a 1.2B merge here)."""
    assert writer_mod._SYNC_FILE_RANGE is not None


def _write_chunked(tmp_path, tensors, **kwargs) -> ShardWriter:
    w = ShardWriter(tmp_path, [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in
                               tensors.items()], shard_size=10**9, **kwargs)
    for name, t in tensors.items():
        flat = t.reshape(-1)
        for a in range(0, flat.numel(), 777):
            w.write(name, flat[a:a + 777])
    w.close()
    return w


def test_drop_behind_forgets_each_range_after_waiting_for_it(tmp_path, monkeypatch):
    """Every range is dropped once, in order, only after a waiting sync_file_range on exactly
    that range (the kernel keeps dirty pages), then the whole file after the fsync."""
    events: list[tuple] = []
    monkeypatch.setattr(writer_mod, "_SYNC_FILE_RANGE",
                        lambda fd, offset, n, flags: events.append(("sync", offset, n, flags)))
    monkeypatch.setattr(writer_mod, "drop_cached",
                        lambda fd, offset, n: events.append(("drop", offset, n)))
    monkeypatch.setattr(writer_mod, "WRITE_BEHIND", 4096)
    g = torch.Generator().manual_seed(1)
    tensors = {"a": torch.randn(9000, generator=g), "b": torch.randn(4000, generator=g)}
    _write_chunked(tmp_path, tensors, drop_behind=True)
    loaded = load_file(tmp_path / "model.safetensors")
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name
    drops = [i for i, e in enumerate(events) if e[0] == "drop"]
    assert len(drops) >= 8
    assert events[drops[-1]][1:] == (0, 0)  # after the fsync: the whole file
    position = 0
    for i in drops[:-1]:
        _, offset, n = events[i]
        assert offset == position and n >= 4096
        assert events[i - 1] == ("sync", offset, n, writer_mod._SYNC_FILE_RANGE_WAIT)
        position += n
    started = sum(e[2] for e in events if e[0] == "sync" and e[3] == 2)
    assert position < started  # the range started last is not waited for until the next


def test_without_drop_behind_nothing_is_dropped(tmp_path, monkeypatch):
    dropped: list = []
    monkeypatch.setattr(writer_mod, "drop_cached", lambda *a: dropped.append(a))
    monkeypatch.setattr(writer_mod, "WRITE_BEHIND", 4096)
    _write_chunked(tmp_path, {"a": torch.ones(20000)})
    assert dropped == []

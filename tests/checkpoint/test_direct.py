"""O_DIRECT reads: the same bytes as a buffered read at any offset, a fallback where the
filesystem refuses it, the same merges bit for bit, and one line for a bad setting."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from support import load_state

from safebasin import merge
from safebasin.checkpoint import Checkpoint, direct
from safebasin.checkpoint import writer as writer_mod
from safebasin.cli import cli
from safebasin.errors import CheckpointFormatError, UsageError
from safebasin.merge import executor, stream

_SIZE = 3 * direct.PAGE + 123  # spans pages and ends mid-page, as a shard's last tensor does


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("direct") / "blob.bin"
    data = os.urandom(_SIZE)
    path.write_bytes(data)
    return path, data


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, _SIZE - 1), nbytes=st.integers(1, _SIZE))
def test_any_range_reads_the_file_bytes(blob, offset, nbytes):
    path, data = blob
    nbytes = min(nbytes, _SIZE - offset)
    files = direct.DirectFiles()
    try:
        view = files.read(path, offset, nbytes, direct.aligned_buffer(nbytes))
    finally:
        files.close()
    assert view is not None and bytes(view) == data[offset:offset + nbytes]


def test_a_range_past_the_end_is_a_truncation(blob):
    path, _ = blob
    files = direct.DirectFiles()
    with pytest.raises(CheckpointFormatError, match=r"truncated: tensor 'w' needs 10 bytes .* "
                                                    r"file gave 3"):
        files.read(path, _SIZE - 3, 10, direct.aligned_buffer(10), what="tensor 'w'")
    files.close()


@pytest.fixture
def odd_checkpoint(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Tensors at offsets that are not page multiples (a header of an odd length)."""
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 1000, generator=g).to(torch.bfloat16),
               "bb": torch.randn(2049, generator=g), "c": torch.randn(7, generator=g)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"pad": "x" * 13})
    return tmp_path, tensors


def _read_all(ckpt: Checkpoint, name: str, chunk: int, use_direct: bool) -> torch.Tensor:
    numel = ckpt.shape(name)[0] * (ckpt.shape(name)[1] if len(ckpt.shape(name)) > 1 else 1)
    parts = []
    for start in range(0, numel, chunk):
        stop = min(start + chunk, numel)
        nbytes = (stop - start) * ckpt.dtype(name).itemsize
        if use_direct:
            t = ckpt.read_flat_direct(name, start, stop, direct.aligned_buffer(nbytes))
        else:
            t = ckpt.read_flat_into(name, start, stop, memoryview(bytearray(nbytes)))
        parts.append(t.clone())
    return torch.cat(parts)


@pytest.mark.parametrize("chunk", [1, 333, 4096, 10**6])
def test_checkpoint_direct_reads_equal_the_saved_tensors(odd_checkpoint, chunk):
    folder, tensors = odd_checkpoint
    with Checkpoint.open(folder) as ckpt:
        for name, want in tensors.items():
            got = _read_all(ckpt, name, chunk, use_direct=True)
            assert torch.equal(got, want.reshape(-1)), name
            assert torch.equal(got, _read_all(ckpt, name, chunk, use_direct=False))


def test_filesystem_refusing_o_direct_falls_back_to_the_cache(odd_checkpoint, monkeypatch):
    folder, tensors = odd_checkpoint
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    with Checkpoint.open(folder) as ckpt:
        assert torch.equal(_read_all(ckpt, "bb", 500, use_direct=True), tensors["bb"])


def test_a_read_refused_for_alignment_falls_back_to_the_cache(odd_checkpoint, monkeypatch):
    folder, tensors = odd_checkpoint
    calls = []
    real_preadv = os.preadv

    def picky(fd, bufs, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and not calls:  # the first only
            calls.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, bufs, offset)

    monkeypatch.setattr(os, "preadv", picky)
    with Checkpoint.open(folder) as ckpt:
        assert torch.equal(_read_all(ckpt, "a", 700, use_direct=True),
                           tensors["a"].reshape(-1))
    assert calls


def test_setting_chooses_by_size_and_refuses_unknown_values(monkeypatch):
    monkeypatch.setattr(direct, "physical_memory", lambda: 8 << 30)
    monkeypatch.delenv(direct.ENV, raising=False)
    assert not direct.wanted(8 << 30) and direct.wanted((8 << 30) + 1)
    monkeypatch.setenv(direct.ENV, "off")
    assert not direct.wanted(1 << 40)
    monkeypatch.setenv(direct.ENV, "ON")
    assert direct.wanted(1)
    monkeypatch.setenv(direct.ENV, "sometimes")
    with pytest.raises(UsageError, match="SAFEBASIN_DIRECT_IO='sometimes'"):
        direct.wanted(1)


def test_bad_setting_is_one_line_and_exit_2_with_nothing_written(models, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv(direct.ENV, "sometimes")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "lerp", str(models["base"]), str(models["ft"]),
                                 "-o", str(out), "--alpha", "0.5"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: SAFEBASIN_DIRECT_IO='sometimes': choose one of auto, on, off (or unset it)"]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# method -> (merge, whether it reads directly: the tensors of TIES and SLERP are read by their
# statistics passes first, so their merge reads them from the page cache)
_MERGES = {
    "lerp": (lambda b, f, f2, o: merge.lerp(b, f, o, alpha=0.3), True),
    "dare_ties": (lambda b, f, f2, o: merge.dare_ties(b, [f, f2], o, density=0.5, seed=3), True),
    "ties": (lambda b, f, f2, o: merge.ties(b, [f, f2], o, density=0.4), False),
    "slerp": (lambda b, f, f2, o: merge.slerp(b, f, o, t=0.4), False),
    "model_stock": (lambda b, f, f2, o: merge.model_stock(b, [f, f2], o), True),
}


@pytest.mark.parametrize("method", sorted(_MERGES))
def test_merges_are_bit_identical_with_and_without_o_direct(models, tmp_path, monkeypatch,
                                                            method):
    reads = []
    real = direct.DirectFiles.read

    def counted(self, *args, **kwargs):
        reads.append(args[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(direct.DirectFiles, "read", counted)
    forgotten, dropped = [], []  # inputs, and output ranges, dropped from the page cache
    real_forget = Checkpoint.forget
    monkeypatch.setattr(Checkpoint, "forget", lambda self, *a: forgotten.append(a)
                        or real_forget(self, *a))
    monkeypatch.setattr(writer_mod, "drop_cached", lambda *a: dropped.append(a))
    monkeypatch.setattr(executor, "CHUNK_ELEMS", 1000)  # several chunks per tensor
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 1000)
    run, reads_directly = _MERGES[method]
    outs = {}
    for setting in ("off", "on"):
        monkeypatch.setenv(direct.ENV, setting)
        outs[setting] = tmp_path / setting
        run(models["base"], models["ft"], models["ft2"], outs[setting])
        if setting == "off":
            assert not reads and not forgotten and not dropped
    assert bool(reads) == reads_directly
    # every element of every merged tensor is forgotten once per input, and the output dropped
    n_inputs = 2 if method in ("lerp", "slerp") else 3
    state = load_state(outs["on"])
    assert sum(b - a for _, a, b in forgotten) == n_inputs * sum(
        t.numel() for t in state.values())
    assert dropped and dropped[-1][1:] == (0, 0)
    off, on = load_state(outs["off"]), load_state(outs["on"])
    assert off.keys() == on.keys()
    for name in off:
        assert torch.equal(off[name], on[name]), name


def test_direct_reads_with_buffered_buffers_are_refused(odd_checkpoint):
    """The reader must not fall back to the cache silently when direct reads were asked for."""
    folder, _ = odd_checkpoint
    with Checkpoint.open(folder) as ckpt:
        chunks = stream.chunks_of("bb", 2049, 512)
        plain = stream.ReadBuffers.for_chunks([ckpt], chunks)
        with pytest.raises(ValueError, match="direct=True"):
            next(stream.read_chunks([ckpt], chunks, buffers=plain, direct=True))
        got = [t[0].clone() for _, t in stream.read_chunks([ckpt], chunks, buffers=plain)]
    assert torch.equal(torch.cat(got), load_state(folder)["bb"])


def test_distance_reads_past_the_cache_when_asked_with_the_same_result(models, monkeypatch):
    forgotten = []
    monkeypatch.setattr(Checkpoint, "forget", lambda self, *a: forgotten.append(a))
    got = {}
    for setting in ("off", "on"):
        monkeypatch.setenv(direct.ENV, setting)
        got[setting] = merge.distance(models["base"], models["ft"])
        assert bool(forgotten) == (setting == "on")
    assert got["on"] == got["off"]
    numel = sum(t.numel() for t in load_state(models["base"]).values())
    assert sum(b - a for _, a, b in forgotten) == 2 * numel

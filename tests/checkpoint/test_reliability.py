"""Issue 8, in process: every bad input is refused cleanly and nothing appears at -o.

Each test is one row of README "Failure behaviour": the CLI exits 2 with one `error:` line on
stderr naming the file and the problem, no traceback, and neither the destination nor a
temporary folder beside it exists afterwards. Faults that need a real process (SIGKILL, disk
full, a second merge at once, permissions as root) are in test_reliability_process.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from support import load_state

from safebasin import merge
from safebasin.checkpoint import Checkpoint, read_header, verify
from safebasin.cli import cli
from safebasin.errors import CheckpointFormatError

SHARD = "model.safetensors"


# ---- helpers ------------------------------------------------------------------------------

def run(*args: object):
    """The CLI in process; drops log handlers left bound to an earlier run's closed stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False):
            root.removeHandler(h)
    return CliRunner().invoke(cli, [str(a) for a in args])


def lerp(base: Path, ft: Path, out: Path, *extra: object, alpha: float = 0.5):
    return run("merge", "lerp", base, ft, "-o", out, "--alpha", alpha, "-q", *extra)


def assert_refused(r, *needles: str) -> str:
    """Exit 2, one `error:` line holding every needle, no traceback; returns the line."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: "), err
    assert "Traceback" not in r.output
    for n in needles:
        assert n in err, (n, err)
    return err


def assert_nothing_at(out: Path) -> None:
    """No destination and no temporary folder beside it (the lock file may stay)."""
    assert not out.exists() and not out.is_symlink()
    assert not list(out.parent.glob(f".{out.name}.safebasin-tmp-*"))


def copy_model(src: Path, dst: Path) -> Path:
    """A private copy to corrupt: the session fixtures must stay intact."""
    shutil.copytree(src, dst)
    return dst


def save_state(folder: Path, sd: dict[str, torch.Tensor], *, config_from: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(config_from / "config.json", folder / "config.json")
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / SHARD,
              metadata={"format": "pt"})
    return folder


def split_file(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_file(header: dict | bytes, data: bytes, *, length: int | None = None) -> bytes:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data


def rewrite_header(path: Path, mutate: Callable[[dict], object]) -> None:
    header, data = split_file(path.read_bytes())
    mutate(header)
    path.write_bytes(join_file(header, data))


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])


def f64(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float64) for k, v in sd.items()}


# ---- inputs: paths and folders --------------------------------------------------------------

def test_missing_path_is_refused(models, tmp_path):
    r = lerp(models["base"], tmp_path / "nope", tmp_path / "out")
    assert_refused(r, str(tmp_path / "nope"), "no such file or folder")
    assert_nothing_at(tmp_path / "out")


def test_folder_without_weights_is_refused(models, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    r = lerp(models["base"], tmp_path / "empty", tmp_path / "out")
    assert_refused(r, str(tmp_path / "empty"), "no model.safetensors")
    assert_nothing_at(tmp_path / "out")


def test_unreadable_weights_file_is_refused(models, tmp_path):
    # chmod 000 does not stop root (the test_reliability_process twin drops the capability);
    # a folder where the weights file should be gives a read error for every user.
    ft = copy_model(models["ft"], tmp_path / "ft")
    (ft / SHARD).unlink()
    (ft / SHARD).mkdir()
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / SHARD), "not a regular file")
    assert_nothing_at(tmp_path / "out")


def test_fifo_in_place_of_weights_is_refused_without_blocking(models, tmp_path):
    ft = copy_model(models["ft"], tmp_path / "ft")
    (ft / SHARD).unlink()
    os.mkfifo(ft / "model-00001-of-00001.safetensors")  # opening it for reading would block
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, "model-00001-of-00001.safetensors", "not a regular file")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_weights_are_refused_without_allow_pickle(models, tmp_path, name):
    ft = tmp_path / "ft"
    ft.mkdir()
    torch.save(load_state(models["ft"]), ft / name)
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, str(ft), name, "--allow-pickle")
    assert_nothing_at(tmp_path / "out")
    r = lerp(models["base"], ft / name, tmp_path / "out")  # the bare file, too
    assert_refused(r, name, "--allow-pickle")


# ---- inputs: sharded index ----------------------------------------------------------------

INDEX = "model.safetensors.index.json"


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX).read_text())


def _with_first_shard_named(folder: Path, rel: str) -> None:
    idx = _index(folder)
    first = sorted(set(idx["weight_map"].values()))[0]
    idx["weight_map"] = {k: (rel if v == first else v) for k, v in idx["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(idx))


@pytest.mark.parametrize("text, needle", [
    ('{"weight_map": {"a": ', "malformed index"),
    ("[1, 2]", "'weight_map' must map"),
    ('{"weight_map": {"a": 7}}', "'weight_map' must map"),
    ('{"weight_map": {}}', "lists no tensors"),
    ('{"weight_map": {"a": "x.safetensors"}}', "'x.safetensors' is missing"),
    ('{"weight_map": {"a": 1' + "0" * 5000 + "}}", "malformed index"),
])
def test_malformed_index_is_refused(models, tmp_path, text, needle):
    ft = copy_model(models["bf16_ft"], tmp_path / "ft")
    (ft / INDEX).write_text(text)
    r = lerp(models["bf16_base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / INDEX), needle)
    assert_nothing_at(tmp_path / "out")


def test_index_naming_a_missing_shard_is_refused(models, tmp_path):
    ft = copy_model(models["bf16_ft"], tmp_path / "ft")
    shard = sorted(set(_index(ft)["weight_map"].values()))[-1]
    (ft / shard).unlink()
    r = lerp(models["bf16_base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / INDEX), f"shard {shard!r} is missing")
    assert_nothing_at(tmp_path / "out")


def test_index_mapping_a_tensor_to_the_wrong_shard_is_refused(models, tmp_path):
    ft = copy_model(models["bf16_ft"], tmp_path / "ft")
    idx = _index(ft)
    shards = sorted(set(idx["weight_map"].values()))
    name = next(k for k, v in idx["weight_map"].items() if v == shards[0])
    idx["weight_map"][name] = shards[1]
    (ft / INDEX).write_text(json.dumps(idx))
    r = lerp(models["bf16_base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / INDEX), "not in the shard the index names", name)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "nul"])
def test_index_shard_outside_the_folder_is_refused(models, tmp_path, kind):
    ft = copy_model(models["bf16_ft"], tmp_path / "ft")
    outside = tmp_path / "outside.safetensors"
    first = sorted(set(_index(ft)["weight_map"].values()))[0]
    shutil.copy(ft / first, outside)  # a real, valid shard: only its location is wrong
    rel = {"dotdot": "../outside.safetensors", "absolute": str(outside),
           "symlink": "link.safetensors", "nul": "x\0.safetensors"}[kind]
    if kind == "symlink":
        (ft / rel).symlink_to(outside)
    _with_first_shard_named(ft, rel)
    r = lerp(models["bf16_base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / INDEX), "outside the model folder" if kind in ("dotdot", "symlink")
                   else "not a plain file name")
    assert_nothing_at(tmp_path / "out")


# ---- inputs: safetensors headers --------------------------------------------------------------

def _overlap(h: dict) -> None:
    a, b = by_offset(h)[:2]
    size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    start = h[a]["data_offsets"][0]
    h[b]["data_offsets"] = [start, start + size]


def _beyond(h: dict) -> None:
    last = by_offset(h)[-1]
    h[last]["data_offsets"] = [o + 8 for o in h[last]["data_offsets"]]


def _first(h: dict) -> dict:
    return h[by_offset(h)[0]]


HEADER_FAULTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "shorter than the length field": (lambda raw: raw[:5], "shorter than the 8-byte header"),
    "length beyond the file": (lambda raw: struct.pack("<Q", len(raw)) + raw[8:],
                               "exceeds the file"),
    "length near 2**64": (lambda raw: struct.pack("<Q", 2**64 - 1) + raw[8:], "exceeds the file"),
    "invalid JSON": (lambda raw: join_file(b'{"a": [1, 2', split_file(raw)[1]),
                     "not valid JSON"),
    "not UTF-8": (lambda raw: join_file(b'{"\xff\xfe": 1}', split_file(raw)[1]),
                  "not valid JSON"),
    "JSON not an object": (lambda raw: join_file(b"[]", split_file(raw)[1]),
                           "not a JSON object"),
}
ENTRY_FAULTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "overlapping offsets": (_overlap, "overlaps the previous tensor"),
    "offsets beyond the data": (_beyond, "outside the"),
    "unknown dtype": (lambda h: _first(h).update(dtype="F7"), "unknown dtype 'F7'"),
    "dtype not a string": (lambda h: _first(h).update(dtype=["F32"]), "unknown dtype"),
    "shape does not match the size": (
        lambda h: _first(h).update(shape=[*_first(h)["shape"][:-1], _first(h)["shape"][-1] + 1]),
        "needs"),
    "shape of 2**61 elements": (lambda h: _first(h).update(shape=[2**61, 2**61]), "needs more"),
    "negative dimension": (lambda h: _first(h).update(shape=[-1]), "invalid shape"),
    "metadata not strings": (lambda h: h.update(__metadata__={"format": 1}), "__metadata__"),
}


@pytest.mark.parametrize("fault", list(HEADER_FAULTS))
def test_header_fault_is_refused(models, tmp_path, fault):
    mutate, needle = HEADER_FAULTS[fault]
    ft = copy_model(models["ft"], tmp_path / "ft")
    (ft / SHARD).write_bytes(mutate((ft / SHARD).read_bytes()))
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / SHARD), needle)
    assert_nothing_at(tmp_path / "out")


@pytest.mark.parametrize("fault", list(ENTRY_FAULTS))
def test_header_entry_fault_is_refused(models, tmp_path, fault):
    mutate, needle = ENTRY_FAULTS[fault]
    ft = copy_model(models["ft"], tmp_path / "ft")
    rewrite_header(ft / SHARD, mutate)
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / SHARD), needle)
    assert_nothing_at(tmp_path / "out")


@pytest.mark.parametrize("length, header", [
    (100 * 2**20, b"{}"),  # claims the maximum header, the file holds 2 bytes of it
    (None, json.dumps({"t": {"dtype": "F64", "shape": [2**40, 2**20],
                             "data_offsets": [0, 8]}}).encode()),
    (None, json.dumps({"t": {"dtype": "F32", "shape": [2**61] * 2000,
                             "data_offsets": [0, 8]}}).encode()),
])
def test_hostile_header_allocates_nothing_near_its_claims(tmp_path, length, header):
    path = tmp_path / "x.safetensors"
    path.write_bytes(join_file(header, b"\0" * 8, length=length))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointFormatError):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * path.stat().st_size + 256 * 1024, peak


def test_truncated_data_region_is_refused_at_open(models, tmp_path):
    ft = copy_model(models["ft"], tmp_path / "ft")
    raw = (ft / SHARD).read_bytes()
    (ft / SHARD).write_bytes(raw[:-100])
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, str(ft / SHARD), "outside the")
    assert_nothing_at(tmp_path / "out")


def test_shard_truncated_during_the_merge_is_refused_before_publishing(models, tmp_path):
    ft = copy_model(models["ft"], tmp_path / "ft")
    size = (ft / SHARD).stat().st_size
    cut = []

    def truncate_once(done: int, total: int) -> None:  # headers are read; data is not yet
        if not cut:
            os.truncate(ft / SHARD, size // 2)
            cut.append(done)

    options = merge.MergeOptions(progress=truncate_once)
    with pytest.raises(CheckpointFormatError, match=r"truncated: tensor .* file gave"):
        merge.lerp(models["base"], ft, tmp_path / "out", alpha=0.5, options=options)
    assert cut
    assert_nothing_at(tmp_path / "out")


def test_short_read_is_reported_as_truncation(models, tmp_path):
    ft = copy_model(models["ft"], tmp_path / "ft")
    infos, _ = read_header(ft / SHARD)
    last = max(infos.values(), key=lambda i: i.offset)
    with Checkpoint.open(ft) as ckpt:  # headers are valid when opened ...
        os.truncate(ft / SHARD, last.offset + 4)  # ... and the file shrinks afterwards
        with pytest.raises(CheckpointFormatError, match=f"{last.name}.*file gave 4"):
            ckpt.read(last.name)


# ---- inputs that disagree ---------------------------------------------------------------------

def test_missing_and_extra_tensor_names_are_listed(models, tmp_path):
    sd = load_state(models["ft"])
    dropped = sorted(sd)[:4]
    for k in dropped:
        del sd[k]
    ft = save_state(tmp_path / "ft", sd, config_from=models["ft"])
    r = lerp(models["base"], ft, tmp_path / "out")
    err = assert_refused(r, "4 tensors of BASE are missing", str(ft))
    assert sum(repr(k) in err for k in dropped) == 3  # the first few, not all
    assert_nothing_at(tmp_path / "out")

    sd = load_state(models["ft"])
    sd["model.extra.weight"] = torch.zeros(3)
    extra = save_state(tmp_path / "extra", sd, config_from=models["ft"])
    r = lerp(models["base"], extra, tmp_path / "out")
    assert_refused(r, "1 tensors of", "are not in BASE", "model.extra.weight")


def _resized_vocab(models, tmp_path: Path, rows: int) -> Path:
    """ft with its embedding and lm_head cut (or padded) to `rows` vocabulary rows."""
    sd = load_state(models["ft"])
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        t = sd[k]
        sd[k] = t[:rows] if rows <= t.shape[0] else torch.cat(
            [t, torch.full((rows - t.shape[0], t.shape[1]), 7.0)])
    return save_state(tmp_path / f"ft{rows}", sd, config_from=models["ft"])


def test_different_shapes_are_refused_with_both_shapes(models, tmp_path):
    ft = _resized_vocab(models, tmp_path, 80)
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, "(96, 32) vs (80, 32)", "--vocab-mismatch base", str(ft))
    assert_nothing_at(tmp_path / "out")


@pytest.mark.parametrize("rows", [80, 112])
def test_vocab_mismatch_base_keeps_base_rows(models, tmp_path, rows):
    """Policy: the output has θ₀'s shape; rows an input lacks are θ₀'s, rows it adds dropped."""
    ft = _resized_vocab(models, tmp_path, rows)
    alpha = 0.25
    r = lerp(models["base"], ft, tmp_path / "out", "--vocab-mismatch", "base", alpha=alpha)
    assert r.exit_code == 0, r.output
    base, fine, out = f64(load_state(models["base"])), f64(load_state(ft)), load_state(
        tmp_path / "out")
    for k, b in base.items():
        f = fine[k]
        if f.shape != b.shape:  # extend with θ₀'s rows, or cut to θ₀'s rows
            f = torch.cat([f, b[f.shape[0]:]]) if f.shape[0] < b.shape[0] else f[:b.shape[0]]
        expected = (b + alpha * (f - b)).to(torch.float32)
        assert out[k].dtype == torch.float32 and out[k].shape == b.shape
        torch.testing.assert_close(out[k], expected, rtol=2e-7, atol=1e-7)
    emb = "model.embed_tokens.weight"
    if rows < 96:  # θ₀'s extra rows are kept exactly
        assert torch.equal(out[emb][rows:], base[emb][rows:].float())


def test_different_dtypes_are_accepted_and_computed_in_fp32(models, tmp_path):
    ft = save_state(tmp_path / "ft_bf16", {k: v.to(torch.bfloat16) for k, v in
                                           load_state(models["ft"]).items()},
                    config_from=models["ft"])
    r = lerp(models["base"], ft, tmp_path / "out", alpha=0.5)
    assert r.exit_code == 0, r.output
    base, fine, out = f64(load_state(models["base"])), f64(load_state(ft)), load_state(
        tmp_path / "out")
    for k, b in base.items():
        assert out[k].dtype == torch.float32  # auto: θ₀'s dtype
        torch.testing.assert_close(out[k], (b + 0.5 * (fine[k] - b)).float(),
                                   rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_input_is_refused_naming_the_tensor(models, tmp_path, bad):
    sd = load_state(models["ft"])
    name = "model.layers.1.self_attn.v_proj.weight"
    sd[name][3, 5] = bad
    ft = save_state(tmp_path / "ft", sd, config_from=models["ft"])
    r = lerp(models["base"], ft, tmp_path / "out")
    assert_refused(r, str(ft), repr(name), "NaN or Inf", "--allow-nonfinite")
    assert_nothing_at(tmp_path / "out")

    r = lerp(models["base"], ft, tmp_path / "out", "--allow-nonfinite")
    assert r.exit_code == 0, r.output
    out = load_state(tmp_path / "out")[name]
    assert not math.isfinite(out[3, 5].item())
    assert int(torch.isfinite(out).sum()) == out.numel() - 1


# ---- outputs ------------------------------------------------------------------------------------

def test_existing_output_is_refused_and_kept(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = lerp(models["base"], models["ft"], out)
    assert_refused(r, str(out), "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_output_in_one_step(models, tmp_path):
    out = tmp_path / "out"
    assert lerp(models["base"], models["ft"], out, alpha=0.5).exit_code == 0
    assert lerp(models["base"], models["ft"], out, "--overwrite", alpha=0.25).exit_code == 0
    assert json.loads((out / "safebasin_recipe.json").read_text())["parameters"]["alpha"] == 0.25
    verify(out)
    # the old output went with the swap; no temp folder and no lock file left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_no_lock_file_is_left_after_success_or_failure(models, tmp_path):
    assert lerp(models["base"], models["ft"], tmp_path / "ok").exit_code == 0
    assert lerp(models["base"], tmp_path / "missing", tmp_path / "bad").exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_overwrite_says_what_it_removed(models, tmp_path):
    out = tmp_path / "out"
    assert lerp(models["base"], models["ft"], out).exit_code == 0
    (out / "eval" / "asr").mkdir(parents=True)
    (out / "eval" / "asr" / "summary.json").write_text("{}")
    (out / "eval" / "asr" / "responses.jsonl").write_text("")
    models_files = sum(1 for p in out.iterdir() if p.is_file())
    r = lerp(models["base"], models["ft"], out, "--overwrite", alpha=0.25)
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stderr.splitlines() == [
        f"replaced {out} (removed {out / 'eval'}/ with 1 evaluation result and "
        f"{models_files} other files)"]
    assert not (out / "eval").exists()


def test_overwrite_of_a_missing_output_says_nothing(models, tmp_path):
    r = lerp(models["base"], models["ft"], tmp_path / "new", "--overwrite")
    assert r.exit_code == 0 and "replaced" not in r.stderr


def test_failing_merge_with_overwrite_leaves_old_output_intact(models, tmp_path):
    out = tmp_path / "out"
    assert lerp(models["base"], models["ft"], out, alpha=0.5).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    sd = load_state(models["ft"])
    last = sorted(sd)[-1]  # fails late: earlier tensors are already written to the temp folder
    sd[last].view(-1)[-1] = math.nan
    ft = save_state(tmp_path / "ft_nan", sd, config_from=models["ft"])
    r = lerp(models["base"], ft, out, "--overwrite", alpha=0.25)
    assert_refused(r, repr(last), "NaN or Inf")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.safebasin-tmp-*"))
    verify(out)


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_output_in_an_input_folder_is_refused(models, tmp_path, where):
    ft = copy_model(models["ft"], tmp_path / "ft")
    out = ft if where == "equal" else ft / "merged"
    before = sorted(p.name for p in ft.iterdir())
    r = lerp(models["base"], ft, out, "--overwrite")
    assert_refused(r, str(out), "must not be an input folder or inside one")
    assert sorted(p.name for p in ft.iterdir()) == before


def test_output_containing_an_input_is_refused_even_with_overwrite(models, tmp_path):
    work = tmp_path / "work"
    base, ft = copy_model(models["base"], work / "base"), copy_model(models["ft"], work / "ft")
    r = lerp(base, ft, work, "--overwrite")
    assert_refused(r, str(work), "must not contain an input")
    assert (base / SHARD).is_file() and (ft / SHARD).is_file()


@pytest.mark.parametrize("where", ["under a regular file", "in /proc"])
def test_unwritable_output_location_is_refused(models, tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = (tmp_path / "file" / "out" if where == "under a regular file"
           else Path("/proc") / f"safebasin-test-{os.getpid()}")
    r = lerp(models["base"], models["ft"], out)
    assert_refused(r, "cannot")
    assert not out.exists()
    assert (tmp_path / "file").read_text() == "x"


def test_stale_temp_cleanup_only_touches_its_own_destination(models, tmp_path):
    """Glob characters in -o must not match (and delete) another destination's temp folder."""
    other = tmp_path / ".out1.safebasin-tmp-999999"
    other.mkdir()
    own = tmp_path / ".out[1].safebasin-tmp-999999"
    own.mkdir()
    assert lerp(models["base"], models["ft"], tmp_path / "out[1]").exit_code == 0
    assert other.is_dir() and not own.exists()


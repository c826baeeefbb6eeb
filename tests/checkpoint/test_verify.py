"""`safebasin verify`: an output is re-read and checked against its recipe's content hashes."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import run

from safebasin import merge
from safebasin.checkpoint import read_header, verify
from safebasin.errors import CheckpointFormatError, CheckpointNotFoundError, VerificationError

RECIPE = "safebasin_recipe.json"


@pytest.fixture(scope="module")
def outputs(models, tmp_path_factory) -> dict[str, Path]:
    """Merged folders to copy and corrupt: one shard (fp32) and several (bf16, with index)."""
    root = tmp_path_factory.mktemp("verify")
    merge.lerp(models["base"], models["ft"], root / "single", alpha=0.5)
    merge.lerp(models["bf16_base"], models["bf16_ft"], root / "sharded", alpha=0.5,
               options=merge.MergeOptions(shard_size=20_000))
    return {"single": root / "single", "sharded": root / "sharded"}


def _copy(outputs, kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(outputs[kind], tmp_path / kind))


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _flip(path: Path, pos: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ mask]))


def _tensor_at(path: Path, pos: int) -> str | None:
    infos, _ = read_header(path)
    return next((i.name for i in infos.values() if i.offset <= pos < i.offset + i.nbytes), None)


def test_verify_accepts_a_fresh_output_with_one_short_line(outputs):
    for kind in ("single", "sharded"):
        r = run("verify", outputs[kind], "-q")
        assert r.exit_code == 0, r.output
        assert r.stdout.count("\n") == 1 and r.stdout.startswith("OK "), r.stdout
        assert r.stderr == ""
    report = verify(outputs["sharded"])
    assert report.shards == len(_shards(outputs["sharded"])) > 1 and report.tensors == 21
    assert report.nbytes == sum(p.stat().st_size for p in _shards(outputs["sharded"]))


def test_flipped_byte_in_any_shard_names_the_shard_and_tensor(outputs, tmp_path):
    folder = _copy(outputs, "sharded", tmp_path)
    for shard in _shards(folder):
        infos, _ = read_header(shard)
        victim = max(infos.values(), key=lambda i: i.nbytes)
        pos = victim.offset + victim.nbytes // 2
        _flip(shard, pos)
        r = run("verify", folder, "-q")
        assert r.exit_code == 1, r.output
        line = r.stderr.strip()
        assert "\n" not in line and "Traceback" not in r.output
        assert f"shard {shard.name!r} does not match" in line, line
        assert f"tensor {victim.name!r} differs" in line, line
        _flip(shard, pos)  # restored: the next shard is checked on its own
    assert run("verify", folder, "-q").exit_code == 0


def test_flipped_byte_in_header_padding_names_the_shard(outputs, tmp_path):
    folder = _copy(outputs, "single", tmp_path)
    shard = _shards(folder)[0]
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    pos = 8 + raw[8:8 + n].rindex(b"}") + 1  # padding after the JSON still parses when changed
    if pos == 8 + n:
        pytest.skip("this header needed no padding")
    _flip(shard, pos, 0x09 ^ 0x20)  # space -> tab: valid JSON, different bytes
    with pytest.raises(VerificationError, match=r"shard 'model.safetensors' does not match"):
        verify(folder)


def test_missing_shard_and_stray_file_are_reported(outputs, tmp_path):
    folder = _copy(outputs, "sharded", tmp_path)
    first = _shards(folder)[0]
    first.rename(folder / "renamed.safetensors")
    with pytest.raises(VerificationError) as e:
        verify(folder)
    assert f"shard {first.name!r} is missing" in str(e.value)
    assert "'renamed.safetensors'" in str(e.value) and "\n" not in str(e.value)


def test_index_that_no_longer_matches_the_shards_is_reported(outputs, tmp_path):
    folder = _copy(outputs, "sharded", tmp_path)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shards = sorted(set(data["weight_map"].values()))
    name = next(k for k, v in data["weight_map"].items() if v == shards[0])
    data["weight_map"][name] = shards[1]
    index.write_text(json.dumps(data))
    with pytest.raises(VerificationError, match="does not open as a model"):
        verify(folder)


def test_changed_recorded_hash_is_reported(outputs, tmp_path):
    folder = _copy(outputs, "single", tmp_path)
    recipe = json.loads((folder / RECIPE).read_text())
    name = sorted(recipe["output"]["tensors"])[0]
    recipe["output"]["tensors"][name] = "0" * 32
    (folder / RECIPE).write_text(json.dumps(recipe))
    with pytest.raises(VerificationError, match=f"tensor {name!r} in shard"):
        verify(folder)


@pytest.mark.parametrize("recipe, needle", [
    (None, "no safebasin_recipe.json"),
    ("{not json", "not valid JSON"),
    ('{"method": "lerp"}', "no 'output' hashes"),
    ('{"output": {"hash": "sha1", "shards": {}, "tensors": {}}}', "output.hash"),
    ('{"output": {"hash": "xxh3_128", "shards": {"../x": "' + "0" * 32 + '"}, "tensors": {}}}',
     "not a plain file name"),
    ('{"output": {"hash": "xxh3_128", "shards": {"a": 5}, "tensors": {}}}', "not a xxh3_128"),
    ('{"output": {"hash": "xxh3_128", "shards": [], "tensors": {}}}', "output.shards"),
    ('{"output": {"hash": "xxh3_128", "shards": {"a": "' + "0" * 32 + '"}, "tensors": {}, '
     '"total_bytes": 1' + "0" * 5000 + "}}", "not valid JSON"),
])
def test_missing_or_malformed_recipe_exits_2(outputs, tmp_path, recipe, needle):
    folder = _copy(outputs, "single", tmp_path)
    if recipe is None:
        (folder / RECIPE).unlink()
    else:
        (folder / RECIPE).write_text(recipe)
    r = run("verify", folder, "-q")
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert "\n" not in line and needle in line and str(folder) in line, line


def test_missing_folder_exits_2(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such folder"):
        verify(tmp_path / "nope")
    assert run("verify", tmp_path / "nope").exit_code == 2


def test_verify_reads_in_bounded_blocks(outputs):
    shard_bytes = _shards(outputs["single"])[0].stat().st_size
    tracemalloc.start()
    try:
        report = verify(outputs["single"], block_bytes=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.nbytes == shard_bytes and peak < shard_bytes / 2, (peak, shard_bytes)


def test_block_size_does_not_change_the_hashes(outputs):
    """Block edges fall inside tensors, between them, and on zero-byte ones alike."""
    for block in (1, 7, 4096, 1 << 20):
        assert verify(outputs["sharded"], block_bytes=block).tensors == 21


@pytest.fixture(scope="module")
def flip_target(outputs, tmp_path_factory) -> Path:
    return Path(shutil.copytree(outputs["sharded"], tmp_path_factory.mktemp("flip") / "o"))


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(where=st.floats(0, 1, exclude_max=True), shard_pick=st.integers(0, 100),
       mask=st.integers(1, 255))
def test_any_flipped_byte_is_caught(flip_target, where, shard_pick, mask):
    shards = _shards(flip_target)
    shard = shards[shard_pick % len(shards)]
    pos = int(where * shard.stat().st_size)
    tensor = _tensor_at(shard, pos)
    _flip(shard, pos, mask)
    try:
        with pytest.raises(VerificationError) as e:
            verify(flip_target)
    finally:
        _flip(shard, pos, mask)
    msg = str(e.value)
    assert f"shard {shard.name!r}" in msg and "\n" not in msg, msg
    if tensor is not None:
        assert f"tensor {tensor!r} differs" in msg, msg


def test_recipe_reading_never_raises_anything_but_safebasin_errors(outputs, tmp_path):
    """A recipe that is a folder, or unreadable bytes, is a format error, not a traceback."""
    folder = _copy(outputs, "single", tmp_path)
    (folder / RECIPE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointFormatError):
        verify(folder)
    (folder / RECIPE).unlink()
    (folder / RECIPE).mkdir()
    with pytest.raises(CheckpointNotFoundError):
        verify(folder)

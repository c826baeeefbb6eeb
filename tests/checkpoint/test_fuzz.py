"""Fuzzed readers: mutated safetensors headers, index files and recipes are read or refused.

Every mutated input must end in one of two ways: a correct read, or a `SafebasinError` (the
one-line refusal). Any other exception, a hang (10 s alarm) or an allocation far beyond the
input's size (tracemalloc) fails. Mutations are structural (a field set to another JSON type,
a huge or negative number, an entry dropped, added or renamed, a shard path that escapes the
folder) and raw (flipped, inserted and deleted bytes, truncation, a wrong length prefix).

CI runs a bounded, derandomized number of examples; `benchmarks/fuzz_long.py` runs the same
checks, with the same strategies, for minutes under an address-space limit.
"""

from __future__ import annotations

import json
import signal
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from safebasin import merge
from safebasin.checkpoint import Checkpoint, verify
from safebasin.checkpoint.header import DTYPES
from safebasin.errors import SafebasinError

CI_EXAMPLES = 150
HANG_SECONDS = 10
INDEX = "model.safetensors.index.json"
RECIPE = "safebasin_recipe.json"


# ---- guards ----------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except OSError` can swallow it."""


@contextmanager
def guarded(input_bytes: int) -> Iterator[None]:
    """Fail on a hang, or on Python allocations far beyond what the input holds."""
    def alarm(signum, frame):
        raise Hang(f"no answer within {HANG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    limit = 32 * input_bytes + 4 * 2**20
    assert peak <= limit, f"peak Python allocation {peak} B for a {input_bytes}-byte input"


def outcome(fn, *args) -> tuple[str, object]:
    """("ok", result) or ("refused", message); anything else propagates and fails the test."""
    try:
        return "ok", fn(*args)
    except SafebasinError as e:
        message = str(e)
        assert message and "\n" not in message, repr(message)  # the one-line promise
        return "refused", message


# ---- strategies ------------------------------------------------------------------------------

HUGE = [2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -1, -(2**63)]
DTYPE_NAMES = [*DTYPES, "F8_E4M3", "U16", "U32", "U64", "f32", "", "F32 ", "I128"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=12,
)
numbers = st.one_of(st.integers(-3, 3), st.sampled_from(HUGE))


def seed_tensors() -> dict[str, torch.Tensor]:
    """Several dtypes, a scalar and a zero-size tensor: the corners a reader must handle."""
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(2, 3, generator=g),
        "b": torch.randn(4, generator=g).to(torch.bfloat16),
        "c": torch.tensor(7, dtype=torch.int64),
        "d": torch.zeros(0, 3, dtype=torch.float16),
        "e": torch.arange(5, dtype=torch.uint8),
        "f": torch.tensor([True, False, True]),
    }


SEED_FILE = st_save(seed_tensors(), metadata={"format": "pt"})


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@st.composite
def raw_edits(draw, data: bytes) -> bytes:
    """Byte-level damage: flips, overwrites, insertions, deletions, truncation."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= draw(st.integers(1, 255))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        else:
            del buf[pos:]
    return bytes(buf)


@st.composite
def header_edits(draw, header: dict) -> dict:
    """Structural damage to a parsed safetensors header."""
    h = json.loads(json.dumps(header))
    for _ in range(draw(st.integers(1, 3))):
        names = [k for k in h if k != "__metadata__"]
        op = draw(st.sampled_from(["field", "near", "dtype", "drop_field", "drop", "add",
                                   "rename", "entry", "metadata", "reorder", "tag"]))
        name = draw(st.sampled_from(names)) if names else None
        entry = h.get(name) if name is not None else None
        if op == "field" and isinstance(entry, dict):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_values)
        elif op == "near" and isinstance(entry, dict):  # plausible numbers, slightly or very off
            key = draw(st.sampled_from(["shape", "data_offsets"]))
            value = entry.get(key)
            if isinstance(value, list) and value:
                i = draw(st.integers(0, len(value) - 1))
                value[i] = (value[i] + draw(numbers)) if isinstance(value[i], int) else 0
        elif op == "dtype" and isinstance(entry, dict):
            entry["dtype"] = draw(st.sampled_from(DTYPE_NAMES))
        elif op == "drop_field" and isinstance(entry, dict) and entry:
            del entry[draw(st.sampled_from(sorted(entry)))]
        elif op == "drop" and name is not None:
            del h[name]
        elif op == "add":
            h[draw(st.text(max_size=8))] = {
                "dtype": draw(st.sampled_from(DTYPE_NAMES)),
                "shape": draw(st.lists(numbers, max_size=3)),
                "data_offsets": draw(st.lists(numbers, min_size=2, max_size=2))}
        elif op == "rename" and name is not None:
            h[draw(st.text(max_size=8))] = h.pop(name)
        elif op == "entry" and name is not None:
            h[name] = draw(json_values)
        elif op == "metadata":
            h["__metadata__"] = draw(json_values)
        elif op == "reorder":  # harmless: entry order in the JSON means nothing
            h = dict(draw(st.permutations(list(h.items()))))
        elif op == "tag":  # harmless unless the metadata is no longer a string map
            meta = h.setdefault("__metadata__", {})
            if isinstance(meta, dict):
                meta[draw(st.text(max_size=6))] = draw(st.text(max_size=6))
    return h


@st.composite
def safetensors_files(draw) -> bytes:
    """A valid file damaged structurally, at the byte level, in its length prefix, or all."""
    header, data = _split(SEED_FILE)
    if draw(st.booleans()):
        header = draw(header_edits(header))
    try:
        hb = json.dumps(header).encode()
    except (ValueError, TypeError):  # NaN keys and the like: send the seed header instead
        hb = json.dumps(_split(SEED_FILE)[0]).encode()
    hb += b" " * draw(st.sampled_from([0, -len(hb) % 8, 3]))
    length = len(hb)
    if draw(st.integers(0, 4)) == 0:
        length = draw(st.one_of(st.integers(0, len(hb) + 64), st.sampled_from(HUGE[:-2])))
    raw = struct.pack("<Q", length % 2**64) + hb + data
    return draw(raw_edits(raw)) if draw(st.booleans()) else raw


# ---- checks (shared with benchmarks/fuzz_long.py) -------------------------------------------

def check_safetensors_file(raw: bytes, path: Path) -> str:
    """Read `raw` as a bare .safetensors file: a correct read or a clean refusal."""
    path.write_bytes(raw)
    with guarded(len(raw)):
        kind, got = outcome(_read_all, path)
    reference = _reference_load(raw)
    if kind == "ok":
        header, data = _split(raw)
        for name, t in got.items():  # every tensor is exactly the bytes its header points at
            start, stop = header[name]["data_offsets"]
            assert _bytes(t) == _canonical(t.dtype, data[start:stop]), name
        if reference is not None:  # and what the safetensors library reads
            assert set(got) == set(reference)
            for name, t in got.items():
                r = reference[name]
                assert t.dtype == r.dtype and t.shape == r.shape
                assert _bytes(t) == _canonical(r.dtype, _bytes(r)), name
    elif reference is not None:  # the reference library read it: so must we
        pytest.fail(f"refused a file safetensors reads: {got}")
    return kind


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _canonical(dtype: torch.dtype, raw: bytes) -> bytes:
    """A BOOL byte other than 0 or 1 means True; torch copies it as 1, which is the same value."""
    return bytes(b != 0 for b in raw) if dtype == torch.bool else raw


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    with Checkpoint.open(path) as ckpt:
        out = {}
        for name in ckpt.names:
            t = ckpt.read(name)
            assert tuple(t.shape) == ckpt.shape(name) and t.dtype == ckpt.dtype(name)
            out[name] = t
        return out


def _reference_load(raw: bytes) -> dict[str, torch.Tensor] | None:
    """safetensors' own reading, when it accepts the file and every dtype is one we support."""
    try:
        header, _ = _split(raw)
        if not isinstance(header, dict) or any(
                isinstance(v, dict) and v.get("dtype") not in DTYPES
                for k, v in header.items() if k != "__metadata__"):
            return None
        return st_load(raw)
    except Exception:  # the reference library's many error types: it refused
        return None


def make_index_folder(root: Path) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """A two-shard folder with an index, plus traps an index could point at."""
    folder = root / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "dir.safetensors").mkdir()
    tensors = seed_tensors()
    names = sorted(tensors)
    parts = [dict((k, tensors[k]) for k in names[:3]), dict((k, tensors[k]) for k in names[3:])]
    files = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for f, part in zip(files, parts, strict=True):
        (folder / f).write_bytes(st_save(part))
    (folder / "sub" / "inner.safetensors").write_bytes(st_save(parts[0]))
    (root / "outside.safetensors").write_bytes(st_save(parts[0]))
    (folder / "escape.safetensors").symlink_to(root / "outside.safetensors")
    index = {"metadata": {"total_size": 0},
             "weight_map": {k: files[0 if k in parts[0] else 1] for k in names}}
    (folder / INDEX).write_text(json.dumps(index))
    return folder, tensors, index


SHARD_NAMES = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "../outside.safetensors", "escape.safetensors", "dir.safetensors",
               "missing.safetensors", "", ".", "..", "a\0b", "sub/inner.safetensors",
               "sub/../model-00001-of-00002.safetensors", "/etc/passwd", "sub\\x",
               "model.safetensors.index.json"]


@st.composite
def index_files(draw, index: dict) -> bytes:
    """An index with shard paths swapped for traps, keys changed, or types changed."""
    d = json.loads(json.dumps(index))
    for _ in range(draw(st.integers(1, 3))):
        wmap = d.get("weight_map") if isinstance(d, dict) else None
        op = draw(st.sampled_from(["shard", "shard", "drop", "add", "wmap", "meta", "doc"]))
        if op == "shard" and isinstance(wmap, dict) and wmap:
            wmap[draw(st.sampled_from(sorted(wmap)))] = draw(
                st.sampled_from(SHARD_NAMES) | st.text(max_size=10))
        elif op == "drop" and isinstance(wmap, dict) and wmap:
            del wmap[draw(st.sampled_from(sorted(wmap)))]
        elif op == "add" and isinstance(wmap, dict):
            wmap[draw(st.text(max_size=6))] = draw(st.sampled_from(SHARD_NAMES) | json_values)
        elif op == "wmap" and isinstance(d, dict):
            d["weight_map"] = draw(json_values)
        elif op == "meta" and isinstance(d, dict):
            d["metadata"] = draw(json_values)
        elif op == "doc":
            d = draw(json_values)
    raw = json.dumps(d).encode()
    return draw(raw_edits(raw)) if draw(st.integers(0, 3)) == 0 else raw


def check_index(raw: bytes, folder: Path, reference: dict[str, torch.Tensor]) -> str:
    """Open a folder whose index is `raw`: tensors equal the reference, or a clean refusal."""
    (folder / INDEX).write_bytes(raw)
    with guarded(len(raw) + 4096):
        kind, got = outcome(_read_all, folder)
    if kind == "ok":
        for name, t in got.items():
            assert torch.equal(t, reference[name]), name
        with Checkpoint.open(folder) as ckpt:  # the security property: nothing outside
            root = folder.resolve()
            assert all(root in p.resolve().parents for p in ckpt.weight_files), ckpt.weight_files
    return kind


def make_recipe_folder(root: Path) -> tuple[Path, dict]:
    """A real merge output (bare-file inputs, so no model fixture is needed)."""
    (root / "in").mkdir(parents=True)
    base = seed_tensors()
    ft = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in base.items()}
    (root / "in" / "base.safetensors").write_bytes(st_save(base))
    (root / "in" / "ft.safetensors").write_bytes(st_save(ft))
    out = root / "out"
    merge.lerp(root / "in" / "base.safetensors", root / "in" / "ft.safetensors", out, alpha=0.5)
    return out, json.loads((out / RECIPE).read_text())


RECIPE_SHARD_NAMES = ["model.safetensors", "../in/base.safetensors", "/etc/passwd", "",
                      ".", "..", "a\0b", RECIPE, "config.json", "x/model.safetensors",
                      "nope.safetensors"]


@st.composite
def recipe_files(draw, recipe: dict) -> bytes:
    """A recipe with its output hashes retyped, renamed, edited, dropped or added to."""
    d = json.loads(json.dumps(recipe))
    for _ in range(draw(st.integers(1, 3))):
        out = d.get("output") if isinstance(d, dict) else None
        op = draw(st.sampled_from(["digest", "name", "drop", "add", "field", "output",
                                   "doc", "total"]))
        group = draw(st.sampled_from(["shards", "tensors"]))
        m = out.get(group) if isinstance(out, dict) else None
        if op == "digest" and isinstance(m, dict) and m:
            k = draw(st.sampled_from(sorted(m)))
            v = m[k] if isinstance(m[k], str) else ""
            m[k] = draw(st.sampled_from([v.upper(), v[:-1], v + "0", v[::-1], "0" * 32]) |
                        json_values)
        elif op == "name" and isinstance(m, dict) and m:
            k = draw(st.sampled_from(sorted(m)))
            m[draw(st.sampled_from(RECIPE_SHARD_NAMES) | st.text(max_size=8))] = m.pop(k)
        elif op == "drop" and isinstance(m, dict) and m:
            del m[draw(st.sampled_from(sorted(m)))]
        elif op == "add" and isinstance(m, dict):
            m[draw(st.sampled_from(RECIPE_SHARD_NAMES))] = "0" * 32
        elif op == "field" and isinstance(out, dict):
            out[draw(st.sampled_from(["shards", "tensors", "hash", "total_bytes"]))] = draw(
                json_values)
        elif op == "total" and isinstance(out, dict):
            total = out.get("total_bytes")
            out["total_bytes"] = (total if isinstance(total, int) else 0) + draw(numbers)
        elif op == "output" and isinstance(d, dict):
            d["output"] = draw(json_values)
        elif op == "doc":
            d = draw(json_values)
    raw = json.dumps(d).encode()
    return draw(raw_edits(raw)) if draw(st.integers(0, 3)) == 0 else raw


def check_recipe(raw: bytes, folder: Path, original: dict) -> str:
    """Verify against a mutated recipe: only a recipe with the true hashes may pass."""
    (folder / RECIPE).write_bytes(raw)
    with guarded(len(raw) + 4096):
        kind, _ = outcome(verify, folder)
    if kind == "ok":
        out = json.loads(raw)["output"]
        for key in ("shards", "tensors"):
            assert out[key] == original["output"][key], key
        assert out["hash"] == "xxh3_128"
    return kind


# ---- CI properties ---------------------------------------------------------------------------

CI = settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    return make_index_folder(tmp_path_factory.mktemp("fuzz_index"))


@pytest.fixture(scope="module")
def recipe_folder(tmp_path_factory):
    return make_recipe_folder(tmp_path_factory.mktemp("fuzz_recipe"))


def test_seed_file_reads_exactly(fuzz_dir):
    assert check_safetensors_file(SEED_FILE, fuzz_dir / "seed.safetensors") == "ok"


@CI
@given(raw=safetensors_files())
def test_fuzzed_safetensors_file_is_read_or_refused(fuzz_dir, raw):
    check_safetensors_file(raw, fuzz_dir / "x.safetensors")


def test_seed_index_reads_exactly(index_folder):
    folder, ref, index = index_folder
    assert check_index(json.dumps(index).encode(), folder, ref) == "ok"


@CI
@given(data=st.data())
def test_fuzzed_index_is_read_or_refused_and_never_escapes(index_folder, data):
    folder, ref, index = index_folder
    check_index(data.draw(index_files(index)), folder, ref)


def test_seed_recipe_verifies(recipe_folder):
    folder, recipe = recipe_folder
    assert check_recipe(json.dumps(recipe).encode(), folder, recipe) == "ok"


@CI
@given(data=st.data())
def test_fuzzed_recipe_is_verified_or_refused_never_falsely_ok(recipe_folder, data):
    folder, recipe = recipe_folder
    check_recipe(data.draw(recipe_files(recipe)), folder, recipe)


@pytest.mark.parametrize("raw", [
    struct.pack("<Q", 2**63) + b"{}",
    struct.pack("<Q", 2) + b"{}" + b"\0" * (2**20),
    struct.pack("<Q", 40) + b'{"t":{"dtype":"F32","shape":[' + b"1," * 15 + b"1]",
], ids=["length 2**63", "1 MiB nobody owns", "header cut mid-list"])
def test_known_nasty_files_are_refused(fuzz_dir, raw):
    assert check_safetensors_file(raw, fuzz_dir / "nasty.safetensors") == "refused"


def test_guard_catches_a_large_allocation():
    with pytest.raises(AssertionError, match="peak Python allocation"):
        with guarded(10):
            bytearray(8 * 2**20)

"""Hub ids as inputs: resolved with huggingface_hub's snapshot_download, offline from its cache.

The cache is filled by the real client downloading from a loopback fake Hub (tests/fake_hub.py),
then the tests resolve with HF_HUB_OFFLINE=1: the cache layout is huggingface_hub's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from fake_hub import FakeHub
from safetensors.torch import save_file
from support import load_state

from safebasin import hub, merge
from safebasin.checkpoint import Checkpoint, LoraCheckpoint, open_checkpoint
from safebasin.cli import cli
from safebasin.errors import CheckpointNotFoundError, HubError


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake Hub on 127.0.0.1 and an empty HF cache; online until a test says otherwise."""
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        yield server


@pytest.fixture
def base_on_hub(fake_hub, models) -> str:
    """`org/base`: θ₀'s files, a model card with a license, and a pickle that must not come."""
    files = folder_files(models["base"])
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n# base\n"
    files["pytorch_model.bin"] = b"a pickle that must never be downloaded"
    files["training_args.pt"] = b"another pickle"
    return fake_hub.add_commit("org/base", files)


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_parse_hub_id():
    assert hub.parse_hub_id("org/name") == hub.HubRef("org/name")
    assert hub.parse_hub_id("org/name@v1.0") == hub.HubRef("org/name", "v1.0")
    assert hub.parse_hub_id("org/name@refs/pr/3") == hub.HubRef("org/name", "refs/pr/3")
    for not_an_id in ["name", "/abs/path", "./org/name", "a/b/c", "org/../x", "org/na--me",
                      "org/name@", "org/na me", "~/models/x"]:
        assert hub.parse_hub_id(not_an_id) is None, not_an_id


def test_hub_id_resolves_offline_from_the_cache(fake_hub, base_on_hub, models, tmp_path,
                                                monkeypatch):
    folder, source = hub.snapshot(hub.HubRef("org/base"))  # online: fills the cache
    assert source == {"hub_id": "org/base", "revision": base_on_hub}
    go_offline(monkeypatch)
    asked = len(fake_hub.requests)
    recipe = merge.lerp("org/base", models["ft"], tmp_path / "hub", alpha=0.4)
    assert len(fake_hub.requests) == asked  # nothing went to the network
    assert recipe["inputs"][0]["hub_id"] == "org/base"
    assert recipe["inputs"][0]["revision"] == base_on_hub
    assert recipe["inputs"][0]["path"] == str(folder)
    local = merge.lerp(models["base"], models["ft"], tmp_path / "local", alpha=0.4)
    assert recipe["output"]["shards"] == local["output"]["shards"]
    card = (tmp_path / "hub" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "org/base" and meta["license"] == "apache-2.0"
    assert f"safebasin merge lerp org/base@{base_on_hub} " in card


def test_hub_downloads_only_safetensors_json_tokenizer_and_card(fake_hub, base_on_hub):
    folder, _ = hub.snapshot(hub.HubRef("org/base"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors"]
    fetched = [r.path for r in fake_hub.requests if "/resolve/" in r.path]
    assert fetched and not any(p.endswith((".bin", ".pt")) for p in fetched)


def test_hub_revision_pins_a_commit(fake_hub, models, monkeypatch):
    old = fake_hub.add_commit("org/m", folder_files(models["base"]), refs=("v1",))
    new = fake_hub.add_commit("org/m", folder_files(models["ft"]), refs=("main",))
    with open_checkpoint("org/m@v1") as v1, open_checkpoint("org/m") as main:
        assert v1.source == {"hub_id": "org/m", "revision": old, "requested_revision": "v1"}
        assert main.source["revision"] == new
        name = "model.norm.weight"
        assert torch.equal(v1.read(name), load_state(models["base"])[name])
        assert torch.equal(main.read(name), load_state(models["ft"])[name])
    go_offline(monkeypatch)
    with open_checkpoint(f"org/m@{old}") as pinned:
        assert pinned.source["revision"] == old


def test_offline_and_not_cached_is_one_line_naming_the_id(fake_hub, models, tmp_path,
                                                          monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(HubError, match="'org/missing@v2'.*HF_HUB_OFFLINE"):
        open_checkpoint("org/missing@v2")
    res = CliRunner().invoke(cli, ["merge", "lerp", str(models["base"]), "org/missing",
                                   "--alpha", "0.5", "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "org/missing" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert fake_hub.requests == []


def test_unknown_repo_and_revision_are_clear(fake_hub, base_on_hub):
    with pytest.raises(HubError, match="no such repo"):
        open_checkpoint("org/nope")
    with pytest.raises(HubError, match="no revision 'v9'"):
        open_checkpoint("org/base@v9")


def test_hub_repo_with_only_pickles_is_refused(fake_hub, models):
    fake_hub.add_commit("org/old", {"config.json": (models["base"] / "config.json").read_bytes(),
                                    "pytorch_model.bin": b"pickle"})
    with pytest.raises(CheckpointNotFoundError, match="never .bin/.pt"):
        open_checkpoint("org/old", allow_pickle=True)


def test_local_path_wins_over_a_hub_id(fake_hub, models, tmp_path, monkeypatch):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "base").symlink_to(models["base"])
    monkeypatch.chdir(tmp_path)
    with open_checkpoint("org/base") as ckpt:
        assert ckpt.source == {}
    assert fake_hub.requests == []


def test_lora_adapter_from_the_hub(fake_hub, models, tmp_path):
    """A hand-made adapter (no peft needed): θ = θ₀ + (α/r)·B@A on q_proj of layer 0."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b},
              tmp_path / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["q_proj"],
              "base_model_name_or_path": "org/base"}
    sha = fake_hub.add_commit("org/lora", {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": (tmp_path / "adapter_model.safetensors").read_bytes()})
    with Checkpoint.open(models["base"]) as base, open_checkpoint("org/lora", base=base) as ft:
        assert isinstance(ft, LoraCheckpoint)
        assert ft.source == {"adapter": True, "adapter_base": "org/base", "hub_id": "org/lora",
                             "revision": sha}
        name = "model.layers.0.self_attn.q_proj.weight"
        want = base.read(name).double() + 1.5 * (b.double() @ a.double())
        torch.testing.assert_close(ft.read(name).double(), want, atol=1e-6, rtol=1e-6)
    recipe = merge.lerp(models["base"], "org/lora", tmp_path / "out", alpha=1.0)
    assert recipe["inputs"][1]["hub_id"] == "org/lora"

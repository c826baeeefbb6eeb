"""`safebasin push`: the ASR gate, then one commit through the real huggingface_hub client.

The client talks to a loopback fake Hub (tests/fake_hub.py) that records every request, so the
tests assert what was created and committed, and that the token was sent but never printed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_hub import FakeHub
from test_card import asr_summary, front_matter, write_summary

from safebasin import merge
from safebasin.checkpoint import model_content_hash
from safebasin.cli import cli

TOKEN = "hf_sEcReTtOkEn0123456789abcdefghijkl"


@pytest.fixture(scope="module")
def merged(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("push") / "wise"
    merge.lerp(models["base"], models["ft"], out, alpha=0.5)
    return out


@pytest.fixture
def out(merged, tmp_path) -> Path:
    """A fresh copy of the merge for each test (push rewrites its card)."""
    return Path(shutil.copytree(merged, tmp_path / "wise"))


@pytest.fixture
def fake_hub(monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield server


def with_asr(out: Path, successes: int, n: int = 100, *, model_hash: str | None = None) -> Path:
    write_summary(out / "eval" / "asr", asr_summary(
        successes, n, model_hash=model_hash or model_content_hash(out)))
    return out


def push(*args: str):
    return CliRunner().invoke(cli, ["-v", "push", *args])


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def sends(hub: FakeHub) -> list[str]:
    """The writing requests, without the client's own informational GETs."""
    return [f"{r.method} {r.path}" for r in hub.requests if r.method == "POST"]


def test_push_refuses_a_folder_without_asr_result(fake_hub, out):
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base")
    assert res.exit_code == 2
    assert "no keyword-ASR result" in one_line(res.stderr) and "--force" in res.stderr
    assert fake_hub.requests == []


def test_push_refuses_asr_above_max(fake_hub, out):
    with_asr(out, 12)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base")
    assert res.exit_code == 2
    assert "12.00% (asr) is above --max-asr 5.00%" in one_line(res.stderr)
    ok = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base", "--max-asr",
              "0.12", "--dry-run")
    assert ok.exit_code == 0, ok.output
    assert fake_hub.requests == []


def test_push_refuses_a_result_measured_on_other_weights(fake_hub, out):
    with_asr(out, 0, model_hash="xxh3_128:" + "0" * 32)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base")
    assert res.exit_code == 2 and "other weights" in one_line(res.stderr)


def test_push_needs_the_hub_id_of_a_local_base(fake_hub, out):
    with_asr(out, 1)
    res = push(str(out), "--repo-id", "me/wise")
    assert res.exit_code == 2 and "--base-model ORG/NAME" in one_line(res.stderr)
    bad = push(str(out), "--repo-id", "me/wise", "--base-model", "/local/base")
    assert bad.exit_code == 2 and "not a Hub id" in one_line(bad.stderr)


def test_dry_run_names_every_blocker_at_once(fake_hub, out):
    """No ASR result, a local θ₀ without --base-model and a bad repo id: one run, all three."""
    res = push(str(out), "--repo-id", "not-a-repo-id", "--dry-run")
    assert res.exit_code == 2
    line = one_line(res.stderr)
    assert "cannot push (3 problems)" in line, line
    for needle in ("(1) --repo-id 'not-a-repo-id'", "(2) ", "--base-model ORG/NAME",
                   "(3) ", "no keyword-ASR result", "pass --force"):
        assert needle in line, line
    assert fake_hub.requests == []


def test_force_overrides_the_gate_but_not_the_other_blockers(fake_hub, out):
    res = push(str(out), "--repo-id", "me/wise", "--force", "--dry-run")
    line = one_line(res.stderr)
    assert res.exit_code == 2 and "--base-model ORG/NAME" in line and "ASR" not in line, line


def test_push_uploads_the_folder_in_one_commit(fake_hub, out, caplog):
    caplog.set_level(logging.DEBUG)
    with_asr(out, 2)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base")
    assert res.exit_code == 0, res.output
    repo = fake_hub.repos["me/wise"]
    assert sends(fake_hub) == ["POST /api/repos/create", "POST /api/validate-yaml",
                               "POST /api/models/me/wise/preupload/main",
                               "POST /api/models/me/wise/commit/main"]
    (sha, (summary, description)), = repo.messages.items()
    assert res.stdout.strip() == f"{fake_hub.url}/me/wise/commit/{sha}"
    pushed = fake_hub.files("me/wise")
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert "eval/asr/responses.jsonl" in local and "eval/asr/responses.jsonl" not in pushed
    del local["eval/asr/responses.jsonl"]
    assert {k: v for k, v in pushed.items() if k != ".gitattributes"} == local
    card = pushed["README.md"].decode()
    assert front_matter(card)["base_model"] == "org/base"
    assert "| `asr` | keyword ASR | 2.00% (2/100) | 100 |" in card
    assert summary.startswith("safebasin lerp (alpha=0.5) of org/base")
    assert "keyword ASR 2.00% (n=100)" in summary and "distance to θ₀" in description
    assert {r.headers.get("authorization") for r in fake_hub.requests
            if r.method == "POST"} == {f"Bearer {TOKEN}"}
    assert TOKEN not in res.output + res.stderr + caplog.text


def test_push_dry_run_prints_files_and_card_and_sends_nothing(fake_hub, out):
    with_asr(out, 0)
    before = (out / "README.md").read_text()
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base", "--dry-run")
    assert res.exit_code == 0, res.output
    assert fake_hub.requests == []
    assert "would push 6 files to me/wise" in res.stdout
    for name in ("model.safetensors", "README.md", "safebasin_recipe.json",
                 "eval/asr/summary.json"):
        assert f"  {name}  (" in res.stdout
    assert "responses.jsonl" not in res.stdout
    assert "base_model: org/base" in res.stdout and "0.00% (0/100)" in res.stdout
    assert (out / "README.md").read_text() == before


def test_push_force_overrides_the_gate_and_says_so(fake_hub, out):
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base", "--force")
    assert res.exit_code == 0, res.output
    (_, (summary, description)), = fake_hub.repos["me/wise"].messages.items()
    assert "no ASR result" in summary
    assert "pushed with --force despite" in description and "no keyword-ASR" in description


def test_push_to_a_branch_creates_it_and_leaves_main(fake_hub, out):
    with_asr(out, 0)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base", "--branch", "exp")
    assert res.exit_code == 0, res.output
    assert "POST /api/models/me/wise/branch/exp" in sends(fake_hub)
    assert "model.safetensors" in fake_hub.files("me/wise", "exp")
    assert list(fake_hub.files("me/wise", "main")) == [".gitattributes"]


def test_push_private_creates_a_private_repo(fake_hub, out):
    with_asr(out, 0)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base", "--private")
    assert res.exit_code == 0, res.output
    assert fake_hub.repos["me/wise"].private


def test_push_private_into_an_existing_public_repo_is_refused(fake_hub, out):
    fake_hub.add_commit("me/wise", {"README.md": b"public"})
    with_asr(out, 0)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base", "--private")
    assert res.exit_code == 2 and "exists and is public" in one_line(res.stderr)
    assert not any("/commit/" in r.path for r in fake_hub.requests)


def test_push_rejected_by_the_hub_is_one_line_without_the_token(fake_hub, out, caplog):
    caplog.set_level(logging.DEBUG)
    fake_hub.read_only = True
    with_asr(out, 0)
    res = push(str(out), "--repo-id", "me/wise", "--base-model", "org/base")
    assert res.exit_code == 2
    line = one_line(res.stderr)
    assert "push to 'me/wise' failed" in line and "403" in line
    assert TOKEN not in res.output + res.stderr + caplog.text

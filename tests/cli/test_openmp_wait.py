"""`safebasin merge` lets OpenMP's idle threads sleep; other commands keep its default."""

from __future__ import annotations

import os
import sys

import pytest

from safebasin import cli as cli_module


@pytest.mark.parametrize(("argv", "preset", "want"), [
    (["merge", "slerp", "--help"], None, "PASSIVE"),
    (["merge", "slerp", "--help"], "ACTIVE", "ACTIVE"),  # the user's setting wins
    (["evaluate", "--help"], None, None),
])
def test_wait_policy(monkeypatch, argv, preset, want):
    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    monkeypatch.setattr(sys, "argv", ["safebasin", *argv])
    ran: list[bool] = []
    monkeypatch.setattr(cli_module, "cli", lambda **kw: ran.append(True))
    cli_module.main()
    assert ran == [True]
    assert os.environ.get("OMP_WAIT_POLICY") == want

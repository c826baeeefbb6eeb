"""The point cache: atomic results, exclusive claims, stale claims broken exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from executor_jobs import record

from safebasin.executors import Point, PointCache
from safebasin.executors.cache import CLAIM_FILE

POINT = Point("k1", record, (1,))


def _claim_file(cache: PointCache):
    return cache.folder(POINT) / CLAIM_FILE


def _foreign_claim(cache: PointCache, *, host: str, pid: int, age_s: float) -> None:
    """A claim file as another worker would have left it, last touched `age_s` ago."""
    path = _claim_file(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "t", "started": 0}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_published_result_reads_back_and_leaves_no_temp_file(tmp_path):
    cache = PointCache(tmp_path)
    cache.folder(POINT).mkdir(parents=True)
    stored = cache.publish(POINT, {"asr": 0.25, "pair": (1, 2)})
    assert stored == {"asr": 0.25, "pair": [1, 2]}  # what every later reader sees: JSON
    assert cache.load(POINT) == (True, stored)
    assert sorted(p.name for p in cache.folder(POINT).iterdir()) == ["result.json"]


def test_failed_rename_leaves_no_result(tmp_path, monkeypatch):
    cache = PointCache(tmp_path)
    cache.folder(POINT).mkdir(parents=True)

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        cache.publish(POINT, {"asr": 0.5})
    assert cache.load(POINT) == (False, None)
    assert list(cache.folder(POINT).iterdir()) == []


def test_second_claim_is_refused_while_the_first_is_held(tmp_path):
    cache = PointCache(tmp_path)
    first = cache.try_claim(POINT)
    assert first is not None
    assert cache.try_claim(POINT) is None
    assert cache.is_claimed(POINT)
    first.release()
    assert not _claim_file(cache).exists()
    assert cache.try_claim(POINT) is not None


def test_heartbeat_keeps_a_long_claim_fresh(tmp_path):
    cache = PointCache(tmp_path, lease_s=0.5)  # heartbeat every 0.05 s
    with cache.try_claim(POINT):
        old = time.time() - 10
        os.utime(_claim_file(cache), (old, old))
        time.sleep(0.3)
        assert time.time() - _claim_file(cache).stat().st_mtime < 0.5
        assert PointCache(tmp_path, lease_s=0.5).try_claim(POINT) is None


def test_claim_older_than_the_lease_is_broken(tmp_path):
    cache = PointCache(tmp_path, lease_s=60)
    _foreign_claim(cache, host="other-node", pid=123, age_s=61)
    claim = cache.try_claim(POINT)
    assert claim is not None
    assert json.loads(_claim_file(cache).read_text())["pid"] == os.getpid()
    claim.release()


def test_fresh_claim_of_another_host_is_respected(tmp_path):
    cache = PointCache(tmp_path, lease_s=60)
    _foreign_claim(cache, host="other-node", pid=123, age_s=30)
    assert cache.try_claim(POINT) is None


def test_claim_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path):
    cache = PointCache(tmp_path, lease_s=3600)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _foreign_claim(cache, host=cache.host, pid=int(dead.stdout), age_s=0)
    assert cache.try_claim(POINT) is not None


def test_of_two_breakers_of_one_stale_claim_only_one_claims(tmp_path):
    first, second = PointCache(tmp_path, lease_s=60), PointCache(tmp_path, lease_s=60)
    _foreign_claim(first, host="other-node", pid=123, age_s=61)
    stale = first.claim_info(POINT)
    # both judged the same claim stale; the first breaks it and claims afresh
    first._break(POINT, stale)
    held = first.try_claim(POINT)
    assert held is not None
    # the second breaker acts on its old judgement: it must not steal the new claim
    second._break(POINT, stale)
    assert first.claim_info(POINT).token == held.token
    assert second.try_claim(POINT) is None
    assert sorted(p.name for p in first.folder(POINT).iterdir()) == [CLAIM_FILE]
    held.release()

"""The driver on the local executor: order, caching, failures, a killed driver, two drivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from executor_jobs import EXPECTED, executions, graph

from safebasin.executors import RunProgress, run_points

HERE = Path(__file__).parent


def _driver(workdir: Path, **graph_kwargs) -> subprocess.Popen:
    """A driver in its own process running `graph(**graph_kwargs)` on the local executor;
    it prints the results as JSON."""
    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(HERE)!r})\n"
            "from executor_jobs import graph\n"
            "from safebasin.executors import run_points\n"
            f"results = run_points(graph(**{graph_kwargs!r}), workdir={str(workdir)!r})\n"
            "print(json.dumps(results))\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_points_run_after_their_dependencies_with_their_results(tmp_path):
    results = run_points(graph(), workdir=tmp_path)
    assert results == EXPECTED
    order = executions(tmp_path)
    assert sorted(order) == sorted(EXPECTED)
    assert order.index("c") > max(order.index("a"), order.index("b"))
    assert order.index("d") > order.index("c")
    assert (tmp_path / "points" / "d" / "out.txt").read_text() == "8"


def test_rerun_reads_every_result_from_the_cache(tmp_path):
    run_points(graph(), workdir=tmp_path)
    seen: list[RunProgress] = []
    assert run_points(graph(), workdir=tmp_path, progress=seen.append) == EXPECTED
    assert len(executions(tmp_path)) == len(EXPECTED)
    assert seen[-1] == RunProgress(total=5, done=5, cached=5, running=0, waiting=0, failed=0,
                                   last="point e (e)")


def test_progress_ends_with_every_point_done(tmp_path):
    seen: list[RunProgress] = []
    run_points(graph(), workdir=tmp_path, progress=seen.append)
    assert (seen[0].done, seen[-1].done, seen[-1].cached, seen[-1].failed) == (0, 5, 0, 0)
    assert max(s.running for s in seen) == 1  # local: one point at a time


def test_point_error_propagates_unchanged_and_leaves_no_result(tmp_path):
    with pytest.raises(ValueError, match="point c was told to fail"):
        run_points(graph(c={"fail": True}), workdir=tmp_path)
    assert not (tmp_path / "points" / "c" / "result.json").exists()
    assert not (tmp_path / "points" / "c" / ".claim").exists()
    assert run_points(graph(), workdir=tmp_path) == EXPECTED
    assert Counter(executions(tmp_path))["c"] == 2


def test_driver_killed_mid_point_resumes_and_reruns_only_that_point(tmp_path):
    never = tmp_path / "never"  # point c waits for it: the driver is killed inside c
    driver = _driver(tmp_path, c={"wait_for": str(never)})
    try:
        _wait_for(tmp_path / "points" / "c" / "pid")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    assert (tmp_path / "points" / "c" / ".claim").exists()
    assert not (tmp_path / "points" / "c" / "result.json").exists()
    assert run_points(graph(), workdir=tmp_path) == EXPECTED
    assert Counter(executions(tmp_path)) == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1}


def test_two_drivers_on_one_folder_never_run_a_point_twice(tmp_path):
    drivers = [_driver(tmp_path, sleep=0.3) for _ in range(2)]
    outputs = [d.communicate(timeout=60)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0]
    assert [json.loads(out) for out in outputs] == [EXPECTED, EXPECTED]
    assert Counter(executions(tmp_path)) == dict.fromkeys(EXPECTED, 1)

"""Checks on a graph of points before anything runs: names, key clashes, dependencies, cycles."""

from __future__ import annotations

import pytest
from executor_jobs import executions, record

from safebasin.errors import UsageError
from safebasin.executors import Point, run_points


def test_dependency_outside_the_run_is_refused_before_anything_runs(tmp_path):
    points = [Point("a", record, (1,)), Point("b", record, (2,), deps=("zz",))]
    with pytest.raises(UsageError, match="1 dependencies are not points of this run, first 'zz'"):
        run_points(points, workdir=tmp_path)
    assert executions(tmp_path) == []


def test_cycle_is_refused_naming_its_keys(tmp_path):
    points = [Point("a", record, (1,), deps=("c",)), Point("b", record, (2,), deps=("a",)),
              Point("c", record, (4,), deps=("b",)), Point("d", record, (8,))]
    with pytest.raises(UsageError, match="cycle: a -> c -> b -> a"):
        run_points(points, workdir=tmp_path)
    assert executions(tmp_path) == []


def test_two_different_points_with_one_key_are_refused(tmp_path):
    points = [Point("a", record, (1,)), Point("a", record, (2,))]
    with pytest.raises(UsageError, match="two different points share the key 'a'"):
        run_points(points, workdir=tmp_path)


def test_the_same_point_twice_runs_once(tmp_path):
    results = run_points([Point("a", record, (1,)), Point("a", record, (1,))], workdir=tmp_path)
    assert results == {"a": {"total": 1, "deps": []}}
    assert executions(tmp_path) == ["a"]


@pytest.mark.parametrize("key", ["../up", "a/b", ".hidden", ""])
def test_key_that_is_not_a_plain_folder_name_is_refused(tmp_path, key):
    with pytest.raises(UsageError, match="not a plain file name"):
        run_points([Point(key, record, (1,))], workdir=tmp_path)
    assert not (tmp_path / "points").exists()

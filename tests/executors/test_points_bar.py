"""The CLI's progress bar over points: finished of total, and the other counts beside it."""

from __future__ import annotations

from safebasin.cli._points import PointsBar
from safebasin.executors import RunProgress


def test_bar_shows_finished_of_total_with_running_and_failed(capsys):
    with PointsBar(quiet=False, desc="sweep") as bar:
        bar(RunProgress(total=5, done=0, cached=0, running=0, waiting=0, failed=0))
        bar(RunProgress(total=5, done=2, cached=1, running=2, waiting=1, failed=1))
        err = capsys.readouterr().err
    last = err.split("\r")[-1]
    assert "sweep:" in last and "3/5" in last
    assert last.rstrip().endswith("running 2, waiting 1, cached 1, failed 1]")


def test_quiet_bar_prints_nothing(capsys):
    with PointsBar(quiet=True, desc="sweep") as bar:
        bar(RunProgress(total=5, done=5, cached=5, running=0, waiting=0, failed=0))
    assert capsys.readouterr().err == ""

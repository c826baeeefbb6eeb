"""The study report's number formatting and log axes (sweep/report.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from safebasin.sweep.report import _log_x, _pm  # noqa: E402


def test_one_seed_prints_the_mean_without_a_spread():
    assert _pm(0.5, 0.0, percent=True, n=1) == "50.0"


def test_several_seeds_print_mean_and_std():
    assert _pm(0.5, 0.1, percent=True, n=3) == "50.0 ± 10.0"


@pytest.mark.parametrize("lo, hi, at_least", [(1.2, 3.5, 3), (0.3, 8.0, 3), (0.01, 50.0, 3)])
def test_log_distance_axis_labels_more_than_two_ticks(lo, hi, at_least):
    fig, ax = plt.subplots()
    try:
        ax.plot([lo, hi], [0, 1])
        _log_x(ax)
        fig.canvas.draw()
        left, right = ax.get_xlim()
        shown = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
                 if left <= v <= right and t.get_text()]
    finally:
        plt.close(fig)
    assert len(shown) >= at_least, shown

"""`compare-sweeps`: which verdicts of one study run a second run repeats.

Two `differences.csv` files written by the sweep's own writer, with verdicts chosen to cover
every outcome; the expected classification is spelled out by hand for each comparison.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import DataFormatError, DataNotFoundError
from safebasin.sweep.differences import FIELDS, write_differences
from safebasin.sweep.replication import compare_differences, read_differences, tally_verdicts

NONE = "no detectable difference"


def _row(comparison: str, metric: str, estimate: float, low: float, high: float,
         verdict: str, *, model: str = "small") -> dict:
    return {"model": model, "params": 1000, "experiment": "ema", "lr": 0.0003,
            "matched_to": "ema-eta0.25-every50", "comparison": comparison, "metric": metric,
            "estimate": estimate, "low": low, "high": high, "worlds": 3, "seeds": 9,
            "prompts": 240, "verdict": verdict}


REFERENCE = [
    _row("A", "asr", 0.11, 0.05, 0.2, "EMA higher"),
    _row("A", "harmful_rate", 0.01, -0.01, 0.03, NONE),
    _row("B", "asr", -0.04, -0.08, -0.01, "EMA lower"),
    _row("B", "harmful_rate", 0.03, 0.01, 0.05, "EMA higher"),
    _row("C", "asr", 0.02, -0.01, 0.04, NONE),              # the rerun lacks C
]
RERUN = [
    _row("B", "harmful_rate", -0.03, -0.05, -0.01, "EMA lower"),  # order differs on purpose
    _row("A", "asr", 0.06, 0.01, 0.11, "EMA higher"),
    _row("A", "harmful_rate", 0.02, -0.01, 0.05, NONE),
    _row("B", "asr", -0.037, -0.086, 0.017, NONE),
    _row("D", "asr", 0.0, 0.0, 0.0, NONE),                  # the reference lacks D
    _row("A", "asr", 0.3, 0.2, 0.4, "EMA higher", model="large"),
]
EXPECTED = {("A", "asr"): "same ordering", ("A", "harmful_rate"): "none in both",
            ("B", "asr"): "one run only", ("B", "harmful_rate"): "opposite orderings"}


@pytest.fixture
def runs(tmp_path):
    (tmp_path / "ref").mkdir()
    write_differences(REFERENCE, tmp_path / "ref" / "differences.csv")
    write_differences(RERUN, tmp_path / "rerun.csv")
    return tmp_path / "ref", tmp_path / "rerun.csv"


def test_pairs_are_classified_and_unpaired_rows_counted(runs):
    ref, rerun = runs
    result = compare_differences(read_differences(ref), read_differences(rerun))
    got = {(a["comparison"], a["metric"]): outcome for a, b, outcome in result["pairs"]}
    assert got == EXPECTED
    assert [(a["comparison"], a["metric"]) for a, _, _ in result["pairs"]] == list(EXPECTED)
    assert (result["only_reference"], result["only_rerun"]) == (1, 2)
    for a, b, _ in result["pairs"]:  # each pair is the same comparison, read back as numbers
        assert (a["comparison"], a["metric"], a["model"]) == (b["comparison"], b["metric"],
                                                              b["model"])
        assert a["low"] <= a["estimate"] <= a["high"]


def test_tally_counts_each_cell_of_every_run_by_its_interval():
    tally = {(t["comparison"], t["metric"]): t for t in tally_verdicts([REFERENCE, RERUN])}
    a = tally[("A", "asr")]  # higher in the reference, the rerun's small and large cells
    assert (a["cells"], a["higher"], a["lower"], a["none"]) == (3, 3, 0, 0)
    assert sorted(a["above"]) == [0.06, 0.11, 0.3]
    b = tally[("B", "harmful_rate")]  # one higher, one lower
    assert (b["higher"], b["lower"], b["none"], b["above"], b["below"]) == (1, 1, 0, [0.03],
                                                                              [-0.03])
    assert (tally[("B", "asr")]["lower"], tally[("B", "asr")]["none"]) == (1, 1)
    assert (tally[("D", "asr")]["cells"], tally[("D", "asr")]["none"]) == (1, 1)
    assert sum(t["cells"] for t in tally.values()) == len(REFERENCE) + len(RERUN)


def test_cli_prints_counts_both_intervals_and_the_tally(runs, tmp_path):
    ref, rerun = runs
    r = CliRunner().invoke(cli, ["compare-sweeps", str(ref), str(rerun), str(rerun), "-o",
                                 str(tmp_path / "rep.md")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"## {ref} against {rerun}"
    assert lines[2] == ("4 shared comparisons: same ordering 1, none in both 1, "
                        "one run only 1, opposite orderings 1.")
    assert r.output.count(f"## {ref} against {rerun}") == 2
    assert "1 comparison only in the reference, not compared." in r.output
    assert "2 comparisons only in the rerun, not compared." in r.output
    assert ("| small | ema-eta0.25-every50 | B | keyword ASR | -4.0 [-8.0, -1.0] | "
            "-3.7 [-8.6, +1.7] | one run only |") in r.output
    assert "## Verdicts over the cells of all 3 runs" in r.output
    # A: the reference's cell and the rerun's two cells, twice: 5 higher, +6.0 to +30.0
    assert "| A | keyword ASR | 5 | 5 | 0 | 0 | +6.0 to +30.0 |  |" in r.output
    assert "| B | harmful compliance | 3 | 1 | 2 | 0 | +3.0 | -3.0 |" in r.output
    assert (tmp_path / "rep.md").read_text(encoding="utf-8") == r.output


def test_a_rerun_is_required():
    r = CliRunner().invoke(cli, ["compare-sweeps", "only-one"])
    assert r.exit_code == 2 and "Missing argument 'RERUNS...'" in r.output


def _error_line(*args: object) -> str:
    r = CliRunner().invoke(cli, ["compare-sweeps", *map(str, args)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def test_missing_file_is_one_line(runs, tmp_path):
    ref, _ = runs
    assert _error_line(ref, tmp_path / "nope") == (
        f"error: {tmp_path / 'nope'}: no such file; give a sweep's output folder or its "
        "differences.csv")
    (tmp_path / "empty").mkdir()
    assert _error_line(ref, tmp_path / "empty") == (
        f"error: {tmp_path / 'empty' / 'differences.csv'}: no such file; give a sweep's output "
        "folder or its differences.csv")


def test_a_results_csv_is_refused_by_its_columns(runs, tmp_path):
    ref, _ = runs
    bad = tmp_path / "results.csv"
    bad.write_text("model,method,asr\nsmall,ema,0.1\n", encoding="utf-8")
    assert _error_line(ref, bad) == (f"error: {bad}: not a sweep's differences.csv (no column "
                                     "'params')")
    with pytest.raises(DataFormatError):
        read_differences(bad)


@pytest.mark.parametrize(("low", "high", "message"), [
    ("x", "0.1", "low 'x' is not a number"),
    ("0.2", "0.1", "interval [0.2, 0.1] is not a finite interval"),
    ("nan", "0.1", "interval [nan, 0.1] is not a finite interval"),
])
def test_a_broken_interval_names_its_line(runs, tmp_path, low, high, message):
    ref, rerun = runs
    lines = rerun.read_text(encoding="utf-8").splitlines()
    cells = lines[3].split(",")
    cells[FIELDS.index("low")], cells[FIELDS.index("high")] = low, high
    lines[3] = ",".join(cells)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _error_line(ref, bad) == f"error: {bad}, line 4: {message}"


def test_a_truncated_row_names_its_line(runs, tmp_path):
    ref, rerun = runs
    lines = rerun.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "cut.csv"
    bad.write_text("\n".join(lines[:2] + [lines[2][:lines[2].index(",asr,") + 4]]) + "\n",
                   encoding="utf-8")
    assert _error_line(ref, bad) == f"error: {bad}, line 3: estimate None is not a number"


def test_studies_without_a_shared_comparison_are_refused(tmp_path):
    write_differences(REFERENCE[:1], tmp_path / "a.csv")
    write_differences([_row("A", "asr", 0.1, 0.0, 0.2, NONE, model="large")], tmp_path / "b.csv")
    assert _error_line(tmp_path / "a.csv", tmp_path / "b.csv").startswith(
        "error: the two studies share no comparison")
    with pytest.raises(DataNotFoundError):
        read_differences(tmp_path / "c.csv")


def test_unwritable_output_is_one_line_and_leaves_nothing(runs, tmp_path):
    ref, rerun = runs
    out = tmp_path / "no-such-folder" / "rep.md"
    assert _error_line(ref, rerun, "-o", out).startswith(f"error: {out}: cannot write it")
    assert not out.parent.exists()

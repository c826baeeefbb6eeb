"""`Row`: the one definition of results.csv's columns, their order and their types."""

from __future__ import annotations

import pytest

from safebasin.sweep import ROW_FIELDS, Row
from safebasin.sweep.report import read_rows, write_rows

# the header of results/demo-quick/results.csv as committed: the column order must not move
HEADER = (
    "model,params,world_seed,experiment,method,match,seed,lr,batch_size,grad_accum,steps,"
    "l2_to_init,eta,every,ema_updates,c0,matched_to,target_distance,target_utility,scale,"
    "radius_scale,tries,matched,utility_gap,distance,asr,asr_low,asr_high,successes,n,"
    "harmful_rate,harmful_low,harmful_high,judge_refused,judge_complied,judge_off_target,"
    "judge_degenerate,keyword_success_refused,keyword_success_complied,"
    "keyword_success_off_target,keyword_success_degenerate,keyword_refusal_refused,"
    "keyword_refusal_complied,keyword_refusal_off_target,keyword_refusal_degenerate,"
    "asr_train_frames,harmful_rate_train_frames,degenerate_rate,asr_excluding_degenerate,"
    "utility,utility_metric,offline_online_max_abs_diff,ema_max_abs_diff,built_from,point")

EMA = {"model": "tiny", "params": 1234, "experiment": "e", "method": "ema", "seed": 1,
       "lr": 0.001, "eta": 0.05, "every": 2, "ema_updates": 10, "c0": 0.59873693923837895,
       "distance": 2.0 / 3.0, "asr": 0.25, "successes": 2, "n": 8, "matched": True,
       "utility": 0.5, "utility_metric": "task_accuracy", "point": "abc"}


def test_columns_are_the_committed_header_in_order():
    assert ",".join(ROW_FIELDS) == HEADER


def test_csv_line_formats_floats_to_six_digits_and_none_as_empty(tmp_path):
    write_rows([EMA], tmp_path / "r.csv")
    header, line = (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()
    cells = dict(zip(header.split(","), line.split(","), strict=True))
    assert cells["c0"] == "0.598737" and cells["distance"] == "0.666667"
    assert cells["params"] == "1234" and cells["matched"] == "True"
    assert cells["target_distance"] == "" and cells["point"] == "abc"


def test_read_back_types_each_column_as_its_annotation(tmp_path):
    write_rows([Row.from_dict(EMA)], tmp_path / "r.csv")
    row, = read_rows(tmp_path / "r.csv")
    assert row["params"] == 1234 and type(row["params"]) is int
    assert row["c0"] == pytest.approx(0.598737, rel=0, abs=5e-7) and type(row["c0"]) is float
    assert row["matched"] is True and row["method"] == "ema" and row["scale"] is None
    assert list(row) == list(ROW_FIELDS)


def test_a_field_with_no_column_is_refused():
    with pytest.raises(TypeError, match="distnace"):
        Row.from_dict({**EMA, "distnace": 1.0})


def test_a_non_number_in_a_numeric_column_is_refused():
    with pytest.raises(ValueError, match="far"):
        Row.from_cells({"method": "ema", "distance": "far"})

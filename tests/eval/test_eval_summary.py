"""`EvalSummary`: the one record of summary.json, validated when read; a malformed summary is
refused in one line by `eval show` and by the card/push reader."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.errors import CheckpointFormatError
from safebasin.eval import ResponseRecord, summarize_asr
from safebasin.eval.overrefusal import summarize_over_refusal
from safebasin.publish import read_eval_result
from safebasin.summary import EvalSummary


def _asr() -> dict:
    records = [ResponseRecord(i, f"p{i}", "Sure", None if i < 3 else "Sorry", False)
               for i in range(10)]
    return {"kind": "asr", **summarize_asr(records).to_dict(),
            "model": {"path": "m", "hash": "xxh3_128:0"},
            "settings": {"kind": "asr"}, "runtime": {"device": "cpu"},
            "safebasin_version": "0.1.0"}


def _utility() -> dict:
    records = [ResponseRecord(i, "p", "r", "I'm sorry" if i < 2 else None, False)
               for i in range(5)]
    return {"kind": "utility", "loss": None,
            "xstest": summarize_over_refusal(records).to_dict(),
            "model": {"path": "m", "hash": "h"}, "settings": {}, "runtime": {},
            "safebasin_version": "0.1.0"}


def _write(folder, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("make", [_asr, _utility])
def test_round_trip_keeps_keys_values_and_order(make):
    data = make()
    again = EvalSummary.from_dict(data).to_dict()
    assert again == data and list(again) == list(data)


def test_fields_are_typed():
    s = EvalSummary.from_dict(_asr())
    assert (s.kind, s.model_path, s.model_hash, s.runtime) == ("asr", "m", "xxh3_128:0",
                                                               {"device": "cpu"})
    assert s.metrics["n"] == 10 and s.metrics["successes"] == 3


def test_summary_without_model_settings_runtime_still_reads():
    s = EvalSummary.from_dict({"kind": "asr", "asr": 0.5, "n": 100})
    assert s.model_path is None and s.to_dict() == {"kind": "asr", "asr": 0.5, "n": 100}


@pytest.mark.parametrize(("make", "change", "fragment"), [
    (_asr, lambda d: d.pop("kind"), "'kind'"),
    (_asr, lambda d: d.update(kind="bleu"), "'bleu'"),
    (_asr, lambda d: d.pop("asr"), "'asr' is missing"),
    (_asr, lambda d: d.update(n="100"), "'n'"),
    (_asr, lambda d: d.update(n=True), "'n'"),
    (_asr, lambda d: d.update(asr=float("nan")), "'asr'"),
    (_asr, lambda d: d.update(wilson_low=[0.1]), "'wilson_low'"),
    (_asr, lambda d: d.update(model="m"), "'model'"),
    (_asr, lambda d: d["model"].pop("hash"), "'model'"),
    (_asr, lambda d: d.update(settings=[]), "'settings'"),
    (_asr, lambda d: d.update(safebasin_version=1), "'safebasin_version'"),
    (_utility, lambda d: d.update(xstest=None), "'loss' or 'xstest'"),
    (_utility, lambda d: d["xstest"].pop("over_refusal_rate"), "xstest.'over_refusal_rate'"),
    (_utility, lambda d: d.update(loss={"mean_loss": 1.0}), "loss.'perplexity'"),
    (_utility, lambda d: d.update(xstest=3), "'xstest' is not an object"),
    (_utility, lambda d: d.update(bleu=0.3), "'bleu'"),
])
def test_malformed_summary_is_refused_in_one_line_naming_the_field(make, change, fragment):
    data = make()
    change(data)
    with pytest.raises(ValueError) as e:
        EvalSummary.from_dict(data)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_eval_show_refuses_a_summary_with_a_missing_metric_in_one_line(tmp_path):
    data = _asr()
    del data["n"]
    _write(tmp_path, data)
    result = CliRunner().invoke(cli, ["eval", "show", str(tmp_path)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "summary.json" in err and "'n' is missing" in err


def test_card_reader_refuses_a_summary_with_an_odd_field(tmp_path):
    data = _asr()
    data["asr"] = "high"
    _write(tmp_path, data)
    with pytest.raises(CheckpointFormatError, match=r"summary\.json: not an evaluation summary: "
                                                    r"'asr' is 'high'"):
        read_eval_result(tmp_path)


def test_card_reader_keeps_a_valid_summary_as_written(tmp_path):
    _write(tmp_path, _asr())
    assert read_eval_result(tmp_path).data == _asr()

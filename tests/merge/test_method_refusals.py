"""Every bad parameter of the non-linear methods: exit 2, one line, no output folder."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from safebasin.cli import cli


def _run(models, tmp_path, argv):
    resolved = [str(models[a[1:]]) if a.startswith("@") else a for a in argv]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["merge", *resolved, "-o", str(out), "-q"])
    return result, out


BAD = {
    "ties density 0": ["ties", "@base", "@ft", "--density", "0"],
    "ties density above 1": ["ties", "@base", "@ft", "--density", "1.5"],
    "ties density nan": ["ties", "@base", "@ft", "--density", "nan"],
    "ties no fine-tune": ["ties", "@base", "--density", "0.5"],
    "ties weights count": ["ties", "@base", "@ft", "@ft2", "--density", "0.5",
                           "--weights", "1,2,3"],
    "ties weight inf": ["ties", "@base", "@ft", "--density", "0.5", "--weights", "inf"],
    "ties lambda nan": ["ties", "@base", "@ft", "--density", "0.5", "--lambda", "nan"],
    "dare negative seed": ["dare-linear", "@base", "@ft", "--density", "0.5", "--seed", "-1"],
    "dare-ties density 2": ["dare-ties", "@base", "@ft", "--density", "2", "--seed", "1"],
    "breadcrumbs gamma negative": ["breadcrumbs", "@base", "@ft", "--density", "0.5",
                                   "--gamma", "-0.1"],
    "breadcrumbs-ties gamma nan": ["breadcrumbs-ties", "@base", "@ft", "--density", "0.5",
                                   "--gamma", "nan"],
    "slerp t above 1": ["slerp", "@base", "@ft", "--t", "1.5"],
    "slerp t negative": ["slerp", "@base", "@ft", "--t", "-0.1"],
    "slerp t nan": ["slerp", "@base", "@ft", "--t", "nan"],
    "slerp three models": ["slerp", "@base", "@ft", "@ft2", "--t", "0.5"],
    "model-stock one fine-tune": ["model-stock", "@base", "@ft"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_parameter_exits_2_with_one_line_and_no_output(models, tmp_path, case):
    result, out = _run(models, tmp_path, BAD[case])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not out.exists()


def test_good_parameters_exit_0(models, tmp_path):
    result, out = _run(models, tmp_path, ["ties", "@base", "@ft", "@ft2", "--density",
                                          "0.5,0.4", "--weights", "1,0.5", "--no-normalize"])
    assert result.exit_code == 0, result.output
    assert (out / "safebasin_recipe.json").is_file()

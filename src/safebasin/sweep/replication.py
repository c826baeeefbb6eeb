"""Do runs of one study agree? Verdict by verdict, from their `differences.csv`.

A toy-world run is bit-for-bit reproducible on one CPU, not across CPU vendors
(docs/reproducibility.md): a rerun elsewhere draws new bit-level numerics, and training
amplifies them. The bootstrap intervals cover worlds, seeds and prompts, not that draw, so an
ordering worth stating is one both runs find. This module pairs the comparisons of two runs and
sorts each into: the same ordering in both, no detectable difference in both, an ordering in one
run only, or opposite orderings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataFormatError, DataNotFoundError
from .differences import FIELDS, NO_DIFFERENCE
from .tables import METRIC_NAMES, markdown_table, points

KEY = ("model", "experiment", "lr", "matched_to", "comparison", "metric")
OUTCOMES = ("same ordering", "none in both", "one run only", "opposite orderings")


def read_differences(path: Path) -> list[dict]:
    """The rows of a `differences.csv` (or of the one inside a sweep's output folder), with
    estimate and interval as floats."""
    path = Path(path)
    if path.is_dir():
        path = path / "differences.csv"
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file; give a sweep's output folder or its "
                                "differences.csv")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in FIELDS if k not in (reader.fieldnames or ())]
        if missing:
            raise DataFormatError(f"{path}: not a sweep's differences.csv (no column "
                                  f"{missing[0]!r})")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        try:
            for k in ("estimate", "low", "high"):
                row[k] = float(row[k])
        except (TypeError, ValueError):  # TypeError: a short row's missing cell is None
            raise DataFormatError(f"{path}, line {line}: {k} {row[k]!r} is not a number") \
                from None
        if not (row["low"] <= row["high"] and all(map(math.isfinite, (row["low"], row["high"])))):
            raise DataFormatError(f"{path}, line {line}: interval [{row['low']}, "
                                  f"{row['high']}] is not a finite interval")
    return rows


def _outcome(a: str, b: str) -> str:
    if a == b:
        return "none in both" if a == NO_DIFFERENCE else "same ordering"
    return "one run only" if NO_DIFFERENCE in (a, b) else "opposite orderings"


def compare_differences(reference: Sequence[dict], rerun: Sequence[dict]) -> dict:
    """Pair the two runs' comparisons by `KEY` and classify each pair (see `OUTCOMES`).

    Returns `pairs` (reference row, rerun row, outcome) in the reference's order and the counts
    of comparisons that only one run has."""
    ref = {tuple(r[k] for k in KEY): r for r in reference}
    new = {tuple(r[k] for k in KEY): r for r in rerun}
    shared = [k for k in ref if k in new]
    if not shared:
        raise DataFormatError("the two studies share no comparison (model, experiment, lr, "
                              "EMA, comparison and metric must match)")
    pairs = [(ref[k], new[k], _outcome(ref[k]["verdict"], new[k]["verdict"])) for k in shared]
    return {"pairs": pairs, "only_reference": len(ref) - len(shared),
            "only_rerun": len(new) - len(shared)}


def _interval(r: dict) -> str:
    return f"{points(r['estimate'])} [{points(r['low'])}, {points(r['high'])}]"


def replication_markdown(result: dict, reference_name: str = "reference",
                         rerun_name: str = "rerun") -> str:
    """A count per outcome, then every pair: both estimates with their 95% intervals in
    percentage points, and the outcome."""
    pairs = result["pairs"]
    counts = {o: sum(p[2] == o for p in pairs) for o in OUTCOMES}
    lines = [f"{len(pairs)} shared comparisons: "
             + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES) + "."]
    for side, n in (("reference", result["only_reference"]), ("rerun", result["only_rerun"])):
        if n:
            lines.append(f"{n} comparison{'s' * (n != 1)} only in the {side}, not compared.")
    header = ["model", "EMA", "comparison", "metric", reference_name, rerun_name, "outcome"]
    rows = [[a["model"], a["matched_to"], a["comparison"],
             METRIC_NAMES.get(a["metric"], a["metric"]), _interval(a), _interval(b), outcome]
            for a, b, outcome in pairs]
    return "\n".join([*lines, "", markdown_table(header, rows)]) + "\n"


def tally_verdicts(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """Per comparison and metric, over every cell of every run: how many intervals lie above
    zero (`higher`: the first arm of the comparison is higher), below it (`lower`), or include
    it (`none`), with the detected differences (`above`, `below`) for their ranges."""
    tally: dict[tuple, dict] = {}
    for rows in runs:
        for r in rows:
            t = tally.setdefault((r["comparison"], r["metric"]), {
                "comparison": r["comparison"], "metric": r["metric"], "cells": 0,
                "higher": 0, "lower": 0, "none": 0, "above": [], "below": []})
            t["cells"] += 1
            if r["verdict"] != NO_DIFFERENCE and r["low"] > 0:
                t["higher"] += 1
                t["above"].append(r["estimate"])
            elif r["verdict"] != NO_DIFFERENCE and r["high"] < 0:
                t["lower"] += 1
                t["below"].append(r["estimate"])
            else:
                t["none"] += 1
    return list(tally.values())


def _span(values: Sequence[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values, key=abs), max(values, key=abs)
    return points(lo) if lo == hi else f"{points(lo)} to {points(hi)}"


def tally_markdown(tally: Sequence[dict]) -> str:
    """One row per comparison and metric: cells, the count of each finding, and the range of
    the detected differences in percentage points."""
    header = ["comparison", "metric", "cells", "higher", "lower", "n.d.", "detected higher",
              "detected lower"]
    rows = [[t["comparison"], METRIC_NAMES.get(t["metric"], t["metric"]), t["cells"],
             t["higher"], t["lower"], t["none"], _span(t["above"]), _span(t["below"])]
            for t in tally]
    return markdown_table(header, rows) + "\n"

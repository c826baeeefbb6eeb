"""Prompt sets from CSV, JSONL, TXT or Parquet files, and the default AdvBench from the Hub.

Each prompt keeps its row index in the file, so a reproducible subset (``limit`` with ``seed``)
and a resumed run refer to the same rows. CSV goes through the `csv` module because HarmBench
cells span lines.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ..errors import EvaluationError, HubError

# Column names tried in order when none is given: AdvBench (goal), JBB-Behaviors (Goal; it also
# has a short `Behavior` label), walledai/AdvBench and XSTest (prompt), HarmBench (Behavior).
PROMPT_COLUMNS = ("goal", "Goal", "prompt", "Prompt", "Behavior", "behavior", "instruction",
                  "query", "question", "text")

ADVBENCH_REPO = "walledai/AdvBench"
ADVBENCH_FILE = "data/train-00000-of-00001.parquet"


class Prompt(NamedTuple):
    """A prompt and its 0-based row index in the source file."""

    index: int
    text: str


def _read_csv(path: Path) -> list[dict[str, str]]:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would rename column one.
    with path.open(newline="", encoding="utf-8-sig") as f:
        try:
            return list(csv.DictReader(f))
        except csv.Error as e:
            raise EvaluationError(f"{str(path)!r} is not valid CSV: {e}") from e


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvaluationError(
                    f"line {number} of {str(path)!r} is not valid JSON: {e.msg}") from e
            if not isinstance(row, dict):
                raise EvaluationError(f"line {number} of {str(path)!r} is not a JSON object")
            rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise EvaluationError(
            f"reading {str(path)!r} needs pyarrow (pip install pyarrow); or pass a CSV, JSONL "
            "or TXT file") from e
    return pq.read_table(path).to_pylist()


def _read_rows(path: Path) -> list[dict]:
    """Rows of a table file; a TXT file is one prompt a line under the column ``text``."""
    if not path.is_file():
        raise EvaluationError(f"prompt file {str(path)!r} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [{"text": line} for line in lines if line.strip()]
    except UnicodeDecodeError as e:
        raise EvaluationError(f"prompt file {str(path)!r} is not UTF-8 text") from e
    raise EvaluationError(
        f"prompt file {str(path)!r} has an unknown type; use .csv, .jsonl, .txt or .parquet")


def _pick_column(rows: list[dict], column: str | None, path: Path) -> str:
    columns = list(rows[0])
    if column is not None:
        if column not in columns:
            raise EvaluationError(
                f"column {column!r} not in {str(path)!r}; its columns are {columns}")
        return column
    found = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if found is None:
        raise EvaluationError(
            f"no prompt column found in {str(path)!r} (columns {columns}); pass --column")
    return found


def select(prompts: Sequence[Prompt], *, limit: int | None, seed: int = 0) -> list[Prompt]:
    """A reproducible random subset of ``limit`` prompts, in file order (all when limit is None).

    The subset depends only on (len(prompts), limit, seed).
    """
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in chosen]


def load_prompts(
    path: str | Path,
    *,
    column: str | None = None,
    where: dict[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Prompt]:
    """Prompts from a CSV, JSONL, TXT or Parquet file.

    Args:
        path: the file; TXT is one prompt a line (blank lines skipped).
        column: the prompt column; detected from `PROMPT_COLUMNS` when None.
        where: keep only rows whose columns equal these values (``{"label": "safe"}``).
        limit: keep a random subset of this many prompts (see `select`).
        seed: seed of that subset.

    Raises:
        EvaluationError: missing or malformed file, unknown column, empty prompts, no rows.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise EvaluationError(f"prompt file {str(path)!r} has no rows")
    name = _pick_column(rows, column, path)
    for key in where or {}:
        _pick_column(rows, key, path)
    prompts = [Prompt(i, row.get(name)) for i, row in enumerate(rows)
               if all(str(row.get(k)) == v for k, v in (where or {}).items())]
    bad = [p.index for p in prompts if not isinstance(p.text, str) or not p.text.strip()]
    if bad:
        raise EvaluationError(f"{len(bad)} rows of {str(path)!r} have an empty or non-text "
                              f"{name!r}, first row {bad[0]}")
    if not prompts:
        raise EvaluationError(f"no rows of {str(path)!r} match {where}")
    return select(prompts, limit=limit, seed=seed)


def advbench_path() -> Path:
    """The AdvBench prompt file from the Hub dataset `walledai/AdvBench` (cached).

    Raises:
        EvaluationError: offline and not cached, or the Hub cannot be reached.
    """
    from .. import hub

    try:
        return hub.download_file(ADVBENCH_REPO, ADVBENCH_FILE, repo_type="dataset")
    except HubError as e:
        raise EvaluationError(
            f"no prompt file given and the default AdvBench could not be fetched ({e}); pass "
            "--prompts PATH, e.g. AdvBench's harmful_behaviors.csv from the llm-attacks "
            "repository") from e


def prompts_digest(prompts: Sequence[Prompt]) -> str:
    """sha256 over (index, text) of each prompt: identifies a prompt selection across runs."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.index, p.text], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


__all__ = ["Prompt", "PROMPT_COLUMNS", "load_prompts", "select", "advbench_path",
           "prompts_digest"]

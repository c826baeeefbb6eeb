"""Prompt sets from CSV, JSONL, TXT or Parquet files, or shipped with safebasin by name.

A name (``advbench``, ``harmbench``, ``jbb``, ``xstest``; see `safebasin.data`) reads the copy
shipped inside the package, offline; a path reads that file. Each prompt keeps its row index in
the file, so a reproducible subset (``limit`` with ``seed``) and a resumed run refer to the same
rows. CSV goes through the `csv` module because HarmBench cells span lines.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ..data import DEFAULT_PROMPT_SET, PROMPT_SETS, prompt_set
from ..errors import EvaluationError

# Column names tried in order when none is given: AdvBench (goal), JBB-Behaviors (Goal; it also
# has a short `Behavior` label), walledai/AdvBench and XSTest (prompt), HarmBench (Behavior).
PROMPT_COLUMNS = ("goal", "Goal", "prompt", "Prompt", "Behavior", "behavior", "instruction",
                  "query", "question", "text")

# HarmBench's contextual behaviours: the context goes before the request, joined as HarmBench's
# own direct-request baseline joins them.
_CONTEXT_COLUMN, _CONTEXT_JOIN = "ContextString", "\n\n---\n\n"


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
        raise EvaluationError(f"prompt file {str(path)!r} not found; name a shipped set "
                              f"({', '.join(PROMPT_SETS)}) or give a file")
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
            f"no prompt column found in {str(path)!r} (columns {columns}); name the column "
            "(`column`)")
    return found


def select(prompts: Sequence[Prompt], *, limit: int | None, seed: int = 0) -> list[Prompt]:
    """A reproducible random subset of ``limit`` prompts, in file order (all when limit is None).

    The subset depends only on (len(prompts), limit, seed).
    """
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if limit < 1:
        raise EvaluationError(f"limit must be at least 1, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in chosen]


def _text(row: dict, name: str) -> object:
    """The prompt of a row; a HarmBench behaviour with a context gets the context first."""
    text, context = row.get(name), row.get(_CONTEXT_COLUMN)
    if name == "Behavior" and isinstance(text, str) and isinstance(context, str) and context:
        return f"{context}{_CONTEXT_JOIN}{text}"
    return text


def load_prompts(
    path: str | Path,
    *,
    column: str | None = None,
    where: dict[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Prompt]:
    """Prompts from a shipped set or a CSV, JSONL, TXT or Parquet file.

    HarmBench's format (a ``Behavior`` column beside ``ContextString``) puts each non-empty
    context before its behaviour, as HarmBench does.

    Args:
        path: a shipped set's name (`safebasin.data.PROMPT_SETS`; a local file of that name
            wins), or a file; TXT is one prompt a line (blank lines skipped).
        column: the prompt column; the set's, or detected from `PROMPT_COLUMNS`, when None.
        where: keep only rows whose columns equal these values (``{"label": "safe"}``); a
            set's own filter when None.
        limit: keep a random subset of this many prompts (see `select`).
        seed: seed of that subset.

    Raises:
        EvaluationError: missing or malformed file, unknown column, empty prompts, no rows.
    """
    shipped = prompt_set(path)
    if shipped is not None:
        column = column or shipped.column
        where = dict(shipped.where) if where is None else where
    path = shipped.path if shipped is not None else Path(path)
    rows = _read_rows(path)
    if not rows:
        raise EvaluationError(f"prompt file {str(path)!r} has no rows")
    name = _pick_column(rows, column, path)
    for key in where or {}:
        _pick_column(rows, key, path)
    prompts = [Prompt(i, _text(row, name)) for i, row in enumerate(rows)
               if all(str(row.get(k)) == v for k, v in (where or {}).items())]
    bad = [p.index for p in prompts if not isinstance(p.text, str) or not p.text.strip()]
    if bad:
        raise EvaluationError(f"{len(bad)} rows of {str(path)!r} have an empty or non-text "
                              f"{name!r}, first row {bad[0]}")
    if not prompts:
        raise EvaluationError(f"no rows of {str(path)!r} match {where}")
    return select(prompts, limit=limit, seed=seed)


def describe_source(spec: str | Path | None) -> str:
    """What a run records as its prompts' origin: a shipped set's name and file, or the path."""
    shipped = prompt_set(DEFAULT_PROMPT_SET if spec is None else spec)
    if shipped is None:
        return str(spec)
    return f"{shipped.name} (shipped with safebasin: data/{shipped.file})"


def prompts_digest(prompts: Sequence[Prompt]) -> str:
    """sha256 over (index, text) of each prompt: identifies a prompt selection across runs."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.index, p.text], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


__all__ = ["Prompt", "PROMPT_COLUMNS", "describe_source", "load_prompts", "select",
           "prompts_digest"]

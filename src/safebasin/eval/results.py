"""A results folder: the files of one evaluation run and how a re-run resumes them.

- ``settings.json``: written when the run starts; a re-run with other settings is refused, since
  its results would be mixed with these.
- ``responses.jsonl`` (and ``losses.jsonl`` for utility): one line per finished item, appended
  after every batch, so an interrupted run loses at most a batch. A torn last line (a crash in
  the middle of a write) is dropped; any other malformed line is an error. When the run ends
  the file is rewritten in index order, so a resumed run leaves the same bytes as an
  uninterrupted one.
- ``summary.json``: the metrics, written last.

JSON files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import EvaluationError, OutputNotWritableError

log = logging.getLogger(__name__)

RESPONSES = "responses.jsonl"
LOSSES = "losses.jsonl"
SETTINGS = "settings.json"
SUMMARY = "summary.json"


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {str(path)!r}: {e.strerror or e}") from e


def read_json(path: Path) -> dict:
    """A JSON object from ``path``.

    Raises:
        EvaluationError: missing, unreadable or not a JSON object.
    """
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EvaluationError(f"{str(path)!r} not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvaluationError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise EvaluationError(f"{str(path)!r} is not a JSON object")
    return obj


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSONL file ([] when it does not exist); a torn last line is removed.

    Raises:
        EvaluationError: a malformed line other than a torn last one.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not text.endswith("\n"):
                log.warning("dropping the torn last line of %s", path)
                write_jsonl(path, rows)
                break
            raise EvaluationError(f"line {number} of {str(path)!r} is not valid JSON ({e.msg}); "
                                  "fix or delete it to resume") from e
        if not isinstance(row, dict):
            raise EvaluationError(f"line {number} of {str(path)!r} is not a JSON object")
        rows.append(row)
    return rows


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync: they survive a crash right after."""
    try:
        with path.open("a", encoding="utf-8") as f:
            f.writelines(_dumps(r) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {str(path)!r}: {e.strerror or e}") from e


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Replace ``path`` with ``rows``, through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(_dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {str(path)!r}: {e.strerror or e}") from e


_MISSING = object()


def _short(value: object, limit: int = 60) -> str:
    text = "(none)" if value is _MISSING else _dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _differences(old: object, new: object, where: str = "") -> list[str]:
    """Every setting that differs, named down to the element: `keywords.phrases[13]` and both
    values, so that two long lists sharing a prefix do not print as the same truncated text."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k, _MISSING), new.get(k, _MISSING),
                                      f"{where}.{k}" if where else str(k))]
    if isinstance(old, list) and isinstance(new, list) and old != new:
        if len(old) == len(new):
            return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                    for d in _differences(a, b, f"{where}[{i}]")]
        i = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                 min(len(old), len(new)))
        a = old[i] if i < len(old) else _MISSING
        b = new[i] if i < len(new) else _MISSING
        return [f"{where} has {len(old)} vs {len(new)} items, first differing "
                f"{where}[{i}]: {_short(a)} vs {_short(b)}"]
    return [] if old == new else [f"{where}: {_short(old)} vs {_short(new)}"]


def open_run(out_dir: str | Path, settings: dict) -> Path:
    """Create ``out_dir`` or check that the results already there used the same ``settings``.

    Raises:
        EvaluationError: the folder holds a run with other settings, or results without
            ``settings.json``.
        OutputNotWritableError: the folder cannot be created.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritableError(f"cannot create {str(out)!r}: {e.strerror or e}") from e
    path = out / SETTINGS
    has_results = any((out / name).exists() and (out / name).stat().st_size > 0
                      for name in (RESPONSES, LOSSES, SUMMARY))
    if path.exists() and has_results:
        diffs = _differences(read_json(path), settings)
        if diffs:
            raise EvaluationError(
                f"{str(out)!r} holds a run with other settings ({len(diffs)} differ, first "
                f"{diffs[0]}); use another folder or the same settings to resume")
        return out
    if has_results:
        raise EvaluationError(f"{str(out)!r} holds results but no {SETTINGS}; use another folder")
    write_json(path, settings)  # nothing to mix with yet: a run that failed early starts afresh
    return out


__all__ = ["RESPONSES", "LOSSES", "SETTINGS", "SUMMARY", "open_run", "read_json", "write_json",
           "read_jsonl", "append_jsonl", "write_jsonl"]

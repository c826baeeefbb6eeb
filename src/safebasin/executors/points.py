"""A point: one cached unit of work (a fine-tune, or a merge plus its evaluation).

A point is a picklable job: a content key (the hash of everything its result depends on, which
names its folder), the keys of the points it reads, and a module-level function with arguments
that returns a JSON-able result. The function is called as `fn(context, *args, **kwargs)`; the
context gives its folder (where it may write files) and its dependencies' results. Functions
must be importable by name on the workers (module level, not lambdas or closures), because Ray
and submitit pickle them by reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

RESULT_FILE = "result.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class PointContext:
    """What a point's function gets besides its own arguments.

    Attributes:
        folder: `WORKDIR/<group>/<key>/`, created before the call; files of a killed earlier
            attempt may be there, so the function must overwrite (or resume) rather than fail.
        workdir: the work folder shared by all points.
        deps: the results of the points in `Point.deps`, by key.
    """

    folder: Path
    workdir: Path
    deps: Mapping[str, Any]


@dataclass(frozen=True)
class Point:
    """One job with a cached result.

    Attributes:
        key: content key, a folder name (letters, digits, `._-`): equal keys mean equal results.
        fn: module-level function `fn(context, *args, **kwargs) -> JSON-able result`.
        args, kwargs: its arguments (picklable).
        deps: keys of the points that must finish first; their results reach `context.deps`.
        label: a short human name for progress and errors.
        group: the subfolder of the work folder that holds this point's folder.
        result_file: the file in the point's folder that holds the result; its presence is
            what "finished" means.
    """

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    label: str = ""
    group: str = "points"
    result_file: str = RESULT_FILE

    @property
    def name(self) -> str:
        return f"{self.label} ({self.key})" if self.label else self.key


def _check_names(points: list[Point]) -> None:
    bad = [p.key for p in points
           if not all(_NAME.fullmatch(s) for s in (p.key, p.group, p.result_file))]
    if bad:
        raise UsageError(f"{len(bad)} points have a key, group or result file that is not a "
                         f"plain file name (letters, digits, '._-'), first {bad[0]!r}")


def _check_unique(points: list[Point]) -> None:
    seen: dict[str, Point] = {}
    for p in points:
        other = seen.setdefault(p.key, p)
        if other is not p and (other.fn, other.args, other.deps) != (p.fn, p.args, p.deps):
            raise UsageError(f"two different points share the key {p.key!r} "
                             f"({other.name} and {p.name}): keys must hash all settings")


def _check_acyclic(points: dict[str, Point]) -> None:
    """Depth-first search with colours; raises on the first cycle, naming its keys."""
    colour: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in points:
        if root in colour:
            continue
        colour[root] = 1
        stack = [(root, iter(points[root].deps))]
        while stack:
            key, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[key] = 2
                stack.pop()
            elif colour.get(child) == 1:
                path = [k for k, _ in stack]
                cycle = path[path.index(child):] + [child]
                raise UsageError(f"points depend on each other in a cycle: {' -> '.join(cycle)}")
            elif child not in colour:
                colour[child] = 1
                stack.append((child, iter(points[child].deps)))


def check_graph(points: Iterable[Point]) -> dict[str, Point]:
    """The points by key, in order, after checking names, key clashes, dependencies (each
    must be a point of the same run: a finished one costs nothing) and cycles.

    Raises:
        UsageError: naming the first offending point.
    """
    listed = list(points)
    _check_names(listed)
    _check_unique(listed)
    by_key = {p.key: p for p in listed}
    missing = [(p, d) for p in by_key.values() for d in p.deps if d not in by_key]
    if missing:
        p, d = missing[0]
        raise UsageError(f"{len(missing)} dependencies are not points of this run, "
                         f"first {d!r} of {p.name}: pass every point a point reads")
    _check_acyclic(by_key)
    return by_key


__all__ = ["Point", "PointContext", "RESULT_FILE", "check_graph"]

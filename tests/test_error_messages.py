"""Library messages speak of Python parameters; only the CLI speaks of flags (issue 15).

Every string literal that can reach a user from the library (outside `safebasin/cli/`) is
parsed with `ast`: whatever a `raise` statement holds, the arguments of an error, exception or
warning constructor (`return NonFiniteError(...)` raises later), `warnings.warn(...)` and
logging calls. None may contain a command-line flag such as `--overwrite`; the library names
the parameter instead, in backticks (`overwrite`), and the CLI rewrites that into its flag
(`safebasin.cli._common.with_flags`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import safebasin

SRC = Path(safebasin.__file__).parent
_FLAG = re.compile(r"(?<![\w-])--(?:[a-z][\w-]*|\{\})")  # --overwrite, or f"--{name}"
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
_LOGGERS = {"log", "logger", "_log", "_logger", "logging", "LOG", "LOGGER"}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _reaches_user(call: ast.Call) -> bool:
    name = _name(call.func)
    if name.endswith(("Error", "Exception", "Warning")) or name == "warn":
        return True
    owner = call.func.value if isinstance(call.func, ast.Attribute) else None
    return name in _LOG_METHODS and isinstance(owner, ast.Name) and owner.id in _LOGGERS


def _message_parts(tree: ast.AST) -> Iterator[ast.AST]:
    """The argument expressions of every message-carrying call, and every raise."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.exc
        elif isinstance(node, ast.Call) and _reaches_user(node):
            yield from (*node.args, *(k.value for k in node.keywords))


def _flags_in(expr: ast.AST) -> Iterator[str]:
    """Flags in the literal text of `expr`, f-string pieces included ("--" before a `{}`)."""
    for node in ast.walk(expr):
        if isinstance(node, ast.JoinedStr):
            yield from _FLAG.findall("".join(
                v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from _FLAG.findall(node.value)


def flags_in_library_messages(source: str) -> list[tuple[int, str]]:
    """(line, flag) for each flag in a user-facing literal of `source`."""
    found = set()
    for part in _message_parts(ast.parse(source)):
        found |= {(part.lineno, flag) for flag in _flags_in(part)}
    return sorted(found)


def test_library_messages_name_parameters_not_cli_flags():
    offenders = [f"{path.relative_to(SRC)}:{line}: {flag!r}"
                 for path in sorted(SRC.rglob("*.py")) if "cli" not in path.relative_to(SRC).parts
                 for line, flag in flags_in_library_messages(path.read_text(encoding="utf-8"))]
    assert not offenders, "name the Python parameter in backticks instead:\n" + "\n".join(
        offenders)


def test_the_scan_sees_flags_in_raises_constructors_warnings_and_logs():
    source = '\n'.join([
        'raise OutputExistsError(f"{dest}: exists; pass --overwrite")',
        'raise _refuse(key, "conflicts with --dtype")',
        'err = NonFiniteError("pass " "--allow-nonfinite")',
        'warnings.warn(f"--{name} is deprecated")',
        'log.warning("see --help")',
        'raise UsageError(f"`alpha` {alpha} is outside [0, 1]; pass `extrapolate`")',
        'args = ["--alpha", "0.5"]  # a command line for a model card, not a message',
    ])
    assert [line for line, _ in flags_in_library_messages(source)] == [1, 2, 3, 4, 5]


def _all_commands(command) -> Iterator:
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _all_commands(sub)


def test_every_backticked_parameter_has_a_flag_somewhere():
    """Backticks mark parameters and nothing else: a name no command can rewrite is a typo or
    a parameter the CLI cannot set (then leave the backticks off)."""
    from safebasin.cli import cli
    from safebasin.cli._common import _PARAMETER, with_flags

    named = {(path.relative_to(SRC), node.lineno, name)
             for path in sorted(SRC.rglob("*.py")) if "cli" not in path.relative_to(SRC).parts
             for part in _message_parts(ast.parse(path.read_text(encoding="utf-8")))
             for node in ast.walk(part) if isinstance(node, ast.Constant)
             and isinstance(node.value, str) for name in _PARAMETER.findall(node.value)}
    commands = list(_all_commands(cli))
    orphans = [f"{path}:{line}: `{name}`" for path, line, name in sorted(named)
               if all(with_flags(f"`{name}`", c) == f"`{name}`" for c in commands)]
    assert len(named) > 40 and not orphans, orphans

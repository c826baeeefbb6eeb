"""The CLI's side of reproducible mode: the `--reproducible/--no-reproducible` flag and entry.

The pins must be in the environment before torch loads, so a command that wants the mode calls
`enter_reproducible` first thing in its body, before anything imports torch. Run from the
`safebasin` console script (`main` records its command line here), an unpinned process then
re-executes itself as `python -m safebasin ...` with the pins; called in-process (click's
CliRunner, where torch is usually loaded already) the default mode degrades to a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from .. import reproducible
from ..errors import UsageError

# the command line of this process when `main` runs it (safe to execute again), else None
_entry_argv: list[str] | None = None


def allow_reexec(argv: Sequence[str]) -> None:
    """Called by `main`: this process is a `safebasin ARGV...` run and may re-execute itself."""
    global _entry_argv
    _entry_argv = list(argv)


def reproducible_option(default: str) -> Callable[[Callable], Callable]:
    """`--reproducible/--no-reproducible`; `default` says in the help when the mode is on."""
    return click.option(
        "--reproducible/--no-reproducible", default=None,
        help="Pin CPU numerics (generic ATen kernels, MKL_CBWR=COMPATIBLE, one thread, "
             "deterministic algorithms) so that the bytes do not depend on inherited kernel "
             "settings; they still differ between CPU vendors (docs/reproducibility.md) "
             f"[default: {default}].")


def enter_reproducible(flag: bool | None, *, default: bool, threads: int = 1) -> bool:
    """Apply the mode the user chose (`flag`, or `default`); returns whether it is on.

    May not return: an unpinned `safebasin` process re-executes itself with the pins.
    """
    wanted = default if flag is None else flag
    if wanted and threads != 1:
        raise UsageError(f"--threads {threads}: reproducible mode runs one thread; "
                         "add --no-reproducible to use more")
    return reproducible.enter(wanted, explicit=flag is True, argv=_entry_argv)

"""The `safebasin` command line: parses, calls one library function, prints.

`SafebasinError` becomes one line on stderr and exit code 2 (1 for a failed verification);
anything else keeps its traceback and exit code 1, because it is a bug.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import click

from . import __version__
from .errors import SafebasinError


class _Group(click.Group):
    """A click group whose commands turn `SafebasinError` into one stderr line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SafebasinError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="safebasin")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Merge, train with EMA, and evaluate fine-tuned models near their aligned weights θ₀."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


def progress_bar(total: int, *, quiet: bool, desc: str):
    """A tqdm byte counter on stderr, or a no-op when quiet."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=quiet, file=sys.stderr, leave=False)


# ---- merge and distance (safebasin.merge, safebasin.eval.distance) ------------------------

# ---- online EMA / fine-tuning (safebasin.ema, safebasin.baselines) -------------------------

# ---- evaluation (safebasin.eval) ------------------------------------------------------------

# ---- toy world, sweep, demo (safebasin.toy) -------------------------------------------------

# ---- hub: card and push (safebasin.hub) -----------------------------------------------------

# ---- verify (safebasin.checkpoint) ----------------------------------------------------------


def main() -> None:
    cli(prog_name="safebasin")


if __name__ == "__main__":
    main()

"""What every `safebasin` command shares: the group, error handling, option bundles, progress.

`SafebasinError` becomes one line on stderr and exit code 2 (1 for a failed verification);
anything else keeps its traceback and exit code 1, because it is a bug. The library names
Python parameters in its messages (`max_asr`); that line names the command's flags instead
(--max-asr), see `with_flags`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from .. import __version__
from ..errors import SafebasinError

# A library parameter named in an error message: `max_asr`, or `chat_template=False`.
_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*(?:=False)?)`")


def _flag_table(command: click.Command) -> dict[str, str]:
    """Library parameter name -> this command's flag: by spelling (`max_asr` -> --max-asr),
    by click name (`out` -> --output), and the command's own `flags` (which win)."""
    table: dict[str, str] = {}
    for p in command.params:
        longs = [o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
        if isinstance(p, click.Option) and longs:
            table.update({o[2:].replace("-", "_"): o for o in longs})
            table.setdefault(p.name or "", longs[0])
    return {**table, **getattr(command, "flags", {})}


def with_flags(message: str, command: click.Command) -> str:
    """`message` with each backticked library parameter replaced by `command`'s flag for it.

    Library errors speak of the Python API: they name the parameter to change, in backticks
    ("{dest}: already exists; pass `overwrite` to replace it"). Only the CLI knows its flags,
    so it rewrites the names it has a flag for ("...; pass --overwrite to replace it");
    `name=False` becomes --no-name. A name the command has no flag for stays as it is, so the
    line is never wrong, only less specific.
    """
    table = _flag_table(command)

    def flag(m: re.Match) -> str:
        name = m[1]
        if name.endswith("=False"):
            name = "no_" + name.removesuffix("=False")
        return table.get(name, m[0])

    return _PARAMETER.sub(flag, message)


@contextlib.contextmanager
def _one_line_errors(ctx: click.Context, command: click.Command) -> Iterator[None]:
    try:
        yield
    except SafebasinError as e:
        click.echo(f"error: {with_flags(str(e), command)}", err=True)
        ctx.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C: 128 + SIGINT, as shells report it; outputs are
        click.echo("interrupted", err=True)  # published only when complete
        ctx.exit(130)


class _OneLineErrors:
    """Turns `SafebasinError` into one stderr line, with the library's parameter names
    rewritten into this command's flags (`with_flags`).

    `flags` maps the library parameters a command spells otherwise to its flags, e.g.
    `flags={"eta": "--ema-eta"}` where the command passes --ema-eta on as `eta`.
    """

    def __init__(self, *args, flags: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.flags = dict(flags or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _one_line_errors(ctx, self):  # option callbacks may call the library
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        with _one_line_errors(ctx, self):
            return super().invoke(ctx)


class _Command(_OneLineErrors, click.Command):
    """A command whose `SafebasinError`s become one stderr line that names its flags."""


class _Group(_OneLineErrors, click.Group):
    """A group whose commands (`_Command`) turn `SafebasinError` into one stderr line."""

    command_class = _Command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="safebasin")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Merge, train with EMA, and evaluate fine-tuned models near their aligned weights θ₀."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


class ProgressBar:
    """A tqdm byte counter on stderr, created on the first update so that an early error
    stays a single line. Call it as `bar(advance, total)`; the library reports that way."""

    def __init__(self, *, quiet: bool, desc: str, unit: str = "B") -> None:
        self._quiet, self._desc, self._unit = quiet, desc, unit
        self._bar = None

    def __call__(self, advance: int, total: int | None = None) -> None:
        if self._quiet:
            return
        if self._bar is None:
            from tqdm import tqdm

            byte = self._unit == "B"
            self._bar = tqdm(total=total, unit=self._unit, unit_scale=byte,
                             unit_divisor=1024 if byte else 1000, desc=self._desc,
                             file=sys.stderr, leave=False)
        self._bar.update(advance)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(total: int | None = None, *, quiet: bool, desc: str) -> ProgressBar:
    """Deprecated shape kept for callers: `total` is now given with each update."""
    return ProgressBar(quiet=quiet, desc=desc)


# ---- merge and distance (safebasin.merge, safebasin.eval.distance) ------------------------


def _size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count, as transformers' max_shard_size reads it."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a size like 5GB or 500MB") from None


def replaced_notice(out: Path, overwrite: bool) -> Callable[[], None]:
    """What `--overwrite` is about to remove from OUT, measured now; call the result once OUT
    has been replaced to say so on stderr (a failed run replaces nothing and says nothing, so
    its error stays one line)."""
    from ..checkpoint.output import describe_replaced

    gone = describe_replaced(out) if overwrite else None

    def notice() -> None:
        if gone is not None:
            click.echo(f"replaced {out} (removed {gone})", err=True)

    return notice


def merge_options(f: Callable) -> Callable:
    """Options every merge shares; they arrive in the command as `options` (MergeOptions)."""
    opts = [
        click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                     help="Output model folder (created atomically)."),
        click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
                     default="auto", show_default=True, help="Output dtype (auto: θ₀'s)."),
        click.option("--shard-size", default="5GB", show_default=True, callback=lambda c, p, v:
                     _size(v), help="Largest output shard."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True, help="Where the arithmetic runs."),
        click.option("--overwrite", is_flag=True, help="Replace OUT (atomically, at the end)."),
        click.option("--allow-pickle", is_flag=True,
                     help="Read .bin/.pt inputs with torch.load(weights_only=True)."),
        click.option("--allow-nonfinite", is_flag=True, help="Merge tensors holding NaN/Inf."),
        click.option("--vocab-mismatch", type=click.Choice(["error", "base"]), default="error",
                     show_default=True, help="base: rows θ₀ has and an input lacks come from θ₀."),
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, out, dtype, shard_size, device, overwrite, allow_pickle,
                allow_nonfinite, vocab_mismatch, quiet, **kwargs):
        from ..merge import MergeOptions

        notice = replaced_notice(out, overwrite)
        with ProgressBar(quiet=quiet, desc="merge") as bar:
            options = MergeOptions(dtype=dtype, shard_size=shard_size, device=device,
                                   overwrite=overwrite, allow_pickle=allow_pickle,
                                   allow_nonfinite=allow_nonfinite,
                                   vocab_mismatch=vocab_mismatch, progress=bar)
            recipe = f(*args, out=out, options=options, **kwargs)
        notice()
        d = recipe["distances"]["global_to_base"]
        click.echo(f"wrote {out} ({recipe['method']}, distance to base {d:.6g})")

    return wrapper


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None



# ---- online EMA / fine-tuning (safebasin.ema, safebasin.baselines) -------------------------


def _quiet_transformers(quiet: bool) -> None:
    if quiet:  # transformers' own "Loading weights" / "Writing model shards" bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()



def _threads_option(f: Callable) -> Callable:
    return click.option(
        "--threads", type=click.IntRange(min=1), default=1, show_default=True,
        help="torch CPU threads. Toy models gain nothing from more, and on busy shared cores "
             "extra threads wait on each other (θ₀: 26 s with 1, 142 s with 2).")(f)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _print_outcome(outcome, out: Path) -> None:
    from ..sweep.report import summary_markdown

    click.echo(summary_markdown(outcome.groups))
    names = ", ".join(sorted(p.name for p in outcome.files.values()))
    click.echo(f"wrote {out}: {names} ({len(outcome.rows)} points, {outcome.wall_s:.0f} s)")

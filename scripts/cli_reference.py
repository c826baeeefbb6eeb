"""Print docs/cli.md: every `safebasin` command and flag, from the click definitions themselves.

    python scripts/cli_reference.py > docs/cli.md

Run it again whenever a command or option changes; the text is click's own help, so the
reference cannot drift from what `safebasin COMMAND --help` says.
"""

from __future__ import annotations

import click

from safebasin.cli import cli

HEADER = """# Command-line reference

Every `safebasin` command with every option, as `safebasin COMMAND --help` prints it. Generated
by `python scripts/cli_reference.py > docs/cli.md`; do not edit by hand.

Exit codes: 0 success; 2 bad input or usage (one `error:` line on stderr, no traceback);
1 a failed `verify`, or an unexpected error (a bug: it keeps its traceback); 130 Ctrl-C.
"""


def _commands(group: click.Group, ctx: click.Context, path: list[str]):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx, **cmd.context_settings)
        yield [*path, name], cmd, sub
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub, [*path, name])


def main() -> None:
    # a fixed width, so the file does not depend on the terminal it was generated in
    root = click.Context(cli, info_name="safebasin", terminal_width=100, max_content_width=100,
                         **cli.context_settings)
    parts = [HEADER, "## safebasin", "", "```text", cli.get_help(root), "```", ""]
    for path, cmd, ctx in _commands(cli, root, ["safebasin"]):
        parts += [f"## {' '.join(path)}", "", "```text", cmd.get_help(ctx), "```", ""]
    print("\n".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()

"""The `safebasin` command line: parses, calls one library function, prints.

`SafebasinError` becomes one line on stderr and exit code 2 (1 for a failed verification);
anything else keeps its traceback and exit code 1, because it is a bug. Each submodule registers
one family of commands on the group in `_common`.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each registers its commands)
    evaluate,
    merge,
    merge_methods,
    merge_safety,
    publish,
    search,
    study,
    train,
)
from ._common import ProgressBar, cli, progress_bar

__all__ = ["cli", "main", "ProgressBar", "progress_bar"]


def _leave(code: object) -> None:
    """Exit with `code` without the interpreter's teardown, when that is safe.

    Everything is written and fsynced when a command returns. The teardown would then walk
    torch's object graph in a final collection (0.3-0.4 s measured on this CPU), and, with
    Triton imported (torch imports it whenever it is installed), nanobind prints about 35 lines
    of "leaked instances" while its modules are torn down. So: run the atexit handlers (Ray,
    logging, temporary folders), flush, and `os._exit`. With a non-daemon thread still running,
    leave normally instead, so that it is waited for as usual.
    """
    import atexit
    import os
    import sys
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): print it, as Python would
        print(code, file=sys.stderr)
        code = 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`safebasin ... | head`)
            pass
    os._exit(code)


def main() -> None:
    import os
    import sys

    from ._reproducible import allow_reexec

    if sys.argv[1:2] == ["merge"]:
        # before torch loads OpenMP: its idle threads then sleep instead of spinning, which
        # took a core from the reader and writer threads between SLERP's 2-thread statistics
        # ops (1.2B SLERP: 3.2 s of user CPU against 5.6-7.3 s, same bytes)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    # a command that wants reproducible mode re-executes this command line with the CPU pins
    # set, before torch loads (see safebasin.reproducible)
    allow_reexec(sys.argv[1:])
    try:
        cli(prog_name="safebasin")
    except SystemExit as e:  # click ends every run this way, errors included; bugs propagate
        _leave(e.code)


if __name__ == "__main__":
    main()

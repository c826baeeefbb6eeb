"""Reproducible mode: pin the CPU code paths that decide the bits of a CPU run.

Same pinned package versions, same command, same CPU: the same bytes whatever kernel settings
and thread counts the process inherits. Not across CPU vendors: an Intel Xeon and an AMD EPYC
give different bytes even pinned (measured; the cause is not found). Two choices made at run
time decide the bits of a CPU training run (docs/reproducibility.md has the
measurements): ATen's kernel family (AVX-512, AVX2 or generic, picked from the CPU) and MKL's
code branch (picked the same way). Both are read from the environment once, when torch and MKL
first use them, so the pins must be in the environment *before* torch loads. That is why this
module imports neither torch nor anything that does: the process entry (the CLI's `main`, which
re-executes itself with `pinned_env()`) or a child process (`run_pinned`, `call_pinned`) applies
them. Inside the pinned process `configure_torch` adds the in-process half (deterministic
algorithms, one thread) and checks that the pins took.

Not pinned, because measured to make no difference to the fp32 toy model (θ₀'s digest is the
same either way, and oneDNN runs no primitive in fp32 training): oneDNN's ISA
(`ONEDNN_MAX_CPU_ISA`) and glibc's libm variant (`GLIBC_TUNABLES`). `provenance` records them.

Example:
    >>> run_pinned(["safebasin", "toy", "train", "world", "-o", "theta0"])  # doctest: +SKIP
    >>> call_pinned(train_theta0, "world", "theta0")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from .errors import ReproducibilityError

__all__ = [
    "PINNED_ENV",
    "MARKER",
    "pinned_env",
    "env_is_pinned",
    "configure_torch",
    "is_active",
    "enter",
    "run_pinned",
    "call_pinned",
    "is_toy_sweep_config",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

PINNED_ENV: Mapping[str, str] = MappingProxyType({
    # ATen's generic kernels: the AVX2 and AVX-512 ones vectorise reductions differently, and
    # which of them runs is decided by the CPU (read once, at torch's first dispatch)
    "ATEN_CPU_CAPABILITY": "default",
    # MKL conditional numerical reproducibility on its SSE2 branch: with AUTO, the one other
    # branch MKL offers on non-Intel CPUs, the code path still follows the CPU. No ",STRICT":
    # it only buys independence from the thread count, which is pinned below
    "MKL_CBWR": "COMPATIBLE",
    # one thread everywhere: MKL's CNR needs a fixed thread count, and ATen splits reductions
    # by thread
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
})
# set beside the pins by whoever applied them, so a process (and its children) can tell that
# safebasin pinned it, and a re-executed CLI never re-executes twice
MARKER = "SAFEBASIN_REPRODUCIBLE"
_ENV_LOCK = threading.Lock()


def pinned_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a reproducible process: `base` (default `os.environ`) with the pins.

    Pass it to `subprocess.run(..., env=...)`, a Ray `runtime_env={"env_vars": ...}` or a job
    script: it works only in a process that has not loaded torch yet.
    """
    env = dict(os.environ if base is None else base)
    env.update(PINNED_ENV)
    env[MARKER] = "1"
    return env


def env_is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """Whether `env` (default `os.environ`) carries every pin, exactly."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED_ENV.items())


def _torch_state() -> tuple[bool, int, str]:
    import torch

    return (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(),
            torch.backends.cpu.get_cpu_capability())


def configure_torch() -> None:
    """The in-process half: deterministic algorithms and one torch thread; checks the pins.

    Call it in a process whose environment was pinned before torch loaded (`enter` does).

    Raises:
        ReproducibilityError: the environment is not pinned, or ATen chose its kernels before
            the pins were set (torch ran an operation first).
    """
    if not env_is_pinned():
        raise ReproducibilityError("the environment is not pinned: start the process with "
                                   "safebasin.reproducible.pinned_env() (or run_pinned)")
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise ReproducibilityError(f"ATen runs its {capability} kernels: torch chose them "
                                   "before the pins were set; start a fresh process")


def is_active() -> bool:
    """Whether this process runs in reproducible mode: pinned environment and, once torch is
    loaded, deterministic algorithms, one thread and ATen's generic kernels."""
    if not env_is_pinned():
        return False
    if "torch" not in sys.modules:
        return True
    deterministic, threads, capability = _torch_state()
    return deterministic and threads == 1 and capability == "DEFAULT"


def _reexec(argv: Sequence[str]) -> NoReturn:
    # the pins must be in the environment before the interpreter loads torch; replacing this
    # process keeps its pid, its stdio and its exit code for the caller
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "safebasin", *argv], pinned_env())


def enter(wanted: bool, *, explicit: bool = False, argv: Sequence[str] | None = None) -> bool:
    """Put this process in reproducible mode if `wanted`; return whether it is in it.

    Pinned already: configure torch. Torch not loaded yet: with `argv` (the command line of a
    `safebasin` process, safe to run again) re-execute `python -m safebasin *argv` with the pins,
    else set the pins in this process's environment, where torch and MKL will read them. Torch
    already loaded (an in-process caller such as a test): a warning, or an error if the mode
    was asked for `explicit`ly.

    Raises:
        ReproducibilityError: `explicit` and torch is already loaded without the pins.
    """
    if not wanted:
        return False
    if not env_is_pinned() and "torch" not in sys.modules:
        if argv is not None and sys.executable and os.environ.get(MARKER) != "1":
            _reexec(argv)
        os.environ.update(pinned_env({}))
    if env_is_pinned():
        configure_torch()
        return True
    message = ("torch is already loaded in this process, so its CPU code paths cannot be "
               "pinned; run the command through the safebasin CLI or safebasin.reproducible."
               "run_pinned")
    if explicit:
        raise ReproducibilityError(message)
    logger.warning("reproducible mode is off: %s", message)
    return False


def run_pinned(args: Sequence[str | os.PathLike], **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(args, **kwargs)` in a pinned child process (`check=True` by default).

    A `safebasin` command run this way is already pinned and does not re-execute itself; any
    other program (a Python script that imports torch) gets the same pins but must call
    `configure_torch()` itself for the in-process half.
    """
    kwargs.setdefault("check", True)
    return subprocess.run([os.fspath(a) for a in args], env=pinned_env(kwargs.pop("env", None)),
                          **kwargs)


@contextlib.contextmanager
def _pinned_environ() -> Iterator[None]:
    # a spawned child inherits this process's C environment at start; put the pins there for
    # the moment of the start only (torch here, if loaded, has read its settings long ago)
    pins = pinned_env({})
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in pins}
        os.environ.update(pins)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v


def _child(conn, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        configure_torch()
        outcome = (True, fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001  (handed to the parent, which raises it)
        outcome = (False, e)
    try:
        conn.send(outcome)
    except Exception as e:  # an unpicklable result or exception
        conn.send((False, ReproducibilityError(f"the pinned child's outcome cannot be sent "
                                               f"back: {e}")))
    conn.close()


def call_pinned(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call `fn(*args, **kwargs)` in a fresh pinned process and return its result.

    `fn`, its arguments and its result travel by pickle (`fn` must be importable: a module-level
    function); an exception raised by `fn` is raised here. The child is started with
    multiprocessing's "spawn", so the caller's main script needs the usual
    `if __name__ == "__main__":` guard. Costs a fresh interpreter and a torch import (2-3 s).

    Example:
        >>> from safebasin.toy import train_theta0
        >>> call_pinned(train_theta0, "world", "theta0")  # doctest: +SKIP

    Raises:
        ReproducibilityError: the child died without an answer (killed, out of memory).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fork would copy the unpinned, loaded torch
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, fn, args, kwargs), daemon=True)
    with _pinned_environ():
        process.start()
    sender.close()
    try:
        ok, value = receiver.recv()
    except EOFError:
        process.join()
        raise ReproducibilityError(f"the pinned child process died (exit code "
                                   f"{process.exitcode}) before returning") from None
    finally:
        receiver.close()
    process.join()
    if not ok:
        raise value
    return value


def is_toy_sweep_config(path: str | Path) -> bool:
    """Whether the sweep config at `path` trains in the toy world (a top-level `toy:` key).

    A cheap YAML peek made before torch loads, to pick the default of reproducible mode; any
    problem reads as "no" and is left for the sweep's own validation to report.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "toy" in data

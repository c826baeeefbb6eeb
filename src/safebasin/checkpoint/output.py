"""Publish an output folder atomically: temp folder beside the destination, lock, rename last.

A crash (even SIGKILL) leaves at most a hidden `.NAME.safebasin-tmp-*` folder, never a folder at
the destination that looks finished; the next run into the same destination removes it. Two runs
into one destination are serialised by an `flock` on `.NAME.safebasin.lock`, which the kernel
releases when a process dies, so a killed run never blocks the next one; a run that ends
removes the lock file, so only a killed run leaves one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._fs import fsync_dir
from ..errors import OutputExistsError, OutputLockedError, OutputNotWritableError, UsageError

log = logging.getLogger(__name__)

# Files that make a merged folder loadable and usable like θ₀ (config, tokenizer, chat template).
AUX_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "LICENSE",
)


def _check_not_inside_inputs(dest: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that is, lies inside, or contains an input's folder.

    The last case matters with --overwrite: replacing `dest` deletes whatever it held, and
    an input inside it would be deleted too.
    """
    d = dest.resolve()
    for p in inputs:
        folder = (p if p.is_dir() else p.parent).resolve()
        if d == folder or folder in d.parents:
            raise UsageError(f"{dest}: output must not be an input folder or inside one "
                             f"({p}); choose another -o")
        if d in folder.parents:
            raise UsageError(f"{dest}: output must not contain an input ({p}); replacing it "
                             "would delete that input; choose another -o")


def _open_lock(lock_path: Path, dest: Path) -> int:
    """An fd holding an exclusive `flock` on the file now at `lock_path`.

    The holder before us removes the file when it is done. If it did so after we opened the
    file, our lock is on a file nobody else can find, and the next run would lock a new one:
    so the lock counts only when the path still names the file we locked; else try again.
    """
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputNotWritableError(f"{lock_path.parent}: cannot write here: "
                                         f"{e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(f"{dest}: another safebasin process is writing this "
                                    "destination; wait for it or choose another -o") from None
        try:
            ours, now = os.fstat(fd), os.stat(lock_path)
            if (ours.st_dev, ours.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def _locked(parent: Path, name: str) -> Iterator[None]:
    """Hold `.NAME.safebasin.lock` beside the destination; remove it when done, still locked,
    so no lock file stays behind (the kernel drops the lock itself if the process dies)."""
    lock_path = parent / f".{name}.safebasin.lock"
    fd = _open_lock(lock_path, parent / name)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


def describe_replaced(dest: str | os.PathLike) -> str | None:
    """What replacing `dest` removes, as a phrase ("OUT/eval/ with 2 evaluation results and 3
    other files"); None when `dest` does not exist. Evaluation results (`eval/*/summary.json`)
    are named because they are the one thing in an output folder a merge cannot recreate."""
    dest = Path(dest)
    if not dest.exists():
        return None
    try:
        files = [p.relative_to(dest) for p in dest.rglob("*") if p.is_file()] \
            if dest.is_dir() else [Path(dest.name)]
    except OSError:
        return "its contents"
    in_eval = [p for p in files if p.parts[0] == "eval"]
    results = sum(1 for p in in_eval if p.name == "summary.json")
    others = len(files) - len(in_eval)
    what = [f"{dest / 'eval'}/ with {results} evaluation result{'s' * (results != 1)}"
            ] if in_eval else []
    what.append(f"{others} other file{'s' * (others != 1)}")
    return " and ".join(what)


@contextlib.contextmanager
def publishing(dest: str | os.PathLike, *, overwrite: bool = False,
               inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success rename it to `dest`, on failure remove it.

    Raises:
        OutputExistsError: `dest` exists and `overwrite` is false (checked before any work).
        OutputLockedError: another process holds the destination's lock.
        OutputNotWritableError: the parent folder cannot be written.
        UsageError: `dest` is an input folder or inside one.
    """
    dest = Path(dest).absolute()
    _check_not_inside_inputs(dest, inputs)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest}: already exists; pass `overwrite` to replace it")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritableError(f"{parent}: cannot create: {e.strerror}") from e
    with _locked(parent, dest.name):
        if overwrite and (gone := describe_replaced(dest)):
            log.info("replacing %s when done (removes %s)", dest, gone)
        # glob.escape: a name like "run[1]" must not match (and delete) another run's folder
        for stale in parent.glob(f"{glob.escape('.' + dest.name)}.safebasin-tmp-*"):
            log.warning("removing stale temporary folder %s from an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{dest.name}.safebasin-tmp-{os.getpid()}"
        try:
            tmp.mkdir()
        except OSError as e:
            raise OutputNotWritableError(f"{parent}: cannot write here: {e.strerror}") from e
        try:
            yield tmp
            try:
                fsync_dir(tmp)
                _replace(tmp, dest, overwrite)
            except OSError as e:
                raise OutputNotWritableError(f"{dest}: cannot publish: {e.strerror or e}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported.

    With it, `dest` always names a complete folder: the old one until the swap, the new one
    after. Without it (other systems, some file systems), two renames leave a moment without
    `dest`.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace(tmp: Path, dest: Path, overwrite: bool) -> None:
    if dest.exists() or dest.is_symlink():
        if not overwrite:  # appeared while we worked
            raise OutputExistsError(f"{dest}: already exists; pass `overwrite` to replace it")
        if _exchange(tmp, dest):
            old = tmp  # after the swap, tmp holds the old output
        else:
            old = dest.parent / f".{dest.name}.safebasin-tmp-old-{os.getpid()}"
            os.rename(dest, old)
            os.rename(tmp, dest)
        fsync_dir(dest.parent)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.rename(tmp, dest)
        fsync_dir(dest.parent)


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy config, tokenizer and chat-template files from θ₀'s folder; return their names."""
    if not src.is_dir():
        return []
    copied = []
    for name in AUX_FILES:
        f = src / name
        if f.is_file():
            try:
                shutil.copyfile(f, dst / name)
            except OSError as e:  # disk full here must not surface as a traceback
                raise OutputNotWritableError(f"{dst / name}: cannot copy {f}: "
                                             f"{e.strerror or e}") from e
            copied.append(name)
    return copied

"""The point cache: one folder per point on a shared filesystem, with no database.

    WORKDIR/<group>/<key>/<result_file>   the result (JSON); present means finished
    WORKDIR/<group>/<key>/.claim          who is computing it: host, pid, start time, token

Guarantees, and how:

- *A result appears atomically or not at all.* It is written to a temp file in the same
  folder, fsynced, renamed over the result name (`os.replace`) and the folder is fsynced.
  Readers see the old state or the whole new file, never a part of one.
- *Two workers never run the same point.* A worker runs a point only while it holds the claim.
  The claim is written whole to a unique temp file and then hard-linked to `.claim`; `link`
  fails if the name exists, atomically (also on NFS, where it is the classic lock-file idiom),
  so exactly one claimant succeeds and no claim is ever seen half-written. The others report
  the point busy and the driver waits for its result.
- *A dead worker's claim expires.* The holder touches the claim's mtime every `lease / 10`
  seconds (a heartbeat thread). A claim whose mtime is older than the lease, or whose holder is
  a dead process on this same host, is stale and may be broken: the breaker renames it to a
  unique name (`os.rename`, atomic: of several breakers only one finds the file), checks that
  what it moved is the stale claim it judged (same token; if not, it links it back), deletes it
  and then claims as usual. Clocks of the hosts must agree to well within the lease.
- *A worker killed mid-point leaves nothing that looks finished*: its partial files sit beside
  no result file, so the point runs again once its claim is stale (at once on the same host).
- *A restarted driver reruns nothing finished*: finished means the result file exists.

The default lease (5 minutes, heartbeat every 30 s) tolerates long pauses of a busy worker;
a shorter one recovers dead workers' points sooner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._fs import fsync_dir
from .points import Point

log = logging.getLogger(__name__)

CLAIM_FILE = ".claim"
DEFAULT_LEASE_S = 300.0


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says and when it was last touched."""

    host: str
    pid: int
    token: str
    started: float
    touched: float  # mtime: the last heartbeat


def _token(path: Path) -> str | None:
    """The token of the claim file at `path`, or None if there is none."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("token"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, AttributeError):
        return ""


class Claim:
    """A held claim; a daemon thread keeps its heartbeat until `release()`."""

    def __init__(self, path: Path, token: str, lease_s: float) -> None:
        self.path, self.token = path, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(lease_s / 10,), daemon=True,
                                        name=f"claim-heartbeat-{path.parent.name}")
        self._thread.start()

    def _still_ours(self) -> bool:
        return _token(self.path) == self.token

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self._still_ours():
                log.warning("lost the claim on %s (broken as stale?)", self.path.parent)
                return
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and delete the claim if it is still this one."""
        self._stop.set()
        self._thread.join()
        if self._still_ours():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PointCache:
    """Results and claims of points under one work folder (see the module docstring)."""

    def __init__(self, workdir: str | Path, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.workdir = Path(workdir)
        self.lease_s = float(lease_s)
        self.host = socket.gethostname()

    def folder(self, point: Point) -> Path:
        return self.workdir / point.group / point.key

    # ---- results ------------------------------------------------------------------------------
    def load(self, point: Point) -> tuple[bool, Any]:
        """`(True, result)` if the point is finished, else `(False, None)`."""
        try:
            text = (self.folder(point) / point.result_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            return False, None
        return True, json.loads(text)

    def publish(self, point: Point, result: Any) -> Any:
        """Store `result` atomically; returns it as every later reader will see it (JSON)."""
        text = json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
        write_atomic(self.folder(point) / point.result_file, text)
        return json.loads(text)

    # ---- claims -------------------------------------------------------------------------------
    def claim_info(self, point: Point) -> ClaimInfo | None:
        """The current claim on `point`, or None."""
        path = self.folder(point) / CLAIM_FILE
        try:
            st = path.stat()
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # not ours: judge it by its age alone
            data = {}
        return ClaimInfo(host=str(data.get("host", "")), pid=int(data.get("pid", 0)),
                         token=str(data.get("token", "")), started=float(data.get("started", 0)),
                         touched=st.st_mtime)

    def is_stale(self, info: ClaimInfo) -> bool:
        """Older than the lease, or held by a dead process on this host."""
        if time.time() - info.touched > self.lease_s:
            return True
        return info.host == self.host and info.pid > 0 and not _pid_alive(info.pid)

    def is_claimed(self, point: Point) -> bool:
        """Someone holds a live claim on `point`."""
        info = self.claim_info(point)
        return info is not None and not self.is_stale(info)

    def _break(self, point: Point, info: ClaimInfo) -> None:
        """Remove the stale claim `info`; of several breakers exactly one moves it."""
        path = self.folder(point) / CLAIM_FILE
        moved = path.with_name(f"{CLAIM_FILE}.broken-{uuid.uuid4().hex}")
        try:
            os.rename(path, moved)
        except FileNotFoundError:
            return  # another breaker (or the holder's release) got there first
        if _token(moved) != info.token:
            # between our look and the rename, someone else broke the stale claim and
            # claimed afresh: put their claim back unless a third one exists already
            with contextlib.suppress(FileExistsError):
                os.link(moved, path)
        else:
            log.info("broke the stale claim of %s (host %s, pid %d, last heartbeat %.0f s ago)",
                     point.name, info.host, info.pid, time.time() - info.touched)
        moved.unlink(missing_ok=True)

    def try_claim(self, point: Point) -> Claim | None:
        """Claim `point` for this process, breaking a stale claim; None if someone holds it."""
        folder = self.folder(point)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CLAIM_FILE
        token = uuid.uuid4().hex
        tmp = folder / f"{CLAIM_FILE}.{token}.tmp"
        body = {"host": self.host, "pid": os.getpid(), "token": token, "started": time.time()}
        write_atomic(tmp, json.dumps(body))
        try:
            for _ in range(3):  # claim, or break a stale claim and try again
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    info = self.claim_info(point)
                    if info is not None and not self.is_stale(info):
                        return None
                    if info is not None:
                        self._break(point, info)
                    continue
                os.utime(path)  # the heartbeat starts now, not when the temp file was written
                return Claim(path, token, self.lease_s)
            return None
        finally:
            tmp.unlink(missing_ok=True)


__all__ = ["CLAIM_FILE", "DEFAULT_LEASE_S", "Claim", "ClaimInfo", "PointCache", "write_atomic"]

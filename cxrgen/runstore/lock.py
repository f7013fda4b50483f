"""A lock file per shard (and one for the merge), held by one process for as long as it works there.

**What it relies on** (ENVIRONMENT.md says the same): creating a file with ``O_CREAT | O_EXCL`` succeeds for exactly
one process, on a local disk and on NFSv3/v4, Lustre and GPFS alike; ``rename`` within a folder is atomic; the
clocks of the nodes that share a run folder agree to well within :data:`STALE_AFTER` (NTP). No ``fcntl``/``flock``
locks are used: whether those reach other nodes depends on mount options (NFS ``nolock``, Lustre
``localflock``/``noflock``) that a job cannot see, and a lock that silently covers one node only is worse than none.

**The lock file** holds the holder's host, pid, start time, a random token, and what tells a dead holder from a live
one: the host's boot id, the pid namespace and the process's start time in clock ticks (``/proc/<pid>/stat``). A
holder refreshes the file's modification time every :data:`HEARTBEAT` seconds from a background thread, and before
every commit checks that the file still holds its token (:meth:`FileLock.verify`): a process whose lock was taken
over stops before writing another row.

**A stale lock** — left by a job killed with SIGKILL, by a node that crashed or was rebooted — is recognised as:

* same host (host name, and the same pid namespace): the boot id differs (the machine restarted), or the pid is not
  running, is a zombie, or is running with another start time (the pid was reused) — at once;
* another host, or a host whose processes cannot be seen from here: no heartbeat for :data:`STALE_AFTER` seconds
  (``CXRGEN_LOCK_STALE_SECONDS``, default 300). A node that is alive but hung that long loses its lock; it notices
  at its next commit and stops.

**Taking a stale lock over** is safe against several processes doing it at once: the stale file is renamed to a
unique name (only one rename succeeds), and only if the renamed file still holds the bytes judged stale is it
deleted; otherwise it is put back. Then the lock is created with ``O_EXCL`` as usual, which again only one process
wins. One log line names the lock taken over and why.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .files import RunError

log = logging.getLogger("cxrgen")

HEARTBEAT = 30.0  # seconds between refreshes of the lock file's modification time
STALE_AFTER = 300.0  # seconds without a heartbeat after which another host's lock counts as abandoned
_ATTEMPTS = 5


class LockHeldError(RunError):
    """Another live process holds the lock; the message names it (host, pid, since when)."""


class LockLostError(RunError):
    """The lock this process held was taken over (or removed): it must stop writing."""


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_ticks(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of a process from /proc, or None where there is no /proc."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file by its holder."""

    host: str
    pid: int
    since: str
    token: str
    boot_id: str | None = None
    pid_ns: str | None = None
    start_ticks: int | None = None

    @classmethod
    def me(cls) -> "Holder":
        ticks = _start_ticks(os.getpid())
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   since=datetime.now(timezone.utc).isoformat(timespec="seconds"), token=uuid.uuid4().hex,
                   boot_id=_read_text("/proc/sys/kernel/random/boot_id"), pid_ns=_pid_namespace(),
                   start_ticks=ticks[1] if ticks else None)

    @classmethod
    def parse(cls, data: bytes) -> "Holder | None":
        try:
            raw = json.loads(data)
            return cls(host=str(raw["host"]), pid=int(raw["pid"]), since=str(raw["since"]), token=str(raw["token"]),
                       boot_id=raw.get("boot_id"), pid_ns=raw.get("pid_ns"), start_ticks=raw.get("start_ticks"))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since}"


def stale_reason(holder: Holder | None, age: float, stale_after: float) -> str | None:
    """Why a lock whose file is ``age`` seconds past its last heartbeat no longer protects anything; None while its
    holder may be alive (see the module docstring)."""
    me = Holder.me() if holder is not None else None
    if holder is not None and holder.host == me.host and holder.pid_ns == me.pid_ns:
        if holder.boot_id and me.boot_id and holder.boot_id != me.boot_id:
            return "the machine restarted since"
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return f"process {holder.pid} is no longer running"
        except PermissionError:  # alive, another user's
            pass
        status = _start_ticks(holder.pid)
        if status is not None and status[0] == "Z":
            return f"process {holder.pid} is no longer running"
        if status is not None and holder.start_ticks is not None and status[1] != holder.start_ticks:
            return f"process {holder.pid} is no longer running (its pid now belongs to another process)"
        return None
    if age > stale_after:
        what = "unreadable lock file" if holder is None else f"lock of {holder.describe()}"
        return f"the {what} shows no heartbeat for {age:.0f} s (more than {stale_after:.0f} s)"
    return None


class FileLock:
    """An exclusive lock on ``path`` (see the module docstring). ``what`` names the thing locked in messages."""

    def __init__(self, path: Path, what: str, stale_after: float | None = None, heartbeat: float = HEARTBEAT):
        self.path = Path(path)
        self.what = what
        env = os.environ.get("CXRGEN_LOCK_STALE_SECONDS")
        self.stale_after = stale_after if stale_after is not None else float(env) if env else STALE_AFTER
        self.heartbeat = heartbeat
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and giving back ----------------------------------------------------------------------------------

    def acquire(self) -> "FileLock":
        """Take the lock, or raise :class:`LockHeldError` naming its live holder; a stale lock is taken over."""
        for _ in range(_ATTEMPTS):
            me = Holder.me()
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            try:
                os.write(fd, json.dumps({**asdict(me), "command": " ".join(sys.argv)}).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.holder = me
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name=f"lock {self.path.name}", daemon=True)
            self._thread.start()
            return self
        raise LockHeldError(f"{self.what}: its lock {self.path} changed hands {_ATTEMPTS} times while this process "
                            "tried to take it; try again")

    def _clear_stale(self) -> None:
        """Raise :class:`LockHeldError` when the existing lock is live, else remove it (safely, see the docstring)."""
        try:
            data = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile: try again
            return
        holder = Holder.parse(data)
        reason = stale_reason(holder, age, self.stale_after)
        if reason is None:
            who = f"{holder.describe()}; last heartbeat {age:.0f} s ago" if holder else f"{self.path} being written"
            raise LockHeldError(f"{self.what} is in progress in another process ({who}). A dead holder's lock is "
                                f"taken over once it is seen to be dead (ENVIRONMENT.md), or delete {self.path}")
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:  # someone else took it over first
            return
        if grave.read_bytes() == data:
            grave.unlink()
            log.warning("%s: took over the lock %s (%s)", self.what, self.path.name, reason)
            return
        try:  # a fresh lock was taken meanwhile: put it back
            os.link(grave, self.path)
        except FileExistsError:
            pass
        grave.unlink()

    def release(self) -> None:
        """Give the lock back (only if it is still this process's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.holder is not None and self._owned():
            self.path.unlink(missing_ok=True)
        self.holder = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- while held ----------------------------------------------------------------------------------------------

    def _owned(self) -> bool:
        try:
            current = Holder.parse(self.path.read_bytes())
        except FileNotFoundError:
            return False
        return current is not None and self.holder is not None and current.token == self.holder.token

    def verify(self) -> None:
        """Raise :class:`LockLostError` when the lock file no longer holds this process's token."""
        if not self._owned():
            try:
                other = Holder.parse(self.path.read_bytes())
            except FileNotFoundError:
                other = None
            by = f" by {other.describe()}" if other else ""
            raise LockLostError(f"{self.what}: this process's lock {self.path} was taken over{by}; stopping so that "
                                "two processes never write the same files")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self._owned():
                return
            try:
                os.utime(self.path)
            except OSError:
                return

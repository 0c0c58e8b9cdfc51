"""One lock per run, so any number of alma-bench processes sharing a results folder train each
run once (the others wait for it and reuse its result, or skip it).

The lock is a file created with O_CREAT|O_EXCL (atomic on local file systems and NFSv3+) that
holds its owner's host, pid and the pid's start time. A lock is stale when its owner is gone:
on this host, the pid is dead or belongs to a newer process (pid reuse); on another host, the
owner stopped refreshing the file (a heartbeat thread touches it every HEARTBEAT s, or a
fifth of the timeout if that is shorter) for ``stale_after()`` s: STALE_AFTER (300) unless
``$ALMA_BENCH_LOCK_TIMEOUT`` (``alma-bench run --lock-timeout``) says otherwise. Every process
sharing a results folder must use the same timeout, or a slow heartbeat looks like a dead one.
A node is told apart by its host name, or by ``$ALMA_BENCH_NODE`` where several nodes share one
(containers with one host name, a test cluster on one machine): a pid is only checked on the
node that wrote it.
A stale lock is taken over under an flock of the run folder, after re-reading its owner, so
two processes never both take over the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alma_bench.errors import UserError, store_error

HOST = os.environ.get("ALMA_BENCH_NODE") or socket.gethostname()
HEARTBEAT = 30.0
STALE_AFTER = 300.0
TIMEOUT_ENV = "ALMA_BENCH_LOCK_TIMEOUT"
WRITING_GRACE = 10.0  # an empty lock file younger than this is being written by its creator


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str | None = None  # the pid's start time (Linux), so a reused pid is not the owner

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[19] if stat and len(stat) > 19 else None  # field 22: start time


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (a zombie does not; with ``start``, only the process
    that started then does, not a later one that reuses the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    stat = _stat(pid)
    if stat and stat[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return start is None or stat is None or len(stat) <= 19 or stat[19] == start


def _alive(owner: Owner) -> bool:
    return pid_alive(owner.pid, owner.start)


def me() -> Owner:
    return Owner(HOST, os.getpid(), _start_time(os.getpid()))


def read_owner(path: Path) -> Owner | None:
    """The owner recorded in lock file ``path``; None if there is no lock."""
    try:
        d = json.loads(Path(path).read_text())
        return Owner(str(d["host"]), int(d["pid"]), d.get("start"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Owner("?", 0)  # being written, or garbage: judged by its age alone


def _age(path: Path) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def stale_after() -> float:
    """Seconds without a heartbeat after which another node's lock is stale."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return STALE_AFTER
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise UserError(f"${TIMEOUT_ENV} (--lock-timeout) must be a positive number of "
                        f"seconds, got '{text}'")
    return value


def heartbeat_every() -> float:
    """Seconds between touches of a held lock: several per timeout, at most HEARTBEAT."""
    return min(HEARTBEAT, stale_after() / 5)


def is_stale(owner: Owner, path: Path) -> bool:
    age = _age(path)
    if owner.pid == 0:
        return age > WRITING_GRACE
    if owner.host == HOST:  # known for sure here: a stopped (Ctrl-Z) owner still owns it
        return not _alive(owner)
    return age > stale_after()


@contextlib.contextmanager
def _folder_flock(folder: Path):
    """An exclusive flock of the run folder: serialises takeovers of its lock on this host."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class RunLock:
    """``try_acquire()`` returns None when this process now owns the lock, else its owner."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.owner = me()
        self._stop: threading.Event | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise store_error(self.path, e) from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"host": self.owner.host, "pid": self.owner.pid,
                           "start": self.owner.start, "since": time.time()}, f)
        except OSError as e:  # disk full: leave no empty lock behind
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise store_error(self.path, e) from None
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self._stop, heartbeat_every()),
                         daemon=True).start()
        return True

    def _heartbeat(self, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def try_acquire(self) -> Owner | None:
        for _ in range(5):  # the lock may come and go between the calls below
            if self._create():
                return None
            owner = read_owner(self.path)
            if owner is None:
                continue  # released meanwhile: try again
            if not is_stale(owner, self.path):
                return owner
            with _folder_flock(self.path.parent):
                # re-read under the flock: another process may have taken over already
                if read_owner(self.path) == owner and is_stale(owner, self.path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                if self._create():
                    return None
        return read_owner(self.path) or Owner("?", 0)

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        if read_owner(self.path) == self.owner:  # never remove a lock taken over from us
            # a folder gone read-only (or full) refuses the unlink too: the error that stopped
            # the run is the one to report, not this one; the lock left names a dead process
            # once this one exits, and is taken over then
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def holder(path: Path) -> Owner | None:
    """Who holds the lock at ``path`` now (None when it is free or stale)."""
    owner = read_owner(path)
    return None if owner is None or is_stale(owner, path) else owner

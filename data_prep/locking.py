"""Exclusive use of a path by one process at a time, however many hosts share the file system: an
`fcntl.flock` on a lock file, which the kernel releases when the holder exits, killed or not (so there
is no stale lock to guess about, unlike a PID that may be alive in another PID namespace or on another
host). The holder's host, PID and start time are written into the lock file, for the message others get.

    with exclusive_lock(Path(".out.lock"), what="--out-dir out"):   # else LockHeld: path, host, PID
        ...
"""
import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Optional

from data_prep.textfiles import DataPrepError, naming

HOST = socket.gethostname()


class LockHeld(DataPrepError):
    """Another process holds the lock; the message names the lock file and the holder."""

    def __init__(self, path: Path, holder: dict, what: str = ""):
        self.path, self.holder = path, holder
        who = (f"PID {holder['pid']} on host {holder['host']} (since {holder['started']})" if holder
               else "a process that is just starting")
        super().__init__(f"{what + ' is in use: ' if what else ''}{path} is locked by {who}")


def read_holder(path: Path) -> dict:
    """{host, pid, started} as the holder wrote them ({} when unreadable or not yet written)."""
    try:
        fields = Path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return {}
    return dict(zip(("host", "pid", "started"), fields)) if len(fields) == 3 else {}


def _open_locked(path: Path, what: str):
    """An open descriptor of `path` holding its lock, or LockHeld. A lock file that its holder removed
    between our open and our lock is no lock: then try again on the new file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(path, read_holder(path), what) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path, what: str = ""):
    """Holds the lock on `path` (created if missing) for the block; removes the file afterwards.
    `what` names the thing the lock protects in the message of LockHeld."""
    path = Path(path)
    fd = _open_locked(path, what)
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with naming(path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{HOST} {os.getpid()} {started}\n".encode())
        yield
    finally:
        # Removed while still locked: a process that opened it meanwhile finds it unlinked and retries.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def create_locked(path) -> Optional[int]:
    """A descriptor of the new file `path` (which must not exist), locked until closed: a temporary
    file whose writer holds the lock, so that remove_if_abandoned leaves it alone. None when another
    process removed it, taking it for a leftover, before it was locked: try another name."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def remove_if_abandoned(path) -> bool:
    """Deletes the file `path` when no process holds its lock (its writer is gone); True if deleted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
            return True
        return False
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)

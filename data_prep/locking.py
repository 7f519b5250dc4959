"""Exclusive use of a path by one process at a time, however many hosts share the file system: an
`fcntl.flock` on a lock file, which the kernel releases when the holder exits, killed or not (so there
is no stale lock to guess about, unlike a PID that may be alive in another PID namespace or on another
host). The holder's host, PID and start time are written into the lock file, for the message others get.

    with exclusive_lock(Path(".out.lock")):   # raises LockHeld naming path, host and PID when taken
        ...
"""
import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from data_prep.textfiles import DataPrepError

HOST = socket.gethostname()


class LockHeld(DataPrepError):
    """Another process holds the lock; the message names the lock file and the holder."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        who = (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
               + (f" since {holder['started']}" if holder.get("started") else "")) if holder \
            else "a process that has not yet said who it is"
        super().__init__(f"{path} is locked by {who}")


def read_holder(path: Path) -> dict:
    """{host, pid, started} as the holder wrote them ({} when unreadable or not yet written)."""
    try:
        fields = Path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return {}
    return dict(zip(("host", "pid", "started"), fields)) if len(fields) == 3 else {}


def _open_locked(path: Path):
    """An open descriptor of `path` holding its lock, or LockHeld. A lock file that its holder removed
    between our open and our lock is no lock: then try again on the new file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(path, read_holder(path)) from None
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
def exclusive_lock(path):
    """Holds the lock on `path` (created if missing) for the block; removes the file afterwards."""
    path = Path(path)
    fd = _open_locked(path)
    try:
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.write(fd, f"{HOST} {os.getpid()} {started}\n".encode())
        yield
    finally:
        # Removed while still locked: a process that opened it meanwhile finds it unlinked and retries.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def is_locked(path) -> bool:
    """True while some process holds the lock on `path` (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)

"""The one way the scripts write their outputs: to a temporary name beside the target, renamed over it
when complete, so an interrupted run never leaves a half-written table, JSON, plot or checkpoint.

    with atomic_open(path) as handle:            # text ("w", utf-8)
        handle.write(text)
    with atomic_open(path, "wb") as handle:      # bytes, and whatever writes to a binary file:
        figure.savefig(handle, format="png")     #   matplotlib
        torch.save(state, handle)                #   torch

The temporary file is .NAME.HOST.RANDOM.PID.partial in the target's directory (same file system, so
the rename is atomic); its writer holds an fcntl.flock lock on it until the rename (see
data_prep.locking). It is removed when the block raises; one left by a killed writer (its lock
released by the kernel) is removed by the next write of the same target, unless another host made it:
that host may still be writing it.

From the shell: ... | python -m scripts.atomic_io PATH   (stdin to PATH, atomically).
"""
import contextlib
import glob
import os
import re
import secrets
import sys

from data_prep.locking import HOST, create_locked, remove_if_abandoned


def _new_partial(path):
    """(descriptor, name) of a new locked temporary file beside `path`."""
    directory, name = os.path.split(os.fspath(path))
    while True:
        partial = os.path.join(directory, f".{name}.{HOST}.{secrets.token_hex(4)}.{os.getpid()}.partial")
        with contextlib.suppress(FileExistsError):  # a name in use: draw another
            fd = create_locked(partial)
            if fd is not None:
                return fd, partial


def remove_stale_partials(path):
    """Deletes the temporary files of earlier writes of `path` that no writer holds, made on this host."""
    directory, name = os.path.split(os.fspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}\.(.+)\.[0-9a-f]{{8}}\.\d+\.partial")
    for leftover in glob.glob(os.path.join(glob.escape(directory or "."), f".{glob.escape(name)}.*.partial")):
        match = pattern.fullmatch(os.path.basename(leftover))
        if match and match.group(1) == HOST:
            remove_if_abandoned(leftover)


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
    """A file object for writing `path`: a temporary file that replaces `path` when the block ends
    without an exception (flushed and fsynced first), and is deleted when it raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    remove_stale_partials(path)
    fd, partial = _new_partial(path)
    try:
        # The descriptor keeps the lock until the file has its final name.
        with open(os.dup(fd), mode, encoding=None if mode == "wb" else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise
    finally:
        os.close(fd)


def write_text_atomically(path, text):
    with atomic_open(path) as handle:
        handle.write(text)


def write_bytes_atomically(path, data):
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def main(argv):
    usage = "usage: ... | python -m scripts.atomic_io PATH   (writes stdin to PATH atomically)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    try:
        with atomic_open(argv[0], "wb") as handle:
            for block in iter(lambda: sys.stdin.buffer.read(1 << 20), b""):
                handle.write(block)
    except OSError as error:
        print(f"error: atomic_io: cannot write {argv[0]}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The atomic writer's temporary files belong to whoever holds their lock, not to whoever has their
PID: a writer in another PID namespace (a container) keeps its file, another host's file is never
touched, and the lock file of data_prep.locking names its holder."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, repo_env

WRITER = ("import sys, time\nfrom scripts.atomic_io import atomic_open\n"
          "with atomic_open(sys.argv[1]) as handle:\n"
          "    handle.write('half'); handle.flush(); print('ready', flush=True); time.sleep(60)\n")


def partials(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def write_with_atomic_io(target, text):
    proc = subprocess.run([sys.executable, "-m", "scripts.atomic_io", str(target)], input=text, cwd=REPO,
                          env=repo_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_writer_in_another_pid_namespace_keeps_its_temporary_file(tmp_path):
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a PID namespace here")
    # The shell is PID 1 of the new namespace and each /bin/true takes the next PID: the writer gets
    # a PID that no process has here.
    spawned = next(count for count in range(5, 500) if not Path(f"/proc/{count + 2}").exists())
    loop = f'i=0; while [ $i -lt {spawned} ]; do /bin/true; i=$((i+1)); done; "$@"'
    target = tmp_path / "table.md"
    writer = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c", loop, "sh", sys.executable, "-c", WRITER,
                               str(target)], cwd=REPO, env=repo_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        [leftover] = partials(tmp_path)
        assert leftover.endswith(f".{spawned + 2}.partial")
        write_with_atomic_io(target, "meanwhile\n")
        assert partials(tmp_path) == [leftover] and target.read_text() == "meanwhile\n"
    finally:
        writer.kill()
        writer.wait()


def test_another_hosts_temporary_file_is_left_alone(tmp_path):
    target = tmp_path / "table.md"
    theirs = tmp_path / ".table.md.elsewhere.example.0123abcd.4242.partial"
    theirs.write_text("another host may be writing this")
    ours = tmp_path / f".table.md.{socket.gethostname()}.0123abcd.4242.partial"
    ours.write_text("a killed writer's")
    write_with_atomic_io(target, "new\n")
    assert partials(tmp_path) == [theirs.name] and target.read_text() == "new\n"


def test_the_lock_names_its_holder_and_is_free_once_the_holder_is_killed(tmp_path):
    from data_prep.locking import LockHeld, exclusive_lock
    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom data_prep.locking import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1]):\n    print('ready', flush=True); time.sleep(60)\n"), str(lock)],
        cwd=REPO, env=repo_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(LockHeld) as held:
            with exclusive_lock(lock, what="--out-dir out"):
                pass
        message = str(held.value)
        assert message.startswith(f"--out-dir out is in use: {lock} is locked by PID {holder.pid} "
                                  f"on host {socket.gethostname()} (since ")
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()  # killed: it could not remove the file, but the kernel released the lock
    with exclusive_lock(lock):
        assert lock.read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
    assert not lock.exists()

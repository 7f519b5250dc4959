"""Child processes that never outlive data prep, even when it is killed with SIGKILL (which it cannot
catch): its worker processes ask Linux for a signal when their parent dies (PR_SET_PDEATHSIG), and an
external tool runs under a small guard process that, on that signal, kills the tool's whole process
group, the tool's own workers included. Elsewhere than Linux the children are ended on the signals
Python can catch only.

Run as a module, this file is the guard: python -m data_prep.processes PARENT_PID COMMAND..."""
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGKILL) -> bool:
    """Asks the kernel to send `signum` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def run_tied(command, log_path: Path) -> int:
    """Runs `command` with stdout and stderr into `log_path`; returns its exit status. The command and
    every process it starts end when this process ends, however it ends."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with open(log_path, "w") as log:
        guard = subprocess.Popen([sys.executable, "-m", "data_prep.processes", str(os.getpid()), *command],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return guard.wait()
        except BaseException:  # Ctrl-C, SIGTERM turned into SystemExit, ...: take the tool down too
            guard.terminate()
            guard.wait()
            raise


def _guard(parent_pid: int, command) -> int:
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        return 1
    # A process group of its own: the guard, the tool and the tool's workers, and nobody else
    # (the parent's group may be a shell job or a test runner).
    os.setpgid(0, 0)

    def end_group(signum, frame):
        os.killpg(0, signal.SIGKILL)  # the guard included
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, end_group)
    return subprocess.call(command, stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), sys.argv[2:]))

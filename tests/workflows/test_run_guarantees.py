"""scripts/train.sh and scripts/evaluate.sh with real processes: a second run on the same directory is
refused in one line naming the first (host, PID) while the first holds the kernel's lock, which is
free again the moment the first is killed; Ctrl-C stops an evaluation without a traceback or a
temporary file; fairseq's error reaches stderr and a run that failed before its first checkpoint
leaves nothing; a path run.json cannot record is refused before anything is made."""
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from helpers import REPO

SCRIPTS = REPO / "scripts"
# The demo recipe, shrunk to seconds on a CPU; VISIBLE_GPUS=0 skips torch's GPU probe.
TINY_DEMO = dict(DEMO_LAYERS="1", DEMO_DIM="16", DEMO_MAX_TOKENS="512", DEMO_BEAM="1", VISIBLE_GPUS="0")


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_") and k not in ("WORLD_SIZE", "RANK")}
    return {**env, "PYTHON": sys.executable, **TINY_DEMO, **extra}


def start(script, *args, **extra):
    """The script in its own process group (so that a signal reaches it and its steps, as from a terminal),
    with Ctrl-C's default action, as a terminal's foreground job has it: a test run started in the
    background of a non-interactive shell inherits SIGINT ignored, and its children with it."""
    return subprocess.Popen(["bash", str(SCRIPTS / script), *map(str, args)], cwd=REPO, env=script_env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run(script, *args, **extra):
    return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], cwd=REPO, env=script_env(**extra),
                          capture_output=True, text=True, timeout=300)


def wait_for(condition, proc, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lock_is_free(path):
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def group_runs(group, needle):
    """Whether a process of the process group ``group`` runs a command line containing ``needle``."""
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == group and needle in cmdline:
            return True
    return False


def test_a_second_training_of_a_run_directory_is_refused_until_the_first_is_killed(toy_data_bin, tmp_path):
    run_dir = tmp_path / "run"
    first = start("train.sh", "demo", "--data-dir", toy_data_bin.parent, "--run-dir", run_dir, DEMO_MAX_EPOCH="100")
    try:
        lock = run_dir / ".train.lock"
        wait_for(lambda: group_runs(first.pid, "fairseq_cli.train"), first)
        second = run("train.sh", "demo", "--data-dir", toy_data_bin.parent, "--run-dir", run_dir, "--seed", "2")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1:] == [  # after train.sh's note that there is no GPU
            f"error: {run_dir} (a training run) is in use by another run (host {socket.gethostname()}, PID "
            f"{first.pid}); wait for it to end, or use another directory"]
        assert "Traceback" not in second.stderr and not second.stdout
        assert json.loads((run_dir / "run.json").read_text())["seed"] == 1  # the first run's record stands
        assert not lock_is_free(lock)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the script and fairseq-train, as a machine crash would
        first.wait()
    time.sleep(0.2)
    assert lock_is_free(lock), "the kernel releases the lock with its last holder: nothing to clean up"


def test_evaluation_is_one_at_a_time_and_ctrl_c_stops_it_cleanly(genuine, toy_data_bin, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"recipe": "demo", "loss": "baseline", "seed": 1,
                                                  "data_dir": str(toy_data_bin.parent)}))
    first = start("evaluate.sh", run_dir, "--checkpoint", genuine)
    try:
        wait_for(lambda: group_runs(first.pid, "fairseq_cli.generate"), first)
        second = run("evaluate.sh", run_dir, "--checkpoint", genuine)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: {run_dir} (an evaluation) is in use by another run (host {socket.gethostname()}, PID "
            f"{first.pid}); wait for it to end, or use another directory"]
        time.sleep(0.5)  # inside fairseq-generate (its imports alone take longer)
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "[evaluate] interrupted; no output was left half-written"
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == []


def test_fairseqs_error_goes_to_stderr_and_a_run_that_never_saved_leaves_nothing(toy_data_bin, tmp_path):
    run_dir = tmp_path / "runs" / "run"
    proc = run("train.sh", "demo", "--data-dir", toy_data_bin.parent, "--run-dir", run_dir, "--",
               "--bonus-rho", "-1")
    assert proc.returncode != 0
    error = "error: --bonus-rho must be"
    assert error not in proc.stdout, proc.stdout[-2000:]
    assert any(error in line for line in proc.stderr.splitlines()), proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"[train] training failed before its first checkpoint; removed what it had written to {run_dir}")
    assert not run_dir.exists() and list((tmp_path / "runs").iterdir()) == []


def test_a_data_path_with_a_newline_is_refused_by_train_sh(toy_data_bin, tmp_path):
    data_dir = tmp_path / "corpus\nv2"
    shutil.copytree(toy_data_bin, data_dir / "bin")
    proc = run("train.sh", "demo", "--data-dir", data_dir, "--run-dir", tmp_path / "run", "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --data-dir $'{tmp_path}/corpus\\nv2' contains a newline, which run.json cannot record; "
        "rename the directory"]
    assert not (tmp_path / "run").exists()
    assert re.search(r"\S", proc.stdout) is None

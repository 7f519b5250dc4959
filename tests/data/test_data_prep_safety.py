"""What data prep guarantees when it is killed, run twice at once, pointed at odd places or fed hostile
archives: a complete --out-dir survives (old or new), a second run is refused naming the first, and a
small archive cannot make it hold gigabytes (test_data_prep_hostile_archives.py). Kills, disk-full and concurrency are real (SIGKILL,
`ulimit -f`, processes in another PID namespace); fairseq-preprocess is replaced by a fast stand-in
that writes the dictionaries data prep reads, and can wait for the test at the critical moment."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from data_prep_fixtures import REPO, custom_args, leftovers, read, write, write_custom

FAKE_PREPROCESS = '''
import argparse, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--source-lang"); parser.add_argument("--target-lang"); parser.add_argument("--destdir")
args, _ = parser.parse_known_args()
os.makedirs(args.destdir, exist_ok=True)
for lang in (args.source_lang, args.target_lang):
    with open(os.path.join(args.destdir, f"dict.{lang}.txt"), "w") as out:
        out.write("a 1\\n")
wait = os.environ.get("FAKE_PREPROCESS_WAIT")
if wait:
    open(wait + ".started", "w").close()
    while not os.path.exists(wait + ".go"):
        time.sleep(0.05)
'''

# Run as a script: data prep that stops right before renaming its finished build into place (after
# the complete old output was moved aside), so that the test can kill it there.
PAUSE_BEFORE_SECOND_RENAME = '''
import os, pathlib, sys, time
from data_prep import cli
rename = pathlib.Path.rename
def paused_rename(self, target):
    if ".partial-" in self.name:
        open(os.environ["PAUSED"], "w").close()
        time.sleep(120)
    return rename(self, target)
pathlib.Path.rename = paused_rename
sys.exit(cli.main())
'''


@pytest.fixture
def env(tmp_path):
    fake = tmp_path / "fake"
    (fake / "fairseq_cli").mkdir(parents=True)
    (fake / "fairseq_cli" / "__init__.py").write_text("")
    (fake / "fairseq_cli" / "preprocess.py").write_text(FAKE_PREPROCESS)
    return dict(os.environ, PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(fake), str(REPO), os.environ.get("PYTHONPATH")])))


def prepare(env, *args, prefix=(), **popen):
    """Runs data prep on the custom corpus; Popen if `popen` asks for it, else run to completion."""
    command = [*prefix, sys.executable, "-m", "data_prep", "custom", *map(str, args)]
    if popen.pop("background", False):
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, **popen)


def one_error_line(proc):
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def snapshot(directory: Path) -> dict:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def wait_for(path: Path, process, what):
    deadline = time.time() + 60
    while not path.exists():
        assert process.poll() is None, f"{what}: the run ended first:\n{process.communicate()[1][-3000:]}"
        assert time.time() < deadline, what
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# kills and concurrent runs

def test_a_kill_between_the_two_renames_leaves_the_old_build_for_any_next_run(tmp_path, env):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    assert prepare(env, *custom_args(root, out)).returncode == 0
    before = snapshot(out)
    paused = tmp_path / "paused"
    killed = subprocess.Popen([sys.executable, "-c", PAUSE_BEFORE_SECOND_RENAME, "custom",
                               *map(str, custom_args(root, out, "--force"))],
                              env=dict(env, PAUSED=str(paused)), stderr=subprocess.DEVNULL)
    try:
        wait_for(paused, killed, "the rebuild never reached its second rename")
    finally:
        killed.kill()
        killed.wait()
    assert not out.exists()  # the window: the old build moved aside, the new one not yet in place
    # The next run, whatever it is asked (here: a corpus with a missing file), puts the old one back.
    (root / "valid.de").rename(root / "valid.de.away")
    assert "missing input file" in one_error_line(prepare(env, *custom_args(root, out)))
    assert snapshot(out) == before and leftovers(tmp_path) == []
    (root / "valid.de.away").rename(root / "valid.de")
    assert prepare(env, *custom_args(root, out)).stderr.count("up to date") == 1


def test_a_second_preparation_of_one_out_dir_is_refused_naming_the_first(tmp_path, env):
    root, out, gate = write_custom(tmp_path / "text"), tmp_path / "out", tmp_path / "gate"
    first = prepare(dict(env, FAKE_PREPROCESS_WAIT=str(gate)), *custom_args(root, out), background=True)
    try:
        wait_for(gate.with_name("gate.started"), first, "the first run never got to fairseq-preprocess")
        second = prepare(env, *custom_args(root, out, "--seed", "2"))
        assert one_error_line(second).startswith(f"error: --out-dir {out} is in use: ")
        assert f"locked by PID {first.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        gate.with_name("gate.go").touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((out / "prepare.json").read_text())["settings"]["seed"] == 1
    assert leftovers(tmp_path) == [] and not (tmp_path / ".out.lock").exists()


def test_a_run_in_another_pid_namespace_is_not_taken_for_dead(tmp_path, env):
    """The first run's PID, as it sees it, belongs to no process here: it is alive all the same."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a PID namespace here")
    root, out, gate = write_custom(tmp_path / "text"), tmp_path / "out", tmp_path / "gate"
    # In the new namespace the shell is PID 1 and each /bin/true takes the next PID: data prep gets
    # a PID that no process has here.
    spawned = next(count for count in range(5, 500) if not Path(f"/proc/{count + 2}").exists())
    command = " ".join(["i=0; while [ $i -lt", str(spawned), "]; do /bin/true; i=$((i+1)); done;", "\"$@\""])
    first = prepare(dict(env, FAKE_PREPROCESS_WAIT=str(gate)), *custom_args(root, out), background=True,
                    prefix=["unshare", "--pid", "--fork", "sh", "-c", command, "sh"])
    try:
        wait_for(gate.with_name("gate.started"), first, "the first run never got to fairseq-preprocess")
        work = [path for path in tmp_path.iterdir() if path.name.startswith(".out.partial-")]
        assert len(work) == 1 and work[0].name.endswith(f"-{spawned + 2}")
        second = prepare(env, *custom_args(root, out, "--seed", "2"))
        assert f"locked by PID {spawned + 2} on host {socket.gethostname()}" in one_error_line(second)
        assert work[0].is_dir()
    finally:
        gate.with_name("gate.go").touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((out / "prepare.json").read_text())["settings"]["seed"] == 1 and leftovers(tmp_path) == []


def test_leftovers_of_this_host_are_removed_and_another_hosts_kept(tmp_path, env):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    out.mkdir()  # present: a leftover "old" is garbage, not the build to put back
    host = socket.gethostname()
    ours = [write(tmp_path / f".out.partial-{host}-{os.getpid()}" / "x", ["killed"]).parent,
            write(tmp_path / f".out.old-{host}-{os.getpid()}" / "x", ["killed"]).parent]
    theirs = write(tmp_path / ".out.partial-elsewhere.example-77" / "x", ["still writing?"]).parent
    unrelated = write(tmp_path / ".other.partial-1" / "x", ["not ours"])
    (root / "valid.de").unlink()
    proc = prepare(env, *custom_args(root, out))
    assert "missing input file" in one_error_line(proc)
    assert not any(path.exists() for path in ours) and list(out.iterdir()) == []
    assert read(theirs / "x") == ["still writing?"] and "made on host elsewhere.example" in proc.stderr
    assert unrelated.is_file()


def test_a_symlinked_out_dir_stays_a_link_and_the_build_goes_through_it(tmp_path, env):
    root, elsewhere = write_custom(tmp_path / "text"), tmp_path / "other-disk"
    elsewhere.mkdir()
    link = tmp_path / "data" / "out"
    link.parent.mkdir()
    link.symlink_to(elsewhere / "corpus")
    for extra in ((), ("--force",)):
        proc = prepare(env, *custom_args(root, link, *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert link.is_symlink() and os.readlink(link) == str(elsewhere / "corpus")
        assert (elsewhere / "corpus" / "prepare.json").is_file()
        assert sorted(p.name for p in link.parent.iterdir()) == ["out"]
        assert sorted(p.name for p in elsewhere.iterdir()) == ["corpus"]
        assert proc.stdout.strip() == str(link)


# ------------------------------------------------------------------------------------------------
# the system says no: one line naming the path, nothing half-written left

def test_disk_full_is_one_line_naming_the_file_and_the_old_build_stays(tmp_path, env):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    assert prepare(env, *custom_args(root, out)).returncode == 0
    before = snapshot(out)
    # 16 KiB per file: the text fits, SentencePiece's model (over 200 KiB) does not.
    proc = prepare(env, *custom_args(root, out, "--force"), prefix=["bash", "-c", 'ulimit -f 16; exec "$@"', "bash"])
    last = one_error_line(proc)
    assert last.startswith(f"error: {tmp_path}/.out.partial-") and last.endswith("/spm.model: File too large")
    assert snapshot(out) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["out-dir-here", "lock-is-a-directory", "parent-is-a-file"])
def test_unusable_out_dirs_are_one_line_naming_the_path(tmp_path, env, case):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    cwd = None
    if case == "out-dir-here":
        out.mkdir()
        cwd, out, expected = out, Path("."), "error: --out-dir . is the current directory"
    elif case == "lock-is-a-directory":
        (tmp_path / ".out.lock").mkdir()
        expected = f"error: {tmp_path / '.out.lock'}: Is a directory"
    else:
        write(tmp_path / "file", ["x"])
        out, expected = tmp_path / "file" / "out", f"error: {tmp_path / 'file'}: File exists"
    proc = prepare(env, *custom_args(root.resolve(), out), cwd=cwd)
    assert one_error_line(proc).startswith(expected)
    assert leftovers(tmp_path) == []


def test_a_read_only_file_system_is_one_line_naming_the_path(tmp_path, env):
    """A read-only bind mount (root ignores permission bits, not a read-only mount)."""
    root, readonly = write_custom(tmp_path / "text"), tmp_path / "readonly"
    readonly.mkdir()
    mount = f"mount --bind {readonly} {readonly} && mount -o remount,ro,bind {readonly} && exec \"$@\""
    if subprocess.run(["unshare", "--mount", "sh", "-c", mount, "sh", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only mount here")
    proc = prepare(env, *custom_args(root, readonly / "out"), prefix=["unshare", "--mount", "sh", "-c", mount, "sh"])
    assert one_error_line(proc) == f"error: {readonly / '.out.lock'}: Read-only file system"
    assert list(readonly.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# flags, sizes and input files

@pytest.mark.parametrize("flag,value,expected", [
    ("--vocab-size", str(10 ** 13), "--vocab-size must be between 8 and 1000000 (got 10000000000000)"),
    ("--spm-sentences", str(10 ** 20), None),
    ("--spm-sentences", "100", "--spm-sentences must be more than 100 (got 100)"),
    ("--seed", "-1", "--seed must be between 0 and 4294967295 (got -1)"),
    ("--workers", str(10 ** 9), "--workers must be between 1 and 1024 (got 1000000000)"),
])
def test_sentencepiece_flags_are_checked(tmp_path, env, flag, value, expected):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    proc = prepare(env, *custom_args(root, out, flag, value))
    if expected is None:  # more sentences than the text has: all of them
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "prepare.json").read_text())["settings"]["spm_sentences"] == 10 ** 20
    else:
        assert one_error_line(proc) == f"error: {expected}" and not out.exists()


def test_a_vocabulary_smaller_than_asked_is_said_and_recorded(tmp_path, env):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    proc = prepare(env, *custom_args(root, out, "--vocab-size", "600"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = spm.SentencePieceProcessor(model_file=str(out / "spm.model")).get_piece_size()
    assert 8 < built < 600
    assert f"--vocab-size 600: this training text supports {built} pieces only" in proc.stderr
    assert f"vocabulary of {built} pieces" in proc.stderr.strip().splitlines()[-1]
    record = json.loads((out / "prepare.json").read_text())["sentencepiece"]
    assert record == {"model_type": "bpe", "requested_vocab_size": 600, "vocab_size": built}
    vocab = [line.split("\t")[0] for line in read(out / "spm.vocab")]
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert vocab == [processor.id_to_piece(i) for i in range(built)]


def test_pairs_longer_than_the_model_takes_are_left_out_of_training_and_refused_in_test(tmp_path, env):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    long_en, long_de = " ".join(["Hello World"] * 20), " ".join(["Hallo Welt"] * 20)
    write(root / "train.en", read(root / "train.en") + [long_en])
    write(root / "train.de", read(root / "train.de") + [long_de])
    proc = prepare(env, *custom_args(root, out, "--max-positions", "40"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    train = list(zip(read(root / "train.en"), read(root / "train.de")))
    fits = [pair for pair in train if max(len(processor.encode(side)) for side in pair) + 1 <= 40]
    assert 0 < len(fits) < len(train) and (long_en, long_de) not in fits
    assert f"train: left out {len(train) - len(fits)} of {len(train)} pairs" in proc.stderr
    assert list(zip(read(out / "raw" / "train.en"), read(out / "raw" / "train.de"))) == fits
    assert len(read(out / "spm" / "train.en")) == len(fits)
    assert json.loads((out / "prepare.json").read_text())["lines"]["train"] == len(fits)
    write(root / "test.en", read(root / "test.en") + [long_en])
    write(root / "test.de", read(root / "test.de") + [long_de])
    proc = prepare(env, *custom_args(root, out, "--max-positions", "1000", "--force"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = prepare(env, *custom_args(root, out, "--max-positions", "30", "--force"))
    assert one_error_line(proc).startswith(f"error: {root / 'test.en'} / {root / 'test.de'}: test pair 3 has ")
    assert json.loads((out / "prepare.json").read_text())["settings"]["max_positions"] == 1000


def test_fewer_training_pairs_than_one_fairseq_batch_are_refused(tmp_path, env):
    from fairseq.data import data_utils
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    for lang in ("en", "de"):
        write(root / f"train.{lang}", read(root / f"train.{lang}")[:7])
    # What fairseq-train would do with them: no batch at all.
    assert data_utils.batch_by_size(list(range(7)), num_tokens_fn=lambda index: 10, max_tokens=4096,
                                    required_batch_size_multiple=8) == []
    proc = prepare(env, *custom_args(root, out))
    assert one_error_line(proc) == ("error: the train split has 7 sentence pairs; fairseq-train needs at least 8 "
                                    "(its batches hold a multiple of 8)")
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_input_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path, env, kind):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    (root / "train.de").unlink()
    if kind == "fifo":
        os.mkfifo(root / "train.de")
        expected = f"error: input {root / 'train.de'} is not a regular file (a FIFO, socket or device)"
    else:
        (root / "train.de").mkdir()
        expected = f"error: input {root / 'train.de'} is a directory, not a text file"
    assert one_error_line(prepare(env, *custom_args(root, out))).startswith(expected)


@pytest.mark.parametrize("outputs", [[1, {"a": 2}], "raw/train.en", {"raw": 1}])
def test_a_prepare_json_of_the_wrong_shape_is_one_line(tmp_path, env, outputs):
    root, out = write_custom(tmp_path / "text"), tmp_path / "out"
    write(out / "raw" / "train.en", ["x"])
    (out / "prepare.json").write_text(json.dumps({"fingerprint": 5, "outputs": outputs}))
    assert one_error_line(prepare(env, *custom_args(root, out))) == (
        f"error: {out / 'prepare.json'}: \"outputs\" is not a list of file names; data_prep cannot tell which "
        "files it wrote: move the directory away or choose another")
    assert read(out / "raw" / "train.en") == ["x"]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_archive_that_is_not_a_regular_file_is_named(tmp_path, env, kind):
    raw_dir = tmp_path / "downloads"
    raw_dir.mkdir()
    if kind == "fifo":
        os.mkfifo(raw_dir / "de-en.tgz")
    else:
        (raw_dir / "de-en.tgz").mkdir()
    proc = subprocess.run([sys.executable, "-m", "data_prep", "iwslt14-de-en", "--raw-dir", str(raw_dir),
                           "--out-dir", str(tmp_path / "out"), "--offline"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert one_error_line(proc) == (f"error: archive {raw_dir / 'de-en.tgz'} is not a regular file; remove it or "
                                    "put the archive there")

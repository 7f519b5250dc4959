"""Hostile and careless input to data_prep: each case ends in one line on stderr naming the culprit and
the fix, never a traceback; a killed run leaves nothing running and nothing the next run keeps."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep_fixtures import (REPO, SCRIPTS, TEST_DE, custom_args, leftovers, read, run_script, write,
                                      write_custom)


def last_error_line(proc):
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


# Characters that str.splitlines() (and so text-mode readers and scorers) take as line breaks, and NUL.
LINE_BREAKERS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00"]


def test_the_table_is_every_character_splitlines_breaks_on():
    breakers = {chr(code) for code in range(0x110000) if len(f"a{chr(code)}b".splitlines()) > 1}
    assert breakers == set(LINE_BREAKERS) - {"\x00"} | {"\n"}


@pytest.mark.parametrize("char", LINE_BREAKERS, ids=[f"U+{ord(c):04X}" for c in LINE_BREAKERS])
def test_a_line_breaking_character_inside_a_line_is_rejected_with_file_and_line(tmp_path, char):
    root = write_custom(tmp_path / "text")
    damaged = list(TEST_DE)
    damaged[1] = damaged[1].replace(" ", char, 1)
    (root / "test.de").write_bytes("".join(line + "\n" for line in damaged).encode("utf-8"))
    out = tmp_path / "out"
    proc = run_script("prepare_custom.sh", *custom_args(root, out), check=False)
    last = last_error_line(proc)
    assert last.startswith(f"error: {root / 'test.de'}: line 2: ")
    assert f"U+{ord(char):04X}" in last
    assert not out.exists() and leftovers(tmp_path) == []


def test_windows_line_ends_are_still_line_ends(tmp_path):
    from data_prep.textfiles import decode_lines
    assert decode_lines(b"one\r\ntwo\r\n", "x") == ["one", "two"]
    assert decode_lines(b"one\ntwo", "x") == ["one", "two"]


@pytest.mark.parametrize("case, args, damage, expected", [
    # SentencePiece needs a piece per distinct character (plus <unk>, <s>, </s>); 8 is far too few here.
    ("vocab-too-small", ["--vocab-size", "8"], None,
     r"error: --vocab-size 8 is too small for this training text: SentencePiece needs at least \d+ "
     r"\(one piece per character\); raise --vocab-size or lower --character-coverage"),
    ("blank-training-file", [], lambda root: write(root / "train.en", [""] * 30),
     r"error: {root}/train\.en: every line is blank; SentencePiece has no text to learn from"),
    ("whitespace-training-file", [], lambda root: write(root / "train.de", ["  ", "\t"] * 15),
     r"error: {root}/train\.de: every line is blank; SentencePiece has no text to learn from"),
])
def test_sentencepiece_problems_are_one_line_with_the_fix(tmp_path, case, args, damage, expected):
    import re
    root = write_custom(tmp_path / "text")
    if damage:
        damage(root)
    out = tmp_path / "out"
    proc = run_script("prepare_custom.sh", *custom_args(root, out, *args), check=False)
    last = last_error_line(proc)
    assert re.fullmatch(expected.format(root=re.escape(str(root))), last), last
    if case == "vocab-too-small":
        needed = int(re.search(r"at least (\d+)", last).group(1))
        # An independent count: the distinct characters of the training text, the space as "▁",
        # and SentencePiece's three meta pieces.
        text = read(root / "train.en") + read(root / "train.de")
        assert needed == len(set("".join(text).replace(" ", "\u2581") + "\u2581")) + 3
    assert not out.exists() and leftovers(tmp_path) == []


def pid_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a killed orphan may wait to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_and_expect_gone(parent, pids, what):
    """SIGKILLs the data prep process and asserts that ``pids`` (its children) end within 10 s."""
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(pid_running(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(pid_running(pid) for pid in pids), f"{what} outlived the run"


def leave_no_sleeper(parent, pids):
    """Whatever a test's outcome, ends the data prep process and the children it was watching."""
    if parent.poll() is None:
        parent.kill()
        parent.wait()
    for pid in pids:
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)


FAKE_PREPROCESS = '''
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(os.environ["FAKE_PIDS"] + ".tmp", "w") as out:
    out.write(f"{os.getpid()} {grandchild.pid}")
os.rename(os.environ["FAKE_PIDS"] + ".tmp", os.environ["FAKE_PIDS"])
time.sleep(120)
'''


@pytest.mark.slow
def test_sigkill_leaves_no_running_children_and_the_next_run_removes_its_partial_output(tmp_path):
    root = write_custom(tmp_path / "text")
    out = tmp_path / "out"
    fake = tmp_path / "fake"
    (fake / "fairseq_cli").mkdir(parents=True)
    (fake / "fairseq_cli" / "__init__.py").write_text("")
    (fake / "fairseq_cli" / "preprocess.py").write_text(FAKE_PREPROCESS)
    pids_file = tmp_path / "pids"
    env = dict(os.environ, PYTHON=sys.executable, FAKE_PIDS=str(pids_file),
               PYTHONPATH=os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen(["bash", str(SCRIPTS / "prepare_custom.sh"), *map(str, custom_args(root, out))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    try:
        deadline = time.time() + 120
        while not pids_file.exists():
            assert parent.poll() is None and time.time() < deadline, "data prep ended before fairseq-preprocess"
            time.sleep(0.2)
        pids = [int(pid) for pid in pids_file.read_text().split()]
        assert all(pid_running(pid) for pid in pids)
        partials = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
        assert partials == [f".out.partial-{socket.gethostname()}-{parent.pid}"]
        kill_and_expect_gone(parent, pids, "fairseq-preprocess (or its workers)")
    finally:
        leave_no_sleeper(parent, pids)
    assert (tmp_path / f".out.partial-{socket.gethostname()}-{parent.pid}").is_dir()
    run_script("prepare_custom.sh", *custom_args(root, out))
    assert leftovers(tmp_path) == [] and (out / "prepare.json").is_file()


@pytest.mark.slow
def test_a_rebuild_refuses_to_delete_files_a_user_added(tmp_path):
    root = write_custom(tmp_path / "text")
    out = tmp_path / "out"
    run_script("prepare_custom.sh", *custom_args(root, out))
    for added in (out / "notes.txt", out / "raw" / "test.hyp"):
        write(added, ["mine"])
        proc = run_script("prepare_custom.sh", *custom_args(root, out, "--force"), check=False)
        last = last_error_line(proc)
        assert last.startswith(f"error: --out-dir {out} holds {added.relative_to(out)}, which data_prep did not write")
        assert read(added) == ["mine"] and (out / "prepare.json").is_file()
        added.unlink()
    proc = run_script("prepare_custom.sh", *custom_args(root, out, "--force"))
    assert leftovers(tmp_path) == []


POOL_SCRIPT = '''
import os, sys, time
from data_prep import text

def slow_steps(steps, lang):
    def apply(line):
        with open(os.path.join(sys.argv[1], str(os.getpid())), "w"):
            pass
        time.sleep(120)
        return line
    return apply

text.MIN_LINES_FOR_POOL = 1
text._make_line_function = slow_steps  # the pool is forked: its workers see this
# Chunks of 2000 lines go to the workers: 4000 lines keep both busy.
text.model_text(["a"] * 4000, "en", ["lowercase"], workers=2, desc="pool")
'''


def test_sigkill_ends_the_tokenising_pool_too(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT, str(marks)], cwd=REPO,
                              stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 60
        while len(list(marks.iterdir())) < 2:
            assert parent.poll() is None and time.time() < deadline, "the pool never started"
            time.sleep(0.1)
        workers = [int(path.name) for path in marks.iterdir()]
        kill_and_expect_gone(parent, workers, "pool workers")
    finally:
        leave_no_sleeper(parent, workers)

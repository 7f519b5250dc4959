"""Every shell and Python block of README.md and docs/*.md runs, so the documentation cannot rot.

A block runs as written, in order, in a scratch copy of the checkout (one per Markdown file: the
checkout's entries are symlinked into a temporary directory, so `runs/` and `data/` land there).
An HTML comment on the line before a block can change how it is tested:

    <!-- readme-test: run KEY=VALUE ... -->   run it with these environment variables (the scripts'
                                              documented knobs, to run it at a fraction of the size)
    <!-- readme-test: dry-run -->             GPU-sized training: every `scripts/train.sh` line runs
                                              with --dry-run, every other line is checked like `check`
    <!-- readme-test: check (why) -->         cannot run here (network, GPU): the block must parse,
                                              and every project command in it must accept every
                                              --flag it is given (checked against its -h output)
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell")
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(run|dry-run|check)\b(.*?)-->\s*$")
# What the scratch copy must not share with the checkout: places the documented commands write to.
WRITTEN = {"runs", "data", "data-bin", "outputs", "checkpoints", ".git", ".pytest_cache"}
BLOCK_TIMEOUT_S = 900


def extract_blocks(path):
    """(line number, language, mode, environment, code) of every shell/Python block of ``path``."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        language, start = match.group(1), index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        index = end + 1
        if language not in SHELL + ("python",):
            continue
        mode, env = "run", {}
        directive = DIRECTIVE.match(lines[start - 1]) if start else None
        if directive:
            mode, rest = directive.group(1), directive.group(2).strip()
            if mode == "run":
                env = dict(item.split("=", 1) for item in shlex.split(rest))
            elif mode == "check":
                assert rest.startswith("("), f"{path.name}:{start + 1}: say why the block cannot run"
        blocks.append((start + 1, language, mode, env, "\n".join(lines[start + 1:end])))
    return blocks


ALL_BLOCKS = [(path, *block) for path in DOCUMENTS for block in extract_blocks(path)]
# Blocks that run for real are end-to-end runs (`make test-fast` leaves them out).
PARAMS = [pytest.param(*block, marks=[pytest.mark.slow] if block[3] == "run" else [],
                       id=f"{block[0].relative_to(REPO)}:{block[1]}") for block in ALL_BLOCKS]


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """One scratch copy of the checkout per Markdown file, shared by that file's blocks in order."""
    made = {}

    def workspace(document):
        if document not in made:
            root = tmp_path_factory.mktemp(document.stem)
            for entry in REPO.iterdir():
                if entry.name not in WRITTEN:
                    (root / entry.name).symlink_to(entry)
            made[document] = root
        return made[document]
    return workspace


def environment(extra):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHON")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(VENV_BIN.parent),
               PYTHONUNBUFFERED="1", **extra)
    return env


def commands(code):
    """The simple commands of a shell block, as word lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", code)
    result = []
    for line in joined.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part, comments=True)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words:
                result.append(words)
    return result


def help_command(words):
    """The command that prints the help of the project command ``words`` runs, or None if it is not ours."""
    program = words[0]
    if re.match(r"^(scripts|data_prep)/[\w.]+\.sh$", program):
        return [program, "-h"]
    if program in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2].split(".")[0] in (
            "scripts", "benchmarks", "data_prep"):
        return [program, "-m", words[2], "-h"]
    if program == "make" and len(words) > 1:
        return ["make", "-n", *words[1:]]
    return None


def check_flags(words, cwd, env):
    help_words = help_command(words)
    if help_words is None:
        return
    proc = subprocess.run(help_words, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(help_words)} failed:\n{proc.stderr[-2000:]}"
    if words[0] == "make":
        return
    own_words = words[:words.index("--")] if "--" in words else words  # after --: fairseq's flags
    for flag in (word.split("=")[0] for word in own_words if word.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", proc.stdout + proc.stderr), \
            f"{' '.join(help_words)} does not know {flag}"


@pytest.mark.parametrize("document,line,language,mode,env,code", PARAMS)
def test_documented_block_runs(document, line, language, mode, env, code, workspaces):
    cwd = workspaces(document)
    full_env = environment(env)
    where = f"{document.relative_to(REPO)}:{line}"
    if language == "python":
        assert mode == "run", f"{where}: Python blocks always run"
        proc = subprocess.run([sys.executable, "-"], input=code, cwd=cwd, env=full_env, capture_output=True,
                              text=True, timeout=BLOCK_TIMEOUT_S)
        assert proc.returncode == 0, f"{where} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return
    syntax = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{where} does not parse: {syntax.stderr}"
    if mode == "run":
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert proc.returncode == 0, f"{where} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return
    for words in commands(code):
        if mode == "dry-run" and words[0] == "scripts/train.sh":
            proc = subprocess.run([words[0], "--dry-run", *words[1:]], cwd=cwd, env=full_env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{where}: {' '.join(words)} --dry-run failed:\n{proc.stderr[-3000:]}"
            assert "fairseq_cli.train" in proc.stdout, proc.stdout
        else:
            check_flags(words, cwd, full_env)


def test_the_readme_path_runs_for_real():
    """The extraction sees the blocks (a broken fence would silently hide them), and the newcomer's
    path (install, demo, the loss in PyTorch, fairseq, own corpus, translating) runs, not just parses."""
    readme = [block for block in ALL_BLOCKS if block[0].name == "README.md"]
    assert len([block for block in readme if block[3] == "run"]) >= 5

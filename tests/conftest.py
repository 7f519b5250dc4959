"""Shared fixtures: a small generated parallel corpus binarised by the real fairseq-preprocess,
and a runner for fairseq's command-line tools from this interpreter's environment."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "fairseq_plugins")

# A Transformer small enough to train a few dozen updates on CPU in seconds.
TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


def run_tool(tool, *args, cwd=None, env=None, check=True):
    """Runs fairseq-<tool> (or any console script next to this python); returns the completed process."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    proc = subprocess.run([str(BIN / tool), *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_toy_parallel(directory: Path, sizes=(("train", 600), ("valid", 40), ("test", 40)), seed=0):
    """A learnable toy pair: the target is the source reversed with each word mapped to another."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        with open(directory / f"{split}.src", "w") as src, open(directory / f"{split}.tgt", "w") as tgt:
            for _ in range(count):
                sentence = [rng.choice(words) for _ in range(rng.randint(3, 8))]
                src.write(" ".join(sentence) + "\n")
                tgt.write(" ".join(w.upper() for w in reversed(sentence)) + "\n")
    return directory


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory):
    """Binarised toy corpus (src -> tgt, joined dictionary) made by the real fairseq-preprocess."""
    root = tmp_path_factory.mktemp("toy")
    raw = write_toy_parallel(root / "raw")
    dest = root / "bin"
    run_tool("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
             "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
             "--destdir", dest, "--joined-dictionary", "--workers", "1")
    return dest


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Tools run from the repository root must write into temporary folders only: fairseq and hydra
    otherwise leave checkpoints/ and outputs/ behind in the checkout."""
    before = {entry.name for entry in REPO.iterdir()}
    yield
    left_behind = sorted({entry.name for entry in REPO.iterdir()} - before - {".pytest_cache"})
    assert not left_behind, f"the tests left {left_behind} in {REPO}"

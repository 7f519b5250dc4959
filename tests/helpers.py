"""What the tests share: where the checkout is, running fairseq's command-line tools from this
interpreter's environment, a toy parallel corpus, and reading fairseq's JSON log records.
Fixtures live in conftest.py; test modules import from here, never from each other."""
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO, repo_env, write_synthetic_parallel

BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "fairseq_plugins")

# A Transformer small enough to train a few dozen updates on CPU in seconds.
TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]

__all__ = ["BIN", "REPO", "TINY_TRANSFORMER", "USER_DIR", "json_records", "repo_env", "run_tool",
           "write_toy_parallel"]


def run_tool(tool, *args, cwd=None, env=None, check=True):
    """Runs fairseq-<tool> (or any console script next to this python); returns the completed process."""
    proc = subprocess.run([str(BIN / tool), *map(str, args)], cwd=cwd or REPO,
                          env=repo_env(PYTHONUNBUFFERED="1", **(env or {})), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_toy_parallel(directory: Path, sizes=(("train", 600), ("valid", 40), ("test", 40)), seed=0):
    """A learnable toy pair: 30 words, the target the source reversed with each word mapped to another."""
    return write_synthetic_parallel(directory, sizes, vocab=30, lengths=(3, 8), seed=seed)


def json_records(text, kind):
    """fairseq's --log-format json records of one kind ('train_inner', 'valid', ...), as fairseq-train
    ('| INFO | kind | {...}') and fairseq-hydra-train ('[kind][INFO] - {...}') print them."""
    pattern = re.compile(r"(?:\| INFO \| %s \| |\[%s\]\[INFO\] - )(\{.*\})$" % (kind, kind))
    return [json.loads(match.group(1)) for match in map(pattern.search, text.splitlines()) if match]

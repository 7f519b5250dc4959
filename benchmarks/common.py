"""What the benchmarks (and tests that start Python subprocesses) share."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, Iterable, List

REPO = Path(__file__).resolve().parents[1]


def repo_env(extra_paths: Iterable[os.PathLike] = (), **overrides: str) -> Dict[str, str]:
    """This process's environment plus ``overrides``, with the repository (then ``extra_paths``)
    first on PYTHONPATH, so that a child Python imports this checkout's packages whatever its cwd."""
    env = dict(os.environ, **overrides)
    if env.get("MUTANT_UNDER_TEST") == "stats":
        # mutmut (make mutate) maps tests to code in its own process; a child cannot report there.
        # Under a mutant the variable stays, so that a child runs the mutant too.
        del env["MUTANT_UNDER_TEST"]
    paths = [str(REPO), *map(str, extra_paths), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def split_list(text) -> List[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated command-line lists)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def write_synthetic_parallel(directory: Path, splits, vocab: int, lengths=(3, 8), zipf=False, seed=0) -> Path:
    """A learnable synthetic pair in ``directory``/{split}.src|tgt for each (split, sentences) of ``splits``:
    words w0..w{vocab-1}, uniform or (``zipf``) with frequency 1/rank, sentence lengths drawn from
    ``lengths``; the target is the source reversed with every word mapped to its upper-case twin."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    weights = [1.0 / (rank + 1) for rank in range(vocab)]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in splits:
        with open(directory / f"{split}.src", "w") as src, open(directory / f"{split}.tgt", "w") as tgt:
            for _ in range(count):
                length = rng.randint(*lengths)
                sentence = rng.choices(words, weights, k=length) if zipf else [rng.choice(words) for _ in range(length)]
                src.write(" ".join(sentence) + "\n")
                tgt.write(" ".join(word.upper() for word in reversed(sentence)) + "\n")
    return directory

"""What the benchmarks (and tests that start Python subprocesses) share."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List

REPO = Path(__file__).resolve().parents[1]


def repo_env(extra_paths: Iterable[os.PathLike] = (), **overrides: str) -> Dict[str, str]:
    """This process's environment plus ``overrides``, with the repository (then ``extra_paths``)
    first on PYTHONPATH, so that a child Python imports this checkout's packages whatever its cwd."""
    env = dict(os.environ, **overrides)
    paths = [str(REPO), *map(str, extra_paths), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def split_list(text) -> List[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated command-line lists)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]

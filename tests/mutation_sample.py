"""Mutation testing on a random sample of mutants (`make mutate-sample`): the full run takes hours on
2 cores, a sample of each package gives its survival rate with a confidence interval in a fraction
of that. A developer's tool, not a test module (pytest does not collect it).

    python tests/mutation_sample.py --per-package 80 --seed 0
    python tests/mutation_sample.py --per-package 30 --only encouraging_loss.ops.linear,encouraging_loss.linear

Runs mutmut (configured in pyproject.toml) on the sample and prints, per package, how many mutants
were killed, survived or are reached by no selected test, and the survival rate among the tested
ones with its 95% Wilson interval; then the survivors, for `mutmut show NAME`.
"""
import argparse
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

MUTMUT = str(Path(sys.executable).with_name("mutmut"))
PACKAGES = ("encouraging_loss", "fairseq_plugins")
LINE = re.compile(r"^\s*(\S+?):\s+(.+?)\s*$")


def results():
    """{mutant name: status} from `mutmut results --all true`."""
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in map(LINE.match, out.splitlines()) if m}


def wilson(survived, tested, z=1.96):
    if tested == 0:
        return float("nan"), float("nan")
    p = survived / tested
    centre = (p + z * z / (2 * tested)) / (1 + z * z / tested)
    half = z * math.sqrt(p * (1 - p) / tested + z * z / (4 * tested * tested)) / (1 + z * z / tested)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-package", type=int, default=80, help="mutants drawn from each package [80]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw [0]")
    parser.add_argument("--exclude", default="encouraging_loss.integrations",
                        help="comma-separated module prefixes left out of the draw (their tests are not "
                             "in the mutation selection) [encouraging_loss.integrations]")
    parser.add_argument("--only", default="",
                        help="comma-separated module prefixes: draw only from these (e.g. "
                             "encouraging_loss.ops.linear to sample one module) [every module]")
    args = parser.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not Path("mutants").is_dir():  # mutmut generates the mutants on its first run
        subprocess.run([MUTMUT, "run", "--max-children", "1", "no-such-mutant"], env=env, check=False)
    excluded = tuple(filter(None, args.exclude.split(",")))
    only = tuple(filter(None, args.only.split(","))) or ("",)
    by_package = defaultdict(list)
    for name in sorted(results()):
        if not name.startswith(excluded) and name.startswith(only):
            by_package[name.split(".")[0]].append(name)
    rng = random.Random(args.seed)
    sample = {package: rng.sample(names, min(args.per_package, len(names)))
              for package, names in by_package.items() if package in PACKAGES}
    chosen = [name for names in sample.values() for name in names]
    subprocess.run([MUTMUT, "run", "--max-children", "1", *chosen], env=env, check=False)
    status = results()
    for package, names in sample.items():
        counts = Counter(status.get(name, "missing") for name in names)
        tested = counts["killed"] + counts["survived"] + counts["timeout"]
        low, high = wilson(counts["survived"], tested)
        print(f"{package}: {len(names)} of {len(by_package[package])} mutants drawn; killed {counts['killed']}, "
              f"survived {counts['survived']}, timeout {counts['timeout']}, no tests {counts['no tests']}, "
              f"other {sum(counts.values()) - tested - counts['no tests']}; survival among tested "
              f"{counts['survived'] / max(tested, 1):.0%} (95% CI {low:.0%}-{high:.0%})")
    for name in chosen:
        if status.get(name) == "survived":
            print(f"  survived: {name}")


if __name__ == "__main__":
    main()

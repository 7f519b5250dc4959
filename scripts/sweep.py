#!/usr/bin/env python3
"""A sweep over encouraging-loss settings: trains (scripts/train.sh), evaluates (scripts/evaluate.sh)
and compares (scripts/compare.py) every arm over every seed, resuming what is done.

  python -m scripts.sweep --recipe demo --arms baseline le=0.5 le=0.75,rho=0.5 schedule=linear,warmup=300 --seeds 1-3

An arm is `baseline` (label-smoothed CE) or a comma-separated list of settings of the encouraging
loss, optionally with training settings; `baseline,epochs=6` is a baseline trained longer. Keys:
  encouraging loss: le (--log-end), rho (--bonus-rho), bonus (log|power|cosine), gamma (--bonus-gamma),
                    eps_b (--el-label-smoothing), start_p (--bonus-start), schedule
                    (constant|linear|exp|cosine), warmup (--bonus-warmup-updates), start (--bonus-start-update)
  training:         epochs (--max-epoch), updates (--max-update), lr (--lr)
Unlisted settings are the recipe's. An arm is named by its settings (`el_le0.75_rho0.5`,
`baseline_epochs6`; `el` alone is the recipe's encouraging loss), and its runs live in
RUNS_DIR/RECIPE/ARM/seedN with arm.json recording the settings and the fairseq arguments.

With --trainer hf every run is scripts/hf_finetune.py (a Hugging Face model fine-tuned on the
--data-dir corpus, then translated and scored; its flags after --, --model among them): the same
arms, except that `epochs` is fairseq's only.

Resuming: a run with evaluation results is skipped, a finished training is only evaluated, and an
interrupted one resumes from its checkpoint_last.pt (train.sh does that). Each run prints a progress
line with the ETA of the sweep; --jobs runs several at once (one torch thread each by default).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from scripts import compare
from scripts.atomic_io import write_text_atomically

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ENCOURAGING_KEYS = {
    "le": "--log-end", "rho": "--bonus-rho", "bonus": "--bonus", "gamma": "--bonus-gamma",
    "eps_b": "--el-label-smoothing", "start_p": "--bonus-start", "schedule": "--bonus-schedule",
    "warmup": "--bonus-warmup-updates", "start": "--bonus-start-update",
}
TRAINING_KEYS = {"epochs": "--max-epoch", "updates": "--max-update", "lr": "--lr"}
VALUE = re.compile(r"^[A-Za-z0-9.+-]+$")


class SweepError(Exception):
    """Bad input: reported as one line naming the culprit."""


def parse_arm(spec):
    """'le=0.75,rho=0.5' -> {"name": "el_le0.75_rho0.5", "baseline": False, "settings": {...}, "fairseq_args": [...]}."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    baseline = bool(items) and items[0] == "baseline"
    if items and items[0] in ("baseline", "el"):
        items = items[1:]
    settings, fairseq_args = {}, []
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not value:
            raise SweepError(f"arm '{spec}': '{item}' is not key=value")
        flag = TRAINING_KEYS.get(key) or (None if baseline else ENCOURAGING_KEYS.get(key))
        if flag is None:
            known = sorted(TRAINING_KEYS) if baseline else sorted(ENCOURAGING_KEYS) + sorted(TRAINING_KEYS)
            raise SweepError(f"arm '{spec}': unknown key '{key}'" + (" for a baseline" if key in ENCOURAGING_KEYS else "")
                             + f" (known: {', '.join(known)})")
        if not VALUE.match(value):
            raise SweepError(f"arm '{spec}': value '{value}' of '{key}' may hold only letters, digits, '.', '+', '-'")
        if key in settings:
            raise SweepError(f"arm '{spec}': '{key}' given twice")
        settings[key] = value
        fairseq_args += [flag, value]
    name = "_".join(["baseline" if baseline else "el"] + [f"{key}{value}" for key, value in settings.items()])
    return {"name": name, "baseline": baseline, "settings": settings, "fairseq_args": fairseq_args}


def parse_seeds(spec):
    if match := re.fullmatch(r"(\d+)-(\d+)", spec):
        first, last = int(match.group(1)), int(match.group(2))
        if first > last:
            raise SweepError(f"--seeds {spec}: the range is empty")
        return list(range(first, last + 1))
    if re.fullmatch(r"\d+(,\d+)*", spec):
        return [int(seed) for seed in spec.split(",")]
    raise SweepError(f"--seeds {spec}: expected a range like 1-3 or a list like 1,3,5")


def run_state(run_dir, subset):
    """'evaluated', 'trained' or 'todo'."""
    if os.path.isfile(os.path.join(run_dir, "eval", f"{subset}.results.json")):
        return "evaluated"
    log = os.path.join(run_dir, "train.log")
    if os.path.isfile(os.path.join(run_dir, "checkpoints", "checkpoint_last.pt")) and os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as handle:
            if "done training" in handle.read():
                return "trained"
    return "todo"


def check_arm_record(run_dir, arm):
    """A run directory made for other settings must not be resumed as this arm."""
    path = os.path.join(run_dir, "arm.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            try:
                recorded = json.load(handle)
            except ValueError:
                recorded = {}
        if recorded.get("fairseq_args") != arm["fairseq_args"] or recorded.get("baseline") != arm["baseline"]:
            raise SweepError(f"{path} records other settings ({recorded.get('arm')}) than arm {arm['name']}; "
                             "move the directory away or use another --runs-dir")


class Progress:
    """Progress lines with an ETA from the mean duration of the runs finished in this invocation."""

    def __init__(self, total, jobs):
        self.total, self.jobs, self.done, self.durations = total, jobs, 0, []
        self.started = time.monotonic()
        self.lock = threading.Lock()

    @staticmethod
    def clock(seconds):
        seconds = int(round(seconds))
        return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"

    def eta(self):
        if self.done == self.total:
            return "all runs done"
        if not self.durations:
            return "ETA after the first run"
        remaining = self.total - self.done
        per_run = sum(self.durations) / len(self.durations)
        return f"ETA {self.clock(per_run * -(-remaining // self.jobs))} (mean {self.clock(per_run)} a run, {self.jobs} at a time)"

    def finish(self, label, what, seconds=None):
        with self.lock:
            self.done += 1
            if seconds is not None:
                self.durations.append(seconds)
            took = "" if seconds is None else f" in {self.clock(seconds)}"
            print(f"[sweep] {self.done}/{self.total} {label}: {what}{took}; elapsed "
                  f"{self.clock(time.monotonic() - self.started)}, {self.eta()}", file=sys.stderr, flush=True)


def run_dir_of(args, arm, seed):
    """RUNS_DIR/RECIPE/ARM/seedN, or ARMS_DIR/ARM/seedN when --arms-dir names the arms' folder itself."""
    root = args.arms_dir or os.path.join(args.runs_dir, args.recipe)
    return os.path.join(root, arm["name"], f"seed{seed}")


def run_one(arm, seed, args, progress):
    """Trains and evaluates one run; returns (run_dir, error or None)."""
    run_dir = run_dir_of(args, arm, seed)
    label = f"{arm['name']} seed {seed}"
    state = run_state(run_dir, args.subset)
    if state == "evaluated":
        progress.finish(label, "already evaluated, skipped")
        return run_dir, None
    os.makedirs(run_dir, exist_ok=True)
    write_text_atomically(os.path.join(run_dir, "arm.json"), json.dumps(
        {"arm": arm["name"], "baseline": arm["baseline"], "settings": arm["settings"],
         "fairseq_args": arm["fairseq_args"], "recipe": args.recipe}, indent=2) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads_per_run), MKL_NUM_THREADS=str(args.threads_per_run))
    started = time.monotonic()
    resuming = state == "todo" and os.path.isfile(os.path.join(run_dir, "checkpoints", "checkpoint_last.pt"))
    doing = "evaluating" if state == "trained" else "resuming training" if resuming else "training"
    print(f"[sweep] start {label} ({doing}) -> {run_dir}", file=sys.stderr, flush=True)
    if state == "todo":
        if args.trainer == "hf":  # scripts/hf_finetune.py takes the same flags and evaluates the run itself
            command = [sys.executable, "-m", "scripts.hf_finetune", "--recipe", args.recipe, "--seed", str(seed),
                       "--run-dir", run_dir, *(["--baseline"] if arm["baseline"] else []),
                       *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra, *arm["fairseq_args"]]
        else:
            command = ["bash", args.train_script, args.recipe, *(["--baseline"] if arm["baseline"] else []),
                       "--seed", str(seed), "--run-dir", run_dir,
                       *(["--data-dir", args.data_dir] if args.data_dir else []), "--", *args.extra,
                       *arm["fairseq_args"]]
        with open(os.path.join(run_dir, "sweep.log"), "a", encoding="utf-8") as log:
            log.write("# " + " ".join(command) + "\n")
            log.flush()
            # everything goes to sweep.log (fairseq's own log is train.log); train.sh's own lines
            # (hardware, warnings) also reach the terminal
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                  text=True, errors="replace") as process:
                for line in process.stdout:
                    log.write(line)
                    if line.startswith(("[train]", "[evaluate]", "[hf_finetune]")):
                        print(f"[{label}] {line.rstrip()}", file=sys.stderr, flush=True)
            code = process.returncode
        if code != 0 or run_state(run_dir, args.subset) not in ("trained", "evaluated"):
            progress.finish(label, f"TRAINING FAILED (exit {code}; see {run_dir}/sweep.log and train.log)")
            return run_dir, "training failed"
    code = 0
    if run_state(run_dir, args.subset) != "evaluated":
        with open(os.path.join(run_dir, "evaluate.log"), "w", encoding="utf-8") as log:
            code = subprocess.call(["bash", args.evaluate_script, run_dir], stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
    if code != 0:
        progress.finish(label, f"EVALUATION FAILED (exit {code}; see {run_dir}/evaluate.log)")
        return run_dir, "evaluation failed"
    with open(os.path.join(run_dir, "eval", f"{args.subset}.results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    progress.finish(label, f"{args.paper_metric} {results.get(args.paper_metric)}", time.monotonic() - started)
    return run_dir, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--arms", nargs="+", required=True, help="arm specs, e.g. baseline le=0.75 rho=0.5")
    parser.add_argument("--seeds", default="1-3", help="range 1-3 or list 1,3,5 (default 1-3)")
    parser.add_argument("--runs-dir", default=os.environ.get("RUNS_DIR", "runs"))
    parser.add_argument("--arms-dir", help="put the runs in ARMS_DIR/ARM/seedN instead of RUNS_DIR/RECIPE/ARM/seedN")
    parser.add_argument("--out-dir", help="comparison outputs (default: the folder holding the arms)")
    parser.add_argument("--data-dir", help="prepared corpus (default: the recipe's DATA_DIR)")
    parser.add_argument("--subset", default="test", help="the recipe's EVAL_SUBSET")
    parser.add_argument("--paper-metric", default="tokenized_bleu", help="the recipe's PAPER_METRIC")
    parser.add_argument("--paper-baseline", default="", help="the paper's baseline score, for the table")
    parser.add_argument("--paper-encouraging", default="", help="the paper's encouraging-loss score")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("SWEEP_JOBS", "1")), help="runs at once")
    parser.add_argument("--threads-per-run", type=int, default=int(os.environ.get("SWEEP_THREADS_PER_RUN", "1")))
    parser.add_argument("--train-script", default=os.environ.get("SWEEP_TRAIN", os.path.join(SCRIPTS, "train.sh")))
    parser.add_argument("--evaluate-script", default=os.environ.get("SWEEP_EVALUATE", os.path.join(SCRIPTS, "evaluate.sh")))
    parser.add_argument("--trainer", choices=("fairseq", "hf"), default="fairseq",
                        help="hf: fine-tune a Hugging Face model with scripts/hf_finetune.py (give --data-dir, "
                             "and --model after --)")
    parser.add_argument("--no-compare", action="store_true", help="train and evaluate only")
    parser.add_argument("extra", nargs="*", help="after --: passed to every fairseq-train (or hf_finetune)")
    args = parser.parse_args(argv)
    try:
        arms = [parse_arm(spec) for spec in args.arms]
        names = [arm["name"] for arm in arms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SweepError(f"--arms: {', '.join(duplicates)} given twice")
        seeds = parse_seeds(args.seeds)
        if args.jobs < 1 or args.threads_per_run < 1:
            raise SweepError("--jobs and --threads-per-run must be at least 1")
        plan = [(arm, seed) for seed in seeds for arm in arms]  # seed-major: early results cover every arm
        for arm, seed in plan:
            check_arm_record(run_dir_of(args, arm, seed), arm)
    except SweepError as error:
        print(f"error: sweep: {error}", file=sys.stderr)
        return 2
    print(f"[sweep] {args.recipe}: {len(arms)} arms x {len(seeds)} seeds = {len(plan)} runs, {args.jobs} at a time: "
          + ", ".join(names), file=sys.stderr, flush=True)
    progress = Progress(len(plan), args.jobs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(lambda item: run_one(item[0], item[1], args, progress), plan))
    failed = [run_dir for run_dir, error in outcomes if error]
    if failed:
        print(f"error: sweep: {len(failed)} run(s) failed: {', '.join(failed)}; run the same command again to resume",
              file=sys.stderr)
        return 1
    if args.no_compare:
        return 0
    out_dir = args.out_dir or args.arms_dir or os.path.join(args.runs_dir, args.recipe)
    return compare.main(["--recipe", args.recipe, "--subset", args.subset, "--out-dir", out_dir,
                         "--paper-metric", args.paper_metric, "--paper-baseline", args.paper_baseline,
                         "--paper-encouraging", args.paper_encouraging,
                         "--runs", *[run_dir for run_dir, _ in outcomes]])


if __name__ == "__main__":
    sys.exit(main())

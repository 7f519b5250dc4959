#!/usr/bin/env python3
"""Compares the arms of a recipe (baseline, encouraging loss, sweep settings) over seeds: a Markdown
table of test BLEU (mean +- std over seeds, the difference to the first arm, the paper's numbers),
sacreBLEU's paired bootstrap test for every pair of arms (per seed and pooled over seeds), and one
PNG over all arms (test BLEU per seed, validation curves, the encouraging_ls diagnostics).

  python -m scripts.compare --recipe NAME --runs RUN_DIR... --out-dir D [--paper-baseline "35.09 +- 0.07"]
                            [--paper-encouraging "35.50 +- 0.11"] [--paper-metric tokenized_bleu] [--bootstrap-samples 1000]

Each RUN_DIR is a scripts/train.sh run evaluated by scripts/evaluate.sh (run.json, train.log,
eval/SUBSET.results.json and the translations beside it). Its arm is arm.json's name when
scripts/sweep.py made it, else run.json's loss (baseline / encouraging). Arms keep the order of
--runs; the first is the reference of the delta column. Writes D/comparison.{md,json,png} atomically.

Pooled test: for a pair of arms, the seeds both arms have are paired (seed s of A with seed s of B);
the pooled systems are the seeds' translations concatenated in seed order, against the references
repeated as often, so one bootstrap resamples (seed, sentence) items. It uses every seed's
translations, but it is not a test of seed-to-seed variance: that is what mean +- std shows.
"""
import argparse
import errno
import itertools
import json
import math
import os
import statistics
import sys

from scripts.atomic_io import write_text_atomically
from scripts.compare_plot import plot
from scripts.score_translations import ScoringError, bleu_metric, read_generate_output
from scripts.significance import N_SAMPLES, in_words, paired_bootstrap

METRICS = {
    "tokenized_bleu": "tokenised BLEU (fairseq)",
    "sacrebleu": "detokenised sacreBLEU",
    "compound_split_bleu": "compound-split BLEU",
}
PAPER_ARMS = {"baseline": "baseline", "encouraging": "encouraging", "el": "encouraging"}


class CompareError(Exception):
    """Bad input: reported as one line naming the run."""


def read_json(path, what):
    """The JSON object in `path`; anything else (a list, a number, bad JSON, unreadable) is a CompareError."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise CompareError(f"missing {what}: {path}") from None
    except OSError as error:
        raise CompareError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise CompareError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CompareError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def check_scores(results, path):
    """Each metric of a results.json is a number or null (a metric the run did not compute)."""
    for metric in METRICS:
        value = results.get(metric)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CompareError(f"{path}: field '{metric}' must be a number or null, got {value!r}")


def read_log(path):
    """fairseq --log-format json lines from train.log, as {tag: [stats, ...]} (tags: train_inner, valid, train)."""
    records = {}
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            brace = line.find("{")
            if brace < 0 or " | " not in line[:brace]:
                continue
            tag = line[:brace].rstrip(" |").rsplit(" | ", 1)[-1].strip()
            try:
                stats = json.loads(line[brace:])
            except ValueError:
                continue
            if isinstance(stats, dict):
                records.setdefault(tag, []).append(stats)
    return records


def load_runs(run_dirs, subset):
    runs = []
    for run_dir in run_dirs:
        info = read_json(os.path.join(run_dir, "run.json"), "run.json (is this a scripts/train.sh run?)")
        results_path = os.path.join(run_dir, "eval", f"{subset}.results.json")
        results = read_json(results_path, "evaluation results (run scripts/evaluate.sh on it)")
        check_scores(results, results_path)
        arm_path = os.path.join(run_dir, "arm.json")
        arm = read_json(arm_path, "arm.json") if os.path.isfile(arm_path) else {}
        name = arm.get("arm") or info.get("loss")
        if not name:
            raise CompareError(f"{run_dir}: neither arm.json nor run.json names its arm (loss)")
        runs.append({"dir": run_dir, "arm": name, "loss": info.get("loss"), "seed": info.get("seed"),
                     "settings": arm.get("settings", {}), "results": results, "info": info,
                     "log": read_log(os.path.join(run_dir, "train.log"))})
    seen = {}
    for run in runs:
        key = (run["arm"], run["seed"])
        if key in seen:
            raise CompareError(f"{run['dir']} and {seen[key]} are both arm {run['arm']}, seed {run['seed']}")
        seen[key] = run["dir"]
    return runs


def arm_order(runs):
    return list(dict.fromkeys(run["arm"] for run in runs))


def summarise(values):
    """(mean, sample std or None with one value, n)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def format_mean_std(mean, std):
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} +- {std:.2f}"


def translations(run, metric, subset):
    """(hypotheses, references) of one run as the metric scores them."""
    eval_dir = os.path.join(run["dir"], "eval")
    if metric == "tokenized_bleu":
        try:
            hypotheses, references = read_generate_output(os.path.join(eval_dir, f"{subset}.generate.txt"))
        except (ScoringError, OSError) as error:
            raise CompareError(f"{run['dir']}: {error}") from None
        return hypotheses, references
    tgt = run["info"].get("tgt_lang", "tgt")
    paths = [os.path.join(eval_dir, f"{subset}.hyp.detok.{tgt}"),
             os.path.join(run["info"].get("data_dir", ""), "raw", f"{subset}.{tgt}")]
    lines = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                lines.append(handle.read().rstrip("\n").split("\n"))
        except OSError as error:
            raise CompareError(f"{run['dir']}: cannot read {path} for the paired test ({error.strerror})") from None
    return lines[0], lines[1]


def pair_tests(runs, arms, metric, subset, n_samples):
    """sacreBLEU's paired bootstrap for every pair of arms: per common seed and pooled over them."""
    tokenized = metric == "tokenized_bleu"
    lowercase = "compare-lowercased" in next(iter(runs))["results"].get("postprocess", [])
    scorer = bleu_metric(tokenized, lowercase)
    by_key = {(run["arm"], run["seed"]): run for run in runs}
    cache = {}

    def get(run):
        if run["dir"] not in cache:
            cache[run["dir"]] = translations(run, metric, subset)
        return cache[run["dir"]]

    tests = []
    for arm_a, arm_b in itertools.combinations(arms, 2):
        seeds = sorted({s for a, s in by_key if a == arm_a} & {s for a, s in by_key if a == arm_b}, key=str)
        if not seeds:
            tests.append({"arm_a": arm_a, "arm_b": arm_b, "metric": metric, "seeds": [], "per_seed": {},
                          "pooled": None, "in_words": f"{arm_a} and {arm_b} share no seed: no paired test"})
            continue
        per_seed, pooled = {}, ([], [], [])
        for seed in seeds:
            (hyp_a, ref_a), (hyp_b, ref_b) = get(by_key[arm_a, seed]), get(by_key[arm_b, seed])
            if ref_a != ref_b:
                raise CompareError(f"{by_key[arm_a, seed]['dir']} and {by_key[arm_b, seed]['dir']} were "
                                   "evaluated on different references: not a paired comparison")
            per_seed[str(seed)] = paired_bootstrap(hyp_a, hyp_b, ref_a, scorer, n_samples)
            for part, lines in zip(pooled, (hyp_a, hyp_b, ref_a)):
                part.extend(lines)
        result = paired_bootstrap(*pooled, scorer, n_samples) if len(seeds) > 1 else per_seed[str(seeds[0])]
        tests.append({"arm_a": arm_a, "arm_b": arm_b, "metric": metric, "seeds": seeds, "per_seed": per_seed,
                      "pooled": result, "in_words": in_words(arm_a, arm_b, result)
                      + ("" if len(seeds) > 1 else " (one seed)")})
    return tests


def build_table(recipe, runs, arms, paper, paper_metric, tests):
    summary, lines = {}, []
    first = arms[0]
    for metric in METRICS:
        per_arm = {arm: summarise([r["results"].get(metric) for r in runs if r["arm"] == arm]) for arm in arms}
        if all(n == 0 for _, _, n in per_arm.values()):
            continue
        summary[metric] = {}
        for arm, (mean, std, n) in per_arm.items():
            base = per_arm[first][0]
            delta = None if mean is None or base is None or arm == first else mean - base
            summary[metric][arm] = {"mean": mean, "std": std, "seeds": n, "delta": delta,
                                    "values": [r["results"].get(metric) for r in runs if r["arm"] == arm]}
    settings = {arm: next(r["settings"] for r in runs if r["arm"] == arm) for arm in arms}
    seeds = {arm: sorted((r["seed"] for r in runs if r["arm"] == arm), key=str) for arm in arms}
    metrics = list(summary)
    header = [
        f"# {recipe}: {len(arms)} arms ({', '.join(arms)})",
        "",
        f"Test-set BLEU, mean +- sample std over seeds; delta = arm - {first} (means). "
        + (f"The paper's numbers are {METRICS.get(paper_metric, paper_metric)}." if any(paper.values()) else ""),
        "",
        "| arm | settings | seeds | " + " | ".join(f"{METRICS[m]} | delta" for m in metrics) + " | paper |",
        "|---|---|---|" + "---|---|" * len(metrics) + "---|",
    ]
    for arm in arms:
        cells = []
        for metric in metrics:
            entry = summary[metric][arm]
            cells += [format_mean_std(entry["mean"], entry["std"]),
                      "-" if entry["delta"] is None else f"{entry['delta']:+.2f}"]
        described = ", ".join(f"{k}={v}" for k, v in settings[arm].items()) or "recipe default"
        lines.append(f"| {arm} | {described} | {','.join(map(str, seeds[arm]))} | " + " | ".join(cells)
                     + f" | {paper.get(PAPER_ARMS.get(arm, ''), '') or '-'} |")
    significance = []
    if tests:
        metric = tests[0]["metric"]
        significance = [
            "", f"## Paired bootstrap resampling ({METRICS[metric]}, sacreBLEU, "
                f"{tests[0]['pooled']['n_samples'] if tests[0]['pooled'] else N_SAMPLES} resamples)", "",
            "Pooled over the seeds both arms have (their translations concatenated); per-seed p-values beside it.",
            "", "| A | B | B - A (pooled) | 95% CI of B - A | p | at p < 0.05 | per seed: B - A (p) |",
            "|---|---|---|---|---|---|---|"]
        for test in tests:
            pooled = test["pooled"]
            if pooled is None:
                significance.append(f"| {test['arm_a']} | {test['arm_b']} | - | - | - | no common seed | - |")
                continue
            per_seed = ", ".join(f"s{seed}: {r['delta']:+.2f} ({r['p_value']:.3f})" for seed, r in test["per_seed"].items())
            verdict = ("identical" if pooled["identical"] else "not significant" if not pooled["significant"]
                       else "significant" if not pooled["ci_low"] <= 0 <= pooled["ci_high"]
                       else "significant, CI includes 0")
            significance.append(f"| {test['arm_a']} | {test['arm_b']} | {pooled['delta']:+.2f} | "
                                f"[{pooled['ci_low']:+.2f}, {pooled['ci_high']:+.2f}] | {pooled['p_value']:.3f} | "
                                f"{verdict} | {per_seed} |")
        significance += [""] + [f"- {test['in_words']}" for test in tests]
        significance += ["", f"Test signature: `{next((t['pooled']['signature'] for t in tests if t['pooled']), '')}`"]
    per_run = ["", "## Runs", "", "| run | arm | seed | " + " | ".join(METRICS[m] for m in metrics) + " |",
               "|---|---|---|" + "---|" * len(metrics)]
    for run in sorted(runs, key=lambda r: (arms.index(r["arm"]), str(r["seed"]))):
        per_run.append(f"| {run['dir']} | {run['arm']} | {run['seed']} | "
                       + " | ".join(str(run["results"].get(m)) for m in metrics) + " |")
    signature = next((r["results"].get("sacrebleu_signature") for r in runs), None)
    footer = ["", f"sacreBLEU signature: `{signature}`"] if signature else []
    return "\n".join(header + lines + significance + per_run + footer) + "\n", summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (any arms, any seeds)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--subset", default="test")
    parser.add_argument("--paper-baseline", default="")
    parser.add_argument("--paper-encouraging", default="")
    parser.add_argument("--paper-metric", default="tokenized_bleu", choices=sorted(METRICS))
    parser.add_argument("--bootstrap-samples", type=int, default=N_SAMPLES, help="resamples of the paired test")
    parser.add_argument("--no-significance", action="store_true", help="skip the paired tests")
    args = parser.parse_args(argv)
    try:
        if args.bootstrap_samples < 1:
            raise CompareError(f"--bootstrap-samples must be a positive number of resamples, got {args.bootstrap_samples}")
        runs = load_runs(args.runs, args.subset)
        arms = arm_order(runs)
        if len(arms) < 2:
            raise CompareError(f"only one arm ({arms[0]}) among --runs: nothing to compare")
        # compound-split BLEU has no per-sentence form here; its paired test falls back to sacreBLEU
        test_metric = "tokenized_bleu" if args.paper_metric == "tokenized_bleu" else "sacrebleu"
        tests = [] if args.no_significance else pair_tests(runs, arms, test_metric, args.subset,
                                                           args.bootstrap_samples)
        table, summary = build_table(args.recipe, runs, arms, {"baseline": args.paper_baseline,
                                                               "encouraging": args.paper_encouraging},
                                     args.paper_metric, tests)
    except CompareError as error:
        print(f"error: compare.py: {error}", file=sys.stderr)
        return 2
    table_path = os.path.join(args.out_dir, "comparison.md")
    plot_path = os.path.join(args.out_dir, "comparison.png")
    summary_json = json.dumps(
        {"recipe": args.recipe, "subset": args.subset, "arms": arms, "metrics": summary, "significance": tests,
         "runs": [{k: r[k] for k in ("dir", "arm", "loss", "seed", "settings", "results")} for r in runs]},
        indent=2) + "\n"
    outputs = [(table_path, lambda path: write_text_atomically(path, table)),
               (os.path.join(args.out_dir, "comparison.json"), lambda path: write_text_atomically(path, summary_json)),
               (plot_path, lambda path: plot(runs, arms, path, args.recipe, args.paper_metric, METRICS))]
    for path, write in outputs:
        try:
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way")
            os.makedirs(args.out_dir, exist_ok=True)
            write(path)
        except (OSError, RuntimeError) as error:
            # a writer that fails inside a library (matplotlib, torch) raises while handling the OSError
            cause = error if isinstance(error, OSError) else error.__context__
            if not isinstance(cause, OSError):
                raise
            print(f"error: compare.py: cannot write {path}: {cause.strerror or cause}", file=sys.stderr)
            return 2
    print(table)
    print(f"[compare] table: {table_path}\n[compare] plot:  {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

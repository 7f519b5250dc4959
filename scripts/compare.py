#!/usr/bin/env python3
"""Compares baseline and encouraging-loss runs of one recipe: a Markdown table of test BLEU (mean +- std
over seeds, the difference, the paper's numbers beside ours) and a PNG of the validation curves and
the target-probability diagnostics that the encouraging_ls criterion logs (p_target, p_gt_half).

  compare.py --recipe NAME --runs RUN_DIR... --out-dir D [--paper-baseline "35.09 +- 0.07"]
             [--paper-encouraging "35.50 +- 0.11"] [--paper-metric tokenized_bleu]

Each RUN_DIR is a scripts/train.sh run evaluated by scripts/evaluate.sh (run.json, train.log,
eval/test.results.json). Writes D/comparison.md, D/comparison.json and D/comparison.png atomically.
"""
import argparse
import json
import math
import os
import statistics
import sys

from atomic_io import write_text_atomically

LOSSES = ("baseline", "encouraging")
LOSS_LABELS = {"baseline": "CE + label smoothing (baseline)", "encouraging": "encouraging loss"}
METRICS = {
    "tokenized_bleu": "tokenised BLEU (fairseq)",
    "sacrebleu": "detokenised sacreBLEU",
    "compound_split_bleu": "compound-split BLEU",
}
COLORS = {"baseline": "tab:blue", "encouraging": "tab:red"}


class CompareError(Exception):
    """Bad input: reported as one line naming the run."""


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise CompareError(f"missing {what}: {path}") from None
    except ValueError as error:
        raise CompareError(f"{path}: not valid JSON ({error})") from None


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


def curve(records, tag, key, step_key):
    """(steps, values) of `key` over `step_key` in the records of one tag, skipping missing values."""
    steps, values = [], []
    for stats in records.get(tag, []):
        if key in stats and step_key in stats:
            try:
                step, value = float(stats[step_key]), float(stats[key])
            except (TypeError, ValueError):
                continue
            steps.append(step)
            values.append(value)
    return steps, values


def load_runs(run_dirs, subset):
    runs = []
    for run_dir in run_dirs:
        info = read_json(os.path.join(run_dir, "run.json"), "run.json (is this a scripts/train.sh run?)")
        results = read_json(os.path.join(run_dir, "eval", f"{subset}.results.json"),
                            "evaluation results (run scripts/evaluate.sh on it)")
        if info.get("loss") not in LOSSES:
            raise CompareError(f"{run_dir}/run.json: loss must be one of {LOSSES}, got {info.get('loss')!r}")
        runs.append({"dir": run_dir, "loss": info["loss"], "seed": info.get("seed"), "results": results,
                     "log": read_log(os.path.join(run_dir, "train.log"))})
    return runs


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


def build_table(recipe, runs, paper, paper_metric):
    summary, lines = {}, []
    for metric in METRICS:
        per_loss = {loss: summarise([r["results"].get(metric) for r in runs if r["loss"] == loss]) for loss in LOSSES}
        if all(n == 0 for _, _, n in per_loss.values()):
            continue
        summary[metric] = {loss: {"mean": m, "std": s, "seeds": n} for loss, (m, s, n) in per_loss.items()}
        base, enc = per_loss["baseline"][0], per_loss["encouraging"][0]
        delta = None if base is None or enc is None else enc - base
        summary[metric]["delta"] = delta
        paper_cells = [paper.get(loss) or "-" for loss in LOSSES] if metric == paper_metric else ["", ""]
        lines.append(f"| {METRICS[metric]} | {format_mean_std(*per_loss['baseline'][:2])} "
                     f"| {format_mean_std(*per_loss['encouraging'][:2])} "
                     f"| {'-' if delta is None else f'{delta:+.2f}'} | {paper_cells[0]} | {paper_cells[1]} |")
    seeds = {loss: sorted(r["seed"] for r in runs if r["loss"] == loss) for loss in LOSSES}
    header = [
        f"# {recipe}: baseline vs encouraging loss",
        "",
        f"Test-set BLEU, mean +- sample std over seeds (baseline seeds {seeds['baseline']}, "
        f"encouraging seeds {seeds['encouraging']}). Delta = encouraging - baseline. "
        f"The paper's numbers are {METRICS.get(paper_metric, paper_metric)}.",
        "",
        "| metric | baseline (ours) | encouraging (ours) | delta | baseline (paper) | encouraging (paper) |",
        "|---|---|---|---|---|---|",
    ]
    per_run = ["", "| run | loss | seed | " + " | ".join(METRICS[m] for m in summary) + " |",
               "|---|---|---|" + "---|" * len(summary)]
    for run in sorted(runs, key=lambda r: (r["loss"], r["seed"])):
        per_run.append(f"| {run['dir']} | {run['loss']} | {run['seed']} | "
                       + " | ".join(str(run["results"].get(m)) for m in summary) + " |")
    signature = next((r["results"].get("sacrebleu_signature") for r in runs), None)
    footer = ["", f"sacreBLEU signature: `{signature}`"] if signature else []
    return "\n".join(header + lines + per_run + footer) + "\n", summary


def plot(runs, path, recipe):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("valid", "valid_nll_loss", "valid_num_updates", "validation NLL (bits/token)"),
        ("valid", "valid_p_target", "valid_num_updates", "validation mean p(target)"),
        ("valid", "valid_p_gt_half", "valid_num_updates", "validation share of tokens with p(target) > 0.5"),
        ("train_inner", "p_target", "num_updates", "training mean p(target)"),
    ]
    if any(curve(r["log"], "valid", "valid_bleu", "valid_num_updates")[0] for r in runs):
        panels[3] = ("valid", "valid_bleu", "valid_num_updates", "validation BLEU")
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for axis, (tag, key, step_key, title) in zip(axes.flat, panels):
        for loss in LOSSES:
            labelled = False
            for run in runs:
                if run["loss"] != loss:
                    continue
                steps, values = curve(run["log"], tag, key, step_key)
                if steps:
                    axis.plot(steps, values, color=COLORS[loss], alpha=0.8, marker="." if len(steps) < 30 else None,
                              label=None if labelled else LOSS_LABELS[loss])
                    labelled = True
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("updates")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(f"{recipe}: baseline vs encouraging loss (one line per seed)")
    figure.tight_layout()
    temporary = path + ".tmp"
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (both losses, any seeds)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--subset", default="test")
    parser.add_argument("--paper-baseline", default="")
    parser.add_argument("--paper-encouraging", default="")
    parser.add_argument("--paper-metric", default="tokenized_bleu", choices=sorted(METRICS))
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs, args.subset)
        missing = [loss for loss in LOSSES if not any(r["loss"] == loss for r in runs)]
        if missing:
            raise CompareError(f"no {' or '.join(missing)} run among --runs")
        table, summary = build_table(args.recipe, runs, {"baseline": args.paper_baseline,
                                                         "encouraging": args.paper_encouraging}, args.paper_metric)
    except CompareError as error:
        print(f"error: compare.py: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    table_path = os.path.join(args.out_dir, "comparison.md")
    write_text_atomically(table_path, table)
    write_text_atomically(os.path.join(args.out_dir, "comparison.json"),
                 json.dumps({"recipe": args.recipe, "subset": args.subset, "metrics": summary,
                             "runs": [{k: r[k] for k in ("dir", "loss", "seed", "results")} for r in runs]},
                            indent=2) + "\n")
    plot_path = os.path.join(args.out_dir, "comparison.png")
    plot(runs, plot_path, args.recipe)
    print(table)
    print(f"[compare] table: {table_path}\n[compare] plot:  {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

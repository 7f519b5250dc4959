#!/usr/bin/env python3
"""Where a trained model puts the reference tokens: per-token target probability p, margin (target
logit minus the best other logit) and rank of the target under teacher forcing on a subset, for two
or more checkpoints. This is the evidence for the encouraging loss's claims about margins and
well-classified tokens.

  python -m scripts.analyze_margins MODEL MODEL... --out-dir D [--subset valid|test] [--data-dir DATA] [--log-end 0.5]
                                     [--max-sentences N] [--max-tokens 4096] [--labels A B ...]

(--max-sentences N: whole batches in fairseq's length order until N sentences; the same for every model.)

MODEL is a checkpoint file or a scripts/train.sh run directory (then the checkpoint evaluate.sh
scored: checkpoints/checkpoint_avg_last*.pt, else checkpoints/checkpoint_last.pt). DATA is the
prepared corpus (data_prep output with bin/, or the bin/ folder itself; default: the first run's
run.json data_dir). Checkpoints load through fairseq's checkpoint_utils with fairseq_plugins
imported, i.e. under torch's weights_only=True with the project's allowlist.

Writes atomically to D: margins.json (per model: mean p, mean/median margin, share with p > 0.5,
share with p > LE, share ranked first, mean rank, mean margin where another token ranks first, overall and by target-token frequency bucket),
histograms.png and cdfs.png. Frequency buckets come from the target dictionary's training counts:
"frequent" types cover the first 50% of the training target tokens, "medium" the next 40%, "rare"
the last 10%.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch

from scripts.atomic_io import atomic_open, write_text_atomically
from scripts.run_json import RunRecordError, read_fields

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKETS = (("frequent", 0.5), ("medium", 0.9), ("rare", 1.0))


class AnalysisError(Exception):
    """Bad input: reported as one line naming the culprit."""


def resolve_model(path):
    """(checkpoint file, run directory or None)."""
    if os.path.isfile(path):
        return path, None
    if not os.path.isdir(path):
        raise AnalysisError(f"{path}: no such checkpoint or run directory")
    averaged = sorted(glob.glob(os.path.join(path, "checkpoints", "checkpoint_avg_last*.pt")))
    last = os.path.join(path, "checkpoints", "checkpoint_last.pt")
    if averaged:
        return averaged[-1], path
    if os.path.isfile(last):
        return last, path
    raise AnalysisError(f"{path}: neither a checkpoint file nor a run directory with checkpoints/checkpoint_last.pt")


def data_bin(data_dir, first_run):
    if data_dir is None and first_run:
        try:
            [data_dir] = read_fields(os.path.join(first_run, "run.json"), ["data_dir"])
        except (RunRecordError, OSError):
            data_dir = None
    if data_dir is None:
        raise AnalysisError("--data-dir is needed (no run directory whose run.json names the corpus)")
    for candidate in (os.path.join(data_dir, "bin"), data_dir):
        if glob.glob(os.path.join(candidate, "dict.*.txt")):
            return candidate
    raise AnalysisError(f"--data-dir {data_dir}: no fairseq dictionaries (dict.*.txt) in it or in its bin/")


def load_model(checkpoint, bin_dir):
    from fairseq import checkpoint_utils, utils
    utils.import_user_module(argparse.Namespace(user_dir=os.path.join(REPO_ROOT, "fairseq_plugins")))
    from fairseq_plugins.checkpoints import CheckpointLoadError
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": bin_dir})
    except (CheckpointLoadError, FileNotFoundError) as error:
        raise AnalysisError(str(error)) from None
    model = models[0].eval()
    criterion = getattr(cfg, "criterion", None)
    log_end = getattr(criterion, "log_end", None) if criterion is not None else None
    return model, task, log_end


def token_statistics(logits, target, padding_idx):
    """(p, margin, rank) of the target at every non-pad position; rank 1 = the model's top token."""
    logits, target = logits.float().reshape(-1, logits.size(-1)), target.reshape(-1)
    keep = target != padding_idx
    logits, target = logits[keep], target[keep]
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    probability = (target_logit - torch.logsumexp(logits, dim=1)).exp()
    others = logits.scatter(1, target[:, None], float("-inf"))
    margin = target_logit - others.max(dim=1).values
    rank = 1 + (logits > target_logit[:, None]).sum(dim=1)
    return probability, margin, rank, target


@torch.no_grad()
def analyse(model, task, subset, max_tokens, max_sentences):
    try:
        task.load_dataset(subset)
    except FileNotFoundError as error:
        raise AnalysisError(f"subset {subset}: {error}") from None
    dataset = task.dataset(subset)
    iterator = task.get_batch_iterator(dataset=dataset, max_tokens=max_tokens, ignore_invalid_inputs=False,
                                       required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    parts, sentences = [], 0
    for sample in iterator:
        if max_sentences and sentences >= max_sentences:
            break
        net_output = model(**sample["net_input"])
        parts.append(token_statistics(net_output[0], sample["target"], task.target_dictionary.pad()))
        sentences += sample["nsentences"]
    if not parts:
        raise AnalysisError(f"subset {subset} is empty")
    return [torch.cat(column).numpy() for column in zip(*parts)], sentences


def frequency_buckets(dictionary):
    """Bucket name of every token id from the dictionary's training counts (specials count as frequent)."""
    counts = np.array(dictionary.count, dtype=np.float64)
    order = np.argsort(-counts, kind="stable")
    cumulative = np.cumsum(counts[order]) / max(counts.sum(), 1)
    names = np.empty(len(counts), dtype=object)
    lower = 0.0
    starts = np.concatenate([[0.0], cumulative[:-1]])  # a type belongs to the bucket where its share of the mass starts
    for name, upper in BUCKETS:
        names[order[(starts >= lower) & (starts < upper)]] = name
        lower = upper
    names[: dictionary.nspecial] = "frequent"
    return names


def describe(probability, margin, rank, log_end):
    if len(probability) == 0:
        return {"tokens": 0}
    return {"tokens": int(len(probability)), "mean_p": float(probability.mean()),
            "mean_margin": float(margin.mean()), "median_margin": float(np.median(margin)),
            "share_p_gt_half": float((probability > 0.5).mean()),
            "share_p_gt_log_end": float((probability > log_end).mean()),
            "share_rank1": float((rank == 1).mean()), "mean_rank": float(rank.mean()),
            # how far behind the target is where the model ranks another token first (negative)
            "mean_margin_misranked": float(margin[rank > 1].mean()) if (rank > 1).any() else None}


def summarise(probability, margin, rank, target, buckets, log_end):
    summary = describe(probability, margin, rank, log_end)
    summary["log_end"] = log_end
    names = buckets[target]
    summary["by_frequency"] = {name: describe(probability[names == name], margin[names == name],
                                              rank[names == name], log_end) for name, _ in BUCKETS}
    return summary


def plot(per_model, out_dir):
    import logging

    import matplotlib
    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's logging setup would show its font search
    import matplotlib.pyplot as plt

    quantities = (("p", "target probability p", (0.0, 1.0)), ("margin", "margin (target - best other logit)", None))
    paths = {}
    for kind in ("histograms", "cdfs"):
        figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for axis, (key, title, bounds) in zip(axes, quantities):
            for label, values in per_model.items():
                data = values[key]
                if kind == "histograms":
                    axis.hist(data, bins=50, range=bounds, histtype="step", density=True, label=label)
                else:
                    ordered = np.sort(data)
                    axis.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=label)
            axis.set_title(f"{title}: {'density' if kind == 'histograms' else 'share of tokens <= x'}", fontsize=10)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        paths[kind] = os.path.join(out_dir, f"{kind}.png")
        with atomic_open(paths[kind], "wb") as handle:
            figure.savefig(handle, format="png", dpi=90)
        plt.close(figure)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="+", help="checkpoint files or run directories (two or more)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--subset", default="valid")
    parser.add_argument("--data-dir", help="prepared corpus (default: the first run's run.json data_dir)")
    parser.add_argument("--labels", nargs="+", help="one name per model (default: run directory or file name)")
    parser.add_argument("--log-end", type=float, help="LE of the 'p > LE' share (default: the checkpoint's, else 0.5)")
    parser.add_argument("--max-sentences", type=int, default=0,
                        help="stop after the batch that reaches N sentences, in fairseq's batch order (0: all)")
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args(argv)
    try:
        if len(args.models) < 2:
            raise AnalysisError("give two or more checkpoints or run directories to compare")
        if args.labels and len(args.labels) != len(args.models):
            raise AnalysisError(f"--labels has {len(args.labels)} names for {len(args.models)} models")
        resolved = [resolve_model(path) for path in args.models]
        bin_dir = data_bin(args.data_dir, next((run for _, run in resolved if run), None))
        labels = args.labels or [os.path.relpath(run) if run else os.path.basename(ckpt) for ckpt, run in resolved]
        if len(set(labels)) != len(labels):
            raise AnalysisError(f"two models would share the label {labels}: give --labels")
        summary, per_model = {"subset": args.subset, "data": bin_dir, "models": {}}, {}
        for label, (checkpoint, _) in zip(labels, resolved):
            print(f"[analyze] {label}: teacher forcing on {args.subset} with {checkpoint}", file=sys.stderr, flush=True)
            model, task, checkpoint_log_end = load_model(checkpoint, bin_dir)
            log_end = args.log_end if args.log_end is not None else (checkpoint_log_end or 0.5)
            (probability, margin, rank, target), sentences = analyse(model, task, args.subset, args.max_tokens,
                                                                     args.max_sentences)
            buckets = frequency_buckets(task.target_dictionary)
            summary["models"][label] = dict(summarise(probability, margin, rank, target, buckets, log_end),
                                            checkpoint=checkpoint, sentences=sentences)
            per_model[label] = {"p": probability, "margin": margin}
    except AnalysisError as error:
        print(f"error: analyze_margins.py: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    paths = plot(per_model, args.out_dir)
    json_path = os.path.join(args.out_dir, "margins.json")
    write_text_atomically(json_path, json.dumps(summary, indent=2) + "\n")
    for label, entry in summary["models"].items():
        print(f"[analyze] {label}: {entry['tokens']} tokens, mean p {entry['mean_p']:.4f}, mean margin "
              f"{entry['mean_margin']:.3f}, p > 0.5 {entry['share_p_gt_half']:.4f}, p > {entry['log_end']} "
              f"{entry['share_p_gt_log_end']:.4f}, rank 1 {entry['share_rank1']:.4f}")
    print(f"[analyze] summary: {json_path}\n[analyze] plots: {paths['histograms']} {paths['cdfs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

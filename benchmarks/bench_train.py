#!/usr/bin/env python
"""Training throughput and peak memory of fairseq-train with a small Transformer: fairseq's
label_smoothed_cross_entropy (baseline) vs encouraging_ls with --el-impl reference vs fused (the
gradient stored over the logits, the default) vs fused with --el-keep-logits vs fused with
--el-fuse-projection (the output projection inside the loss, the logits never whole).

It generates a synthetic parallel corpus (Zipf-distributed words, so that the vocabulary, and
with it the output layer and the loss, is realistically large), binarises it with
fairseq-preprocess, then runs fairseq-train once per setting with the same data, seed and
flags. Words/second is fairseq's own "wps" (median over the logged intervals after the first);
peak memory is the training process's peak resident set on CPU, and on CUDA the peak of memory
allocated by torch (torch.cuda.max_memory_allocated, read by the training process itself as it
exits). Ratios are against the baseline of the same invocation.

    python -m benchmarks.bench_train                   # CPU, ~16k vocabulary, 60 updates each
    python -m benchmarks.bench_train --max-update 200 --vocab 32000 --workdir /tmp/bench
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, repo_env, split_list, write_synthetic_parallel
from scripts.atomic_io import write_text_atomically
from scripts.compare import read_log

BIN = Path(sys.executable).parent
CUDA_PEAK_KEY = "cuda_peak_allocated_mb"
SETTINGS = {  # name: criterion flags
    "baseline": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
    "reference": ["--criterion", "encouraging_ls", "--label-smoothing", "0.1", "--log-end", "0.5",
                  "--el-impl", "reference"],
    "fused": ["--criterion", "encouraging_ls", "--label-smoothing", "0.1", "--log-end", "0.5",
              "--el-impl", "fused"],
    # the gradient beside the logits instead of over them (what --el-keep-logits costs)
    "fused-keep-logits": ["--criterion", "encouraging_ls", "--label-smoothing", "0.1", "--log-end", "0.5",
                          "--el-impl", "fused", "--el-keep-logits"],
    "fused-projection": ["--criterion", "encouraging_ls", "--label-smoothing", "0.1", "--log-end", "0.5",
                         "--el-impl", "fused", "--el-fuse-projection"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="corpus, binarised data and logs go here (default: a temporary directory)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="subset of %(default)s")
    parser.add_argument("--vocab", type=int, default=16000, help="words in the synthetic vocabulary (default: %(default)s)")
    parser.add_argument("--sentences", type=int, default=20000, help="training sentence pairs (default: %(default)s)")
    parser.add_argument("--max-update", type=int, default=60, help="updates per run (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="fairseq --max-tokens (default: %(default)s)")
    parser.add_argument("--embed-dim", type=int, default=128, help="model width (default: %(default)s)")
    parser.add_argument("--log-interval", type=int, default=10, help="fairseq --log-interval (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA (with --fp16) when present, else CPU")
    parser.add_argument("--output", type=Path, default=None, help="also write the table (markdown) and JSON rows here")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train-worker"]:
        return train_worker(argv[1:])
    args = parse_args(argv)
    import torch

    settings = split_list(args.settings)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'CUDA ' + torch.cuda.get_device_name() + ' (fp16)' if cuda else 'CPU'}, workdir {workdir}", flush=True)
    print(f"corpus: {args.sentences} pairs, {args.vocab}-word Zipf vocabulary; transformer {args.embed_dim}-dim "
          f"1+1 layers; {args.max_update} updates of --max-tokens {args.max_tokens}, seed {args.seed}", flush=True)
    data_bin = prepare_data(workdir, args)

    rows = []
    for number, name in enumerate(settings, 1):
        print(f"[{number}/{len(settings)}] fairseq-train {name} ...", end=" ", flush=True)
        row = train(name, data_bin, workdir, args, cuda)
        rows.append(row)
        print(row.get("error") or f"{row['wps']:.0f} wps, peak {row['peak_mb']:.0f} MB", flush=True)
    table = format_table(rows)
    print(table)
    if args.output is not None:
        write_text_atomically(args.output, table + "\n\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")
    return 0


def train_worker(fairseq_args):
    """fairseq-train in this process, then its peak of CUDA memory allocated, as one JSON line."""
    import torch
    from fairseq_cli.train import cli_main

    sys.argv = ["fairseq-train", *fairseq_args]
    try:
        cli_main()
    finally:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            print(json.dumps({CUDA_PEAK_KEY: torch.cuda.max_memory_allocated() / 2**20}), flush=True)
    return 0


def prepare_data(workdir: Path, args) -> Path:
    data_bin = workdir / f"bin-v{args.vocab}-n{args.sentences}"
    if (data_bin / "dict.tgt.txt").exists():
        return data_bin
    raw = workdir / "raw"
    write_synthetic_parallel(raw, (("train", args.sentences), ("valid", max(10, args.sentences // 100))),
                             args.vocab, lengths=(8, 30), zipf=True, seed=args.seed)
    staging = data_bin.with_name(data_bin.name + ".partial")
    run([BIN / "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
         "--trainpref", raw / "train", "--validpref", raw / "valid", "--destdir", staging,
         "--joined-dictionary", "--workers", "2"], workdir / "preprocess.log")
    staging.replace(data_bin)
    return data_bin


def train(name, data_bin, workdir, args, cuda):
    log = workdir / f"train-{name}.log"
    # fairseq-train run by train_worker, so that the process itself can report its CUDA peak
    command = [sys.executable, "-m", "benchmarks.bench_train", "--train-worker",
               data_bin, "--user-dir", REPO / "fairseq_plugins",
               "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
               "--encoder-embed-dim", str(args.embed_dim), "--decoder-embed-dim", str(args.embed_dim),
               "--encoder-ffn-embed-dim", str(2 * args.embed_dim), "--decoder-ffn-embed-dim", str(2 * args.embed_dim),
               "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings",
               "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20",
               "--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update), "--seed", str(args.seed),
               "--log-format", "json", "--log-interval", str(args.log_interval), "--no-save",
               # fairseq makes --save-dir even with --no-save: keep it out of the caller's directory
               "--save-dir", workdir / f"checkpoints-{name}",
               "--disable-validation", "--num-workers", "0", *SETTINGS[name]]
    command += ["--fp16"] if cuda else ["--cpu"]
    rusage, returncode = run(command, log, check=False)
    if returncode != 0:
        return dict(setting=name, error=f"fairseq-train failed ({returncode}), see {log}")
    intervals = [entry for entry in read_log(log).get("train_inner", []) if "wps" in entry]
    if len(intervals) < 2:
        return dict(setting=name, error=f"fewer than two logged intervals in {log}; raise --max-update")
    wps = statistics.median(float(entry["wps"]) for entry in intervals[1:])
    if cuda:
        peaks = [json.loads(line)[CUDA_PEAK_KEY] for line in log.read_text().splitlines()
                 if line.startswith("{") and CUDA_PEAK_KEY in line]
        if not peaks:
            return dict(setting=name, error=f"no {CUDA_PEAK_KEY} line in {log}")
        peak_mb = peaks[-1]
    else:
        peak_mb = rusage.ru_maxrss / 1024
    return dict(setting=name, cuda=cuda, wps=wps, peak_mb=peak_mb, last_loss=float(intervals[-1]["loss"]),
                intervals=len(intervals), log=str(log))


def run(command, log: Path, check=True):
    """Runs a command with its output in ``log``; returns (its own rusage, return code)."""
    with open(log, "w") as handle:
        proc = subprocess.Popen([str(part) for part in command], stdout=handle, stderr=subprocess.STDOUT,
                                env=repo_env(PYTHONUNBUFFERED="1"))
        _, status, rusage = os.wait4(proc.pid, 0)  # this child's rusage alone (peak RSS)
    returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = returncode
    if check and returncode != 0:
        raise SystemExit(f"{command[0]} failed ({returncode}); see {log}")
    return rusage, returncode


def format_table(rows):
    base = next((r for r in rows if r["setting"] == "baseline" and "error" not in r), None)
    memory = "peak CUDA memory allocated (MB)" if any(r.get("cuda") for r in rows) else "peak resident set (MB)"
    lines = [f"| setting | words/s | x baseline | {memory} | x baseline | loss at the end |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | {r['error']} | | | | |")
            continue
        wps_ratio = f"{r['wps'] / base['wps']:.2f}" if base else "-"
        mem_ratio = f"{r['peak_mb'] / base['peak_mb']:.2f}" if base else "-"
        lines.append(f"| {r['setting']} | {r['wps']:.0f} | {wps_ratio} | {r['peak_mb']:.0f} | {mem_ratio} | "
                     f"{r['last_loss']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

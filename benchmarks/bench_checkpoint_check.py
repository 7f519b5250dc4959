"""What the checkpoint checks cost at load: the CRC-32 of every record of the archive and the read of
the config (a second, memory-mapped unpickling) against fairseq's own ``load_checkpoint_to_cpu``.

Writes one fairseq-shaped checkpoint per size (model and Adam state, float32) under --tmp-dir,
loads it --repeats times each way with a warm page cache (the file was just written, as after
training) and prints the median times and their ratio; the files are deleted at the end.

    python -m benchmarks.bench_checkpoint_check --sizes-mb 100,1000
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

from benchmarks.common import split_list
import fairseq_plugins  # noqa: F401  (allowlist and the checked loader)
from fairseq_plugins import checkpoints
from fairseq_plugins.config_literals import refuse_code_in_config

TENSOR_ELEMENTS = 1 << 20  # 4 MB float32 tensors, a Transformer layer's matrices are of this order


def write_checkpoint(path, size_mb):
    """Parameters, Adam's two moments for each, a config: size_mb in all."""
    count = max(1, round(size_mb * 2**20 / (3 * 4 * TENSOR_ELEMENTS)))
    generator = torch.Generator().manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(TENSOR_ELEMENTS, generator=generator) for i in range(count)}
    adam = {i: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p), "step": torch.tensor(1.0)}
            for i, p in enumerate(model.values())}
    state = {"model": model, "args": None,
             "cfg": {"model": {"_name": "transformer", "adaptive_softmax_cutoff": None, "encoder_layers": 6},
                     "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)"}},
             "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam", "num_updates": 1,
                                    "lr_scheduler_state": {"best": None}}],
             "last_optimizer_state": {"state": adam, "param_groups": [{"params": list(adam)}]},
             "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}}}
    torch.save(state, path)
    return os.path.getsize(path)


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="100,1000", help="checkpoint sizes in MB, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="loads per measurement (median)")
    parser.add_argument("--tmp-dir", default=os.environ.get("TMPDIR", "/tmp"), help="where the checkpoints go")
    args = parser.parse_args(argv)
    fairseq_load = checkpoints._fairseq_load_checkpoint_to_cpu
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, warm page cache, median of {args.repeats}")
    print(f"{'size':>9} | {'fairseq load':>12} | {'checked load':>12} | {'ratio':>5} | {'CRC only':>8} | {'config only':>11}")
    for size_mb in map(float, split_list(args.sizes_mb)):
        with tempfile.TemporaryDirectory(dir=args.tmp_dir) as directory:
            path = os.path.join(directory, "checkpoint_bench.pt")
            size = write_checkpoint(path, size_mb)
            for function in (lambda: fairseq_load(path), lambda: checkpoints.load_checkpoint_to_cpu(path)):
                function()  # warm-up
            plain = median_seconds(lambda: fairseq_load(path), args.repeats)
            checked = median_seconds(lambda: checkpoints.load_checkpoint_to_cpu(path), args.repeats)
            crc = median_seconds(lambda: checkpoints.verify_archive(path), args.repeats)
            config = median_seconds(lambda: refuse_code_in_config(checkpoints._load_lazily(path), path), args.repeats)
            print(f"{size / 2**20:>6.0f} MB | {plain:>10.3f} s | {checked:>10.3f} s | {checked / plain:>5.2f} | "
                  f"{crc:>6.3f} s | {config:>9.3f} s", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time and peak memory of the loss alone, forward + backward: fairseq's label-smoothed CE vs the
encouraging loss written the straightforward way (reference) vs the fused streaming version, the
latter also as the criterion calls it (fused-overwrite: the gradient stored over the logits).
With --projection the inputs are hidden states and an output projection instead (tokens x hidden,
vocab x hidden) and the step includes the projection: projection + LS-CE (the baseline),
projection + the fused loss (gradient over the logits, as the criterion without
--el-fuse-projection), torch's chunked linear_cross_entropy (no label smoothing: with it torch forms
the full logits), and linear_encouraging_loss (the projection fused, the logits never whole).

Times: per size, one subprocess runs the implementations interleaved (one warm-up each, then
--repeats rounds, each round timing every implementation once, in rotating order); the table
gives each one's median time and the median over rounds of its time / LS-CE's time in the same
round, which stays meaningful on a shared, noisy machine where absolute times do not.
Peak memory: each (implementation, size) in a fresh subprocess, one forward + backward (with
--projection after one on 8 tokens, so that lazy imports and first-call set-up do not count); on CPU
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs once the inputs
exist) minus the resident set at that moment, i.e. what the loss added on top of logits and
targets, with glibc's mmap threshold fixed at 64 KB (MALLOC_MMAP_THRESHOLD_) so that freed blocks
leave the resident set; on CUDA torch.cuda.max_memory_allocated over the same baseline.

On CUDA the table also gives the share of the bandwidth floor: the time of one read of the logits
plus one write of a gradient of the same size (a device copy), over the measured time.
Inputs are leaf tensors, except for fused-overwrite, which gets a non-leaf copy made before the
clock starts (and before the memory baseline), as a decoder's output layer hands it over.
--loss-scale multiplies the loss before backward, as fp16 training's loss scaler does.

    python -m benchmarks.bench_loss --quick              # 4096 x 32000, CPU, float32
    python -m benchmarks.bench_loss                      # tokens {4096,16384} x vocab {8k,32k,64k}
    python -m benchmarks.bench_loss --devices cuda --dtypes bfloat16 --tokens 16384 --vocab 32000
    python -m benchmarks.bench_loss --projection --tokens 4096 --vocab 64000 --hidden 512
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import repo_env, split_list
from scripts.atomic_io import write_text_atomically

IMPLS = ("lsce", "reference", "fused", "fused-overwrite")
PROJECTION_IMPLS = ("proj-lsce", "proj-fused", "torch-chunked", "fused-projection")
BASELINES = {"lsce": IMPLS, "proj-lsce": PROJECTION_IMPLS}
IMPL_TITLES = {"lsce": "fairseq LS-CE", "reference": "EL reference", "fused": "EL fused",
               "fused-overwrite": "EL fused, gradient over the logits",
               "proj-lsce": "projection + fairseq LS-CE", "proj-fused": "projection + EL fused",
               "torch-chunked": "torch linear_cross_entropy, chunked (CE, no smoothing)",
               "fused-projection": "EL, projection fused (linear_encouraging_loss)"}
# the impls that form the full tokens x vocabulary logits
MATERIALISING = ("lsce", "reference", "fused", "fused-overwrite", "proj-lsce", "proj-fused")
PAD = 1  # fairseq's padding index


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="4096,16384", help="comma-separated row counts (default: %(default)s)")
    parser.add_argument("--vocab", default="8000,32000,64000", help="comma-separated vocabulary sizes (default: %(default)s)")
    parser.add_argument("--impls", default=None, help="subset of %s, or with --projection of %s (default: all)"
                        % (",".join(IMPLS), ",".join(PROJECTION_IMPLS)))
    parser.add_argument("--projection", action="store_true",
                        help="hidden states and an output projection as inputs; the step includes the projection")
    parser.add_argument("--hidden", default="512,1024", help="--projection: comma-separated widths (default: %(default)s)")
    parser.add_argument("--block-elements", type=int, default=None,
                        help="fused projection: logits per block (default: the library's)")
    parser.add_argument("--max-logits-elements", type=float, default=1.1e9,
                        help="skip the impls that form the full logits above this many (default: %(default).2g, "
                             "4096 x 256000; they hold about three float32 copies)")
    parser.add_argument("--devices", default=None, help="cpu and/or cuda (default: cpu, plus cuda when present)")
    parser.add_argument("--dtypes", default="float32", help="logits dtypes: float32,bfloat16,float16 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median is reported (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="only 4096 x 32000 (overrides --tokens/--vocab)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--chunk-elements", type=int, default=None, help="fused CPU chunk size in elements (default: the library's)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--log-end", type=float, default=0.5)
    parser.add_argument("--logit-scale", type=float, default=3.0, help="std of the random logits (default: %(default)s)")
    parser.add_argument("--correct-fraction", type=float, default=0.5,
                        help="share of tokens whose target is the argmax, as in a model being trained (default: %(default)s)")
    parser.add_argument("--pad-fraction", type=float, default=0.05, help="share of padding tokens (default: %(default)s)")
    parser.add_argument("--loss-scale", type=float, default=1.0,
                        help="upstream gradient of the summed loss, as fp16's loss scaler sets it (default: %(default)s)")
    parser.add_argument("--reference-max-elements", type=float, default=1.5e8,
                        help="skip the reference above this many logits: it holds ~9 float32 copies "
                             "(default: %(default).2g, i.e. up to 4096 x 32000)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per case (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table (markdown) and JSON rows here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one case, JSON, internal
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_case(json.loads(args.worker), args)))
        return 0
    import torch

    known = PROJECTION_IMPLS if args.projection else IMPLS
    impls = split_list(args.impls) if args.impls else list(known)
    unknown = sorted(set(impls) - set(known))
    if unknown:
        raise SystemExit(f"--impls: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    devices = split_list(args.devices) if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device is visible to torch")
    sizes = [(4096, 32000)] if args.quick else [(int(n), int(v)) for n in split_list(args.tokens) for v in split_list(args.vocab)]
    widths = [int(h) for h in split_list(args.hidden)] if args.projection else [None]

    print(describe_environment(args, devices), flush=True)
    rows = []
    groups = [(device, dtype, n, v, h) for device in devices for dtype in split_list(args.dtypes) for n, v in sizes
              for h in widths]
    for number, (device, dtype, tokens, vocab, hidden) in enumerate(groups, 1):
        size = dict(tokens=tokens, vocab=vocab, device=device, dtype=dtype, hidden=hidden)
        runnable = [impl for impl in impls if skip_reason(impl, tokens * vocab, args) is None]
        print(f"[{number}/{len(groups)}] {tokens}x{vocab}{'' if hidden is None else f'x{hidden}'} {device} {dtype}: "
              f"timing {','.join(runnable)} ...", end=" ", file=sys.stderr, flush=True)
        timing = run_in_subprocess(dict(size, mode="time", impls=runnable), args)
        print("memory ...", end=" ", file=sys.stderr, flush=True)
        for impl in impls:
            row = dict(size, impl=impl)
            if impl not in runnable:
                row["error"] = skip_reason(impl, tokens * vocab, args)
            elif "error" in timing:
                row["error"] = timing["error"]
            else:
                row.update(median_s=statistics.median(timing["times"][impl]), times_s=timing["times"][impl],
                           floor_s=timing.get("floor_s"))
                baseline = baseline_of(impl)
                if baseline in timing["times"]:
                    row["time_ratio"] = statistics.median(
                        t / base for t, base in zip(timing["times"][impl], timing["times"][baseline]))
                memory = run_in_subprocess(dict(size, mode="memory", impls=[impl]), args)
                if "error" in memory:
                    row["error"] = memory["error"]
                else:
                    row["peak_mb"] = memory["peak_mb"]
            rows.append(row)
        print("done", file=sys.stderr, flush=True)
    table = format_table(rows)
    print(table)
    if args.output is not None:
        write_text_atomically(args.output, table + "\n\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")
    return 0


def baseline_of(impl):
    return next(name for name, group in BASELINES.items() if impl in group)


def skip_reason(impl, elements, args):
    """Why ``impl`` does not run at this many logits (None: it runs)."""
    if impl == "reference" and elements > args.reference_max_elements:
        return "skipped (--reference-max-elements)"
    if impl in MATERIALISING and elements > args.max_logits_elements:
        return "skipped (--max-logits-elements)"
    if impl == "torch-chunked":
        import torch.nn.functional as F
        if not hasattr(F, "linear_cross_entropy"):
            return "not in this torch"
    return None


def describe_environment(args, devices):
    import torch

    threads = args.threads or torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"torch {torch.__version__}, intra-op threads {threads}, CPU {cpu} ({os.cpu_count()} logical cores)"]
    if hasattr(os, "getloadavg"):
        lines.append("load average before the run: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    if "cuda" in devices:
        lines.append(f"CUDA device: {torch.cuda.get_device_name()}")
    lines.append(f"label smoothing {args.label_smoothing}, LE {args.log_end}, logits ~ N(0, {args.logit_scale}^2), "
                 f"{args.correct_fraction:.0%} argmax targets, {args.pad_fraction:.0%} padding, "
                 f"loss scale {args.loss_scale:g}; "
                 f"times: medians of {args.repeats} interleaved rounds after a warm-up; memory: a fresh process each")
    return "\n".join(lines)


def run_in_subprocess(case, args):
    forwarded = ["--repeats", str(args.repeats), "--label-smoothing", str(args.label_smoothing),
                 "--log-end", str(args.log_end), "--logit-scale", str(args.logit_scale),
                 "--correct-fraction", str(args.correct_fraction), "--pad-fraction", str(args.pad_fraction),
                 "--loss-scale", str(args.loss_scale)]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    if args.chunk_elements:
        forwarded += ["--chunk-elements", str(args.chunk_elements)]
    if args.block_elements:
        forwarded += ["--block-elements", str(args.block_elements)]
    env = repo_env()
    if case["mode"] == "memory":
        # glibc raises its mmap threshold after freeing a large block, so later blocks up to that size come
        # from (and return to) a heap that stays resident: the peak then depends on what ran before. A fixed
        # threshold maps every block of 64 KB or more on its own and unmaps it on free, so the resident
        # set follows the live tensors.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_loss", "--worker", json.dumps(case), *forwarded],
                              capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timed out after {args.timeout:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return dict(case, error=f"failed ({proc.returncode}): " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(lines[-1])


def run_case(case, args):
    """Runs in the worker process: build inputs, then time (interleaved) or measure peak memory."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(case["device"])
    dtype = getattr(torch, case["dtype"])
    tokens, vocab = case["tokens"], case["vocab"]
    generator = torch.Generator(device="cpu").manual_seed(0)
    if case.get("hidden") is None:
        # Built in place, so that building them leaves no higher peak than holding them.
        inputs = (torch.empty(tokens, vocab, dtype=dtype).normal_(0.0, args.logit_scale, generator=generator),)
        argmax = inputs[0].argmax(-1)
    else:  # logits = hidden @ weight.T with about the same spread
        width = case["hidden"]
        hidden = torch.empty(tokens, width, dtype=dtype).normal_(generator=generator)
        weight = torch.empty(vocab, width, dtype=dtype).normal_(0.0, args.logit_scale / width ** 0.5,
                                                                generator=generator)
        inputs = (hidden, weight)
        # a few rows at a time: the full logits must not raise the process's resident set here
        argmax = torch.cat([(rows @ weight.T).argmax(-1) for rows in hidden.split(max(1, 2**22 // vocab))])
    target = torch.randint(0, vocab, (tokens,), generator=generator)
    correct = torch.rand(tokens, generator=generator) < args.correct_fraction
    target = torch.where(correct, argmax, target)
    target[torch.rand(tokens, generator=generator) < args.pad_fraction] = PAD
    inputs, target = tuple(tensor.to(device) for tensor in inputs), target.to(device)
    steps = {impl: make_step(impl, target, args) for impl in case["impls"]}
    memory = PeakMemory(device)
    decoder_output = _decoder_output()

    def prepare(impl):
        leaves = tuple(tensor.detach().requires_grad_() for tensor in inputs)
        return (decoder_output.apply(*leaves),) if impl == "fused-overwrite" else leaves

    def run_once(impl, given):
        (steps[impl](*given) * args.loss_scale).backward()
        memory.synchronize()

    if case["mode"] == "memory":
        if len(inputs) == 2:  # lazy imports and first-call set-up (torch's chunked path) do not count
            hidden, weight = prepare(case["impls"][0])
            (make_step(case["impls"][0], target[:8], args)(hidden[:8], weight) * args.loss_scale).backward()
        given = prepare(case["impls"][0])
        memory.reset()
        run_once(case["impls"][0], given)
        return dict(peak_mb=memory.peak_mb())
    for impl in steps:
        run_once(impl, prepare(impl))  # warm-up: allocator, thread pool, lazy imports
    times = {impl: [] for impl in steps}
    order = list(steps)
    for round_number in range(args.repeats):
        for impl in order[round_number % len(order):] + order[:round_number % len(order)]:
            given = prepare(impl)
            start = time.perf_counter()
            run_once(impl, given)
            times[impl].append(time.perf_counter() - start)
            del given
    result = dict(times=times)
    if device.type == "cuda":
        result["floor_s"] = bandwidth_floor_seconds(inputs[0], args.repeats) if len(inputs) == 1 else None
    return result


def make_step(impl, target, args):
    import torch

    if impl in ("lsce", "proj-lsce"):
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        def step(logits):
            lprobs = torch.log_softmax(logits.float(), dim=-1)
            loss, _ = label_smoothed_nll_loss(lprobs, target, args.label_smoothing, ignore_index=PAD, reduce=True)
            return loss
        return step if impl == "lsce" else lambda hidden, weight: step(hidden @ weight.T)
    if impl == "torch-chunked":
        import torch.nn.functional as F

        def step(hidden, weight):
            return F.linear_cross_entropy(hidden, weight, target, ignore_index=PAD, reduction="sum",
                                          options=torch.nn.LinearCrossEntropyOptions())
        return step

    from encouraging_loss import EncouragingLossOptions, encouraging_loss, linear_encouraging_loss
    from encouraging_loss.ops.chunked import DEFAULT_CHUNK_ELEMENTS

    chunk_elements = args.chunk_elements or DEFAULT_CHUNK_ELEMENTS
    options = EncouragingLossOptions(label_smoothing=args.label_smoothing, log_end=args.log_end)
    if impl == "fused-projection":
        def step(hidden, weight):
            return linear_encouraging_loss(hidden, weight, target, options, ignore_index=PAD, reduction="sum",
                                           with_stats=True, chunk_elements=chunk_elements,
                                           block_elements=args.block_elements).loss
        return step
    if impl == "proj-fused":  # as the criterion runs it without --el-fuse-projection
        def step(hidden, weight):
            return encouraging_loss(hidden @ weight.T, target, options, ignore_index=PAD, reduction="sum",
                                    with_stats=True, overwrite_logits=True, chunk_elements=chunk_elements).loss
        return step

    overwrite = impl == "fused-overwrite"

    def step(logits):
        # with_stats as the fairseq criterion runs it
        return encouraging_loss(logits, target, options, ignore_index=PAD, reduction="sum",
                                impl="fused" if overwrite else impl, with_stats=True,
                                overwrite_logits=overwrite, chunk_elements=chunk_elements).loss
    return step


def _decoder_output():
    import torch

    class DecoderOutput(torch.autograd.Function):
        """Stands in for a decoder's output layer: a non-leaf with memory of its own, whose backward
        allocates nothing (a real output projection's input gradient is only tokens x model width)."""

        @staticmethod
        def forward(ctx, logits):
            return logits.clone()

        @staticmethod
        def backward(ctx, grad):
            return None

    return DecoderOutput


class PeakMemory:
    """Peak memory above the level at reset(), in MB (CPU: resident set; CUDA: allocated)."""

    def __init__(self, device):
        self.device = device

    def synchronize(self):
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize()

    def reset(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = _proc_status_kb("VmRSS")
        try:  # "5" resets VmHWM to the current resident set (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError as error:
            raise SystemExit(f"cannot reset the peak resident set through /proc/self/clear_refs: {error}")

    def peak_mb(self):
        import torch

        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_proc_status_kb("VmHWM") - self.base) / 1024


def _proc_status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"/proc/self/status has no {field}: peak memory on CPU needs Linux")


def bandwidth_floor_seconds(logits, repeats):
    """Median time of one read of the logits and one write of a tensor of the same size."""
    import torch

    out = torch.empty_like(logits)
    out.copy_(logits)
    times = []
    for _ in range(max(repeats, 3)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out.copy_(logits)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_table(rows):
    def key(r):
        return r["device"], r["dtype"], r["tokens"], r["vocab"], r.get("hidden"), baseline_of(r["impl"])

    baseline = {key(r): r for r in rows if r["impl"] in BASELINES and "peak_mb" in r}
    with_floor = any(r.get("floor_s") for r in rows)
    projection = any(r.get("hidden") for r in rows)
    baseline_name = "baseline" if projection else "LS-CE"
    header = ["device", "dtype", "tokens x vocab" + (" x hidden" if projection else ""), "implementation", "time (s)",
              f"time / {baseline_name}", "peak (MB)", f"peak / {baseline_name}"]
    if with_floor:
        header.append("floor share")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        base = baseline.get(key(r))
        size = f"{r['tokens']} x {r['vocab']}" + (f" x {r['hidden']}" if r.get("hidden") else "")
        cells = [r["device"], r["dtype"], size, IMPL_TITLES[r["impl"]]]
        if "error" in r:
            cells += [r["error"]] + [""] * (len(header) - 5)
        else:
            time_ratio = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "-"
            memory_ratio = f"{r['peak_mb'] / base['peak_mb']:.2f}" if base and base["peak_mb"] > 0 else "-"
            cells += [f"{r['median_s']:.3f}", time_ratio, f"{r['peak_mb']:.0f}", memory_ratio]
            if with_floor:
                cells.append(f"{r['floor_s'] / r['median_s']:.0%}" if r.get("floor_s") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""The encouraging loss in one streaming sweep over the logits, chunk by chunk, in plain PyTorch.

Per chunk of rows it computes max and logsumexp, the loss parts, the diagnostics and the gradient
while the chunk is hot in the cache, and keeps only the gradient (in the logits' dtype) for
backward: no float32 copy of the whole logits, no saved log-probabilities. Runs on any device; it
is the CPU back end.

Speed comes from (1) few full-width passes per chunk (about a dozen, over data already in the
cache) into work buffers allocated once per call, with every per-row factor folded before the
pass that uses it; (2) one exp per element and no log: for the usual log bonus, when no
non-target p in the chunk exceeds LE, sum_j log(1 - p_j) is the log of a product (no clamp, no
tangent, no per-element log); (3) on CPU, chunks spread over single-threaded workers rather than
splitting every small op across OpenMP threads; (4) the loss parts formed once for all rows
from per-row sums after the sweep.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import torch

from ..bonus import bonus_value_and_slope
from ..options import OptionError, bonus_weights, smoothing_weights
from .rows import FP16_GRAD_HEADROOM, MAX_GRAD_ROW_SCALE, RowSums, needs_exact_top, target_terms

# Elements per chunk: large enough that PyTorch's per-op overhead is amortised, small enough that
# the chunk's three work buffers (2 MB each in float32) stay in the CPU's caches. The per-op overhead
# runs in Python, under the GIL, so with two workers smaller chunks serialise: 2^17 took 1.1-1.2x
# LS-CE's time where 2^19 took 0.77-0.86x (2-core Intel Xeon, 4096 and 16384 x 8000; see
# benchmarks/bench_loss.py --chunk-elements).
DEFAULT_CHUNK_ELEMENTS = 1 << 19


def chunked_sweep(logits, index, options, sums: RowSums, grad=None, grad_weight=None, grad_row_scale=None,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """Fills ``sums`` for all rows of (N, V) ``logits`` and, when ``grad`` is given, writes the gradient
    (rows weighted by ``grad_weight``; fp16 rows scaled by a power of two recorded in ``grad_row_scale``).
    ``index`` (N, 1) holds the targets, 0 on ignored rows. Runs on any device."""
    if chunk_elements < 1:
        raise OptionError("chunk_elements", ">= 1", chunk_elements)
    rows, vocab = logits.shape
    math_dtype = sums.others_sum.dtype
    step = max(1, min(rows, chunk_elements // max(vocab, 1)))
    staging = grad is not None and grad.dtype != math_dtype

    def make_workspace():
        return _Workspace(step, vocab, math_dtype, logits.device, staging)

    def process(start, work):
        end = min(rows, start + step)
        _chunk(logits[start:end], index[start:end], options, work, sums.rows(start, end),
               None if grad is None else (grad[start:end], grad_weight[start:end]),
               None if grad_row_scale is None else grad_row_scale[start:end])

    _run_chunks(range(0, rows, step), process, make_workspace, logits.device)


def _run_chunks(starts, process, make_workspace, device):
    """Runs ``process(start, workspace)`` for every chunk start.

    On a multi-core CPU the chunks go to a pool of single-threaded workers, one workspace each,
    that take the next chunk when done: a chunk's ops are too small for OpenMP's fork/join per op
    to pay off, and when the machine is shared every barrier waits for a descheduled thread.
    """
    workers = min(len(starts), torch.get_num_threads()) if device.type == "cpu" else 1
    if workers <= 1:
        work = make_workspace()
        for start in starts:
            process(start, work)
        return
    pending = iter(starts)
    lock = threading.Lock()

    def drain():
        work = make_workspace()
        with torch.no_grad():  # grad mode is per thread; the caller's forward runs without it
            while True:
                with lock:
                    start = next(pending, None)
                if start is None:
                    return
                process(start, work)

    main_threads = torch.get_num_threads()
    try:
        for future in [_worker_pool(workers).submit(drain) for _ in range(workers)]:
            future.result()
    finally:
        # A worker's torch.set_num_threads(1) also changes the default that new threads start
        # with; put it back (the setting of this thread itself is per thread and unchanged).
        torch.set_num_threads(main_threads)


_POOL: Optional[ThreadPoolExecutor] = None


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="encouraging-loss",
                                   initializer=_single_threaded)
    return _POOL


def _single_threaded():
    torch.get_num_threads()  # lets ATen initialise this thread's settings first, so they stick
    torch.set_num_threads(1)


class _Workspace:
    """Chunk-sized buffers reused by every chunk, so the sweep allocates nothing full-width."""

    def __init__(self, rows, vocab, dtype, device, staging):
        def buffer():
            return torch.empty((rows, vocab), dtype=dtype, device=device)

        self.dtype = dtype
        self.exps, self.aux, self.slope = buffer(), buffer(), buffer()
        self.grad = buffer() if staging else None  # math-dtype gradient before rounding to fp16/bf16


def _chunk(logits, index, options, work, sums, grad_and_weight, grad_row_scale):
    """Fills ``sums`` for a chunk of rows and, when asked, writes its gradient (weighted per row)."""
    rows, vocab = logits.shape
    # The row max is exact in any dtype; subtracting it in the math dtype upcasts half logits on the fly.
    exps = torch.sub(logits, logits.amax(-1, keepdim=True).to(work.dtype), out=work.exps[:rows])
    torch.sum(exps, -1, out=sums.shifted_sum)
    torch.gather(exps, -1, index, out=sums.target_shifted.unsqueeze(-1))
    # Masking the target out gives the others' max (for the margin) and the others' exp-sum, from
    # which 1 - p_y is exact even when p_y rounds to 1. The others' max is the row max unless the
    # target holds it, so the max pass is needed only for rows that the model gets right.
    exps.scatter_(-1, index, float("-inf"))
    if bool((sums.target_shifted == 0).any()):
        torch.amax(exps, -1, out=sums.others_max)
    exps.exp_()  # the target entry is 0 from here on, where b and p b' of the others vanish
    torch.sum(exps, -1, out=sums.others_sum)
    target = target_terms(sums.target_shifted, sums.others_sum, options)

    slope_part = slope_factor = top = None
    if options.bonus_smoothing != 0.0:
        plain_log = options.bonus == "log" and options.bonus_start == 0.0
        # With LE >= 1/2 the only class other than the target that can pass LE is a p > 1/2 (there
        # is at most one): taken out below, it leaves a chunk the product path can sweep.
        take_top = plain_log and options.clamped_log_end >= 0.5
        if take_top or needs_exact_top(options, vocab):
            top = _take_confident_top(exps, target, sums, options)
        below_end = take_top or (plain_log and bool((sums.others_max.exp() * target.inv_total
                                                     <= options.clamped_log_end).all()))
        bonus_sum, slope_part, slope_factor = _others_bonus(exps, target.inv_total, options, work, below_end)
        if top is not None:
            bonus_sum = bonus_sum + top.bonus
        sums.others_bonus.copy_(bonus_sum)
    if grad_and_weight is None:
        return
    grad, weight = grad_and_weight

    # dL/dz_k = weight * [p_k (1 - rho S) + rho w_k g_k - q_k], S = sum_j w_j g_j, g = p b'(p),
    # q the smoothed target. Per-row factors are formed first so that each term is one pass.
    nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
    target_weight, others_weight = bonus_weights(options, vocab)
    rho = options.bonus_rho
    rest_slope = 0.0 if slope_part is None else slope_factor * slope_part.sum(-1)
    others_slope = others_weight * (rest_slope if top is None else rest_slope + top.slope)
    probs_factor = 1.0 - rho * (target_weight * target.slope + others_slope)
    chunk_grad = work.grad[:rows] if work.grad is not None else grad
    # -q_k + p_k (1 - rho S): a multiply and an in-place add (an out-of-place addcmul with a broadcast
    # per-row base took about three times as long on CPU, measured with 16 x 8000 chunks)
    torch.mul(exps, (probs_factor * target.inv_total * weight).unsqueeze(-1), out=chunk_grad)
    if smooth_weight != 0.0:
        chunk_grad.sub_((smooth_weight * weight).unsqueeze(-1))
    if rho != 0.0 and slope_part is not None:
        chunk_grad.addcmul_(slope_part, (rho * others_weight * slope_factor * weight).unsqueeze(-1))
    # The target's own entry p_y (1 - rho S) + rho w_y g_y, regrouped as
    # p_y (1 - rho S_others) + rho w_y g_y (1 - p_y): near p_y = 1, g_y = p_y b'(p_y) reaches
    # -2^24 (LE = 1), and 1 - rho S would lose p_y to rounding; 1 - p_y is exact from the others' sum.
    one_minus_prob = sums.others_sum * target.inv_total
    target_grad = (target.prob * (1.0 - rho * others_slope) + rho * target_weight * target.slope * one_minus_prob
                   - nll_weight - smooth_weight) * weight
    chunk_grad.scatter_(-1, index, target_grad.unsqueeze(-1))
    if top is not None:  # the same regrouping for a non-target class with p > 1/2 (its entry was 0 above)
        top_grad = (top.prob * (1.0 - rho * (target_weight * target.slope + others_weight * rest_slope))
                    + rho * others_weight * top.slope * top.one_minus_prob - smooth_weight) * weight
        current = chunk_grad.gather(-1, top.index).squeeze(-1)
        chunk_grad.scatter_(-1, top.index, torch.where(top.confident, top_grad, current).unsqueeze(-1))
    if grad_row_scale is not None:
        peak = chunk_grad.abs().amax(-1).clamp_min(1e-30)
        scale = torch.exp2(torch.floor(torch.log2(FP16_GRAD_HEADROOM / peak))).clamp(1.0, MAX_GRAD_ROW_SCALE)
        chunk_grad.mul_(scale.unsqueeze(-1))
        grad_row_scale.copy_(scale)
    if chunk_grad is not grad:
        grad.copy_(chunk_grad)


class _ConfidentTop(NamedTuple):
    """Per row: the class other than the target with p > 1/2 (``confident``), and its exact terms."""
    confident: torch.Tensor
    index: torch.Tensor  # (rows, 1)
    prob: torch.Tensor
    one_minus_prob: torch.Tensor
    bonus: torch.Tensor  # b(p), 0 where not confident
    slope: torch.Tensor  # p b'(p), 0 where not confident


def _take_confident_top(exps, target, sums, options) -> Optional[_ConfidentTop]:
    """Removes from ``exps`` (unnormalised, target entry 0) each row's class other than the target with
    p > 1/2, if any, and returns its terms from the exact 1 - p = (e_y + sum of the rest) / total; None
    when no row has one. Such a class is the row max (exps 1) and unique: a second would halve it."""
    prob = sums.others_max.exp() * target.inv_total
    confident = prob > 0.5
    if not bool(confident.any()):
        return None
    index = exps.argmax(-1, keepdim=True)
    exps.scatter_(-1, index, torch.where(confident, 0.0, exps.gather(-1, index).squeeze(-1)).unsqueeze(-1))
    one_minus_prob = (sums.target_shifted.exp() + exps.sum(-1)) * target.inv_total
    bonus, slope = bonus_value_and_slope(prob, one_minus_prob, options)
    zero = torch.zeros((), dtype=prob.dtype, device=prob.device)
    return _ConfidentTop(confident, index, prob, one_minus_prob, torch.where(confident, bonus, zero),
                         torch.where(confident, slope, zero))


def _others_bonus(exps, inv_total, options, work, below_end):
    """sum_{j != y} b(p_j) and p_j b'(p_j) = factor * part_j (a per-row factor times a full-width
    part) of a chunk, from its unnormalised exps exp(z_j - m) whose target entry is 0.
    ``below_end``: the bonus is the plain log one and no p_j left in ``exps`` exceeds LE."""
    rows = exps.size(0)
    neg_inv_total = inv_total.neg()
    if below_end:
        # Every p_j is on the log(1 - p) side of LE: no clamp, no tangent, and sum_j log(1 - p_j)
        # is the log of one product, which cannot underflow: at most one p_j exceeds 1/2 (and it
        # is <= LE <= 1 - 2^-24), the others give a product >= exp(-2 log 2 sum p) >= 1/4.
        one_minus_p = torch.mul(exps, neg_inv_total.unsqueeze(-1), out=work.aux[:rows]).add_(1.0)
        exps_over_one_minus_p = torch.div(exps, one_minus_p, out=work.slope[:rows])
        return one_minus_p.prod(-1).log_(), exps_over_one_minus_p, neg_inv_total  # g = -p / (1 - p)
    probs = torch.mul(exps, inv_total.unsqueeze(-1), out=work.aux[:rows])
    value, slope = bonus_value_and_slope(probs, 1.0 - probs, options)
    return value.sum(-1), slope, 1.0

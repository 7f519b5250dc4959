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
from ..options import MAX_LOG_END, EncouragingLossOptions, smoothing_weights
from ..stats import RowTerms, token_stats

# Elements per chunk: large enough that PyTorch's per-op overhead is amortised, small enough that
# the chunk's three work buffers stay in the CPU's cache (see scripts/bench_loss.py --chunk-elements).
DEFAULT_CHUNK_ELEMENTS = 1 << 17
SWEEPS = ("chunked", "triton")
# What a sweep leaves per row (logits shifted by the row max z - m): sum_j (z_j - m), z_y - m,
# max_{j != y} z_j - m, sum_{j != y} exp(z_j - m), sum_{j != y} b(p_j).
_ROW_SUMS = ("shifted_sum", "target_shifted", "others_max", "others_sum", "others_bonus")
# fp16 gradients are stored scaled by a power of two per row (block floating point) so that small
# entries such as eps / (V - 1) do not flush to zero before the loss scaler multiplies them.
FP16_GRAD_HEADROOM = 2.0**14


def fused_row_terms(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    options: EncouragingLossOptions, row_weight: Optional[torch.Tensor] = None,
                    with_stats: bool = True, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                    sweep: str = "chunked", overwrite_logits: bool = False) -> RowTerms:
    """Loss parts of (N, V) logits, backpropagating through a gradient computed in the forward sweep.

    With ``row_weight`` (a 0-dim tensor: 1 for a sum, 1/n for a mean) ``loss`` is already reduced,
    sum_i row_weight * loss_i, and backward is one multiply by the upstream scalar. Without it
    ``loss`` is per row (N,) and backward weights each row by its upstream gradient.
    ``sweep``: 'chunked' (PyTorch ops, any device) or 'triton' (ops/triton_kernel.py), the part
    that streams over the logits; everything else is shared.
    ``overwrite_logits``: the caller will not read ``logits`` again (see ``encouraging_loss``).
    """
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {', '.join(SWEEPS)}, got {sweep!r}")
    holder = {}
    loss = _FusedEncouragingLoss.apply(logits, target, valid, options, row_weight, with_stats,
                                       chunk_elements, sweep, overwrite_logits, holder)
    return RowTerms(loss=loss, nll=holder["nll"], ce=holder["ce"], bonus=holder["bonus"],
                    stats=holder.get("stats"))


class _FusedEncouragingLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, valid, options, row_weight, with_stats, chunk_elements, sweep,
                overwrite_logits, holder):
        rows, vocab = logits.shape
        device = logits.device
        math_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        contiguous = logits.contiguous()
        grad = grad_row_scale = grad_weight = None
        ctx.consumes_gradient = False
        if ctx.needs_input_grad[0]:
            # Every sweep reads a row's logits before it writes the row's gradient, so the
            # gradient can take the logits' place: always in a copy made here, and in the caller's
            # tensor when it is done with it. A detached alias shares the version counter, so a
            # graph that saved these logits elsewhere fails loudly in backward instead of reading
            # a gradient; a leaf's memory (a parameter, a user's input) is never taken.
            if contiguous is not logits:
                grad = contiguous
            elif overwrite_logits and not _is_leaf_memory(logits):
                grad = logits.detach()
                ctx.consumes_gradient = True
            else:
                grad = torch.empty((rows, vocab), dtype=logits.dtype, device=device)
            if logits.dtype == torch.float16:
                grad_row_scale = torch.ones(rows, dtype=torch.float32, device=device)
            grad_weight = valid.to(math_dtype)
            if row_weight is not None:
                grad_weight = grad_weight * row_weight.to(math_dtype)
        index = target.masked_fill(~valid, 0).unsqueeze(-1)
        sums = {name: torch.zeros(rows, dtype=math_dtype, device=device) for name in _ROW_SUMS}

        if sweep == "triton":
            from .triton_kernel import triton_sweep
            triton_sweep(contiguous, index, options, sums, grad, grad_weight, grad_row_scale)
        else:
            _chunked_sweep(contiguous, index, options, sums, grad, grad_weight, grad_row_scale, chunk_elements)

        # The loss parts, for all rows at once from the per-row sums.
        nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
        target_weight, others_weight = _bonus_weights(options, vocab)
        target_terms = _target_terms(sums["target_shifted"], sums["others_sum"], options)
        nll = -target_terms.lprob
        ce = nll_weight * nll - smooth_weight * (sums["shifted_sum"] - vocab * target_terms.log_total)
        bonus = target_weight * target_terms.bonus + others_weight * sums["others_bonus"]
        zero = torch.zeros((), dtype=math_dtype, device=device)
        nll, ce, bonus = (torch.where(valid, part, zero) for part in (nll, ce, bonus))
        loss = ce + options.bonus_rho * bonus

        holder["nll"], holder["ce"], holder["bonus"] = nll, ce, bonus
        if with_stats:
            holder["stats"] = token_stats(target_terms.lprob, sums["target_shifted"] - sums["others_max"],
                                          valid, options)
        ctx.mark_non_differentiable(nll, ce, bonus)
        ctx.save_for_backward(grad, grad_row_scale)
        ctx.per_row = row_weight is None
        ctx.chunk_elements = chunk_elements
        return loss if ctx.per_row else (loss * row_weight).sum()

    @staticmethod
    def backward(ctx, grad_output):
        no_grads = (None,) * 9
        if getattr(ctx, "gradient_consumed", False):
            raise RuntimeError(
                "the fused encouraging loss was called with overwrite_logits=True, which keeps the "
                "gradient in the logits' memory and scales it in place: its graph can be backpropagated "
                "once only. Call it without overwrite_logits (criterion: --el-keep-logits) to replay it.")
        grad, grad_row_scale = ctx.saved_tensors
        # float64 gradients keep a float64 factor; half ones are scaled in float32 (rounded once).
        factor = grad_output.to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
        if grad_row_scale is not None:
            factor = factor / grad_row_scale
        if factor.dim() == 1:
            factor = factor.unsqueeze(-1)
        elif float(factor) == 1.0:
            return (grad,) + no_grads  # the common case (a sum, no loss scaling): no copy
        if ctx.consumes_gradient:
            ctx.gradient_consumed = True
            return _scale_rows(grad, factor, out=grad, chunk_elements=ctx.chunk_elements), *no_grads
        # Out of place otherwise: the graph may be retained and replayed (gradcheck does), so the
        # stored gradient must stay as the forward left it.
        return _scale_rows(grad, factor, out=torch.empty_like(grad), chunk_elements=ctx.chunk_elements), *no_grads


def _is_leaf_memory(tensor: torch.Tensor) -> bool:
    """True for a leaf tensor or a view of one: memory that the caller owns beyond this graph."""
    base = tensor._base if tensor._base is not None else tensor
    return tensor.is_leaf or base.is_leaf


def _scale_rows(grad, factor, out, chunk_elements):
    """out = grad * factor (factor (N, 1) or 0-dim, in the math dtype), rounded once to grad's dtype.

    CUDA kernels cast each element on the fly; on CPU a mixed-dtype multiply first makes a math-dtype
    copy of its input, so there the rows go through in chunks and that copy stays chunk-sized."""
    if grad.device.type != "cpu" or grad.dtype == factor.dtype:
        return torch.mul(grad, factor, out=out)
    rows, vocab = grad.shape
    step = max(1, chunk_elements // max(vocab, 1))
    for start in range(0, rows, step):
        end = min(rows, start + step)
        row_factor = factor[start:end] if factor.dim() else factor
        torch.mul(grad[start:end], row_factor, out=out[start:end])
    return out


def _chunked_sweep(logits, index, options, sums, grad, grad_weight, grad_row_scale, chunk_elements):
    rows, vocab = logits.shape
    math_dtype = sums["others_sum"].dtype
    step = max(1, min(rows, chunk_elements // max(vocab, 1)))
    staging = grad is not None and grad.dtype != math_dtype

    def make_workspace():
        return _Workspace(step, vocab, math_dtype, logits.device, staging)

    def process(start, work):
        end = min(rows, start + step)
        _chunk(logits[start:end], index[start:end], options, work,
               {name: part[start:end] for name, part in sums.items()},
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


class _TargetTerms(NamedTuple):
    log_total: torch.Tensor  # log sum_j exp(z_j - m)
    inv_total: torch.Tensor
    lprob: torch.Tensor  # log p_y
    prob: torch.Tensor  # p_y
    bonus: torch.Tensor  # b(p_y)
    slope: torch.Tensor  # p_y b'(p_y)


def _target_terms(target_shifted, others_sum, options) -> _TargetTerms:
    """Per-row terms of the target class; 1 - p_y comes from the others' sum, exact as p_y -> 1."""
    total = others_sum + target_shifted.exp()
    inv_total = total.reciprocal()
    log_total = total.log()
    prob = target_shifted.exp() * inv_total
    bonus, slope = bonus_value_and_slope(prob, others_sum * inv_total, options)
    return _TargetTerms(log_total, inv_total, target_shifted - log_total, prob, bonus, slope)


def _bonus_weights(options, vocab):
    """(w_y, w_j for j != y) of the bonus bracket (1 - eps_b) b(p_y) + eps_b / V sum_j b(p_j)."""
    others_weight = options.bonus_smoothing / vocab
    return 1.0 - options.bonus_smoothing + others_weight, others_weight


def _chunk(logits, index, options, work, sums, grad_and_weight, grad_row_scale):
    """Fills ``sums`` for a chunk of rows and, when asked, writes its gradient (weighted per row)."""
    rows, vocab = logits.shape
    # The row max is exact in any dtype; subtracting it in the math dtype upcasts half logits on the fly.
    exps = torch.sub(logits, logits.amax(-1, keepdim=True).to(work.dtype), out=work.exps[:rows])
    torch.sum(exps, -1, out=sums["shifted_sum"])
    torch.gather(exps, -1, index, out=sums["target_shifted"].unsqueeze(-1))
    # Masking the target out gives the others' max (for the margin) and the others' exp-sum, from
    # which 1 - p_y is exact even when p_y rounds to 1. The others' max is the row max unless the
    # target holds it, so the max pass is needed only for rows that the model gets right.
    exps.scatter_(-1, index, float("-inf"))
    if bool((sums["target_shifted"] == 0).any()):
        torch.amax(exps, -1, out=sums["others_max"])
    exps.exp_()  # the target entry is 0 from here on, where b and p b' of the others vanish
    torch.sum(exps, -1, out=sums["others_sum"])
    target = _target_terms(sums["target_shifted"], sums["others_sum"], options)

    slope_part = slope_factor = None
    if options.bonus_smoothing != 0.0:
        bonus_sum, slope_part, slope_factor = _others_bonus(exps, target.inv_total, sums["others_max"],
                                                            options, work)
        sums["others_bonus"].copy_(bonus_sum)
    if grad_and_weight is None:
        return
    grad, weight = grad_and_weight

    # dL/dz_k = weight * [p_k (1 - rho S) + rho w_k g_k - q_k], S = sum_j w_j g_j, g = p b'(p),
    # q the smoothed target. Per-row factors are formed first so that each term is one pass.
    nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
    target_weight, others_weight = _bonus_weights(options, vocab)
    rho = options.bonus_rho
    slope_sum = target_weight * target.slope
    if slope_part is not None:
        slope_sum = slope_sum + others_weight * slope_factor * slope_part.sum(-1)
    probs_factor = 1.0 - rho * slope_sum
    chunk_grad = work.grad[:rows] if work.grad is not None else grad
    torch.mul(exps, (probs_factor * target.inv_total * weight).unsqueeze(-1), out=chunk_grad)
    if rho != 0.0 and slope_part is not None:
        chunk_grad.addcmul_(slope_part, (rho * others_weight * slope_factor * weight).unsqueeze(-1))
    chunk_grad.sub_((smooth_weight * weight).unsqueeze(-1))
    target_grad = (target.prob * probs_factor + rho * target_weight * target.slope
                   - nll_weight - smooth_weight) * weight
    chunk_grad.scatter_(-1, index, target_grad.unsqueeze(-1))
    if grad_row_scale is not None:
        peak = chunk_grad.abs().amax(-1).clamp_min(1e-30)
        scale = torch.exp2(torch.floor(torch.log2(FP16_GRAD_HEADROOM / peak))).clamp(1.0, 2.0**40)
        chunk_grad.mul_(scale.unsqueeze(-1))
        grad_row_scale.copy_(scale)
    if chunk_grad is not grad:
        grad.copy_(chunk_grad)


def _others_bonus(exps, inv_total, others_max, options, work):
    """sum_{j != y} b(p_j) and p_j b'(p_j) = factor * part_j (a per-row factor times a full-width
    part) of a chunk, from its unnormalised exps exp(z_j - m) whose target entry is 0."""
    rows = exps.size(0)
    end = min(options.log_end, MAX_LOG_END)
    neg_inv_total = inv_total.neg()
    if (options.bonus == "log" and options.bonus_start == 0.0
            and bool((others_max.exp() * inv_total <= end).all())):
        # Every p_j is on the log(1 - p) side of LE: no clamp, no tangent, and sum_j log(1 - p_j)
        # is the log of one product, which cannot underflow: at most one p_j exceeds 1/2 (and it
        # is <= LE <= 1 - 2^-24), the others give a product >= exp(-2 log 2 sum p) >= 1/4.
        one_minus_p = torch.mul(exps, neg_inv_total.unsqueeze(-1), out=work.aux[:rows]).add_(1.0)
        exps_over_one_minus_p = torch.div(exps, one_minus_p, out=work.slope[:rows])
        return one_minus_p.prod(-1).log_(), exps_over_one_minus_p, neg_inv_total  # g = -p / (1 - p)
    probs = torch.mul(exps, inv_total.unsqueeze(-1), out=work.aux[:rows])
    value, slope = bonus_value_and_slope(probs, 1.0 - probs, options)
    return value.sum(-1), slope, 1.0

"""The fused sweep as a Triton kernel for CUDA: fp16/bf16/fp32 logits, float32 math, any vocabulary.

One program per row streams over the row in BLOCK-wide tiles three times: (1) online max and
the others' exp-sum, the others' max, the row sum; (2) sum_j b(p_j) and S = sum_j w_j p_j b'(p_j)
with the row's logsumexp now known; (3) the gradient, written once in the logits' dtype. Passes
2 and 3 re-read a row that pass 1 has just brought into L2, so DRAM sees about one read of the
logits and one write of the gradient, the bandwidth floor. It fills the same per-row sums as the
chunked PyTorch sweep (rows.RowSums); the loss parts, diagnostics and backward are
shared with it (rows.py, fused.py). fp16 gradients get a per-row power-of-two scale chosen from an upper bound of
the row's largest entry, which is known before pass 3 writes anything.
Pass 3 reads each tile before it writes the tile's gradient, so the gradient may take the
logits' place (``overwrite_logits``).

Importable without Triton; ``triton_available()`` is True only with CUDA and Triton. The kernel
also runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1), which is how the tests
check it on machines without a GPU.
"""
from __future__ import annotations

import math

import torch

try:  # the kernels are defined only where Triton is installed
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

from ..bonus import bonus_offset
from ..options import bonus_weights, smoothing_weights
from .rows import FP16_GRAD_HEADROOM, MAX_GRAD_ROW_SCALE, RowSums, needs_exact_top

BONUS_CODES = {"log": 0, "power": 1, "cosine": 2}
# Tile width in elements: wide enough for full-width vector loads, small enough for registers.
MAX_BLOCK = 4096


def triton_available() -> bool:
    """True when the Triton back end can run on a GPU here."""
    return triton is not None and torch.cuda.is_available()


def triton_sweep(logits, index, options, sums, grad, grad_weight, grad_row_scale):
    """Fills ``sums`` (float32) and, when ``grad`` is given, writes the gradient, for all rows."""
    rows, vocab = logits.shape
    if rows == 0:
        return
    if any(part.dtype != torch.float32 for part in sums):
        raise TypeError("the Triton sweep computes in float32; float64 logits take the chunked sweep")
    if triton is None:
        raise RuntimeError("the Triton sweep needs the triton package (pip install triton)")
    nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
    target_weight, others_weight = bonus_weights(options, vocab)
    with_grad = grad is not None
    dummy = sums.others_sum  # stands in for the pointers a launch without gradient ignores
    block = min(MAX_BLOCK, _next_power_of_two(vocab))
    _encouraging_rows[(rows,)](
        logits, index.reshape(-1), grad_weight if with_grad else dummy, grad if with_grad else dummy,
        grad_row_scale if grad_row_scale is not None else dummy,
        *sums,
        vocab, logits.stride(0),
        nll_weight, smooth_weight, target_weight, others_weight, options.bonus_rho,
        options.clamped_log_end, options.bonus_gamma, options.bonus_start,
        float(bonus_offset(options)) if options.bonus_start > 0 else 0.0,  # read only with HAS_START
        FP16_GRAD_HEADROOM, MAX_GRAD_ROW_SCALE,
        BONUS=BONUS_CODES[options.bonus], HAS_START=options.bonus_start > 0, OTHERS=others_weight != 0.0,
        WITH_GRAD=with_grad, ROW_SCALE=grad_row_scale is not None,
        EXACT_TOP=others_weight != 0.0 and needs_exact_top(options, vocab), BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if triton is not None:
    _PI = tl.constexpr(math.pi)

    @triton.jit
    def _bonus_and_slope(p, one_minus_p, log_end, gamma, start, offset,
                        BONUS: tl.constexpr, HAS_START: tl.constexpr):
        # b(p) and p b'(p), as bonus.bonus_value_and_slope; both are 0 at p = 0.
        if BONUS == 0:  # log(1 - p) up to LE, then its tangent
            clamped = tl.maximum(one_minus_p, 1.0 - log_end)
            # the tangent from 1 - p, known more precisely than p near 1 (as bonus.py)
            value = tl.log(clamped) - tl.maximum(1.0 - one_minus_p / (1.0 - log_end), 0.0)
            slope = -p / clamped
        elif BONUS == 1:  # -p^gamma
            power = tl.where(p > 0.0, tl.exp(gamma * tl.log(tl.maximum(p, 1e-38))), 0.0)
            value = -power
            slope = -gamma * power
        else:  # cos(pi p) - 1
            value = tl.cos(p * _PI) - 1.0
            slope = -_PI * p * tl.sin(p * _PI)
        if HAS_START:
            on = p >= start
            value = tl.where(on, value - offset, 0.0)
            slope = tl.where(on, slope, 0.0)
        return value, slope

    @triton.jit
    def _encouraging_rows(
        logits_ptr, index_ptr, weight_ptr, grad_ptr, scale_ptr,
        shifted_sum_ptr, target_shifted_ptr, others_max_ptr, others_sum_ptr, others_bonus_ptr,
        vocab, row_stride,
        nll_weight, smooth_weight, target_weight, others_weight, rho,
        log_end, gamma, start, offset, headroom, max_scale,
        BONUS: tl.constexpr, HAS_START: tl.constexpr, OTHERS: tl.constexpr,
        WITH_GRAD: tl.constexpr, ROW_SCALE: tl.constexpr, EXACT_TOP: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_logits = logits_ptr + row * row_stride
        target = tl.load(index_ptr + row)
        lanes = tl.arange(0, BLOCK)

        # Pass 1: the row max m (online), sum_{j != y} exp(z_j - m), max_{j != y} z_j, sum_j z_j.
        row_max = float("-inf")
        others_exp_sum = 0.0
        others_max = float("-inf")
        row_sum = 0.0
        for tile in range(0, vocab, BLOCK):
            cols = tile + lanes
            inside = cols < vocab
            z = tl.load(row_logits + cols, mask=inside, other=float("-inf")).to(tl.float32)
            others = tl.where(cols == target, float("-inf"), z)
            new_max = tl.maximum(row_max, tl.max(z, axis=0))
            # While every logit so far is -inf (masked classes) the shift is 0, not -inf - -inf = nan.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            others_exp_sum = (others_exp_sum * tl.exp(row_max - shift)
                              + tl.sum(tl.exp(others - shift), axis=0))
            others_max = tl.maximum(others_max, tl.max(others, axis=0))
            row_sum += tl.sum(tl.where(inside, z, 0.0), axis=0)
            row_max = new_max
        target_shifted = tl.load(row_logits + target).to(tl.float32) - row_max
        target_exp = tl.exp(target_shifted)
        inv_total = 1.0 / (others_exp_sum + target_exp)

        # Pass 2: sum_{j != y} b(p_j), sum_{j != y} p_j b'(p_j) and its largest magnitude.
        # With EXACT_TOP (rows.needs_exact_top), a class other than the target with p > 1/2 is left
        # out of the sums and added after them from its exact 1 - p = (e_y + the rest's exp-sum) / total.
        others_bonus = 0.0
        others_slope = 0.0
        others_slope_peak = 0.0
        top_prob = tl.exp(others_max - row_max) * inv_total
        confident = EXACT_TOP & (top_prob > 0.5)  # then unique, and the row max
        rest_exp_sum = 0.0
        if OTHERS:
            for tile in range(0, vocab, BLOCK):
                cols = tile + lanes
                inside = cols < vocab
                z = tl.load(row_logits + cols, mask=inside, other=float("-inf")).to(tl.float32)
                excluded = (cols == target) | (confident & (z == others_max))
                p = tl.where(excluded, 0.0, tl.exp(z - row_max) * inv_total)
                value, slope = _bonus_and_slope(p, 1.0 - p, log_end, gamma, start, offset, BONUS, HAS_START)
                others_bonus += tl.sum(value, axis=0)
                others_slope += tl.sum(slope, axis=0)
                others_slope_peak = tl.maximum(others_slope_peak, tl.max(tl.abs(slope), axis=0))
                if EXACT_TOP:
                    rest_exp_sum += tl.sum(tl.where(excluded, 0.0, tl.exp(z - row_max)), axis=0)
        rest_slope = others_slope
        top_one_minus_prob = (target_exp + rest_exp_sum) * inv_total
        top_slope = 0.0
        if EXACT_TOP:
            top_value, top_slope = _bonus_and_slope(top_prob, top_one_minus_prob, log_end, gamma, start, offset,
                                                    BONUS, HAS_START)
            top_value = tl.where(confident, top_value, 0.0)
            top_slope = tl.where(confident, top_slope, 0.0)
            others_bonus += top_value
            others_slope += top_slope
            others_slope_peak = tl.maximum(others_slope_peak, tl.abs(top_slope))

        tl.store(shifted_sum_ptr + row, row_sum - vocab * row_max)
        tl.store(target_shifted_ptr + row, target_shifted)
        tl.store(others_max_ptr + row, others_max - row_max)
        tl.store(others_sum_ptr + row, others_exp_sum)
        tl.store(others_bonus_ptr + row, others_bonus)

        if WITH_GRAD:
            # dL/dz_k = weight [p_k (1 - rho S) + rho w_k p_k b'(p_k) - q_k], as in chunked._chunk.
            weight = tl.load(weight_ptr + row)
            target_prob = target_exp * inv_total
            one_minus_target_prob = others_exp_sum * inv_total  # exact as p_y -> 1
            _, target_slope = _bonus_and_slope(target_prob, one_minus_target_prob, log_end,
                                               gamma, start, offset, BONUS, HAS_START)
            probs_factor = 1.0 - rho * (target_weight * target_slope + others_weight * others_slope)
            # p_y (1 - rho S) + rho w_y g_y regrouped as p_y (1 - rho S_others) + rho w_y g_y (1 - p_y),
            # as in chunked._chunk: 1 - rho S loses p_y when g_y is about -2^24 (LE = 1, p_y -> 1).
            target_grad = (target_prob * (1.0 - rho * others_weight * others_slope)
                           + rho * target_weight * target_slope * one_minus_target_prob
                           - nll_weight - smooth_weight) * weight
            scale = 1.0
            if ROW_SCALE:
                # An upper bound of the row's largest |entry|, from what passes 1-2 know.
                others_peak = tl.abs(weight) * (tl.exp(others_max - row_max) * inv_total * tl.abs(probs_factor)
                                                + rho * others_weight * others_slope_peak + smooth_weight)
                peak = tl.maximum(tl.maximum(tl.abs(target_grad), others_peak), 1e-30)
                scale = tl.minimum(tl.maximum(tl.exp2(tl.floor(tl.log2(headroom / peak))), 1.0), max_scale)
                tl.store(scale_ptr + row, scale)
            row_grad = grad_ptr + row * vocab
            for tile in range(0, vocab, BLOCK):
                cols = tile + lanes
                inside = cols < vocab
                z = tl.load(row_logits + cols, mask=inside, other=float("-inf")).to(tl.float32)
                p = tl.where(cols == target, 0.0, tl.exp(z - row_max) * inv_total)
                entry = p * probs_factor - smooth_weight
                if OTHERS:
                    value, slope = _bonus_and_slope(p, 1.0 - p, log_end, gamma, start, offset, BONUS, HAS_START)
                    entry += rho * others_weight * slope
                if EXACT_TOP:  # as for the target: p (1 - rho S_rest) + rho w g (1 - p), 1 - p exact
                    top_entry = (top_prob * (1.0 - rho * (target_weight * target_slope + others_weight * rest_slope))
                                 + rho * others_weight * top_slope * top_one_minus_prob - smooth_weight)
                    entry = tl.where(confident & (z == others_max) & (cols != target), top_entry, entry)
                entry = tl.where(cols == target, target_grad, entry * weight) * scale
                tl.store(row_grad + cols, entry.to(grad_ptr.dtype.element_ty), mask=inside)


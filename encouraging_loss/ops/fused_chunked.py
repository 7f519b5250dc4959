"""The encouraging loss in one streaming sweep over the logits, chunk by chunk, in plain PyTorch.

Per chunk of rows it computes max and logsumexp, the loss parts, the diagnostics and the gradient
while the chunk is hot, and keeps only the gradient (in the logits' dtype) for backward: no float32
copy of the whole logits, no saved log-probabilities. Runs on any device; it is the CPU back end.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..bonus import bonus_value_and_slope
from ..options import EncouragingLossOptions, smoothing_weights
from ..stats import RowTerms, token_stats

# Elements per chunk: large enough that PyTorch's per-op overhead is amortised, small enough that
# the chunk's few float32 temporaries stay in the CPU's cache.
DEFAULT_CHUNK_ELEMENTS = 1 << 18
# fp16 gradients are stored scaled by a power of two per row (block floating point) so that small
# entries such as eps / (V - 1) do not flush to zero before the loss scaler multiplies them.
FP16_GRAD_HEADROOM = 2.0**14


def fused_row_terms(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    options: EncouragingLossOptions, row_weight: Optional[torch.Tensor] = None,
                    with_stats: bool = True, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> RowTerms:
    """Loss parts of (N, V) logits, backpropagating through a gradient computed in the forward sweep.

    With ``row_weight`` (a 0-dim tensor: 1 for a sum, 1/n for a mean) ``loss`` is already reduced,
    sum_i row_weight * loss_i, and backward is one multiply by the upstream scalar. Without it
    ``loss`` is per row (N,) and backward weights each row by its upstream gradient.
    """
    holder = {}
    loss = _FusedEncouragingLoss.apply(logits, target, valid, options, row_weight, with_stats,
                                       chunk_elements, holder)
    return RowTerms(loss=loss, nll=holder["nll"], ce=holder["ce"], bonus=holder["bonus"],
                    stats=holder.get("stats"))


class _FusedEncouragingLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, valid, options, row_weight, with_stats, chunk_elements, holder):
        rows, vocab = logits.shape
        math_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        grad = grad_row_scale = None
        if ctx.needs_input_grad[0]:
            grad = torch.empty((rows, vocab), dtype=logits.dtype, device=logits.device)
            if logits.dtype == torch.float16:
                grad_row_scale = torch.ones(rows, dtype=torch.float32, device=logits.device)
        parts = {name: torch.zeros(rows, dtype=math_dtype, device=logits.device)
                 for name in ("loss", "nll", "ce", "bonus", "target_lprob", "margin")}

        step = max(1, chunk_elements // max(vocab, 1))
        for start in range(0, rows, step):
            end = min(rows, start + step)
            _chunk(logits[start:end], target[start:end], valid[start:end], options, math_dtype,
                   {name: part[start:end] for name, part in parts.items()},
                   None if grad is None else grad[start:end],
                   None if grad_row_scale is None else grad_row_scale[start:end], row_weight)

        holder["nll"], holder["ce"], holder["bonus"] = parts["nll"], parts["ce"], parts["bonus"]
        if with_stats:
            holder["stats"] = token_stats(parts["target_lprob"], parts["margin"], valid, options)
        ctx.mark_non_differentiable(parts["nll"], parts["ce"], parts["bonus"])
        # Kept on ctx, not save_for_backward: backward scales it in place (no second full tensor),
        # remembering the factor so that a repeated backward (retain_graph, gradcheck) stays right.
        ctx.grad, ctx.grad_row_scale, ctx.applied_factor = grad, grad_row_scale, None
        ctx.per_row = row_weight is None
        loss = parts["loss"]
        return loss if ctx.per_row else (loss * row_weight).sum()

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.grad
        math_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
        factor = grad_output.to(math_dtype)  # () for sum/mean, (N,) for 'none'
        if ctx.grad_row_scale is not None:
            factor = factor / ctx.grad_row_scale  # (N,)
        if ctx.per_row:
            # out of place: zero upstream rows (gradcheck's one-hot vectors) must not erase the gradient
            return ((grad.to(math_dtype) * factor.unsqueeze(-1)).to(grad.dtype),) + (None,) * 7
        previous = ctx.applied_factor
        if previous is not None and bool((previous == 0).any()):
            raise RuntimeError("the fused encouraging loss cannot backpropagate again after a zero "
                               "upstream gradient; use impl='reference'")
        step = factor if previous is None else factor / previous
        if step.dim():
            grad.mul_(step.unsqueeze(-1))
        elif float(step) != 1.0:
            grad.mul_(step)
        ctx.applied_factor = factor
        return (grad,) + (None,) * 7


def _chunk(logits, target, valid, options, math_dtype, out, grad, grad_row_scale, row_weight):
    vocab = logits.size(-1)
    nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
    eps_b, rho = options.bonus_smoothing, options.bonus_rho
    target_weight = 1.0 - eps_b + eps_b / vocab  # w_y; every other class has eps_b / V
    index = target.masked_fill(~valid, 0).unsqueeze(-1)

    shifted = logits.to(math_dtype)
    if shifted.data_ptr() == logits.data_ptr():
        shifted = shifted.clone()
    shifted.sub_(shifted.amax(-1, keepdim=True))
    shifted_sum = shifted.sum(-1)
    target_shifted = shifted.gather(-1, index).squeeze(-1)
    # Masking the target out gives the others' max (for the margin) and the others' exp-sum,
    # from which 1 - p_y is exact even when p_y rounds to 1.
    shifted.scatter_(-1, index, float("-inf"))
    others_max = shifted.amax(-1)
    probs = shifted.exp_()  # target entry is 0 from here on
    others_sum = probs.sum(-1)
    target_exp = target_shifted.exp()
    total = others_sum + target_exp
    log_total = total.log()
    target_lprob = target_shifted - log_total
    target_prob = target_exp / total
    target_one_minus_p = others_sum / total
    probs.div_(total.unsqueeze(-1))

    nll = -target_lprob
    ce = nll_weight * nll - smooth_weight * (shifted_sum - vocab * log_total)
    # b and p * b' of the non-target classes (the target's entry is p = 0, where both vanish) ...
    others_bonus, others_slope = bonus_value_and_slope(probs, 1.0 - probs, options)
    # ... and of the target, from its exact 1 - p.
    target_bonus, target_slope = bonus_value_and_slope(target_prob, target_one_minus_p, options)
    bonus = target_weight * target_bonus + (eps_b / vocab) * others_bonus.sum(-1)
    slope_sum = target_weight * target_slope + (eps_b / vocab) * others_slope.sum(-1)

    zero = torch.zeros((), dtype=math_dtype, device=logits.device)
    out["nll"].copy_(torch.where(valid, nll, zero))
    out["ce"].copy_(torch.where(valid, ce, zero))
    out["bonus"].copy_(torch.where(valid, bonus, zero))
    out["loss"].copy_(out["ce"] + rho * out["bonus"])
    out["target_lprob"].copy_(target_lprob)
    out["margin"].copy_(target_shifted - others_max)
    if grad is None:
        return

    # dL/dz_k = p_k (1 - rho S) + rho w_k g_k - q_k, with S = sum_j w_j g_j and q the smoothed target.
    chunk_grad = probs.mul_((1.0 - rho * slope_sum).unsqueeze(-1))
    if rho != 0.0 and eps_b != 0.0:
        chunk_grad.add_(others_slope, alpha=rho * eps_b / vocab)
    chunk_grad.sub_(smooth_weight)
    target_grad = (target_prob * (1.0 - rho * slope_sum) + rho * target_weight * target_slope
                   - nll_weight - smooth_weight)
    chunk_grad.scatter_(-1, index, target_grad.unsqueeze(-1))
    weight = valid.to(math_dtype)
    if row_weight is not None:
        weight = weight * row_weight.to(math_dtype)
    chunk_grad.mul_(weight.unsqueeze(-1))
    if grad_row_scale is not None:
        peak = chunk_grad.abs().amax(-1).clamp_min(1e-30)
        scale = torch.exp2(torch.floor(torch.log2(FP16_GRAD_HEADROOM / peak))).clamp(1.0, 2.0**40)
        chunk_grad.mul_(scale.unsqueeze(-1))
        grad_row_scale.copy_(scale)
    grad.copy_(chunk_grad)

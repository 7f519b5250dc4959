"""What every back end of the fused loss shares: constants, the per-row sums a sweep over the logits
leaves, and the assembly of the loss parts from them (the reference path assembles its parts here too).

A sweep (ops/chunked.py in PyTorch, ops/triton_kernel.py in Triton) fills ``RowSums`` for every row
and, when asked, writes the gradient; this module imports no back end.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..bonus import bonus_value_and_slope
from ..options import EncouragingLossOptions, bonus_weights, smoothing_weights
from ..stats import STAT_NAMES, RowTerms, token_stats

# fp16 gradients are stored scaled by a power of two per row (block floating point) so that small
# entries such as eps / (V - 1) do not flush to zero before the loss scaler multiplies them:
# the row's largest entry is scaled to about FP16_GRAD_HEADROOM, by at most MAX_GRAD_ROW_SCALE
# (a row of tiny entries, e.g. padding, needs no more and must stay finite in float32).
FP16_GRAD_HEADROOM = 2.0**14
MAX_GRAD_ROW_SCALE = 2.0**40


def needs_exact_top(options, vocab: int) -> bool:
    """Whether a class other than the target with p near 1 needs its 1 - p to full relative precision.

    Its b and g = p b'(p) carry 1 - p's rounding (about 2^-24) divided by 1 - min(p, LE), weighted by
    w_j = eps_b / V: negligible unless LE is near 1 (the plain bonus) with bonus smoothing. Only the
    log bonus divides by 1 - p; power and cosine slopes are bounded."""
    others_weight = bonus_weights(options, vocab)[1]
    return options.bonus == "log" and others_weight > 1.0 - options.clamped_log_end


class RowSums(NamedTuple):
    """Per-row results of a sweep, on logits shifted by the row max m (z - m)."""

    shifted_sum: torch.Tensor  # sum_j (z_j - m)
    target_shifted: torch.Tensor  # z_y - m
    others_max: torch.Tensor  # max_{j != y} z_j - m
    others_sum: torch.Tensor  # sum_{j != y} exp(z_j - m)
    others_bonus: torch.Tensor  # sum_{j != y} b(p_j)

    @classmethod
    def zeros(cls, rows: int, dtype: torch.dtype, device) -> "RowSums":
        return cls(*(torch.zeros(rows, dtype=dtype, device=device) for _ in cls._fields))

    def rows(self, start: int, end: int) -> "RowSums":
        return RowSums(*(part[start:end] for part in self))


class TargetTerms(NamedTuple):
    log_total: torch.Tensor  # log sum_j exp(z_j - m)
    inv_total: torch.Tensor
    lprob: torch.Tensor  # log p_y
    prob: torch.Tensor  # p_y
    bonus: torch.Tensor  # b(p_y)
    slope: torch.Tensor  # p_y b'(p_y)


def target_terms(target_shifted, others_sum, options: EncouragingLossOptions) -> TargetTerms:
    """Per-row terms of the target class; 1 - p_y comes from the others' sum, exact as p_y -> 1."""
    total = others_sum + target_shifted.exp()
    inv_total = total.reciprocal()
    log_total = total.log()
    prob = target_shifted.exp() * inv_total
    bonus, slope = bonus_value_and_slope(prob, others_sum * inv_total, options)
    return TargetTerms(log_total, inv_total, target_shifted - log_total, prob, bonus, slope)


def combine_row_parts(nll, lprob_sum, target_bonus, others_bonus, valid, options: EncouragingLossOptions,
                      vocab: int):
    """(loss, nll, ce, bonus) per row from -log p_y, sum_j log p_j, b(p_y) and sum_{j != y} b(p_j);
    rows where ``valid`` is False give zeros. Differentiable when its inputs are."""
    nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
    ce = nll_weight * nll
    if smooth_weight != 0.0:  # skipped, not multiplied by 0: sum_j log p_j is -inf under masked (-inf) logits
        # and kept -inf even where a tiny weight rounds to 0 in the math dtype (0 * -inf would be NaN)
        smoothing_term = smooth_weight * lprob_sum
        ce = ce - torch.where(smoothing_term.isnan(), float("-inf"), smoothing_term)
    target_weight, others_weight = bonus_weights(options, vocab)
    bonus = target_weight * target_bonus
    if others_weight != 0.0:
        bonus = bonus + others_weight * others_bonus
    zero = torch.zeros((), dtype=ce.dtype, device=ce.device)
    ce, nll, bonus = (torch.where(valid, part, zero) for part in (ce, nll, bonus))
    return ce + options.bonus_rho * bonus, nll, ce, bonus


def row_terms_from_sums(sums: RowSums, valid, options: EncouragingLossOptions, vocab: int,
                        with_stats: bool) -> RowTerms:
    """The loss parts and diagnostics of all rows at once, from a sweep's per-row sums."""
    target = target_terms(sums.target_shifted, sums.others_sum, options)
    loss, nll, ce, bonus = combine_row_parts(-target.lprob, sums.shifted_sum - vocab * target.log_total,
                                             target.bonus, sums.others_bonus, valid, options, vocab)
    stats = token_stats(target.lprob, sums.target_shifted - sums.others_max, valid, options) if with_stats else None
    return RowTerms(loss=loss, nll=nll, ce=ce, bonus=bonus, stats=stats)


def function_outputs(ctx, terms: RowTerms, row_weight) -> tuple:
    """What the fused autograd Functions return: the loss (per row, or reduced with ``row_weight``),
    then nll, CE, bonus and the diagnostics as real outputs marked non-differentiable."""
    loss = terms.loss if row_weight is None else (terms.loss * row_weight).sum()
    stat_values = tuple(terms.stats[name] for name in STAT_NAMES) if terms.stats is not None else ()
    side_outputs = (terms.nll, terms.ce, terms.bonus) + stat_values
    ctx.mark_non_differentiable(*side_outputs)
    return (loss,) + side_outputs

"""The encouraging loss written the straightforward way, on log-probabilities, through autograd.

It keeps full (tokens x vocabulary) intermediates for backward. It is the fallback for models that
only give log-probabilities (adaptive softmax), the path under torch.compile, and the yardstick the
fused path is tested against.
"""
from __future__ import annotations

import torch

from .bonus import bonus_value
from .ops.rows import combine_row_parts
from .options import EncouragingLossOptions
from .stats import RowTerms, token_stats


def reference_row_terms(lprobs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                        options: EncouragingLossOptions, with_stats: bool = True) -> RowTerms:
    """Per-row loss parts of (N, V) log-probabilities; rows where ``valid`` is False give zeros."""
    if lprobs.dtype in (torch.float16, torch.bfloat16):
        lprobs = lprobs.float()
    vocab = lprobs.size(-1)
    target = target.masked_fill(~valid, 0).unsqueeze(-1)

    target_lprob = lprobs.gather(-1, target).squeeze(-1)
    # 1 - p_y as the others' probability mass, logsumexp_{j != y} log p_j: exact when p_y rounds to
    # 1, where 1 - exp(log p_y) would cancel (and its large bonus gradient would wipe out the rest).
    others_lprobs = lprobs.scatter(-1, target, float("-inf"))
    others_max = others_lprobs.detach().amax(-1)
    # Where every other class is masked (-inf), 1 - p_y is 0; logsumexp over only -inf has a NaN
    # gradient, so those rows take a finite stand-in that the where() then discards.
    alone = others_max.eq(float("-inf")).unsqueeze(-1)
    others_mass = torch.where(alone, 0.0, others_lprobs.masked_fill(alone, 0.0).logsumexp(-1, keepdim=True).exp())
    target_bonus = bonus_value(target_lprob.exp(), others_mass.squeeze(-1), options, log_p=target_lprob)
    others_bonus = bonus_value(lprobs.exp(), -torch.expm1(lprobs), options, log_p=lprobs).scatter(-1, target, 0.0)
    # w_y b(p_y) + w_j sum_{j != y} b(p_j): the target's share of eps_b / V sits in w_y
    loss, nll, ce, bonus = combine_row_parts(-target_lprob, lprobs.sum(-1), target_bonus, others_bonus.sum(-1),
                                             valid, options, vocab)
    stats = None
    if with_stats:
        with torch.no_grad():
            stats = token_stats(target_lprob.detach(), target_lprob.detach() - others_max, valid, options)
    return RowTerms(loss=loss, nll=nll.detach(), ce=ce.detach(), bonus=bonus.detach(), stats=stats)

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
    # 1 - p as the other classes' mass, logsumexp_{j != k} log p_j, for the two classes whose p may
    # exceed 1/2: the target and the row's top class. There 1 - exp(log p) would cancel when p rounds
    # to 1 (and the bonus's large gradient would wipe out the rest); below 1/2 -expm1(log p) is exact.
    others_lprobs, target_complement = _without(lprobs, target)
    top = lprobs.detach().argmax(-1, keepdim=True)
    one_minus_p = (-torch.expm1(lprobs)).scatter(-1, top, _without(lprobs, top)[1])
    target_bonus = bonus_value(target_lprob.exp(), target_complement.squeeze(-1), options, log_p=target_lprob)
    others_bonus = bonus_value(lprobs.exp(), one_minus_p, options, log_p=lprobs).scatter(-1, target, 0.0)
    # w_y b(p_y) + w_j sum_{j != y} b(p_j): the target's share of eps_b / V sits in w_y
    loss, nll, ce, bonus = combine_row_parts(-target_lprob, lprobs.sum(-1), target_bonus, others_bonus.sum(-1),
                                             valid, options, vocab)
    stats = None
    if with_stats:
        with torch.no_grad():
            others_max = others_lprobs.detach().amax(-1)
            stats = token_stats(target_lprob.detach(), target_lprob.detach() - others_max, valid, options)
    return RowTerms(loss=loss, nll=nll.detach(), ce=ce.detach(), bonus=bonus.detach(), stats=stats)


def _without(lprobs: torch.Tensor, index: torch.Tensor):
    """(lprobs with class ``index`` (N, 1) masked to -inf, 1 - p of that class as the others' mass (N, 1)).
    Where every other class is masked, the mass is 0: logsumexp over only -inf has a NaN gradient, so
    those rows take a finite stand-in that the where() discards."""
    others = lprobs.scatter(-1, index, float("-inf"))
    alone = others.detach().amax(-1, keepdim=True).eq(float("-inf"))
    mass = torch.where(alone, 0.0, others.masked_fill(alone, 0.0).logsumexp(-1, keepdim=True).exp())
    return others, mass

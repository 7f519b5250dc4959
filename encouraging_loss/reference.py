"""The encouraging loss written the straightforward way, on log-probabilities, through autograd.

It keeps full (tokens x vocabulary) intermediates for backward. It is the fallback for models that
only give log-probabilities (adaptive softmax) and the yardstick the fused path is tested against.
"""
from __future__ import annotations

import torch

from .bonus import bonus_value
from .options import EncouragingLossOptions, smoothing_weights
from .stats import RowTerms, token_stats


def reference_row_terms(lprobs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                        options: EncouragingLossOptions, with_stats: bool = True) -> RowTerms:
    """Per-row loss parts of (N, V) log-probabilities; rows where ``valid`` is False give zeros."""
    if lprobs.dtype in (torch.float16, torch.bfloat16):
        lprobs = lprobs.float()
    vocab = lprobs.size(-1)
    nll_weight, smooth_weight = smoothing_weights(options.label_smoothing, vocab)
    target = target.masked_fill(~valid, 0).unsqueeze(-1)

    target_lprob = lprobs.gather(-1, target).squeeze(-1)
    nll = -target_lprob
    ce = nll_weight * nll - smooth_weight * lprobs.sum(-1)

    # 1 - p_y as the others' probability mass, logsumexp_{j != y} log p_j: exact when p_y rounds to
    # 1, where 1 - exp(log p_y) would cancel (and its large bonus gradient would wipe out the rest).
    others_lprobs = lprobs.scatter(-1, target, float("-inf"))
    target_bonus = bonus_value(target_lprob.exp(), others_lprobs.logsumexp(-1).exp(), options)
    others_bonus = bonus_value(lprobs.exp(), -torch.expm1(lprobs), options).scatter(-1, target, 0.0).sum(-1)
    eps_b = options.bonus_smoothing
    bonus = (1.0 - eps_b + eps_b / vocab) * target_bonus + eps_b / vocab * others_bonus

    zero = torch.zeros((), dtype=lprobs.dtype, device=lprobs.device)
    ce, nll, bonus = (torch.where(valid, t, zero) for t in (ce, nll, bonus))
    stats = None
    if with_stats:
        with torch.no_grad():
            others_max = others_lprobs.detach().amax(-1)
            stats = token_stats(target_lprob.detach(), target_lprob.detach() - others_max, valid, options)
    return RowTerms(loss=ce + options.bonus_rho * bonus, nll=nll.detach(), ce=ce.detach(),
                    bonus=bonus.detach(), stats=stats)

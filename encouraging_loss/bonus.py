"""Bonus functions b(p) and their scaled derivatives g(p) = p * b'(p), elementwise.

g is what the softmax chain rule needs: for L = sum_j w_j b(p_j),
dL/dz_k = w_k g(p_k) - p_k * sum_j w_j g(p_j). Writing g directly keeps it finite where b' is not
(the power bonus with gamma < 1 at p = 0).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .options import EncouragingLossOptions


def bonus_offset(options: EncouragingLossOptions) -> torch.Tensor:
    """b(bonus_start) before shifting, the amount every path subtracts above bonus_start, as a
    0-dim float64 CPU tensor: it mixes with tensors on any device, and torch.compile traces it
    without a .item() (a graph break)."""
    start = torch.tensor(options.bonus_start, dtype=torch.float64)
    return _raw_bonus(start, 1.0 - start, options.bonus, options.clamped_log_end, options.bonus_gamma)


def bonus_value(p: torch.Tensor, one_minus_p: torch.Tensor, options: EncouragingLossOptions,
                log_p: Optional[torch.Tensor] = None) -> torch.Tensor:
    """b(p), shifted by b(bonus_start) and zero below it. Differentiable (the reference path uses it).

    ``log_p``, when given, is log p: the power bonus is then exp(gamma log p), whose gradient stays
    finite at p = 0 (a -inf logit), where autograd through p ** gamma would give 0 * inf."""
    value = _raw_bonus(p, one_minus_p, options.bonus, options.clamped_log_end, options.bonus_gamma, log_p)
    if options.bonus_start > 0:
        value = torch.where(p >= options.bonus_start, value - bonus_offset(options), torch.zeros_like(value))
    return value


def bonus_value_and_slope(p: torch.Tensor, one_minus_p: torch.Tensor, options: EncouragingLossOptions):
    """(b(p), p * b'(p)) without autograd, for the fused paths."""
    value = bonus_value(p, one_minus_p, options)
    kind = options.bonus
    if kind == "log":
        # p * b'(p) = -p / (1 - min(p, LE))
        slope = p / one_minus_p.clamp_min(1.0 - options.clamped_log_end)
        slope.neg_()
    elif kind == "power":
        slope = p.pow(options.bonus_gamma).mul_(-options.bonus_gamma)
    else:  # cosine: b = cos(pi p) - 1
        slope = torch.sin(p * math.pi).mul_(p).mul_(-math.pi)
    if options.bonus_start > 0:
        slope.masked_fill_(p < options.bonus_start, 0.0)
    return value, slope


def _raw_bonus(p, one_minus_p, kind, log_end, gamma, log_p=None):
    if kind == "log":
        # log(1 - p) up to p = LE, then its tangent log(1 - LE) - (p - LE) / (1 - LE), written as
        # 1 - (1 - p) / (1 - LE) because 1 - p is known more precisely than p near 1.
        # One branch per element (torch.where): at p = LE exactly, two clamps would both pass gradient.
        follows_log = one_minus_p >= 1.0 - log_end
        log_part = torch.log(torch.where(follows_log, one_minus_p, torch.ones_like(one_minus_p)))
        tangent = (math.log(1.0 - log_end) - 1.0) + one_minus_p / (1.0 - log_end)
        return torch.where(follows_log, log_part, tangent)
    if kind == "power":
        return -(p.pow(gamma) if log_p is None else torch.exp(gamma * log_p))
    return torch.cos(p * math.pi) - 1.0

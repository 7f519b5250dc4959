"""Bonus functions b(p) and their scaled derivatives g(p) = p * b'(p), elementwise.

g is what the softmax chain rule needs: for L = sum_j w_j b(p_j),
dL/dz_k = w_k g(p_k) - p_k * sum_j w_j g(p_j). Writing g directly keeps it finite where b' is not
(the power bonus with gamma < 1 at p = 0).
"""
from __future__ import annotations

import math

import torch

from .options import MAX_LOG_END, EncouragingLossOptions


def bonus_value(p: torch.Tensor, one_minus_p: torch.Tensor, options: EncouragingLossOptions) -> torch.Tensor:
    """b(p), shifted by b(bonus_start) and zero below it. Differentiable (the reference path uses it)."""
    value = _raw_bonus(p, one_minus_p, options)
    if options.bonus_start > 0:
        start = options.bonus_start
        offset = _raw_bonus(torch.tensor(start, dtype=torch.float64),
                            torch.tensor(1.0 - start, dtype=torch.float64), options).item()
        value = torch.where(p >= start, value - offset, torch.zeros_like(value))
    return value


def bonus_value_and_slope(p: torch.Tensor, one_minus_p: torch.Tensor, options: EncouragingLossOptions):
    """(b(p), p * b'(p)) without autograd, for the fused paths."""
    value = bonus_value(p, one_minus_p, options)
    kind = options.bonus
    if kind == "log":
        # p * b'(p) = -p / (1 - min(p, LE))
        slope = p / one_minus_p.clamp_min(1.0 - min(options.log_end, MAX_LOG_END))
        slope.neg_()
    elif kind == "power":
        slope = p.pow(options.bonus_gamma).mul_(-options.bonus_gamma)
    else:  # cosine: b = cos(pi p) - 1
        slope = torch.sin(p * math.pi).mul_(p).mul_(-math.pi)
    if options.bonus_start > 0:
        slope.masked_fill_(p < options.bonus_start, 0.0)
    return value, slope


def _raw_bonus(p, one_minus_p, options):
    kind = options.bonus
    if kind == "log":
        # log(1 - p) up to p = LE, then its tangent log(1 - LE) - (p - LE) / (1 - LE), written as
        # 1 - (1 - p) / (1 - LE) because 1 - p is known more precisely than p near 1.
        # One branch per element (torch.where): at p = LE exactly, two clamps would both pass gradient.
        end = min(options.log_end, MAX_LOG_END)
        follows_log = one_minus_p >= 1.0 - end
        log_part = torch.log(torch.where(follows_log, one_minus_p, torch.ones_like(one_minus_p)))
        tangent = (math.log(1.0 - end) - 1.0) + one_minus_p / (1.0 - end)
        return torch.where(follows_log, log_part, tangent)
    if kind == "power":
        return -p.pow(options.bonus_gamma)
    return torch.cos(p * math.pi) - 1.0

"""What every implementation returns: per-row loss parts and the well-classified diagnostics."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch

from .options import EncouragingLossOptions

# Sums over scored (non-ignored) tokens; ratios are formed when metrics are reduced, so that
# they can be summed across batches and data-parallel workers first.
STAT_NAMES = ("tokens", "target_prob", "target_prob_above_half", "target_prob_above_log_end",
              "margin", "correct")


class RowTerms(NamedTuple):
    loss: torch.Tensor  # (N,) CE_ls + rho * bonus, differentiable
    nll: torch.Tensor  # (N,) -log p_y
    ce: torch.Tensor  # (N,) label-smoothed CE
    bonus: torch.Tensor  # (N,) the bonus bracket, before rho
    stats: Optional[Dict[str, torch.Tensor]]


def token_stats(target_lprob: torch.Tensor, margin: torch.Tensor, valid: torch.Tensor,
                options: EncouragingLossOptions) -> Dict[str, torch.Tensor]:
    """Sums of the diagnostics over valid rows, from log p_y and the margin z_y - max_{j != y} z_j."""
    valid_f = valid.to(torch.float32)
    target_prob = target_lprob.float().exp()
    return {
        "tokens": valid_f.sum(),
        "target_prob": (target_prob * valid_f).sum(),
        "target_prob_above_half": ((target_prob > 0.5) & valid).sum().float(),
        "target_prob_above_log_end": ((target_prob > options.log_end) & valid).sum().float(),
        "margin": torch.where(valid, margin.float(), torch.zeros_like(valid_f)).sum(),
        "correct": ((margin >= 0) & valid).sum().float(),
    }

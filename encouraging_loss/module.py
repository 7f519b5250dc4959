"""``nn.Module`` form of the encouraging loss, for any training loop."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .functional import EncouragingLossOutput, check_call_options, encouraging_loss
from .options import EncouragingLossOptions


class EncouragingLoss(nn.Module):
    """Like ``nn.CrossEntropyLoss`` (default ``reduction="mean"``, ``ignore_index=-100``), plus the bonus.

    >>> loss_fn = EncouragingLoss(label_smoothing=0.1, log_end=0.5)
    >>> loss = loss_fn(logits, target)        # logits (..., C), target (...)
    >>> loss_fn = EncouragingLoss(label_smoothing=0.1, class_dim=1)
    >>> loss = loss_fn(logits, target)        # torch's layout: logits (N, C, d1, ...), target (N, d1, ...)

    ``last_output`` keeps the latest nll / CE / bonus / diagnostics for logging, detached from the
    graph, so the module (and a model holding it) can be copied or averaged after backward.
    """

    def __init__(self, options: Optional[EncouragingLossOptions] = None, *, ignore_index: int = -100,
                 reduction: str = "mean", impl: str = "auto", class_dim: int = -1, with_stats: bool = False,
                 **option_fields):
        super().__init__()
        check_call_options(reduction, impl)
        self.options = options if options is not None else EncouragingLossOptions(**option_fields)
        self.ignore_index, self.reduction, self.impl = ignore_index, reduction, impl
        self.class_dim, self.with_stats = class_dim, with_stats
        self.last_output: Optional[EncouragingLossOutput] = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = encouraging_loss(logits, target, self.options, ignore_index=self.ignore_index,
                                  reduction=self.reduction, impl=self.impl, class_dim=self.class_dim,
                                  with_stats=self.with_stats)
        self.last_output = output.detach()
        return output.loss

    def extra_repr(self) -> str:
        return (f"{self.options}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"impl={self.impl!r}, class_dim={self.class_dim}")

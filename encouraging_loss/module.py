"""``nn.Module`` form of the encouraging loss, for any training loop."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .functional import encouraging_loss
from .options import EncouragingLossOptions


class EncouragingLoss(nn.Module):
    """Like ``nn.CrossEntropyLoss`` with classes on the last dimension, plus the bonus.

    >>> loss_fn = EncouragingLoss(label_smoothing=0.1, log_end=0.5, reduction="mean")
    >>> loss = loss_fn(logits, target)        # logits (..., V), target (...)
    ``last_output`` keeps the latest nll / CE / bonus / diagnostics for logging.
    """

    def __init__(self, options: Optional[EncouragingLossOptions] = None, *, ignore_index: int = -100,
                 reduction: str = "mean", impl: str = "auto", with_stats: bool = False, **option_fields):
        super().__init__()
        self.options = options if options is not None else EncouragingLossOptions(**option_fields)
        self.ignore_index, self.reduction, self.impl, self.with_stats = ignore_index, reduction, impl, with_stats
        self.last_output = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.last_output = encouraging_loss(logits, target, self.options, ignore_index=self.ignore_index,
                                            reduction=self.reduction, impl=self.impl,
                                            with_stats=self.with_stats)
        return self.last_output.loss

    def extra_repr(self) -> str:
        return f"{self.options}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, impl={self.impl!r}"

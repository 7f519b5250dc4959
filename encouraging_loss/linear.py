"""The encouraging loss of an output projection, hidden @ weight.T + bias, without forming the logits."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .functional import EncouragingLossOutput, check_call_options, encouraging_loss, scored_rows
from .ops.chunked import DEFAULT_CHUNK_ELEMENTS
from .ops.linear import LinearEncouragingLoss
from .options import EncouragingLossOptions, check_option
from .stats import STAT_NAMES


def linear_encouraging_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                            options: Optional[EncouragingLossOptions] = None, *,
                            bias: Optional[torch.Tensor] = None, ignore_index: int = -100,
                            reduction: str = "mean", with_stats: bool = False,
                            block_elements: Optional[int] = None,
                            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, **option_fields) -> EncouragingLossOutput:
    """``encouraging_loss(hidden @ weight.T + bias, target, ...)`` with the logits formed one block
    of tokens at a time: the same outputs and gradients (for hidden, weight and bias), and extra
    memory of one block of logits plus a weight-sized gradient, independent of the number of tokens.
    A block holds ``block_elements`` logits (rounded down to whole rows); by default 2^24 of them
    (64 MB in float32) but at least 256 rows, since thinner blocks slow the matmuls down.

    ``hidden`` (..., H), ``weight`` (V, H) as ``nn.Linear`` stores it, ``bias`` (V,) or None,
    ``target`` (...) class indices or ``ignore_index``. Options, ``reduction`` and ``with_stats`` as
    in ``encouraging_loss``. With 'mean' or 'sum' the gradients are finished during the forward pass
    and backward only scales them; with 'none' backward forms the logits a second time. The
    gradients are accumulated in float32 for half inputs. First-order only: asking for a graph of
    the gradient (create_graph=True) raises. Under ``torch.compile`` it runs the reference path on
    the full logits.
    """
    if options is None:
        options = EncouragingLossOptions(**option_fields)
    elif option_fields:
        raise TypeError("pass either options or option fields, not both")
    check_call_options(reduction, "auto")
    check_option(block_elements is None or isinstance(block_elements, int) and block_elements >= 1,
                 "block_elements", "None or an integer >= 1", block_elements)
    check_option(isinstance(chunk_elements, int) and chunk_elements >= 1, "chunk_elements", "an integer >= 1",
                 chunk_elements)
    _check_shapes(hidden, weight, bias, target)
    if torch.compiler.is_compiling():
        return encouraging_loss(F.linear(hidden, weight, bias), target, options, ignore_index=ignore_index,
                                reduction=reduction, impl="reference", with_stats=with_stats)

    vocab = weight.size(0)
    flat_hidden = hidden.reshape(-1, hidden.size(-1))
    flat_target, valid, row_weight = scored_rows(target, vocab, ignore_index, reduction, hidden)
    loss, nll, ce, bonus, *stat_values = LinearEncouragingLoss.apply(
        flat_hidden, weight, bias, flat_target, valid, options, row_weight, with_stats, block_elements,
        chunk_elements, "auto")

    def reduce(per_row: torch.Tensor) -> torch.Tensor:
        return per_row.view(target.shape) if row_weight is None else (per_row * row_weight).sum()

    return EncouragingLossOutput(loss=reduce(loss) if row_weight is None else loss, nll_loss=reduce(nll),
                                 ce_loss=reduce(ce), bonus=reduce(bonus),
                                 stats=dict(zip(STAT_NAMES, stat_values)) if with_stats else None)


def _check_shapes(hidden, weight, bias, target):
    if weight.dim() != 2 or hidden.dim() < 1 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"weight must be (classes, {hidden.size(-1) if hidden.dim() else '?'}) for hidden "
                         f"{tuple(hidden.shape)} (nn.Linear's layout), got {tuple(weight.shape)}")
    if hidden.shape[:-1] != target.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and target {tuple(target.shape)} disagree: "
                         "hidden (..., H) and target (...)")
    if bias is not None and bias.shape != (weight.size(0),):
        raise ValueError(f"bias must be ({weight.size(0)},), got {tuple(bias.shape)}")
    dtypes = {hidden.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) != 1 or not hidden.dtype.is_floating_point:
        raise ValueError(f"hidden, weight and bias must share one floating dtype, got "
                         f"{', '.join(str(d).replace('torch.', '') for d in sorted(dtypes, key=str))}")

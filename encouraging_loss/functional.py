"""The encouraging loss as a function of logits: reduction, ignore index and back-end choice."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .options import EncouragingLossOptions
from .ops.fused_chunked import fused_row_terms
from .reference import reference_row_terms

IMPLS = ("auto", "fused", "reference")
REDUCTIONS = ("sum", "mean", "none")


class EncouragingLossOutput(NamedTuple):
    loss: torch.Tensor  # CE_ls + rho * bonus; the only differentiable field
    nll_loss: torch.Tensor
    ce_loss: torch.Tensor  # the label-smoothed cross-entropy part
    bonus: torch.Tensor  # the bonus bracket (1 - eps_b) b(p_y) + eps_b / V sum_j b(p_j), before rho
    stats: Optional[Dict[str, torch.Tensor]]  # sums over scored tokens, see stats.STAT_NAMES


def encouraging_loss(logits: torch.Tensor, target: torch.Tensor,
                     options: Optional[EncouragingLossOptions] = None, *, ignore_index: int = -100,
                     reduction: str = "sum", impl: str = "auto", with_stats: bool = False,
                     overwrite_logits: bool = False, **option_fields) -> EncouragingLossOutput:
    """Encouraging loss of ``logits`` (..., V) against integer ``target`` (...).

    Options come as an ``EncouragingLossOptions`` or as its fields by keyword
    (``label_smoothing=0.1, log_end=0.5, ...``). Tokens equal to ``ignore_index`` contribute
    nothing. ``reduction``: 'sum' (fairseq's convention), 'mean' over scored tokens (0 when there
    are none), or 'none' (per token, shaped like ``target``). ``impl``: 'fused' streams over the
    logits and keeps only the gradient for backward (Triton on CUDA when available, chunked
    PyTorch otherwise); 'reference' is the straightforward autograd version; 'auto' is 'fused'.
    Log-probabilities are valid logits too, so the function also takes ``log_softmax`` outputs.
    ``overwrite_logits=True`` promises that nothing reads ``logits`` afterwards (a decoder's output
    that only this loss consumes): the fused path then keeps the gradient in the logits' memory and
    scales it there in backward, which saves a logits-sized tensor but allows one backward only.
    It is ignored for leaf tensors and by the reference path; if another part of the graph saved
    the logits, autograd's in-place check fails in backward rather than use overwritten values.
    """
    if options is None:
        options = EncouragingLossOptions(**option_fields)
    elif option_fields:
        raise TypeError("pass either options or option fields, not both")
    if impl not in IMPLS:
        raise ValueError(f"--el-impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree: "
                         "logits must be target's shape plus a trailing vocabulary dimension")

    flat_logits = logits.reshape(-1, logits.size(-1))
    flat_target = target.reshape(-1)
    valid = flat_target.ne(ignore_index)
    math_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    row_weight = None
    if reduction == "sum":
        row_weight = torch.ones((), dtype=math_dtype, device=logits.device)
    elif reduction == "mean":
        row_weight = 1.0 / valid.sum().clamp_min(1).to(math_dtype)

    def reduce(per_row: torch.Tensor) -> torch.Tensor:
        return per_row.view(target.shape) if row_weight is None else (per_row * row_weight).sum()

    if impl == "reference":
        half = flat_logits.dtype in (torch.float16, torch.bfloat16)
        lprobs = F.log_softmax(flat_logits, -1, dtype=torch.float32 if half else None)
        terms = reference_row_terms(lprobs, flat_target, valid, options, with_stats)
        loss = reduce(terms.loss)
    else:  # the fused function reduces inside (its backward then only scales by the upstream scalar)
        terms = _fused_backend(flat_logits)(flat_logits, flat_target, valid, options, row_weight=row_weight,
                                            with_stats=with_stats, overwrite_logits=overwrite_logits)
        loss = reduce(terms.loss) if row_weight is None else terms.loss
    return EncouragingLossOutput(loss=loss, nll_loss=reduce(terms.nll), ce_loss=reduce(terms.ce),
                                 bonus=reduce(terms.bonus), stats=terms.stats)


def _fused_backend(logits: torch.Tensor):
    if logits.is_cuda:
        from .ops.triton_kernel import triton_available, triton_row_terms
        if triton_available():
            return triton_row_terms
    return fused_row_terms

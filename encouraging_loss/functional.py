"""The encouraging loss as a function of logits: layout, target checks, reduction and path choice."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .ops.chunked import DEFAULT_CHUNK_ELEMENTS
from .ops.fused import fused_row_terms
from .options import EncouragingLossOptions, OptionError, check_option
from .reference import reference_row_terms

IMPLS = ("auto", "fused", "reference")
REDUCTIONS = ("mean", "sum", "none")


class EncouragingLossOutput(NamedTuple):
    loss: torch.Tensor  # CE_ls + rho * bonus; the only differentiable field
    nll_loss: torch.Tensor
    ce_loss: torch.Tensor  # the label-smoothed cross-entropy part
    bonus: torch.Tensor  # the bonus bracket (1 - eps_b) b(p_y) + eps_b / V sum_j b(p_j), before rho
    stats: Optional[Dict[str, torch.Tensor]]  # sums over scored tokens, see stats.STAT_NAMES

    def detach(self) -> "EncouragingLossOutput":
        """The same values without the autograd graph (safe to keep, copy and pickle)."""
        stats = None if self.stats is None else {name: value.detach() for name, value in self.stats.items()}
        return EncouragingLossOutput(self.loss.detach(), self.nll_loss.detach(), self.ce_loss.detach(),
                                     self.bonus.detach(), stats)


def check_call_options(reduction: str, impl: str) -> None:
    check_option(reduction in REDUCTIONS, "reduction", f"one of {', '.join(REDUCTIONS)}", reduction)
    check_option(impl in IMPLS, "impl", f"one of {', '.join(IMPLS)}", impl)


def encouraging_loss(logits: torch.Tensor, target: torch.Tensor,
                     options: Optional[EncouragingLossOptions] = None, *, ignore_index: int = -100,
                     reduction: str = "mean", impl: str = "auto", class_dim: int = -1,
                     with_stats: bool = False, overwrite_logits: bool = False,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, **option_fields) -> EncouragingLossOutput:
    """Encouraging loss of ``logits`` against integer class indices ``target``.

    Layout: by default classes are on the last dimension, logits (..., C) and target (...), as
    fairseq's decoders give them. ``class_dim=1`` takes torch's layout, logits (N, C, d1, ...) and
    target (N, d1, ...) as ``nn.CrossEntropyLoss`` does (for 2-D logits (N, C) both layouts agree).
    The layout is never guessed from the shapes: (B, T, V) against (B, T) would read as torch's
    layout whenever T happened to equal V.
    Options come as an ``EncouragingLossOptions`` or as its fields by keyword
    (``label_smoothing=0.1, log_end=0.5, ...``); a bad value raises ``OptionError`` naming it.
    Targets must be in [0, C) or equal ``ignore_index`` (ValueError otherwise; under
    ``torch.compile`` an assertion without a sync, which compiled CPU code turns into a process
    abort with the same message, as torch's own cross-entropy does there); ignored tokens
    contribute nothing. ``reduction``: 'mean' over scored tokens (torch's default; 0 when there are
    none), 'sum' (fairseq's convention), or 'none' (per token, shaped like ``target``).
    ``impl``: 'fused' streams over the logits and keeps only the gradient for backward (Triton on
    CUDA when it passes its self-check, chunked PyTorch otherwise, ``chunk_elements`` logits a
    chunk); 'reference' is the straightforward autograd version; 'auto' is 'fused'. Under
    ``torch.compile`` every impl runs the reference path, which compiles without graph breaks.
    Logits may be -inf (masked classes); log-probabilities are valid logits too.
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
    check_call_options(reduction, impl)
    check_option(isinstance(chunk_elements, int) and chunk_elements >= 1, "chunk_elements", "an integer >= 1",
                 chunk_elements)
    check_arguments(logits, target, ignore_index)
    logits = _classes_last(logits, target, class_dim)

    vocab = logits.size(-1)
    check_option(vocab >= 1, "logits", "at least one class (size >= 1 on the class dimension)", tuple(logits.shape))
    flat_logits = logits.reshape(-1, vocab)
    flat_target, valid, row_weight = scored_rows(target, vocab, ignore_index, reduction, logits)

    def reduce(per_row: torch.Tensor) -> torch.Tensor:
        return per_row.view(target.shape) if row_weight is None else (per_row * row_weight).sum()

    if impl == "reference" or torch.compiler.is_compiling():
        half = flat_logits.dtype in (torch.float16, torch.bfloat16)
        lprobs = F.log_softmax(flat_logits, -1, dtype=torch.float32 if half else None)
        terms = reference_row_terms(lprobs, flat_target, valid, options, with_stats)
        loss = reduce(terms.loss)
    else:  # the fused function reduces inside (its backward then only scales by the upstream scalar)
        terms = fused_row_terms(flat_logits, flat_target, valid, options, row_weight=row_weight,
                                with_stats=with_stats, chunk_elements=chunk_elements,
                                overwrite_logits=overwrite_logits)
        loss = reduce(terms.loss) if row_weight is None else terms.loss
    return EncouragingLossOutput(loss=loss, nll_loss=reduce(terms.nll), ce_loss=reduce(terms.ce),
                                 bonus=reduce(terms.bonus), stats=terms.stats)


INT64_RANGE = (-(2**63), 2**63 - 1)


def check_arguments(logits, target, ignore_index) -> None:
    """What ``torch.nn.functional.cross_entropy`` would refuse, refused here by argument name in one
    line instead of failing deep inside a kernel: logits that are not a floating-point tensor, an
    ``ignore_index`` that is not an integer in int64's range. (Targets: ``check_targets``.)"""
    for name, value in (("logits", logits), ("target", target)):
        check_option(isinstance(value, torch.Tensor), name, "a torch.Tensor", type(value).__name__)
    check_option(logits.dtype.is_floating_point, "logits", "a floating-point tensor", logits.dtype)
    check_option(logits.dim() >= 1, "logits", "a tensor with a class dimension", tuple(logits.shape))
    check_option(isinstance(ignore_index, int) and not isinstance(ignore_index, bool)
                 and INT64_RANGE[0] <= ignore_index <= INT64_RANGE[1], "ignore_index", "an integer in int64's range",
                 ignore_index)


def _classes_last(logits: torch.Tensor, target: torch.Tensor, class_dim: int) -> torch.Tensor:
    """``logits`` with the class dimension moved last (a view), after checking it against ``target``."""
    if not isinstance(class_dim, int) or not -logits.dim() <= class_dim < max(logits.dim(), 1):
        raise OptionError("class_dim", f"a dimension of the {logits.dim()}-D logits", class_dim)
    class_dim %= logits.dim()
    if class_dim != logits.dim() - 1:
        logits = logits.movedim(class_dim, -1)
    if logits.shape[:-1] != target.shape:
        layout = ("logits (..., C) and target (...); for torch's layout (N, C, ...) pass class_dim=1"
                  if class_dim == logits.dim() - 1 else f"target must be logits' shape without dimension {class_dim}")
        raise ValueError(f"logits {tuple(logits.movedim(-1, class_dim).shape)} and target {tuple(target.shape)} "
                         f"disagree: {layout}")
    return logits


def scored_rows(target: torch.Tensor, vocab: int, ignore_index: int, reduction: str, like: torch.Tensor):
    """(checked flat targets, the scored rows, the reduction's row weight) for ``target`` against
    ``vocab`` classes: the weight is a 0-dim tensor in the math dtype of ``like`` (1 for 'sum', 1/n
    over the scored rows for 'mean'), None for 'none'."""
    flat_target = check_targets(target.reshape(-1), vocab, ignore_index)
    valid = flat_target.ne(ignore_index)
    math_dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    row_weight = None
    if reduction == "sum":
        row_weight = torch.ones((), dtype=math_dtype, device=like.device)
    elif reduction == "mean":
        row_weight = 1.0 / valid.sum().clamp_min(1).to(math_dtype)
    return flat_target, valid, row_weight


def check_targets(target: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    """Every path's target check: each value is a class index in [0, vocab) or ``ignore_index``.
    Returns the target to use: under torch.compile the bad values are also made ignored, so that
    no kernel indexes out of bounds (which aborts the process) before the assertion raises."""
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise OptionError("target", "a tensor of integer class indices", target.dtype)
    target = target.long()  # int32/int16/uint8 indices work as int64 ones do (gather and scatter need int64)
    bad = (target.lt(0) | target.ge(vocab)) & target.ne(ignore_index)
    message = f"target values must be class indices in [0, {vocab}) or ignore_index ({ignore_index})"
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), message)  # no sync, no graph break; the value cannot be named
        return target.masked_fill(bad, ignore_index)
    if bool(bad.any()):
        raise ValueError(f"{message}, got {target[bad][0].item()}")
    return target

"""The fused encouraging loss as one autograd Function over (N, V) logits, and the choice of the
back end that sweeps over them: ``chunked`` (PyTorch ops, any device) or ``triton`` (CUDA).

The forward sweep writes the gradient while it reads the logits and keeps only that gradient for
backward, which then multiplies it by the upstream gradient. On CUDA the Triton kernel is first
compared with the reference path on a small input, once per option set; if it fails or disagrees,
a one-line warning says so and the chunked path runs on the GPU instead.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..options import EncouragingLossOptions, OptionError
from ..reference import reference_row_terms
from ..stats import STAT_NAMES, RowTerms
from .chunked import DEFAULT_CHUNK_ELEMENTS, chunked_sweep
from .rows import RowSums, function_outputs, row_terms_from_sums

BACKENDS = ("auto", "chunked", "triton")
SECOND_DERIVATIVE_MESSAGE = (
    "the fused encouraging loss has no second derivative (it computes its gradient in the forward pass): "
    "for backward with create_graph=True (gradient penalties, Hessian-vector products) call it with "
    "impl='reference' (fairseq criterion: --el-impl reference)")
logger = logging.getLogger(__name__)


def fused_row_terms(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    options: EncouragingLossOptions, row_weight: Optional[torch.Tensor] = None,
                    with_stats: bool = True, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                    backend: str = "auto", overwrite_logits: bool = False) -> RowTerms:
    """Loss parts of (N, V) logits, backpropagating through a gradient computed in the forward sweep.

    ``target`` (N,) must hold class indices wherever ``valid`` is True. With ``row_weight`` (a 0-dim
    tensor: 1 for a sum, 1/n for a mean) ``loss`` is already reduced, sum_i row_weight * loss_i, and
    backward is one multiply by the upstream scalar; without it ``loss`` is per row (N,).
    ``chunk_elements``: rows per chunk of the chunked sweep, in elements. ``backend``: see BACKENDS
    ('auto': Triton for CUDA half/float32 logits when it passed its self-check, chunked otherwise).
    ``overwrite_logits``: the caller will not read ``logits`` again (see ``encouraging_loss``).
    """
    if backend not in BACKENDS:
        raise OptionError("backend", f"one of {', '.join(BACKENDS)}", backend)
    if backend == "auto":
        backend = choose_backend(logits, options)
    loss, nll, ce, bonus, *stat_values = _FusedEncouragingLoss.apply(
        logits, target, valid, options, row_weight, with_stats, chunk_elements, backend, overwrite_logits)
    return RowTerms(loss=loss, nll=nll, ce=ce, bonus=bonus,
                    stats=dict(zip(STAT_NAMES, stat_values)) if with_stats else None)


class _FusedEncouragingLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, valid, options, row_weight, with_stats, chunk_elements, backend,
                overwrite_logits):
        rows, vocab = logits.shape
        device = logits.device
        math_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        contiguous = logits.contiguous()
        grad = grad_row_scale = grad_weight = None
        ctx.consumes_gradient = False
        if ctx.needs_input_grad[0]:
            # Every sweep reads a row's logits before it writes the row's gradient, so the
            # gradient can take the logits' place: always in a copy made here, and in the caller's
            # tensor when it is done with it. A detached alias shares the version counter, so a
            # graph that saved these logits elsewhere fails loudly in backward instead of reading
            # a gradient; a leaf's memory (a parameter, a user's input) is never taken.
            if contiguous is not logits:
                grad = contiguous
            elif overwrite_logits and not _is_leaf_memory(logits):
                grad = logits.detach()
                ctx.consumes_gradient = True
            else:
                grad = torch.empty((rows, vocab), dtype=logits.dtype, device=device)
            if logits.dtype == torch.float16:
                grad_row_scale = torch.ones(rows, dtype=torch.float32, device=device)
            grad_weight = valid.to(math_dtype)
            if row_weight is not None:
                grad_weight = grad_weight * row_weight.to(math_dtype)
        index = target.masked_fill(~valid, 0).unsqueeze(-1)
        sums = RowSums.zeros(rows, math_dtype, device)
        if backend == "triton":
            _triton_kernel().triton_sweep(contiguous, index, options, sums, grad, grad_weight, grad_row_scale)
        else:
            chunked_sweep(contiguous, index, options, sums, grad, grad_weight, grad_row_scale, chunk_elements)
        terms = row_terms_from_sums(sums, valid, options, vocab, with_stats)

        ctx.save_for_backward(grad, grad_row_scale)
        ctx.per_row = row_weight is None
        ctx.chunk_elements = chunk_elements
        return function_outputs(ctx, terms, None if ctx.per_row else row_weight)

    @staticmethod
    def backward(ctx, grad_output, *unused_side_output_grads):
        no_grads = (None,) * 8
        if torch.is_grad_enabled():  # backward(create_graph=True): autograd.grad for a gradient penalty, HVPs
            # The gradient was computed in the forward sweep: to autograd it is a constant, and a graph built
            # through it would silently miss the loss's second derivative.
            raise RuntimeError(SECOND_DERIVATIVE_MESSAGE)
        if getattr(ctx, "gradient_consumed", False):
            raise RuntimeError(
                "the fused encouraging loss was called with overwrite_logits=True, which keeps the "
                "gradient in the logits' memory and scales it in place: its graph can be backpropagated "
                "once only. Call it without overwrite_logits (criterion: --el-keep-logits) to replay it.")
        grad, grad_row_scale = ctx.saved_tensors
        # float64 gradients keep a float64 factor; half ones are scaled in float32 (rounded once).
        factor = grad_output.to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
        if grad_row_scale is not None:
            factor = factor / grad_row_scale
        if factor.dim() == 1:
            factor = factor.unsqueeze(-1)
        elif float(factor) == 1.0:
            return (grad,) + no_grads  # the common case (a sum, no loss scaling): no copy
        if ctx.consumes_gradient:
            ctx.gradient_consumed = True
            return (_scale_rows(grad, factor, out=grad, chunk_elements=ctx.chunk_elements),) + no_grads
        # Out of place otherwise: the graph may be retained and replayed (gradcheck does), so the
        # stored gradient must stay as the forward left it.
        return (_scale_rows(grad, factor, out=torch.empty_like(grad), chunk_elements=ctx.chunk_elements),) + no_grads


def _is_leaf_memory(tensor: torch.Tensor) -> bool:
    """True for a leaf tensor or a view of one: memory that the caller owns beyond this graph."""
    base = tensor._base if tensor._base is not None else tensor
    return tensor.is_leaf or base.is_leaf


def _scale_rows(grad, factor, out, chunk_elements):
    """out = grad * factor (factor (N, 1) or 0-dim, in the math dtype), rounded once to grad's dtype.

    CUDA kernels cast each element on the fly; on CPU a mixed-dtype multiply first makes a math-dtype
    copy of its input, so there the rows go through in chunks and that copy stays chunk-sized."""
    if grad.device.type != "cpu" or grad.dtype == factor.dtype:
        return torch.mul(grad, factor, out=out)
    rows, vocab = grad.shape
    step = max(1, chunk_elements // max(vocab, 1))
    for start in range(0, rows, step):
        end = min(rows, start + step)
        row_factor = factor[start:end] if factor.dim() else factor
        torch.mul(grad[start:end], row_factor, out=out[start:end])
    return out


def choose_backend(logits: torch.Tensor, options: EncouragingLossOptions) -> str:
    """'triton' for CUDA float32/half logits once the kernel has passed its self-check, else 'chunked'."""
    if logits.dtype == torch.float64 or not triton_candidate(logits):
        return "chunked"  # the kernel's math is float32
    return "triton" if triton_verified(options, logits.device, logits.dtype) else "chunked"


def triton_candidate(logits: torch.Tensor) -> bool:
    """Whether the Triton kernel could run on these logits (a seam: tests replace it on CPU)."""
    return logits.is_cuda and _triton_kernel().triton_available()


def _triton_kernel():
    """The Triton back end, imported on first use: importing Triton costs CPU-only runs about a
    second and a few MB of memory for nothing. (triton_kernel imports nothing from here.)"""
    from . import triton_kernel
    return triton_kernel


_VERIFIED: Dict[tuple, bool] = {}


def triton_verified(options: EncouragingLossOptions, device, dtype: torch.dtype) -> bool:
    """Runs the Triton kernel against the reference path once per (option set, device, dtype).

    rho only scales the bonus (and a schedule changes it every update), so it is not part of the
    option set checked. On an error or a mismatch: one warning line, and False from then on."""
    key = (*(getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "bonus_rho"),
           str(device), dtype)
    if key not in _VERIFIED:  # validated options are only rebuilt on a miss
        options = options.with_rho(1.0)
        try:
            problem = _triton_mismatch(options, torch.device(device), dtype)
        except Exception as error:  # a compile error, a launch failure: anything means "do not use it"
            first_line = (str(error).strip().splitlines() or [""])[0]
            problem = f"failed ({type(error).__name__}: {first_line})"
        if problem is not None:
            logger.warning("encouraging loss: the Triton kernel %s for %s %s; using the chunked PyTorch path on %s",
                           problem, options, str(dtype).replace("torch.", ""), device)
        _VERIFIED[key] = problem is None
    return _VERIFIED[key]


def _triton_mismatch(options, device, dtype) -> Optional[str]:
    """None when the kernel agrees with the float64 reference on a small input (two tiles a row,
    a confident row, an ignored row, masked classes), else what differs."""
    generator = torch.Generator().manual_seed(0)
    rows, vocab = 8, 2 * _triton_kernel().MAX_BLOCK + 3
    logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, vocab, (rows,), generator=generator)
    # p_y about 1 - 1e-3: confident, but not so close to 1 that the plain bonus (log_end = 1) is
    # ill-conditioned in float32, where no kernel could match the float64 reference
    logits[0, target[0]] = logits[0].max() + 7.0
    logits[2, :vocab // 2] = float("-inf")
    target[2] = vocab - 1
    valid = torch.ones(rows, dtype=torch.bool)
    valid[1] = False
    rounded = logits.to(dtype)
    upstream = torch.linspace(-1.0, 2.0, rows, dtype=torch.float64)
    with torch.inference_mode(False), torch.enable_grad():
        given = rounded.to(device, copy=True).requires_grad_()
        terms = fused_row_terms(given, target.to(device), valid.to(device), options, with_stats=False,
                                backend="triton")
        (terms.loss * upstream.to(device, terms.loss.dtype)).sum().backward()
        exact_logits = rounded.double().requires_grad_()
        exact = reference_row_terms(F.log_softmax(exact_logits, -1), target, valid, options, with_stats=False)
        (exact.loss * upstream).sum().backward()
    for part in ("loss", "nll", "ce", "bonus"):
        got, expected = getattr(terms, part).detach().double().cpu(), getattr(exact, part).detach()
        close = torch.isclose(got, expected, rtol=1e-4, atol=1e-4)  # equal infinities are close
        if not bool(close.all()):
            difference = (got - expected).abs().masked_fill(close, 0.0).nan_to_num(nan=float("inf")).max().item()
            return f"disagrees with the reference ({part}: largest difference {difference:.3g})"
    storage_rtol = {torch.float32: 2**-18, torch.bfloat16: 2**-6, torch.float16: 2**-9}.get(dtype, 2**-18)
    error = (given.grad.double().cpu() - exact_logits.grad).abs()
    allowed = storage_rtol * exact_logits.grad.abs() + 1e-6 * exact_logits.grad.abs().max()
    if not bool((error <= allowed).all()):
        return f"disagrees with the reference (gradient: {(error / allowed).max().item():.3g}x the tolerance)"
    return None

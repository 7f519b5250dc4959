"""The output projection fused with the encouraging loss: logits = hidden @ weight.T + bias are
formed one block of tokens at a time and never exist whole.

Per block the row sweep (chunked PyTorch or Triton, as ``fused.choose_backend`` picks) reads the
block's logits and writes dL/dlogits over them in the same buffer; the block's share of the three
gradients is taken from it at once (grad_hidden = g W, grad_weight += g^T hidden,
grad_bias += sum of g's rows), so the extra memory is one block of logits plus the weight-sized
gradient, whatever the number of tokens. The gradient products are formed and accumulated in
float32 (float64 for float64 inputs) even for half inputs: summing the weight gradient over many
blocks in bfloat16 loses most of its bits.

With the loss reduced to a scalar, the forward pass leaves the finished gradients and backward only
scales them by the upstream gradient. Per-token losses (no reduction) weight every row's gradient
by its own upstream value, known in backward only; there the blocks are swept a second time.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..options import OptionError
from .chunked import DEFAULT_CHUNK_ELEMENTS, chunked_sweep
from .fused import BACKENDS, _triton_kernel, choose_backend
from .rows import RowSums, function_outputs, row_terms_from_sums

# Logits per block by default, in elements: 64 MB of float32, 262 rows at a 64k vocabulary. The
# three matmuls of a block then run at about the speed of whole-batch ones on CPU (131-row blocks
# measured 10-30% slower at 64k x 512), and the block is still small against N x V at NMT batch sizes.
DEFAULT_BLOCK_ELEMENTS = 1 << 24
# ...but no fewer rows than this by default: every block reads the weight twice and reads and writes
# its gradient once, so thin blocks leave the matmuls waiting on memory (at 4096 x 256,000 x 512,
# 65-row blocks took 0.77x the baseline's time, 262-row ones 0.50x; 2-core AMD EPYC). A 256-row
# block is no larger than the float32 weight gradient whenever the hidden width is 256 or more.
MIN_DEFAULT_BLOCK_ROWS = 256


class LinearGrads(NamedTuple):
    hidden: Optional[torch.Tensor]  # (N, H), in the accumulation dtype
    weight: Optional[torch.Tensor]  # (V, H)
    bias: Optional[torch.Tensor]  # (V,)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def block_rows(vocab: int, block_elements: Optional[int]) -> int:
    """Rows per block: ``block_elements // vocab`` (at least one); by default (None) as many as
    ``DEFAULT_BLOCK_ELEMENTS`` logits but at least ``MIN_DEFAULT_BLOCK_ROWS``."""
    if block_elements is None:
        return max(MIN_DEFAULT_BLOCK_ROWS, DEFAULT_BLOCK_ELEMENTS // max(vocab, 1))
    return max(1, block_elements // max(vocab, 1))


def projected_sweep(hidden, weight, bias, index, options, sums: RowSums, row_grad_weight=None,
                    needs=(True, True, True), block_elements: Optional[int] = None,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, backend: str = "auto") -> Optional[LinearGrads]:
    """Fills ``sums`` for the logits ``hidden @ weight.T + bias`` block by block; with
    ``row_grad_weight`` (N,) also returns the gradients (those ``needs`` asks for: hidden, weight,
    bias) of sum_i row_grad_weight_i * loss_i, in the accumulation dtype.

    ``index`` (N, 1) holds the targets, 0 on ignored rows (their ``row_grad_weight`` is 0).
    The loop converts no tensor to a Python number: on CUDA it never waits for the device."""
    if block_elements is not None and block_elements < 1:
        raise OptionError("block_elements", ">= 1", block_elements)
    if backend not in BACKENDS:
        raise OptionError("backend", f"one of {', '.join(BACKENDS)}", backend)
    rows, width = hidden.shape
    vocab = weight.size(0)
    device, dtype = hidden.device, hidden.dtype
    step = max(1, min(rows, block_rows(vocab, block_elements)))  # an empty batch makes no block
    logits = torch.empty((step, vocab), dtype=dtype, device=device)
    if backend == "auto":
        backend = choose_backend(logits, options)
    weight_t = weight.t()

    grads = None
    if row_grad_weight is not None:
        acc = accumulation_dtype(dtype)
        need_hidden, need_weight, need_bias = needs
        grads = LinearGrads(
            torch.empty((rows, width), dtype=acc, device=device) if need_hidden else None,
            torch.zeros((vocab, width), dtype=acc, device=device) if need_weight else None,
            torch.zeros(vocab, dtype=acc, device=device) if need_bias and bias is not None else None)
        upcast = dtype != acc
        # half inputs: the block's gradient and the weight go to the accumulation dtype for the products
        weight_acc = weight.to(acc) if upcast and need_hidden else weight
        grad_acc = torch.empty((step, vocab), dtype=acc, device=device) if upcast else None
        row_scale = torch.empty(step, dtype=torch.float32, device=device) if dtype == torch.float16 else None

    for start in range(0, rows, step):
        end = min(rows, start + step)
        block = logits[:end - start]
        block_hidden = hidden[start:end]
        if bias is None:
            torch.mm(block_hidden, weight_t, out=block)
        else:
            torch.addmm(bias, block_hidden, weight_t, out=block)
        grad = scale = None
        if grads is not None:
            grad = block  # the sweep reads each row before it writes the row's gradient
            scale = None if row_scale is None else row_scale[:end - start]
        _sweep(backend, block, index[start:end], options, sums.rows(start, end), grad,
               None if grads is None else row_grad_weight[start:end], scale, chunk_elements)
        if grads is None:
            continue
        if upcast:
            grad = grad_acc[:end - start].copy_(block)
            if scale is not None:  # fp16 rows were stored scaled by a power of two: exact to undo
                grad.div_(scale.unsqueeze(-1))
            block_hidden = block_hidden.to(acc)
        if grads.hidden is not None:
            torch.mm(grad, weight_acc, out=grads.hidden[start:end])
        if grads.weight is not None:
            grads.weight.addmm_(grad.t(), block_hidden)
        if grads.bias is not None:
            grads.bias.add_(grad.sum(0))
    return grads


def _sweep(backend, logits, index, options, sums, grad, row_grad_weight, grad_row_scale, chunk_elements):
    if backend == "triton":
        _triton_kernel().triton_sweep(logits, index, options, sums, grad, row_grad_weight, grad_row_scale)
    else:
        chunked_sweep(logits, index, options, sums, grad, row_grad_weight, grad_row_scale, chunk_elements)


class LinearEncouragingLoss(torch.autograd.Function):
    """(loss, nll, ce, bonus, *stats) of ``hidden @ weight.T + bias``; only ``loss`` is differentiable.

    ``row_weight`` (0-dim: 1 for a sum, 1/n for a mean) reduces the loss inside, and the gradients
    are then finished in forward; without it the loss is per row and backward sweeps again."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, valid, options, row_weight, with_stats, block_elements,
                chunk_elements, backend):
        rows = hidden.size(0)
        vocab = weight.size(0)
        acc = accumulation_dtype(hidden.dtype)
        index = target.masked_fill(~valid, 0).unsqueeze(-1)
        needs = tuple(ctx.needs_input_grad[:3])
        ctx.per_row = row_weight is None
        ctx.settings = (options, block_elements, chunk_elements, backend, needs)
        ctx.input_dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        row_grad_weight = None
        if any(needs) and not ctx.per_row:
            row_grad_weight = valid.to(acc) * row_weight.to(acc)
        sums = RowSums.zeros(rows, acc, hidden.device)
        grads = projected_sweep(hidden, weight, bias, index, options, sums, row_grad_weight, needs,
                                block_elements, chunk_elements, backend)
        if ctx.per_row:
            ctx.save_for_backward(hidden, weight, bias, index, valid)
        else:
            ctx.save_for_backward(*(grads or (None, None, None)))
        terms = row_terms_from_sums(sums, valid, options, vocab, with_stats)
        return function_outputs(ctx, terms, None if ctx.per_row else row_weight)

    @staticmethod
    def backward(ctx, grad_output, *unused_side_output_grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "linear_encouraging_loss has no second derivative: its gradient is computed during the "
                "forward pass. Differentiate it without create_graph=True, or project with "
                "encouraging_loss(hidden @ weight.T + bias, ..., impl='reference') for higher-order gradients.")
        options, block_elements, chunk_elements, backend, needs = ctx.settings
        no_grads = (None,) * 8
        if ctx.per_row:
            hidden, weight, bias, index, valid = ctx.saved_tensors
            acc = accumulation_dtype(hidden.dtype)
            sums = RowSums.zeros(hidden.size(0), acc, hidden.device)
            grads = projected_sweep(hidden, weight, bias, index, options, sums,
                                    grad_output.to(acc) * valid.to(acc), needs, block_elements,
                                    chunk_elements, backend)
            factor = None
        else:
            grads = ctx.saved_tensors
            # the common case (a sum, no loss scaling) returns the stored gradients without a copy
            factor = None if float(grad_output) == 1.0 else grad_output
        return tuple(_finish(grad, factor, dtype) for grad, dtype in zip(grads, ctx.input_dtypes)) + no_grads


def _finish(grad, factor, dtype):
    """``grad`` times the upstream scalar ``factor`` (when given), rounded once to ``dtype``."""
    if grad is None:
        return None
    if factor is not None:  # out of place: a retained graph may replay backward
        grad = grad * factor.to(grad.dtype)
    return grad.to(dtype)

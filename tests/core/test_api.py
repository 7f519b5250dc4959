"""The plain-PyTorch API against torch's conventions: reduction, class layout, detached logging
values, option errors, torch.compile."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from encouraging_loss import EncouragingLoss, EncouragingLossOptions, OptionError, encouraging_loss

IMPLS = ("fused", "reference")


def batch(shape, classes, seed=0, ignore=(), ignore_index=-100):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, classes, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, classes, shape, generator=generator)
    target.view(-1)[list(ignore)] = ignore_index
    return logits, target


@pytest.mark.parametrize("impl", IMPLS)
def test_defaults_follow_torch_cross_entropy(impl):
    """Default reduction 'mean' over non-ignored tokens and ignore_index -100, for the function and
    the module: at rho 0 without smoothing the loss is torch's cross-entropy."""
    logits, target = batch((10,), 7, ignore=(2, 5))
    expected = F.cross_entropy(logits, target)
    torch.testing.assert_close(encouraging_loss(logits, target, bonus_rho=0.0, impl=impl).loss, expected)
    torch.testing.assert_close(EncouragingLoss(bonus_rho=0.0, impl=impl)(logits, target), expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_class_layout_with_class_dim(impl, reduction):
    """logits (N, C, d1, d2) and target (N, d1, d2), as nn.CrossEntropyLoss takes them."""
    logits, target = batch((2, 3, 4), 6, seed=1, ignore=(0, 7))
    torch_layout = logits.movedim(-1, 1).contiguous().requires_grad_()
    out = encouraging_loss(torch_layout, target, class_dim=1, reduction=reduction, impl=impl,
                           bonus_rho=0.0, label_smoothing=0.2)
    # fairseq's smoothing (eps over the C - 1 other classes) is torch's with eps * C / (C - 1)
    expected = F.cross_entropy(torch_layout, target, reduction=reduction, label_smoothing=0.2 * 6 / 5)
    torch.testing.assert_close(out.loss, expected)
    (grad,) = torch.autograd.grad(out.loss.sum(), torch_layout)
    (expected_grad,) = torch.autograd.grad(expected.sum(), torch_layout)
    torch.testing.assert_close(grad, expected_grad)

    last_dim = encouraging_loss(logits, target, reduction=reduction, impl=impl, label_smoothing=0.1)
    module = EncouragingLoss(label_smoothing=0.1, reduction=reduction, impl=impl, class_dim=1)
    torch.testing.assert_close(module(logits.movedim(-1, 1), target), last_dim.loss)


def test_layout_errors_point_to_class_dim():
    logits, target = batch((2, 3), 5)
    with pytest.raises(ValueError, match="pass class_dim=1"):
        encouraging_loss(logits.movedim(-1, 1), target)  # torch's layout without class_dim
    with pytest.raises(OptionError, match="^class_dim must be"):
        encouraging_loss(logits, target, class_dim=3)


@pytest.mark.parametrize("impl", IMPLS)
def test_model_holding_the_loss_copies_and_averages_after_backward(impl):
    """last_output keeps detached values only: deepcopy (and AveragedModel, which deep-copies)
    of a model that owns the loss module work after backward."""
    model = nn.Module()
    model.body = nn.Linear(4, 9)
    model.loss = EncouragingLoss(label_smoothing=0.1, impl=impl, with_stats=True)
    generator = torch.Generator().manual_seed(0)
    features, target = torch.randn(6, 4, generator=generator), torch.randint(0, 9, (6,), generator=generator)
    loss = model.loss(model.body(features), target)
    loss.backward()
    output = model.loss.last_output
    tensors = [output.loss, output.nll_loss, output.ce_loss, output.bonus, *output.stats.values()]
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
    torch.testing.assert_close(output.loss, loss.detach())
    copied = copy.deepcopy(model)
    torch.testing.assert_close(copied.loss.last_output.loss, loss.detach())
    averaged = AveragedModel(model)
    averaged.update_parameters(model)
    torch.testing.assert_close(averaged.module.body.weight, model.body.weight)


FLOAT_FIELDS = ("label_smoothing", "bonus_rho", "el_label_smoothing", "log_end", "bonus_gamma", "bonus_start")


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "0.5", True])
def test_every_float_option_must_be_a_finite_number(field, value):
    with pytest.raises(OptionError) as caught:
        EncouragingLossOptions(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} must be ")


def test_options_accept_their_whole_ranges():
    EncouragingLossOptions(label_smoothing=0, bonus_rho=0, el_label_smoothing=0.999, log_end=1,
                           bonus_gamma=1e6, bonus_start=0.999)


@pytest.mark.parametrize("module", [False, True])
def test_compiles_without_graph_breaks(module):
    """Under torch.compile the function takes the reference path: one graph, no .item() syncs (the
    fused path used to break the graph 11 times). fullgraph=True fails on any break."""
    options = EncouragingLossOptions(label_smoothing=0.1, bonus="power", bonus_gamma=0.5, bonus_start=0.2)
    logits, target = batch((3, 5), 11, ignore=(4,))
    loss_fn = EncouragingLoss(options, with_stats=True)

    def step(logits, target):
        if module:
            return loss_fn(logits, target)
        out = encouraging_loss(logits, target, options, impl="fused", with_stats=True)
        return out.loss + 0.0 * out.stats["margin"]

    explanation = torch._dynamo.explain(step)(logits, target)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits, target), step(logits, target))


def test_compiled_target_check_asserts_without_a_sync():
    """Under torch.compile the target check is an assertion in the graph (no .item(), no break):
    the eager backend runs it as an op that raises."""
    logits, target = batch((6,), 5)
    target[2] = 5
    compiled = torch.compile(lambda x, y: encouraging_loss(x, y).loss, backend="eager", fullgraph=True)
    with pytest.raises(RuntimeError, match=r"class indices in \[0, 5\) or ignore_index \(-100\)"):
        compiled(logits, target)


def penalty_problem():
    """A layer, its input and targets, the same on every call."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(7, generator=generator, dtype=torch.float64)
    hidden = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    return weight, bias, hidden, torch.randint(0, 7, (6,), generator=generator)


def gradient_penalty(weight, impl, create_graph=True):
    """A gradient penalty: the squared norm of the loss's gradient over a layer's weight."""
    _, bias, hidden, target = penalty_problem()
    loss = encouraging_loss(hidden @ weight.T + bias, target, impl=impl, label_smoothing=0.1, log_end=0.75).loss
    (weight_grad,) = torch.autograd.grad(loss, weight, create_graph=create_graph)
    return weight_grad.pow(2).sum()


def test_double_backward_is_refused_by_the_fused_path_and_exact_on_the_reference():
    """The fused path's gradient is computed in the forward sweep, a constant to autograd: a graph of
    the gradient would miss the second derivative (it gave a wrong penalty gradient, silently)."""
    weight = penalty_problem()[0].requires_grad_()
    for impl in ("fused", "auto"):
        with pytest.raises(RuntimeError, match="no second derivative.*impl='reference'"):
            gradient_penalty(weight, impl).backward()
    gradient_penalty(weight, "reference").backward()
    # the reference's second derivative against central differences of the penalty (first derivatives only)
    step = 1e-6
    for index in [(0, 0), (3, 2), (6, 4)]:
        plus, minus = weight.detach().clone(), weight.detach().clone()
        plus[index] += step
        minus[index] -= step
        numeric = (gradient_penalty(plus.requires_grad_(), "fused", create_graph=False)
                   - gradient_penalty(minus.requires_grad_(), "fused", create_graph=False)) / (2 * step)
        assert weight.grad[index].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


def test_first_order_backward_is_unaffected_by_the_double_backward_guard():
    logits, target = batch((8,), 5)
    for impl in IMPLS:
        leaf = logits.clone().requires_grad_()
        (grad,) = torch.autograd.grad(encouraging_loss(leaf, target, impl=impl).loss, leaf)
        assert torch.isfinite(grad).all()


def test_the_module_passes_its_impl_on():
    """EncouragingLoss(impl=...) reaches the function: the reference path gives second derivatives,
    the fused one refuses them."""
    logits, target = batch((6,), 5)
    for impl, works in (("reference", True), ("fused", False)):
        leaf = logits.clone().requires_grad_()
        loss = EncouragingLoss(impl=impl, label_smoothing=0.1)(leaf, target)
        if works:
            (grad,) = torch.autograd.grad(loss, leaf, create_graph=True)
            grad.pow(2).sum().backward()
            assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
        else:
            with pytest.raises(RuntimeError, match="no second derivative"):
                torch.autograd.grad(loss, leaf, create_graph=True)

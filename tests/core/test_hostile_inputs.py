"""Input that a careless or hostile caller gives the loss: out-of-range targets, masked (-inf)
logits, and a Triton kernel that fails or disagrees on the GPU (simulated on CPU)."""
import logging

import pytest
import torch
import torch.nn.functional as F

from encouraging_loss import EncouragingLossOptions, OptionError, encouraging_loss
from encouraging_loss.ops import chunked, fused, triton_kernel

IMPLS = ("fused", "reference")
PAD = 1


def batch(rows=12, classes=40, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(2, classes, (rows,), generator=generator)
    target[3] = PAD
    return logits.to(dtype), target


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [40, 41, 10**6, -1, -100])
def test_out_of_range_targets_are_refused_naming_the_value(impl, bad):
    logits, target = batch()
    target[7] = bad
    with pytest.raises(ValueError, match=rf"class indices in \[0, 40\) or ignore_index \(1\), got {bad}$"):
        encouraging_loss(logits, target, ignore_index=PAD, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_ignore_index_outside_the_classes_is_not_a_bad_target(impl):
    logits, target = batch()
    target[3] = -100
    out = encouraging_loss(logits, target, impl=impl, reduction="none")  # ignore_index=-100
    assert out.loss[3] == 0 and torch.isfinite(out.loss).all()


def test_targets_must_be_integers():
    logits, target = batch()
    with pytest.raises(ValueError, match="^target must be a tensor of integer class indices, got torch.float32$"):
        encouraging_loss(logits, target.float())


@pytest.mark.parametrize("logits,target,match", [
    (torch.ones(4, 6, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), "^logits must be a floating-point tensor"),
    (torch.ones(4, 6, dtype=torch.complex64), torch.zeros(4, dtype=torch.int64), "^logits must be a floating-point"),
    (torch.ones(4, 0), torch.zeros(4, dtype=torch.int64), r"^logits must be at least one class .*got \(4, 0\)$"),
    (torch.tensor(1.0), torch.tensor(0), r"^logits must be a tensor with a class dimension, got \(\)$"),
    ([[0.0, 1.0]], torch.zeros(1, dtype=torch.int64), "^logits must be a torch.Tensor, got 'list'$"),
    (torch.ones(2, 3), [0, 1], "^target must be a torch.Tensor, got 'list'$"),
    (torch.ones(2, 3), torch.tensor([True, False]), "^target must be a tensor of integer class indices"),
])
def test_arguments_torch_refuses_are_refused_by_name(logits, target, match):
    """One line naming the argument, as OptionError (a ValueError), before any kernel runs."""
    for impl in IMPLS:
        with pytest.raises(OptionError, match=match):
            encouraging_loss(logits, target, impl=impl)


@pytest.mark.parametrize("ignore_index", [1.5, True, "-100", 2**63, -(2**63) - 1, None])
def test_ignore_index_must_be_an_int64(ignore_index):
    logits, target = batch()
    with pytest.raises(OptionError, match="^ignore_index must be an integer in int64's range, got "):
        encouraging_loss(logits, target, ignore_index=ignore_index)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
@pytest.mark.parametrize("impl", IMPLS)
def test_narrow_integer_targets_work_like_int64(dtype, impl):
    logits, target = batch()
    target[[2, 9]] = 7  # ignored below: an ignore_index every dtype can hold
    results = []
    for tgt in (target, target.to(dtype)):
        leaf = logits.clone().requires_grad_()
        out = encouraging_loss(leaf, tgt, impl=impl, ignore_index=7, label_smoothing=0.1, with_stats=True)
        out.loss.backward()
        results.append((out.loss, out.stats["tokens"], leaf.grad))
    for expected, got in zip(*results):
        assert torch.equal(expected, got)
    assert results[0][1] == len(target) - 2


def masked_batch(seed=0):
    """Logits with -inf on random non-target classes, one row masked on half its classes."""
    logits, target = batch(seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(logits.shape, generator=generator) < 0.3
    mask[5, :20] = True
    mask[torch.arange(len(target)), target] = False
    return logits.masked_fill(mask, float("-inf")), target, mask


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_masked_logits_match_torch_cross_entropy_at_rho_zero(impl, label_smoothing):
    """-inf logits are masking: the loss is torch's cross-entropy (fairseq's smoothing is torch's
    with eps * C / (C - 1)); with smoothing, torch's loss of a masked row is inf, and so is ours."""
    logits, target, _ = masked_batch()
    classes = logits.size(-1)
    expected = F.cross_entropy(logits, target, ignore_index=PAD, reduction="none",
                               label_smoothing=label_smoothing * classes / (classes - 1))
    got = encouraging_loss(logits, target, ignore_index=PAD, reduction="none", impl=impl, bonus_rho=0.0,
                           label_smoothing=label_smoothing).loss
    if label_smoothing == 0.0:
        assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("options", [dict(label_smoothing=0.0), dict(label_smoothing=0.1),
                                     dict(label_smoothing=0.1, bonus="power", bonus_gamma=0.5, bonus_start=0.1),
                                     dict(label_smoothing=0.1, bonus="cosine", log_end=1.0)])
def test_masked_logits_give_finite_bonus_and_gradient(impl, options):
    """A masked class has p = 0, where every bonus is 0: the same bonus, nll and gradient as with a
    very negative finite logit (exp underflows to exactly 0 in float64)."""
    logits, target, mask = masked_batch(seed=3)
    finite = logits.masked_fill(mask, -1e4)
    results = []
    for given in (logits, finite):
        leaf = given.clone().requires_grad_()
        out = encouraging_loss(leaf, target, ignore_index=PAD, reduction="none", impl=impl, **options)
        (out.loss * torch.linspace(0.5, 2.0, len(target), dtype=torch.float64)).sum().backward()
        results.append((out, leaf.grad))
    (masked, masked_grad), (unmasked, unmasked_grad) = results
    assert torch.isfinite(masked.bonus).all() and torch.isfinite(masked_grad).all()
    torch.testing.assert_close(masked.bonus, unmasked.bonus)
    torch.testing.assert_close(masked.nll_loss, unmasked.nll_loss)
    torch.testing.assert_close(masked_grad, unmasked_grad)
    if options["label_smoothing"] == 0.0:
        torch.testing.assert_close(masked.loss, unmasked.loss)


@pytest.fixture
def fake_gpu(monkeypatch, caplog):
    """The fused path on CPU tensors as it runs on CUDA: Triton is a candidate, checked afresh."""
    monkeypatch.setattr(fused, "triton_candidate", lambda logits: True)
    monkeypatch.setattr(fused, "_VERIFIED", {})
    caplog.set_level(logging.WARNING, logger=fused.__name__)
    launches = []

    def use_launcher(sweep):
        def counted(*args, **kwargs):
            launches.append(args[0].shape)
            return sweep(*args, **kwargs)
        monkeypatch.setattr(triton_kernel, "triton_sweep", counted)
        return launches
    return use_launcher


def failing_kernel(*args, **kwargs):
    raise RuntimeError("triton.compiler.errors.CompilationError: at 12:4\nunsupported op")


def wrong_sums(logits, index, options, sums, grad=None, grad_weight=None, grad_row_scale=None):
    """The chunked sweep, then a 1% error in the others' exp-sum: what a miscompiled kernel might give."""
    chunked.chunked_sweep(logits, index, options, sums, grad, grad_weight, grad_row_scale)
    sums.others_sum.mul_(1.01)


def wrong_gradient(logits, index, options, sums, grad=None, grad_weight=None, grad_row_scale=None):
    chunked.chunked_sweep(logits, index, options, sums, grad, grad_weight, grad_row_scale)
    grad[:, 1::7] *= 1.001


@pytest.mark.parametrize("kernel,problem", [(failing_kernel, "failed (RuntimeError: triton.compiler"),
                                            (wrong_sums, "disagrees with the reference (loss"),
                                            (wrong_gradient, "disagrees with the reference (gradient")])
def test_gpu_safety_net_falls_back_to_the_chunked_path(fake_gpu, caplog, kernel, problem):
    launches = fake_gpu(kernel)
    logits, target = batch(classes=300, dtype=torch.float32)
    expected = encouraging_loss(logits.double(), target, ignore_index=PAD, impl="reference", label_smoothing=0.1)
    for rho in (1.0, 0.5, 1.0):  # a schedule changes rho: still the same option set, checked once
        leaf = logits.clone().requires_grad_()
        out = encouraging_loss(leaf, target, ignore_index=PAD, label_smoothing=0.1, bonus_rho=rho)
        out.loss.backward()
        assert torch.isfinite(leaf.grad).all()
    torch.testing.assert_close(out.loss.double(), expected.loss, rtol=1e-5, atol=1e-5)
    assert len(launches) == 1, "the kernel ran beyond its self-check"
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert problem in warnings[0] and "using the chunked PyTorch path" in warnings[0]
    # another option set is checked on its own
    encouraging_loss(logits, target, ignore_index=PAD, label_smoothing=0.2)
    assert len(launches) == 2 and len(caplog.records) == 2


def test_float64_logits_never_try_the_kernel(fake_gpu):
    launches = fake_gpu(failing_kernel)
    logits, target = batch()
    encouraging_loss(logits, target, ignore_index=PAD)
    assert launches == [] and fused._VERIFIED == {}


@pytest.mark.parametrize("options", [dict(label_smoothing=0.1), dict(log_end=1.0),
                                     dict(label_smoothing=0.1, log_end=1.0, el_label_smoothing=0.9),
                                     dict(label_smoothing=0.2, log_end=0.05),
                                     dict(label_smoothing=0.1, bonus="power", bonus_gamma=0.1, bonus_start=0.3),
                                     dict(label_smoothing=0.1, bonus="cosine")])
def test_self_check_passes_a_correct_kernel(fake_gpu, caplog, options):
    """No false alarm (which would cost a GPU run the kernel's speed): a sweep that computes in
    float32 as the kernel does (the chunked one stands in) passes, the ill-conditioned plain bonus
    (log_end=1) and fp16 included."""
    launches = fake_gpu(chunked.chunked_sweep)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits, target = batch(classes=300, dtype=dtype)
        encouraging_loss(logits, target, ignore_index=PAD, **options)
    assert len(launches) == 3 + 3 and caplog.records == []  # per dtype: the check, then the call
    assert all(fused._VERIFIED.values()) and len(fused._VERIFIED) == 3

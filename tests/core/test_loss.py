"""The encouraging loss against a naive implementation written here from the paper's formula."""
import itertools
import math

import pytest
import torch

from encouraging_loss import (EncouragingLoss, EncouragingLossOptions, OptionError, encouraging_loss,
                              linear_encouraging_loss)
from encouraging_loss.ops.chunked import chunked_sweep
from encouraging_loss.ops.linear import projected_sweep
from encouraging_loss.ops.rows import RowSums

IMPLS = ("fused", "reference")
OPTION_CASES = [
    dict(),
    dict(label_smoothing=0.1, log_end=0.5),
    dict(label_smoothing=0.1, log_end=1.0),
    dict(label_smoothing=0.1, log_end=0.75, bonus_rho=0.3, el_label_smoothing=0.0),
    dict(label_smoothing=0.2, el_label_smoothing=0.05, bonus="power", bonus_gamma=0.5),
    dict(bonus="power", bonus_gamma=2.0, bonus_start=0.3),
    dict(label_smoothing=0.1, bonus="cosine", bonus_rho=2.0),
    dict(label_smoothing=0.1, bonus_start=0.2, log_end=0.6),
    dict(label_smoothing=0.1, bonus_rho=0.0),
]


def naive_loss_per_token(logits, target, opts, pad):
    """Token by token, class by class, straight from the formula (float64, Python math)."""
    eps, eps_b, rho = opts.label_smoothing, opts.bonus_smoothing, opts.bonus_rho
    vocab = logits.size(-1)

    def raw_bonus(p, one_minus_p=None):
        one_minus_p = 1 - p if one_minus_p is None else one_minus_p
        if opts.bonus == "log":
            end = min(opts.log_end, 1 - 2**-24)  # the plain bonus stops just short of p = 1
            return math.log(one_minus_p) if p <= end else math.log(1 - end) - (p - end) / (1 - end)
        if opts.bonus == "power":
            return -(p ** opts.bonus_gamma)
        return math.cos(math.pi * p) - 1

    def bonus(p, one_minus_p):
        return raw_bonus(p, one_minus_p) - raw_bonus(opts.bonus_start) if p >= opts.bonus_start else 0.0

    losses = []
    for row, y in zip(logits.tolist(), target.tolist()):
        if y == pad:
            losses.append(0.0)
            continue
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        log_p = [v - log_z for v in row]
        p = [math.exp(v) for v in log_p]
        # 1 - p_j as the other classes' mass: exact where p_j is close to 1
        exps = [math.exp(v - top) for v in row]
        one_minus_p = [sum(e for k, e in enumerate(exps) if k != j) / sum(exps) for j in range(vocab)]
        # fairseq: smoothed target q = (1 - eps - eps/(V-1)) on y plus eps/(V-1) everywhere
        q = [eps / (vocab - 1) + (1 - eps - eps / (vocab - 1)) * (j == y) for j in range(vocab)]
        ce = -sum(qj * lpj for qj, lpj in zip(q, log_p))
        bonus_term = (1 - eps_b) * bonus(p[y], one_minus_p[y]) + eps_b / vocab * sum(
            bonus(pj, qj) for pj, qj in zip(p, one_minus_p))
        losses.append(ce + rho * bonus_term)
    return torch.tensor(losses, dtype=torch.float64)


def random_batch(shape, vocab, pad, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, vocab, shape, generator=gen)
    flat_logits, flat_target = logits.view(-1, vocab), target.view(-1)
    # a confident correct row (p_y > LE; not so close to 1 that the loss is ill-conditioned) and padding
    flat_logits[0, flat_target[0]] += 12.0
    flat_target[1::5] = pad
    return logits, target


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(OPTION_CASES)))
@pytest.mark.parametrize("shape,vocab", [((13,), 7), ((3, 5), 50), ((2, 3, 4), 33)])
def test_matches_naive_formula(impl, case, shape, vocab):
    opts = EncouragingLossOptions(**OPTION_CASES[case])
    pad = 1
    logits, target = random_batch(shape, vocab, pad, seed=case)
    expected = naive_loss_per_token(logits.view(-1, vocab), target.view(-1), opts, pad).view(shape)

    per_token = encouraging_loss(logits, target, opts, ignore_index=pad, reduction="none", impl=impl).loss
    assert per_token.shape == target.shape
    torch.testing.assert_close(per_token, expected, rtol=1e-10, atol=1e-10)
    total = encouraging_loss(logits, target, opts, ignore_index=pad, reduction="sum", impl=impl).loss
    torch.testing.assert_close(total, expected.sum(), rtol=1e-10, atol=1e-10)
    mean = encouraging_loss(logits, target, opts, ignore_index=pad, reduction="mean", impl=impl).loss
    torch.testing.assert_close(mean, expected.sum() / target.ne(pad).sum(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [1, 2, 4, 6, 7])
def test_nll_ce_and_bonus_parts(impl, case):
    opts = EncouragingLossOptions(**OPTION_CASES[case])
    logits, target = random_batch((20,), 11, pad=0, seed=100 + case)
    out = encouraging_loss(logits, target, opts, ignore_index=0, reduction="sum", impl=impl)
    valid = target.ne(0)
    log_p = torch.log_softmax(logits, -1)
    nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.nll_loss, nll[valid].sum())
    without_bonus = naive_loss_per_token(logits, target, EncouragingLossOptions(
        label_smoothing=opts.label_smoothing, bonus_rho=0.0), pad=0)
    torch.testing.assert_close(out.ce_loss, without_bonus.sum())
    torch.testing.assert_close(out.loss, out.ce_loss + opts.bonus_rho * out.bonus)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [0, 2, 4, 5, 6, 7])
def test_gradcheck_float64(impl, case):
    opts = EncouragingLossOptions(**OPTION_CASES[case])
    logits, target = random_batch((6,), 5, pad=2, seed=7, scale=1.5)
    logits.requires_grad_(True)
    # 'none' also checks that per-token upstream gradients weight each row
    for reduction in ("sum", "mean", "none"):
        assert torch.autograd.gradcheck(
            lambda x: encouraging_loss(x, target, opts, ignore_index=2, reduction=reduction, impl=impl).loss,
            (logits,), eps=1e-6, atol=1e-6)


def test_gradient_on_target_logit_is_minus_one_for_plain_bonus():
    """The paper's point: with b = log(1 - p) (LE = 1, no smoothing) dL/dz_y = -1 whatever p is."""
    logits = torch.tensor([[4.0, 0.0, -1.0], [0.0, 0.5, 0.2], [9.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    for impl in IMPLS:
        x = logits.clone().requires_grad_(True)
        encouraging_loss(x, target, log_end=1.0, reduction="sum", impl=impl).loss.backward()
        torch.testing.assert_close(x.grad.gather(-1, target.unsqueeze(-1)).squeeze(-1),
                                   torch.full((3,), -1.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("log_end", [0.5, 1.0])
@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_extremes_stay_finite_and_accurate(dtype, log_end, impl):
    """p rounding to 1, very negative logits, and the plain bonus (LE = 1) in low precision."""
    vocab = 40
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    logits[0, 0] = 60.0  # p_y == 1 in every float format
    logits[1, 1] = 12.0  # p_y rounds to 1 in fp16
    logits[2] = -60000.0 if dtype == torch.float16 else -1e30  # all hugely negative, p uniform
    logits[3, 3] = -60.0  # p_y underflows
    logits[4, :] = 0.0
    logits = logits.to(dtype)
    opts = EncouragingLossOptions(label_smoothing=0.1, log_end=log_end)

    x = logits.clone().requires_grad_(True)
    out = encouraging_loss(x, target, opts, impl=impl)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad.float()).all()

    x64 = logits.double().requires_grad_(True)
    ref = encouraging_loss(x64, target, opts, impl="reference")
    ref.loss.backward()
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol)


def test_stats_match_direct_computation():
    logits, target = random_batch((30,), 9, pad=3, seed=11)
    opts = EncouragingLossOptions(log_end=0.6)
    valid = target.ne(3)
    p = torch.softmax(logits, -1)
    p_y = p.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)[valid]
    z_y = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)[valid]
    others = logits[valid].clone()
    others[torch.arange(len(others)), target[valid]] = -math.inf
    margin = z_y - others.max(-1).values
    expected = {"tokens": valid.sum(), "target_prob": p_y.sum(), "target_prob_above_half": (p_y > 0.5).sum(),
                "target_prob_above_log_end": (p_y > 0.6).sum(), "margin": margin.sum(),
                "correct": (logits[valid].argmax(-1) == target[valid]).sum()}
    for impl in IMPLS:
        stats = encouraging_loss(logits, target, opts, ignore_index=3, impl=impl, with_stats=True).stats
        for name, value in expected.items():
            torch.testing.assert_close(stats[name].double(), value.double(), rtol=1e-5, atol=1e-5, msg=name)


def test_all_padding_gives_zero_loss_and_gradient():
    logits = torch.randn(4, 6, requires_grad=True)
    target = torch.full((4,), -100)
    for impl, reduction in itertools.product(IMPLS, ("sum", "mean")):
        out = encouraging_loss(logits, target, impl=impl, reduction=reduction)
        (grad,) = torch.autograd.grad(out.loss, logits)
        assert out.loss.item() == 0.0 and grad.abs().max().item() == 0.0


def test_module_matches_functional_and_keeps_last_output():
    logits, target = random_batch((4, 6), 12, pad=-100, seed=5)
    module = EncouragingLoss(label_smoothing=0.1, log_end=0.5)
    loss = module(logits, target)
    expected = encouraging_loss(logits, target, label_smoothing=0.1, log_end=0.5, reduction="mean").loss
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(module.last_output.loss, loss)
    assert "log_end=0.5" in repr(module)


@pytest.mark.parametrize("field,value,requirement", [
    ("log_end", 0.0, "in (0, 1]"), ("log_end", 1.5, "in (0, 1]"),
    ("label_smoothing", 1.0, "in [0, 1)"), ("label_smoothing", -0.1, "in [0, 1)"),
    ("el_label_smoothing", 1.2, "in [0, 1)"), ("bonus_rho", -1.0, "a finite number >= 0"),
    ("bonus", "square", "one of log, power, cosine"), ("bonus_gamma", 0.0, "a finite number > 0"),
    ("bonus_start", 1.0, "in [0, 1)"),
])
def test_bad_options_name_the_keyword(field, value, requirement):
    with pytest.raises(OptionError) as caught:
        EncouragingLossOptions(**{field: value})
    error = caught.value
    assert (error.field, error.requirement, error.value) == (field, requirement, value)
    assert str(error) == f"{field} must be {requirement}, got {value!r}"
    assert isinstance(error, ValueError)


def test_shape_mismatch_and_bad_impl_are_clear_errors():
    with pytest.raises(ValueError, match="class_dim=1"):
        encouraging_loss(torch.randn(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(OptionError, match=r"^impl must be one of auto, fused, reference, got 'fast'$") as caught:
        encouraging_loss(torch.randn(3, 5), torch.zeros(3, dtype=torch.long), impl="fast")
    assert caught.value.field == "impl"
    with pytest.raises(OptionError, match="^reduction must be"):
        EncouragingLoss(reduction="average")



def test_chunk_and_block_sizes_below_one_are_refused_by_name():
    """Every entry point refuses a chunk or block size below one with the field's name, also the ops
    that the public functions call (a zero would make an empty range of chunks and no loss at all)."""
    logits, target = torch.randn(3, 5), torch.tensor([0, 1, 2])
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    calls = [
        ("chunk_elements", "an integer >= 1", lambda: encouraging_loss(logits, target, chunk_elements=0)),
        ("chunk_elements", "an integer >= 1", lambda: linear_encouraging_loss(hidden, weight, target, chunk_elements=0)),
        ("block_elements", "None or an integer >= 1",
         lambda: linear_encouraging_loss(hidden, weight, target, block_elements=0)),
        ("chunk_elements", ">= 1", lambda: chunked_sweep(logits, target.unsqueeze(-1), EncouragingLossOptions(),
                                                         RowSums.zeros(3, torch.float32, logits.device),
                                                         chunk_elements=0)),
        ("block_elements", ">= 1", lambda: projected_sweep(hidden, weight, None, target.unsqueeze(-1),
                                                           EncouragingLossOptions(),
                                                           RowSums.zeros(3, torch.float32, hidden.device),
                                                           block_elements=0)),
    ]
    for field, requirement, call in calls:
        with pytest.raises(OptionError) as caught:
            call()
        assert str(caught.value) == f"{field} must be {requirement}, got 0"

@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_at_p_exactly_log_end(impl):
    """A two-class tie puts p_y exactly at LE = 0.5, where log(1 - p) meets its tangent: the slope
    there is b'(LE) = -1 / (1 - LE), once (not from both pieces)."""
    logits = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0])
    encouraging_loss(logits, target, log_end=0.5, impl=impl).loss.backward()
    # no smoothing: w_y = 1, w_other = 0, so dL/dz_y = (p - 1) + g_y (1 - p) with g_y = p b'(p);
    # p = 0.5, b' = -2 gives -1 (a doubled slope would give -1.5)
    p, slope = 0.5, -2.0
    expected_target = (p - 1) + p * slope * (1 - p)
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor(expected_target, dtype=torch.float64))

"""The projection fused with the loss, linear_encouraging_loss(hidden, weight, target, bias=...),
against encouraging_loss on the explicit logits hidden @ weight.T + bias: values, diagnostics and the
gradients of hidden, weight and bias, block by block, in float64 and half precision."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import repo_env
from encouraging_loss import EncouragingLossOptions, encouraging_loss, linear_encouraging_loss
from encouraging_loss.ops import linear as linear_ops

TESTS = Path(__file__).resolve().parent
PAD = 1
OPTION_SETS = {
    "paper": dict(label_smoothing=0.1, log_end=0.5),
    "no_smoothing": dict(label_smoothing=0.0, log_end=0.5),
    "no_bonus_smoothing": dict(label_smoothing=0.1, el_label_smoothing=0.0),
    "other_bonus_smoothing": dict(label_smoothing=0.1, el_label_smoothing=0.3, bonus_rho=2.0),
    "small_log_end": dict(label_smoothing=0.2, log_end=0.05),
    "plain_bonus": dict(label_smoothing=0.1, log_end=1.0),
    "power": dict(label_smoothing=0.1, bonus="power", bonus_gamma=0.5),
    "cosine": dict(label_smoothing=0.1, bonus="cosine"),
    "bonus_start": dict(label_smoothing=0.1, bonus_start=0.3),
    "rho_zero": dict(label_smoothing=0.1, bonus_rho=0.0),
}
GRAD_NAMES = ("hidden", "weight", "bias")


def make_projection(rows=37, width=12, vocab=101, dtype=torch.float64, seed=0, pad_rows=(1, 8, 20), spike=30.0):
    """hidden, weight, bias and target whose logits have confident rows (a spike of ``spike`` on the
    target through a dedicated hidden feature), a confidently wrong rival and padding."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    weight = torch.randn(vocab, width, generator=generator, dtype=torch.float64) / width ** 0.5 * 3
    bias = torch.randn(vocab, generator=generator, dtype=torch.float64)
    target = torch.randint(0, vocab, (rows,), generator=generator)
    confident, rival = 3 % vocab, 7 % vocab
    weight[:, 0] = 0.0
    weight[confident, 0], weight[rival, 0] = 1.0, -1.0
    hidden[:, 0] = 0.0
    hidden[::5, 0] = spike
    target[::5] = confident
    hidden[2::6, 0] = -12.0  # the rival far ahead
    target[[row for row in pad_rows if row < rows]] = PAD
    return hidden.to(dtype), weight.to(dtype), bias.to(dtype), target


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def fused_projection(hidden, weight, bias, target, options, reduction, upstream=None, **kwargs):
    hidden, weight, bias = leaves(hidden, weight, bias)
    out = linear_encouraging_loss(hidden, weight, target, bias=bias, ignore_index=PAD, reduction=reduction,
                                  with_stats=True, **options, **kwargs)
    (out.loss * (torch.ones_like(out.loss) if upstream is None else upstream)).sum().backward()
    return out, [None if t is None else t.grad for t in (hidden, weight, bias)]


def explicit_logits(hidden, weight, bias, target, options, reduction, upstream=None, impl="reference"):
    hidden, weight, bias = leaves(hidden, weight, bias)
    logits = hidden @ weight.T + (0 if bias is None else bias)
    out = encouraging_loss(logits, target, ignore_index=PAD, reduction=reduction, impl=impl, with_stats=True,
                           **options)
    (out.loss * (torch.ones_like(out.loss) if upstream is None else upstream)).sum().backward()
    return out, [None if t is None else t.grad for t in (hidden, weight, bias)]


def assert_same(got, expected, got_grads, expected_grads, rtol=1e-12, atol=1e-12):
    for name in ("loss", "nll_loss", "ce_loss", "bonus"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")
    for name, value in expected.stats.items():
        torch.testing.assert_close(got.stats[name].double(), value.double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"stat {name}: {m}")
    for name, grad, want in zip(GRAD_NAMES, got_grads, expected_grads):
        assert (grad is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(grad, want, rtol=rtol, atol=atol, msg=lambda m: f"{name} gradient: {m}")


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_float64_matches_explicit_logits(option_set, reduction):
    """Blocks of 5 rows (8 blocks, the last one short), chunks of 2 rows inside each."""
    inputs = make_projection()
    upstream = torch.randn(37, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    expected = explicit_logits(*inputs, OPTION_SETS[option_set], reduction, upstream)
    got = fused_projection(*inputs, OPTION_SETS[option_set], reduction, upstream, block_elements=5 * 101,
                           chunk_elements=2 * 101)
    # The plain bonus near p_y = 1 is ill-conditioned in the reference (see test_fused); the fused
    # sweep on the explicit logits is the exact counterpart there.
    atol = 1e-8 if option_set == "plain_bonus" else 1e-12
    assert_same(got[0], expected[0], got[1], expected[1], atol=atol)
    if option_set == "plain_bonus":
        exact = explicit_logits(*inputs, OPTION_SETS[option_set], reduction, upstream, impl="fused")
        assert_same(got[0], exact[0], got[1], exact[1])


@pytest.mark.parametrize("rows,vocab,block", [(37, 1000, 999), (64, 257, 257 * 7 + 3), (5, 3, 1 << 23), (9, 2, 5),
                                              (50, 300, 300 * 16)])
def test_blockings_and_vocab_sizes(rows, vocab, block):
    """One row a block (block < V), blocks and vocabularies that divide nothing (257, 300: not a
    multiple of 256 or of the block), a single block, tiny vocabularies; no bias."""
    hidden, weight, _, target = make_projection(rows, 6, vocab, pad_rows=(1,))
    options = OPTION_SETS["paper"]
    expected = explicit_logits(hidden, weight, None, target, options, "sum")
    got = fused_projection(hidden, weight, None, target, options, "sum", block_elements=block, chunk_elements=777)
    assert_same(got[0], expected[0], got[1], expected[1])


def test_saturated_and_large_logits_with_the_plain_bonus():
    """LE = 1 with p_y rounding to 1 in float32 (a spike of 60) and logits in the thousands: finite
    values and gradients equal to the fused loss on the explicit float64 logits."""
    options = dict(label_smoothing=0.1, log_end=1.0, bonus_rho=2.0)
    for spike in (60.0, 3000.0):
        inputs = make_projection(spike=spike)
        got = fused_projection(*inputs, options, "sum", block_elements=7 * 101)
        expected = explicit_logits(*inputs, options, "sum", impl="fused")
        assert torch.isfinite(got[0].loss) and all(torch.isfinite(g).all() for g in got[1])
        assert_same(got[0], expected[0], got[1], expected[1], atol=1e-10)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2**-7), (torch.float16, 2**-9)])
def test_half_precision_against_float64_on_the_same_rounded_logits(dtype, rtol):
    """Half inputs: the logits are rounded once (as the model's own projection rounds them), the
    gradient of each logit once; everything after that is float32. Expected: float64 on the same
    rounded logits and inputs. Gradients come back in the inputs' dtype."""
    hidden, weight, bias, target = make_projection(rows=64, width=16, vocab=301, dtype=dtype, spike=8.0)
    options = OPTION_SETS["paper"]
    got, got_grads = fused_projection(hidden, weight, bias, target, options, "sum", block_elements=8 * 301)
    rounded_logits = torch.addmm(bias, hidden, weight.T).double().requires_grad_()
    exact = encouraging_loss(rounded_logits, target, ignore_index=PAD, reduction="sum", impl="reference", **options)
    exact.loss.backward()
    g = rounded_logits.grad
    exact_grads = (g @ weight.double(), g.T @ hidden.double(), g.sum(0))
    torch.testing.assert_close(got.loss.double(), exact.loss, rtol=1e-5, atol=1e-5)
    for name, grad, want in zip(GRAD_NAMES, got_grads, exact_grads):
        assert grad.dtype == dtype
        error = (grad.double() - want).norm() / want.norm()
        assert error < rtol, f"{name}: relative error {error:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weight_gradient_accumulates_in_float32_for_half_inputs(dtype):
    """2048 tokens in 256 blocks of 8: summed in the inputs' dtype, the weight gradient would lose
    most of its bits (each addition rounds to 8 or 11 bits of the growing sum). Expected: the float64
    sum over blocks of the same rounded per-block terms, to within one final rounding."""
    rows, width, vocab = 2048, 8, 40
    generator = torch.Generator().manual_seed(3)
    hidden = (torch.rand(rows, width, generator=generator) + 0.5).to(dtype)  # positive: the sum grows
    weight = (torch.randn(vocab, width, generator=generator) * 0.1).to(dtype)
    target = torch.zeros(rows, dtype=torch.long)  # every token pushes class 0 the same way
    options = dict(label_smoothing=0.1)
    _, (_, weight_grad, _) = fused_projection(hidden, weight, None, target, options, "sum", block_elements=8 * vocab)
    logits = (hidden @ weight.T).double().requires_grad_()
    encouraging_loss(logits, target, reduction="sum", impl="reference", **options).loss.backward()
    exact = logits.grad.T @ hidden.double()
    storage = {torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    error = ((weight_grad.double() - exact).abs() / exact.abs().clamp_min(1e-3)).max()
    assert error < 4 * storage, f"largest relative error {error:.3g}"


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_every_token_ignored_gives_zeros(reduction):
    hidden, weight, bias, _ = make_projection(rows=6)
    target = torch.full((6,), PAD)
    out, grads = fused_projection(hidden, weight, bias, target, OPTION_SETS["paper"], reduction, block_elements=202)
    for name in ("loss", "nll_loss", "ce_loss", "bonus"):
        value = getattr(out, name)
        assert torch.equal(value, torch.zeros_like(value)), f"{name}: {value}"
    for name, grad in zip(GRAD_NAMES, grads):
        assert torch.equal(grad, torch.zeros_like(grad)), name
    assert out.stats["tokens"] == 0


def test_an_empty_batch_gives_zeros():
    hidden, weight, bias, _ = make_projection(rows=3)
    out, grads = fused_projection(hidden[:0], weight, bias, torch.zeros(0, dtype=torch.long),
                                  OPTION_SETS["paper"], "sum")
    assert out.loss == 0 and torch.equal(grads[1], torch.zeros_like(weight)) and grads[0].shape == (0, 12)


def test_gradients_accumulate_over_calls_and_replay_on_a_retained_graph():
    """Two batches through the same parameters add into .grad; a retained graph can be backpropagated
    again with other upstream gradients (the stored gradients are not scaled in place)."""
    options = OPTION_SETS["paper"]
    first, second = make_projection(seed=1), make_projection(seed=2)
    weight, bias = leaves(first[1], first[2])
    expected_weight = expected_bias = 0
    for hidden, _, _, target in (first, second):
        out = linear_encouraging_loss(hidden, weight, target, bias=bias, ignore_index=PAD, reduction="mean",
                                      block_elements=303, **options)
        for upstream in (3.0, -0.5):
            out.loss.backward(torch.tensor(upstream, dtype=torch.float64), retain_graph=True)
        _, (_, weight_grad, bias_grad) = explicit_logits(hidden, first[1], first[2], target, options, "mean",
                                                         torch.tensor(2.5, dtype=torch.float64))
        expected_weight, expected_bias = expected_weight + weight_grad, expected_bias + bias_grad
    torch.testing.assert_close(weight.grad, expected_weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bias.grad, expected_bias, rtol=1e-12, atol=1e-12)


def test_only_the_requested_gradients_and_batched_hidden():
    """hidden (B, T, H) against target (B, T); a frozen weight gets no gradient and costs none."""
    hidden, weight, bias, target = make_projection(rows=36)
    hidden_leaf = hidden.view(4, 9, -1).clone().requires_grad_()
    out = linear_encouraging_loss(hidden_leaf, weight, target.view(4, 9), bias=bias, ignore_index=PAD,
                                  reduction="none", block_elements=404, **OPTION_SETS["paper"])
    assert out.loss.shape == (4, 9)
    out.loss.sum().backward()
    expected, (hidden_grad, _, _) = explicit_logits(hidden, weight, bias, target, OPTION_SETS["paper"], "none")
    torch.testing.assert_close(out.loss.view(-1), expected.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden_leaf.grad.view(36, -1), hidden_grad, rtol=1e-12, atol=1e-12)


class LargestTensor(TorchDispatchMode):
    """The largest tensor (in elements) that any op returns while active, with the op's name."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor) and value.numel() > self.largest[0]:
                self.largest = (value.numel(), str(func))
        return result


def test_no_tensor_grows_with_tokens_times_vocabulary():
    """2000 tokens x 500 classes in blocks of 10 rows: no op, forward or backward, makes a tensor
    larger than a block of logits, the weight or the hidden states (the explicit logits would be
    1,000,000 elements)."""
    rows, width, vocab = 2000, 16, 500
    hidden, weight, bias, target = make_projection(rows, width, vocab, dtype=torch.float32)
    hidden, weight, bias = leaves(hidden, weight, bias)
    allowed = max(10 * vocab, vocab * width, rows * width)
    with LargestTensor() as spy:
        out = linear_encouraging_loss(hidden, weight, target, bias=bias, ignore_index=PAD, reduction="sum",
                                      block_elements=10 * vocab, **OPTION_SETS["paper"])
        out.loss.backward()
    assert 0 < spy.largest[0] <= allowed, spy.largest
    with LargestTensor() as explicit:  # the spy sees the explicit logits
        encouraging_loss(hidden @ weight.T, target, ignore_index=PAD, **OPTION_SETS["paper"])
    assert explicit.largest[0] >= rows * vocab


def test_block_loop_converts_no_tensor_to_a_python_number(monkeypatch):
    """A .item(), bool() or float() on a tensor waits for the device on CUDA; the block loop must
    issue none (the CPU sweep inside it may: it is not the CUDA back end)."""
    calls = []
    loop_file = linear_ops.__file__

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename == loop_file and caller.f_code.co_name == "projected_sweep":
                calls.append((name, caller.f_lineno))
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    inputs = make_projection(rows=40)
    for reduction in ("sum", "none"):
        out, _ = fused_projection(*inputs, OPTION_SETS["paper"], reduction, block_elements=3 * 101)
    assert calls == []


def test_double_backward_is_refused_clearly():
    hidden, weight, bias, target = leaves(*make_projection()[:3]) + [make_projection()[3]]
    loss = linear_encouraging_loss(hidden, weight, target, bias=bias, ignore_index=PAD).loss
    with pytest.raises(RuntimeError, match="no second derivative"):
        (grad,) = torch.autograd.grad(loss, hidden, create_graph=True)
        grad.square().sum().backward()


def test_bad_shapes_and_dtypes_are_refused():
    hidden, weight, bias, target = make_projection()
    with pytest.raises(ValueError, match="nn.Linear's layout"):
        linear_encouraging_loss(hidden, weight.T, target)
    with pytest.raises(ValueError, match="disagree"):
        linear_encouraging_loss(hidden, weight, target[:-1])
    with pytest.raises(ValueError, match="bias must be"):
        linear_encouraging_loss(hidden, weight, target, bias=bias[:-1])
    with pytest.raises(ValueError, match="one floating dtype"):
        linear_encouraging_loss(hidden.float(), weight, target)
    with pytest.raises(ValueError, match=r"class indices in \[0, 101\)"):
        linear_encouraging_loss(hidden, weight, target.masked_fill(target.eq(PAD), 101))
    with pytest.raises(ValueError, match="block_elements"):
        linear_encouraging_loss(hidden, weight, target, block_elements=0)


def test_triton_back_end_in_triton_interpreter():
    """The block loop with the Triton sweep chosen as on a GPU, run by Triton's interpreter on CPU
    tensors; expected: the chunked sweep's results on the same float32 inputs."""
    proc = subprocess.run([sys.executable, "-c", "import test_linear; test_linear.check_triton_blocks()"],
                          env=repo_env([TESTS, TESTS.parent], TRITON_INTERPRET="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "checked the Triton blocks" in proc.stdout, proc.stdout[-2000:]


def check_triton_blocks():
    from encouraging_loss.ops import fused, triton_kernel

    triton_kernel.MAX_BLOCK = 128
    fused.triton_candidate = lambda logits: True  # CPU tensors, interpreted kernel: as if on CUDA
    hidden, weight, bias, target = make_projection(rows=13, width=8, vocab=300, dtype=torch.float32)
    options = OPTION_SETS["paper"]
    got = fused_projection(hidden, weight, bias, target, options, "sum", block_elements=4 * 300)
    assert list(fused._VERIFIED.values()) == [True], f"the self-check did not pass: {fused._VERIFIED}"
    fused.triton_candidate = lambda logits: False
    expected = fused_projection(hidden, weight, bias, target, options, "sum", block_elements=4 * 300)
    assert_same(got[0], expected[0], got[1], expected[1], rtol=1e-5, atol=1e-5)
    print("checked the Triton blocks")


def test_linear_compiles_to_the_reference_on_full_logits():
    """Under torch.compile linear_encouraging_loss runs the reference path on hidden @ weight.T + bias in
    one graph: the same loss, parts and diagnostics as eager, float64 (the eager run is the fused path)."""
    torch.manual_seed(5)
    hidden = torch.randn(4, 3, 6, dtype=torch.float64)
    head = torch.nn.Linear(6, 13, dtype=torch.float64)
    target = torch.randint(0, 13, (4, 3))
    target[0, 1] = -100
    options = EncouragingLossOptions(label_smoothing=0.1, log_end=0.75)

    def step(hidden):
        out = linear_encouraging_loss(hidden, head.weight, target, options, bias=head.bias, with_stats=True)
        return (out.loss, out.nll_loss, out.ce_loss, out.bonus, *out.stats.values())

    eager = step(hidden)
    compiled = torch.compile(step, backend="eager", fullgraph=True)(hidden)
    assert len(compiled) == len(eager) > 4
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_default_blocks_keep_enough_rows_for_the_matmuls():
    """By default a block holds 2^24 logits but never fewer than 256 rows (at a 256k vocabulary,
    65-row blocks left the matmuls waiting on memory); an explicit ``block_elements`` is taken as given."""
    assert linear_ops.block_rows(8000, None) == (1 << 24) // 8000
    assert linear_ops.block_rows(64000, None) == (1 << 24) // 64000
    assert linear_ops.block_rows(256000, None) == 256
    assert linear_ops.block_rows(256000, 1 << 24) == 65
    assert linear_ops.block_rows(300, 299) == 1

"""The fused (streaming, gradient-in-forward) encouraging loss against the straightforward autograd
reference: values, gradients and diagnostics, across options, dtypes, reductions, chunkings and
padding. The reference itself is checked against the paper's formulas in test_loss.py."""
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from helpers import repo_env
from encouraging_loss import EncouragingLossOptions, encouraging_loss
from encouraging_loss.ops import chunked

TESTS = Path(__file__).resolve().parent
PAD = 1
OPTION_SETS = {
    "paper": dict(label_smoothing=0.1, log_end=0.5),
    "no_smoothing": dict(label_smoothing=0.0, log_end=0.5),
    "no_bonus_smoothing": dict(label_smoothing=0.1, el_label_smoothing=0.0),
    "other_bonus_smoothing": dict(label_smoothing=0.1, el_label_smoothing=0.3, bonus_rho=2.0),
    "small_log_end": dict(label_smoothing=0.2, log_end=0.05),  # many non-target p beyond LE
    "power": dict(label_smoothing=0.1, bonus="power", bonus_gamma=0.5),
    "power_square": dict(label_smoothing=0.1, bonus="power", bonus_gamma=2.0),
    "cosine": dict(label_smoothing=0.1, bonus="cosine"),
    "bonus_start": dict(label_smoothing=0.1, bonus_start=0.3),
    "rho_zero": dict(label_smoothing=0.1, bonus_rho=0.0),
}


def make_inputs(rows=37, vocab=101, dtype=torch.float64, seed=0, pad_rows=(1, 8, 20)):
    """Logits with confident rows (p_y -> 1), confidently wrong rows, ties and padding."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * 4
    target = torch.randint(0, vocab, (rows,), generator=generator)
    confident, rival = 3 % vocab, 7 % vocab
    target[::5] = confident
    logits[::5, confident] += 30.0  # p_y within 1e-13 of 1: 1 - p_y must come from the others' sum
    logits[2::6, rival] += 12.0  # a non-target class far ahead
    if vocab > 2:
        # A tie. With two classes it would put p exactly at LE = 1/2, the kink of the bonus, where
        # the reference's autograd adds both one-sided slopes.
        logits[min(4, rows - 1), :] = 0.5
    target[[row for row in pad_rows if row < rows]] = PAD
    return logits.to(dtype), target


def run(impl, logits, target, options, reduction, upstream=None, **kwargs):
    leaf = logits.detach().clone().requires_grad_()
    out = encouraging_loss(leaf, target, ignore_index=PAD, reduction=reduction, impl=impl,
                           with_stats=True, **options, **kwargs)
    if upstream is None:
        upstream = torch.ones_like(out.loss)
    (out.loss * upstream).sum().backward()
    return out, leaf.grad


def assert_outputs_close(fused, reference, fused_grad, reference_grad, rtol, atol, grad_atol=None):
    for name in ("loss", "nll_loss", "ce_loss", "bonus"):
        torch.testing.assert_close(getattr(fused, name).double(), getattr(reference, name).double(),
                                   rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    for name, value in reference.stats.items():
        torch.testing.assert_close(fused.stats[name].double(), value.double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"stat {name}: {m}")
    torch.testing.assert_close(fused_grad.double(), reference_grad.double(), rtol=rtol,
                               atol=atol if grad_atol is None else grad_atol, msg=lambda m: f"gradient: {m}")


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_float64_matches_reference(option_set, reduction):
    chunk = 5 * 101  # 5 rows a chunk: 8 chunks, the last one short
    logits, target = make_inputs()
    upstream = torch.randn(target.shape, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7)
    reference, reference_grad = run("reference", logits, target, OPTION_SETS[option_set], reduction, upstream)
    fused, fused_grad = run("fused", logits, target, OPTION_SETS[option_set], reduction, upstream, chunk_elements=chunk)
    assert_outputs_close(fused, reference, fused_grad, reference_grad, rtol=1e-12, atol=1e-12)


def test_plain_bonus_matches_reference_where_conditioning_allows():
    """LE = 1, where b = log(1 - p_y) needs 1 - p_y to full relative precision. For p_y within 1e-5
    of 1 the reference's -expm1(log p_y) carries log p_y's absolute rounding (~1e-15) divided by
    1 - p_y, and beyond 1 - 2^-24 the tangent's slope 2^24 multiplies p_y's last bit; there the
    two agree to 1e-8 only. Elsewhere they agree to rounding."""
    chunk = 3 * 101
    logits, target = make_inputs()
    options = dict(label_smoothing=0.1, log_end=1.0)
    reference, reference_grad = run("reference", logits, target, options, "none")
    fused, fused_grad = run("fused", logits, target, options, "none", chunk_elements=chunk)
    assert_outputs_close(fused, reference, fused_grad, reference_grad, rtol=1e-12, atol=1e-8)
    well_conditioned = logits.softmax(-1).amax(-1) < 1 - 1e-5
    assert well_conditioned.sum() > 20
    torch.testing.assert_close(fused.loss[well_conditioned], reference.loss[well_conditioned],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [dict(log_end=1.0, label_smoothing=0.0, bonus_rho=1.0),
                                     dict(log_end=1.0, label_smoothing=0.1, bonus_rho=2.0)])
def test_saturated_target_with_the_plain_bonus(dtype, options):
    """p_y rounds to 1 (logits [60, 0, ...]) at LE = 1: the bonus slope p_y b'(p_y) is about -2^24,
    and the target's gradient must not lose p_y to 1 - rho S (it read -1.0 and 1.1 instead of 0.0
    and 0.1). Expected: the float64 reference on the same rounded logits."""
    logits = torch.zeros(2, 40, dtype=dtype)
    logits[:, 0] = 60.0
    target = torch.tensor([0, 0])
    fused, fused_grad = run("fused", logits, target, options, "sum")
    exact, exact_grad = run("reference", logits.double(), target, options, "sum")
    torch.testing.assert_close(fused_grad.double(), exact_grad, rtol=0, atol=2e-3 if dtype != torch.float32 else 1e-6)
    torch.testing.assert_close(fused.loss.double(), exact.loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows,vocab,chunk", [(37, 1000, 999), (64, 257, 257 * 7), (5, 3, 1 << 18), (9, 2, 5)])
def test_chunkings_and_vocab_sizes(rows, vocab, chunk):
    """One row a chunk (chunk < V), uneven chunks, a single chunk, tiny vocabularies."""
    logits, target = make_inputs(rows, vocab, pad_rows=(1,))
    options = OPTION_SETS["paper"]
    reference, reference_grad = run("reference", logits, target, options, "sum")
    fused, fused_grad = run("fused", logits, target, options, "sum", chunk_elements=chunk)
    assert_outputs_close(fused, reference, fused_grad, reference_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_all_padding_batch_gives_zeros(reduction):
    logits, target = make_inputs(rows=6, vocab=11)
    target[:] = PAD
    fused, grad = run("fused", logits, target, OPTION_SETS["paper"], reduction)
    reference, reference_grad = run("reference", logits, target, OPTION_SETS["paper"], reduction)
    for name in ("loss", "nll_loss", "ce_loss", "bonus"):
        assert torch.count_nonzero(getattr(fused, name)) == 0, name
    assert torch.count_nonzero(grad) == 0 and torch.count_nonzero(reference_grad) == 0
    assert fused.stats["tokens"].item() == 0 and fused.stats["correct"].item() == 0


def test_padding_rows_get_no_gradient_and_no_loss():
    chunk = 4 * 101
    logits, target = make_inputs()
    fused, grad = run("fused", logits, target, OPTION_SETS["paper"], "none", chunk_elements=chunk)
    padded = target.eq(PAD)
    assert torch.count_nonzero(grad[padded]) == 0
    assert torch.count_nonzero(fused.loss[padded]) == 0
    assert torch.all(grad[~padded].abs().amax(-1) > 0)
    assert fused.stats["tokens"].item() == (~padded).sum().item()


def test_float32_close_to_float64_reference():
    chunk = 4 * 1000
    logits, target = make_inputs(rows=30, vocab=1000)
    reference, reference_grad = run("reference", logits, target, OPTION_SETS["paper"], "none")
    fused, fused_grad = run("fused", logits.float(), target, OPTION_SETS["paper"], "none", chunk_elements=chunk)
    assert fused.loss.dtype == torch.float32 and fused_grad.dtype == torch.float32
    assert_outputs_close(fused, reference, fused_grad, reference_grad, rtol=2e-5, atol=2e-5, grad_atol=1e-6)


@pytest.mark.parametrize("dtype,grad_rtol", [(torch.bfloat16, 2**-8), (torch.float16, 2**-11)])
def test_half_logits_against_float64_reference_on_the_same_rounded_inputs(dtype, grad_rtol):
    """Math in float32, gradient stored in the logits' dtype: every gradient entry, even the tiny
    eps / (V - 1) ones, must be within the storage format's rounding of the exact value. Under
    fp16 the stored gradient is scaled per row; the upstream 1024 mimics fairseq's loss scaler."""
    chunk = 3 * 1000
    logits, target = make_inputs(rows=20, vocab=1000)
    rounded = logits.to(dtype)
    upstream = torch.tensor(1024.0)
    reference, reference_grad = run("reference", rounded.double(), target, OPTION_SETS["paper"], "sum", upstream)
    fused, fused_grad = run("fused", rounded, target, OPTION_SETS["paper"], "sum", upstream, chunk_elements=chunk)
    assert fused_grad.dtype == dtype
    for name in ("loss", "nll_loss", "ce_loss", "bonus"):
        torch.testing.assert_close(getattr(fused, name).double(), getattr(reference, name), rtol=1e-5, atol=1e-4)
    # Two roundings to the storage format (the forward's store, backward's rescale), and the
    # format's subnormal spacing for entries that nearly cancel.
    error = (fused_grad.double() - reference_grad).abs()
    allowed = 2 * grad_rtol * reference_grad.abs() + 2.0**-24
    assert torch.all(error <= allowed), (error / allowed).max().item()


def test_without_grad_only_values():
    chunk = 5 * 101
    logits, target = make_inputs()
    with torch.no_grad():
        fused = encouraging_loss(logits, target, ignore_index=PAD, impl="fused", with_stats=True,
                                 **OPTION_SETS["paper"], chunk_elements=chunk)
    reference = encouraging_loss(logits, target, ignore_index=PAD, impl="reference", with_stats=True,
                                 **OPTION_SETS["paper"], chunk_elements=chunk)
    torch.testing.assert_close(fused.loss, reference.loss.detach(), rtol=1e-12, atol=1e-12)
    assert not fused.loss.requires_grad


def test_non_contiguous_and_batched_logits():
    chunk = 2 * 101
    logits, target = make_inputs(rows=36)
    batched = logits.view(4, 9, 101).transpose(0, 1)  # (9, 4, V), not contiguous
    batched_target = target.view(4, 9).t()
    reference, reference_grad = run("reference", batched, batched_target, OPTION_SETS["paper"], "none")
    fused, fused_grad = run("fused", batched, batched_target, OPTION_SETS["paper"], "none", chunk_elements=chunk)
    assert fused.loss.shape == batched_target.shape
    assert_outputs_close(fused, reference, fused_grad, reference_grad, rtol=1e-12, atol=1e-12)


def test_chunk_workers_leave_thread_settings_alone(monkeypatch):
    """The CPU sweep runs chunks on single-threaded workers (the pool must have run); neither this
    thread's intra-op thread count nor the default that new threads start with may change."""
    monkeypatch.setattr(chunked, "_POOL", None)
    original = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers even on a one-core machine
    try:
        before = torch.get_num_threads()
        logits, target = make_inputs()
        run("fused", logits, target, OPTION_SETS["paper"], "sum", chunk_elements=101)
        assert chunked._POOL is not None and chunked._POOL._max_workers == 2, "the chunks did not go to the pool"
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert torch.get_num_threads() == before
        assert seen == [before]
    finally:
        torch.set_num_threads(original)


TRITON_CASES = [(name, torch.float32) for name in sorted(OPTION_SETS)] + [("paper", torch.bfloat16),
                                                                        ("paper", torch.float16)]
# each case, the overwritten-logits variant of the three "paper" cases, and check_triton_paths' three
TRITON_CHECKS = len(TRITON_CASES) + 3 + 3


def test_triton_kernel_matches_reference_in_triton_interpreter():
    """The CUDA kernel's code, run by Triton's interpreter on CPU tensors (no GPU needed). The
    interpreter is chosen when the kernel is defined, hence the fresh process."""
    proc = subprocess.run([sys.executable, "-c", "import test_fused; test_fused.check_triton_kernel()"],
                          env=repo_env([TESTS, TESTS.parent], TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"checked {TRITON_CHECKS} cases" in proc.stdout, proc.stdout[-2000:]


def check_triton_kernel():
    """Runs under TRITON_INTERPRET=1: the kernel against the chunked sweep on float64 copies of the same
    (rounded) inputs, for every option set, several tiles a row (the last one ragged), fp32/bf16/fp16."""
    from encouraging_loss.ops import triton_kernel
    from encouraging_loss.ops.fused import fused_row_terms

    triton_kernel.MAX_BLOCK = 128  # 300 classes: three tiles, the last one ragged
    checked = 0
    for name, dtype in TRITON_CASES:
        options = EncouragingLossOptions(**OPTION_SETS[name])
        logits, target = make_inputs(rows=13, vocab=300)
        logits[6, :140] = float("-inf")  # masked classes: a whole first tile, and part of the second
        target[6] = 250
        rounded = logits.to(dtype)
        valid = target.ne(PAD)
        upstream = torch.randn(13, dtype=torch.float64)
        leaf = rounded.clone().requires_grad_()
        terms = fused_row_terms(leaf, target, valid, options, with_stats=True, backend="triton")
        (terms.loss * upstream.float()).sum().backward()
        exact_leaf = rounded.double().requires_grad_()
        exact = fused_row_terms(exact_leaf, target, valid, options, with_stats=True, backend="chunked")
        (exact.loss * upstream).sum().backward()
        for part in ("loss", "nll", "ce", "bonus"):
            torch.testing.assert_close(getattr(terms, part).double(), getattr(exact, part), rtol=1e-5, atol=2e-5,
                                       msg=lambda m: f"{name} {dtype} {part}: {m}")
        for stat, value in exact.stats.items():
            torch.testing.assert_close(terms.stats[stat].double(), value.double(), rtol=1e-5, atol=1e-4,
                                       msg=lambda m: f"{name} {dtype} stat {stat}: {m}")
        # stored, then rescaled by the upstream gradient in backward: two roundings, with slack
        storage_rtol = {torch.float32: 2**-20, torch.bfloat16: 2**-6, torch.float16: 2**-9}[dtype]
        error = (leaf.grad.double() - exact_leaf.grad).abs()
        allowed = storage_rtol * exact_leaf.grad.abs() + 1e-6 * exact_leaf.grad.abs().amax()
        assert torch.all(error <= allowed), f"{name} {dtype} gradient: {(error / allowed).max().item()}"
        checked += 1
        if name == "paper":
            # the gradient written over non-leaf logits (pass 3 reads each tile before writing it)
            source = rounded.clone().requires_grad_()
            logits_memory = source * 1.0  # a non-leaf with its own memory, as a decoder's output
            overwritten = fused_row_terms(logits_memory, target, valid, options, backend="triton",
                                          overwrite_logits=True)
            (overwritten.loss * upstream.float()).sum().backward()
            assert not torch.equal(logits_memory.detach(), rounded), "the logits were not overwritten"
            assert torch.equal(source.grad, leaf.grad), f"{dtype}: overwritten logits, other gradient"
            checked += 1
    checked += check_triton_paths()
    print(f"checked {checked} cases")


def check_triton_paths():
    """Under TRITON_INTERPRET=1, through ``encouraging_loss`` with the Triton back end chosen as on a
    GPU: the self-check passes, the loss is the reference's, and bad targets are refused."""
    from encouraging_loss.ops import fused

    fused.triton_candidate = lambda logits: True  # CPU tensors, interpreted kernel: as if on CUDA
    logits, target = make_inputs(rows=13, vocab=300)
    logits = logits.float()
    got = encouraging_loss(logits, target, ignore_index=PAD, reduction="none", **OPTION_SETS["paper"])
    assert list(fused._VERIFIED.values()) == [True], f"the self-check did not pass: {fused._VERIFIED}"
    expected = encouraging_loss(logits.double(), target, ignore_index=PAD, reduction="none", impl="reference",
                                **OPTION_SETS["paper"])
    torch.testing.assert_close(got.loss.double(), expected.loss, rtol=1e-5, atol=2e-5)
    for bad in (300, -3):
        target[3] = bad
        try:
            encouraging_loss(logits, target, ignore_index=PAD, **OPTION_SETS["paper"])
        except ValueError as error:
            assert f"got {bad}" in str(error), error
        else:
            raise AssertionError(f"target {bad} was accepted on the Triton path")
    return 3


def test_backward_can_be_replayed_on_a_retained_graph():
    """gradcheck and retain_graph=True call backward again with other upstream gradients; the
    gradient stored by the forward must not have been scaled in place by the first call."""
    chunk = 5 * 101
    logits, target = make_inputs()
    leaf = logits.clone().requires_grad_()
    loss = encouraging_loss(leaf, target, ignore_index=PAD, reduction="none", impl="fused",
                            **OPTION_SETS["paper"], chunk_elements=chunk).loss
    reference_leaf = logits.clone().requires_grad_()
    reference = encouraging_loss(reference_leaf, target, ignore_index=PAD, reduction="none",
                                 impl="reference", **OPTION_SETS["paper"]).loss
    for upstream in (torch.zeros_like(loss), torch.randn_like(loss), torch.ones_like(loss)):
        (grad,) = torch.autograd.grad(loss, leaf, upstream, retain_graph=True)
        (expected,) = torch.autograd.grad(reference, reference_leaf, upstream, retain_graph=True)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def projected_logits(dtype, rows=37, vocab=101, seed=0):
    """Logits as a decoder's output layer makes them: a non-leaf product of two leaves."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, 8, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (torch.randn(8, vocab, generator=generator, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    return hidden, weight


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction,upstream", [("sum", 1.0), ("sum", 128.0), ("mean", 3.0), ("none", None)])
def test_overwritten_logits_hold_the_same_gradient(dtype, reduction, upstream):
    """overwrite_logits=True: the gradient that reaches the output layer is the logits' own memory,
    and every parameter gradient is bit for bit what the out-of-place path gives (fp16 with its
    per-row scale and a loss scale, as fairseq's fp16 training calls it)."""
    chunk = 3 * 101
    _, target = make_inputs()
    results = []
    for overwrite in (False, True):
        hidden, weight = projected_logits(dtype)
        logits = hidden @ weight
        reached = []
        logits.register_hook(lambda grad: reached.append(grad.data_ptr()))
        out = encouraging_loss(logits, target, ignore_index=PAD, reduction=reduction, impl="fused",
                               overwrite_logits=overwrite, **OPTION_SETS["paper"], chunk_elements=chunk)
        factor = torch.linspace(-2, 5, target.numel()) if upstream is None else torch.tensor(upstream)
        (out.loss * factor.to(out.loss.dtype)).sum().backward()
        assert (reached[0] == logits.data_ptr()) == overwrite
        results.append((out.loss.detach(), hidden.grad, weight.grad))
    for kept, overwritten in zip(*results):
        assert torch.equal(kept, overwritten)


def test_overwrite_never_takes_a_leafs_memory():
    chunk = 3 * 101
    logits, target = make_inputs()
    for leaf in (logits.clone().requires_grad_(), logits.clone().view(37, 101, 1).requires_grad_()):
        given = leaf.view(37, 101)  # a view of a leaf is the leaf's memory too
        encouraging_loss(given, target, ignore_index=PAD, impl="fused", overwrite_logits=True,
                         **OPTION_SETS["paper"], chunk_elements=chunk).loss.mul(2.0).backward()
        assert torch.equal(leaf.detach().view(37, 101), logits)


def test_overwrite_fails_loudly_when_the_graph_saved_the_logits():
    """A model that still needs its logits in backward (here: a penalty on their squares) gets
    autograd's in-place error, never a gradient computed from overwritten values."""
    _, target = make_inputs()
    hidden, weight = projected_logits(torch.float32)
    logits = hidden @ weight
    penalty = logits.pow(2).mean()  # pow saves its input
    loss = encouraging_loss(logits, target, ignore_index=PAD, impl="fused", overwrite_logits=True,
                            **OPTION_SETS["paper"]).loss
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + penalty).backward()


def test_overwritten_logits_allow_one_backward_only():
    _, target = make_inputs()
    hidden, weight = projected_logits(torch.float16)
    loss = encouraging_loss(hidden @ weight, target, ignore_index=PAD, impl="fused", overwrite_logits=True,
                            **OPTION_SETS["paper"]).loss
    loss.backward(torch.tensor(64.0, dtype=loss.dtype), retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated once only.*--el-keep-logits"):
        loss.backward(torch.tensor(64.0, dtype=loss.dtype))

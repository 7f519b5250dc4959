"""Property-based tests of the whole loss against tests/oracle.py, an independent float64 computation
from the method's formulas: every bonus kind, LE up to 1, rho 0..4, both smoothings, a bonus start,
ignored tokens, vocabularies crossing chunk boundaries, float64/32 and bfloat16/float16 logits, rows
whose p_y rounds to 1 and rows where it underflows to 0, -inf logits; loss parts, gradient and
diagnostics. The Triton kernel runs a subset through Triton's interpreter.

Tolerances (also stated in docs/numerics.md). The oracle gets the same rounded logits, so what remains
is the implementation's arithmetic (float64 for float64 logits, float32 otherwise) and the rounding
of the gradient to the logits' dtype:
* loss parts: |error| <= MATH_TOL * (1 + rho) * (1 + max_j |z_j - max z|) per row, with MATH_TOL
  1e-11 in float64 and 2^-19 (about 1.9e-6) in float32 math;
* gradient: |error| <= STORAGE_RTOL * |exact| + MATH_TOL * (1 + rho) * (1 + max |exact row|),
  STORAGE_RTOL 0 for float64/float32, 2^-7 for bfloat16, 2^-10 for float16 (stored, then rescaled by
  the upstream gradient: two roundings; 2^-6 for bfloat16 in Triton's interpreter, which truncates);
* counts (p_y > 1/2, p_y > LE, correct) exact, except rows within rounding of the threshold.
Examples whose classes lie within 1e-4 of a bonus start are skipped: there b' jumps from 0, and which
side a rounded p lands on is not a property of the loss.

Profiles: ``ci`` (the default, a fixed example budget, derandomised) and ``deep``
(``make test-deep``, or ``pytest --hypothesis-profile=deep``): see tests/conftest.py.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import oracle
from helpers import repo_env
from encouraging_loss import encouraging_loss

TESTS = Path(__file__).resolve().parent
IGNORE = -100
MATH_TOL = {torch.float64: 1e-11, torch.float32: 2.0**-19}
STORAGE_RTOL = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
# Triton's interpreter truncates float32 to bfloat16 where a GPU rounds to nearest: one ulp a rounding
INTERPRETER_STORAGE_RTOL = {**STORAGE_RTOL, torch.bfloat16: 2.0**-6}
LOSS_PARTS = {"loss": "loss", "nll_loss": "nll", "ce_loss": "ce", "bonus": "bonus"}


@st.composite
def option_sets(draw):
    kind = draw(st.sampled_from(["log", "log", "power", "cosine"]))
    options = dict(bonus=kind, label_smoothing=draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5)),
                   bonus_rho=draw(st.sampled_from([0.0, 1.0, 4.0]) | st.floats(0.0, 4.0)))
    if draw(st.booleans()):
        options["el_label_smoothing"] = draw(st.sampled_from([0.0, 0.3]) | st.floats(0.0, 0.9))
    if kind == "log":
        options["log_end"] = draw(st.sampled_from([0.5, 0.75, 1.0]) | st.floats(0.01, 1.0))
    if kind == "power":
        options["bonus_gamma"] = draw(st.sampled_from([1.0, 0.5, 2.0]) | st.floats(0.25, 3.0))
    if draw(st.integers(0, 3)) == 0:
        options["bonus_start"] = draw(st.floats(0.0, 0.9))
    return options


@st.composite
def batches(draw, dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16)):
    """(float64 logits already rounded to ``dtype``, target, dtype): random rows plus extremes."""
    rows, vocab = draw(st.integers(1, 9)), draw(st.integers(2, 70))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.standard_normal((rows, vocab)) * draw(st.sampled_from([0.1, 1.0, 4.0, 12.0]))
    target = rng.integers(0, vocab, rows)
    for i in range(rows):
        case = draw(st.sampled_from(["plain", "plain", "saturated", "near_one", "underflow", "masked", "ignored"]))
        if case == "saturated":  # p_y rounds to 1 in float32 (and bfloat16/float16)
            logits[i, target[i]] = logits[i].max() + draw(st.sampled_from([20.0, 40.0, 60.0]))
        elif case == "near_one":  # 1 - p_y between 1e-9 and 1e-4: the plain bonus's hardest range
            logits[i, target[i]] = logits[i].max() + draw(st.floats(10.0, 20.0))
        elif case == "underflow":  # another class so far ahead that p_y underflows to 0 in float32
            rival = (target[i] + 1 + draw(st.integers(0, vocab - 2))) % vocab
            logits[i, rival] = logits[i].max() + draw(st.sampled_from([30.0, 120.0]))
        elif case == "masked":  # -inf logits on some classes other than the target
            masked = rng.random(vocab) < draw(st.floats(0.1, 0.9))
            masked[target[i]] = False
            logits[i, masked] = -np.inf
        elif case == "ignored":
            target[i] = IGNORE
    rounded = torch.from_numpy(logits).to(dtype).double()
    return rounded, torch.from_numpy(target), dtype


def row_tolerance(logits, rho, dtype):
    finite = torch.where(torch.isfinite(logits), logits, logits.nan_to_num(0.0, 0.0, 0.0).amax(-1, keepdim=True))
    spread = (finite.amax(-1) - finite.amin(-1)).numpy()
    return MATH_TOL[torch.float64 if dtype == torch.float64 else torch.float32] * (1 + rho) * (1 + spread)


def check_against_oracle(logits, target, dtype, options, reduction, chunk_elements, impl="fused", backend=None,
                         storage_rtol=STORAGE_RTOL):
    """Runs the loss on ``logits`` rounded to ``dtype`` and compares everything with the oracle."""
    exact = oracle.loss(logits.numpy(), target.numpy(), options, ignore_index=IGNORE)
    valid = exact["valid"]
    start = options.get("bonus_start", 0.0)
    if start > 0:
        with np.errstate(invalid="ignore"):
            probs = torch.softmax(logits, -1).numpy()
        assume(not np.any(np.abs(probs[valid] - start) < 1e-4))
    rho = options.get("bonus_rho", 1.0)
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scored = max(int(valid.sum()), 1)
    weight = {"sum": np.ones(len(valid)), "mean": np.full(len(valid), 1.0 / scored)}.get(reduction)
    upstream = torch.linspace(-1.5, 2.0, len(valid), dtype=torch.float64) if reduction == "none" else None

    leaf = logits.to(dtype, copy=True).requires_grad_()
    kwargs = dict(chunk_elements=chunk_elements) if impl == "fused" else {}
    if backend is not None:
        from encouraging_loss.ops.fused import fused_row_terms  # the back end forced, as on CUDA
        terms = fused_row_terms(leaf, target.masked_fill(target == IGNORE, 0), target != IGNORE,
                                _options(options), with_stats=True, backend=backend)
        got = dict(loss=terms.loss, nll_loss=terms.nll, ce_loss=terms.ce, bonus=terms.bonus)
        stats, reduction, weight = terms.stats, "none", None
        upstream = torch.linspace(-1.5, 2.0, len(valid), dtype=torch.float64)
    else:
        out = encouraging_loss(leaf, target, ignore_index=IGNORE, reduction=reduction, impl=impl, with_stats=True,
                               **kwargs, **options)
        got, stats = out._asdict(), out.stats
    loss = got["loss"]
    (loss.sum() if upstream is None else (loss * upstream.to(loss.dtype)).sum()).backward()

    tolerance = row_tolerance(logits, rho, dtype)
    for name, key in LOSS_PARTS.items():
        value = got[name].detach().double().numpy()
        expected = exact[key] if weight is None else (exact[key] * weight).sum()
        allowed = tolerance if weight is None else (tolerance * weight).sum()
        error = np.abs(value - expected)
        assert np.all((error <= allowed) | (value == expected)), (  # equal infinities are equal
            f"{name} ({impl}, {dtype}, {options}, {reduction}): got {value}, expected {expected}, "
            f"error {error}, allowed {allowed}")

    row_factor = (weight if weight is not None else upstream.numpy())[:, None]
    expected_grad = exact["grad"] * row_factor
    scale = 1 + np.abs(exact["grad"]).max(-1, keepdims=True)
    allowed = (storage_rtol[dtype] * np.abs(expected_grad)
               + MATH_TOL[math_dtype] * (1 + rho) * scale * np.abs(row_factor))
    error = np.abs(leaf.grad.double().numpy() - expected_grad)
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert np.all(error <= allowed), (f"gradient ({impl}, {dtype}, {options}, {reduction}): at {worst} got "
                                      f"{leaf.grad[worst].item()!r}, expected {expected_grad[worst]!r}")
    check_stats(stats, exact, options, tolerance)


def check_stats(stats, exact, options, tolerance):
    valid = exact["valid"]
    p, margin = exact["target_prob"][valid], exact["margin"][valid]
    assert stats["tokens"].item() == valid.sum()
    np.testing.assert_allclose(stats["target_prob"].item(), p.sum(), rtol=1e-5, atol=1e-6 * (1 + len(p)))
    finite = np.isfinite(margin)
    np.testing.assert_allclose(stats["margin"].item(), margin.sum(), rtol=1e-5,
                               atol=float(tolerance[valid].sum()) + 1e-5 * float(np.abs(margin[finite]).sum()))
    for name, values, threshold, strict in (("target_prob_above_half", p, 0.5, True),
                                            ("target_prob_above_log_end", p, options.get("log_end", 0.5), True),
                                            ("correct", margin, 0.0, False)):
        slack = 1e-5 * max(1.0, abs(threshold))
        surely = (values > threshold + slack).sum()
        maybe = (values >= threshold - slack).sum()
        count = stats[name].item()
        assert surely <= count <= maybe, f"{name}: {count}, expected between {surely} and {maybe}"


def _options(fields):
    from encouraging_loss import EncouragingLossOptions
    return EncouragingLossOptions(**fields)


@given(batch=batches(), options=option_sets(), reduction=st.sampled_from(["sum", "mean", "none"]),
       chunk_rows=st.integers(1, 4), chunk_offset=st.integers(-1, 3))
def test_fused_loss_equals_the_oracle(batch, options, reduction, chunk_rows, chunk_offset):
    logits, target, dtype = batch
    vocab = logits.size(1)
    # chunks of 1..4 rows, the element count not a multiple of V (chunk boundaries inside the sweep)
    check_against_oracle(logits, target, dtype, options, reduction, max(1, chunk_rows * vocab + chunk_offset))


@given(batch=batches(dtypes=(torch.float64,)), options=option_sets(),
       reduction=st.sampled_from(["sum", "mean", "none"]))
def test_reference_loss_equals_the_oracle(batch, options, reduction):
    """The readable autograd definition agrees with the oracle too (in float64, where it is exact)."""
    logits, target, dtype = batch
    check_against_oracle(logits, target, dtype, options, reduction, None, impl="reference")


def test_triton_kernel_equals_the_oracle_in_triton_interpreter():
    """A subset through the kernel's code in Triton's interpreter (a fresh process: the interpreter
    is chosen when the kernel is defined), tiles of 16 classes so that rows span several tiles."""
    pytest.importorskip("triton")
    examples = os.environ.get("EL_TRITON_EXAMPLES", "12")
    code = ("import test_properties as t; t.run_triton_examples(%s)" % int(examples))
    proc = subprocess.run([sys.executable, "-c", code], env=repo_env([TESTS, TESTS.parent], TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ran = [int(line.split(":")[1]) for line in proc.stdout.splitlines() if line.startswith("triton examples:")]
    assert ran and ran[0] >= int(examples) // 2, proc.stdout[-2000:]  # a few may be skipped (bonus start)
    assert "triton saturated target: ok" in proc.stdout


def run_triton_examples(count):
    """Runs under TRITON_INTERPRET=1 with a fixed number of derandomised examples."""
    from encouraging_loss.ops import triton_kernel

    triton_kernel.MAX_BLOCK = 16
    # the saturated target at LE = 1 (logits [60, 0, ...], 40 classes): the gradient the oracle gives
    saturated = torch.zeros(2, 40, dtype=torch.float64)
    saturated[:, 0] = 60.0
    for options in (dict(log_end=1.0), dict(log_end=1.0, label_smoothing=0.1, bonus_rho=2.0)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            check_against_oracle(saturated, torch.tensor([0, 0]), dtype, options, "none", None, backend="triton",
                                 storage_rtol=INTERPRETER_STORAGE_RTOL)
    print("triton saturated target: ok")
    ran = []

    @settings(max_examples=count, derandomize=True, deadline=None, database=None)
    @given(batch=batches(dtypes=(torch.float32, torch.bfloat16, torch.float16)), options=option_sets())
    def kernel_equals_oracle(batch, options):
        logits, target, dtype = batch
        check_against_oracle(logits, target, dtype, options, "none", None, backend="triton",
                             storage_rtol=INTERPRETER_STORAGE_RTOL)
        ran.append(1)

    kernel_equals_oracle()
    print(f"triton examples: {len(ran)}")

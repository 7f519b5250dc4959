"""Numerical kernels of the encouraging loss.

rows.py      constants, per-row sums and the assembly of the loss parts (imports no back end)
chunked.py   the sweep over the logits in chunks of PyTorch ops (any device; the CPU back end)
triton_kernel.py  the same sweep as a Triton kernel (CUDA; Triton's interpreter in the tests)
fused.py     the autograd Function over both sweeps, and the back-end choice with the GPU self-check
"""

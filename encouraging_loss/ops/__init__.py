"""Numerical kernels of the encouraging loss: a chunked PyTorch path and a Triton path for CUDA."""

"""The GPU backend: Triton kernels (attention, MoE, norms, RoPE), their ahead-of-time compile
checks, the surgery that puts them into a loaded model, and the CUDA-graph decode step.

Importing this package imports no Triton: only `backend` and the kernel modules need it.
"""

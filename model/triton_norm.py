"""RMSNorm in Triton (fp32 math, learned fp32 scale), and its reference.

x (T, H) -> x / sqrt(mean(x^2) + eps) * scale, in x's dtype. One program per row; the whole row
is one block (H = 2880 pads to 4096 lanes), so the sum of squares needs no second pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import KernelSpec, next_pow2, ptr_type

NUM_WARPS = 8  # 4096 lanes over 256 threads: 16 values per thread


def rms_norm_reference(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * scale.float()).to(x.dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr, scale_ptr, out_ptr, H, eps, stride_xt, stride_ot, BLOCK_H: tl.constexpr
):  # fmt: skip
    """grid (T,)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    x = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    scale = tl.load(scale_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + row * stride_ot + offs, (x * inv * scale).to(out_ptr.dtype.element_ty), mask=mask
    )


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x (..., H) -> (..., H) in x's dtype."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])  # (T, H)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, scale.contiguous(), out, x2.shape[1], eps, x2.stride(0), out.stride(0),
            BLOCK_H=next_pow2(x2.shape[1]), num_warps=NUM_WARPS,
        )  # fmt: skip
    return out.view(shape)


def aot_specs(dtype: torch.dtype = torch.bfloat16, hidden: int = 2880) -> list[KernelSpec]:
    act = ptr_type(dtype)
    sig = {
        "x_ptr": act,
        "scale_ptr": "*fp32",
        "out_ptr": act,
        "H": "i32",
        "eps": "fp32",
        "stride_xt": "i32",
        "stride_ot": "i32",
    }
    const = {"BLOCK_H": next_pow2(hidden)}
    return [KernelSpec("rms_norm", _rms_norm_kernel, sig, const, num_warps=NUM_WARPS)]

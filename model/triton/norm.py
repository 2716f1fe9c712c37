"""RMSNorm in Triton (fp32 math, learned fp32 scale), optionally fused with the residual add
before it, and its reference.

x (T, H) -> x / sqrt(mean(x^2) + eps) * scale, in x's dtype. One program per row; the whole row
is one block (H = 2880 pads to 4096 lanes), so the sum of squares needs no second pass.
`add_rms_norm(x, h, bias, scale)` first forms the residual sum x + h + bias (rounded once to x's
dtype, as the model then carries it) and normalises that: one launch instead of a bias add, a
residual add and a norm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import KernelSpec, next_pow2, ptr_type

NUM_WARPS = 8  # 4096 lanes over 256 threads: 16 values per thread


def rms_norm_reference(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * scale.float()).to(x.dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr, h_ptr, bias_ptr, scale_ptr, sum_ptr, out_ptr, H, eps, stride_xt, stride_ht,
    stride_st, stride_ot, ADD: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """grid (T,). ADD: normalise x + h + bias, and store that sum to sum_ptr."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    x = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        x += tl.load(h_ptr + row * stride_ht + offs, mask=mask, other=0.0).to(tl.float32)
        x += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = x.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_st + offs, x, mask=mask)
        x = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    scale = tl.load(scale_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + row * stride_ot + offs, (x * inv * scale).to(out_ptr.dtype.element_ty), mask=mask
    )


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x (..., H) -> (..., H) in x's dtype."""
    shape = x.shape
    x2 = _rows(x)
    out = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
    _launch(x2, x2, x2, scale, x2, out, eps, add=False)
    return out.view(shape)


def add_rms_norm(
    x: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, h (T, H), bias (H,) -> (x + h + bias, its RMSNorm), both (T, H) in x's dtype."""
    x2, h2 = _rows(x), _rows(h)
    if h2.shape != x2.shape or bias.shape != x2.shape[1:]:
        raise ValueError(f"shapes {tuple(x.shape)}, {tuple(h.shape)}, {tuple(bias.shape)} differ")
    total = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
    out = torch.empty_like(total)
    _launch(x2, h2, bias.contiguous(), scale, total, out, eps, add=True)
    return total.view(x.shape), out.view(x.shape)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])  # (T, H)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch(
    x: torch.Tensor,
    h: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    total: torch.Tensor,
    out: torch.Tensor,
    eps: float,
    *,
    add: bool,
) -> None:
    if x.shape[0]:
        _rms_norm_kernel[(x.shape[0],)](
            x, h, bias, scale.contiguous(), total, out, x.shape[1], eps, x.stride(0), h.stride(0),
            total.stride(0), out.stride(0), ADD=add, BLOCK_H=next_pow2(x.shape[1]),
            num_warps=NUM_WARPS,
        )  # fmt: skip


def aot_specs(dtype: torch.dtype = torch.bfloat16, hidden: int = 2880) -> list[KernelSpec]:
    act = ptr_type(dtype)
    sig = {"x_ptr": act, "h_ptr": act, "bias_ptr": act, "scale_ptr": "*fp32", "sum_ptr": act,
           "out_ptr": act, "H": "i32", "eps": "fp32"}  # fmt: skip
    sig |= dict.fromkeys(["stride_xt", "stride_ht", "stride_st", "stride_ot"], "i32")
    block = next_pow2(hidden)
    const = [{"ADD": add, "BLOCK_H": block} for add in (False, True)]
    return [KernelSpec("rms_norm", _rms_norm_kernel, sig, c, num_warps=NUM_WARPS) for c in const]

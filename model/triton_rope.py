"""Half-split (NeoX) rotary embedding in Triton, applied in place, and its reference.

x (T, heads, hd) is rotated with given cos / sin (T, hd/2) in fp32 (the torch model computes
the YaRN tables from integer positions): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), with
x1 / x2 the first / second halves of each head. q and k of the fused qkv projection are adjacent
heads, so one launch on a view of both rotates them together.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import KernelSpec, next_pow2, ptr_type

NUM_WARPS = 4


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, hd), cos / sin (T, hd/2) -> rotated copy, computed in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.float()[:, None], sin.float()[:, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, n_heads, stride_xt, stride_xh, stride_ct, stride_st,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """grid (T, head tiles); rotates in place."""
    tok = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HALF)
    c = tl.load(cos_ptr + tok * stride_ct + offs_d).to(tl.float32)[None, :]  # (1, hd/2)
    s = tl.load(sin_ptr + tok * stride_st + offs_d).to(tl.float32)[None, :]
    mask = (offs_h < n_heads)[:, None]
    p1 = x_ptr + tok * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :]  # (BH, hd/2)
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
    dt = x_ptr.dtype.element_ty
    tl.store(p1, (x1 * c - x2 * s).to(dt), mask=mask)
    tl.store(p1 + HALF, (x2 * c + x1 * s).to(dt), mask=mask)


BLOCK_HEADS = 16


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (T, heads, hd) in place (any strides, last dim contiguous); returns x."""
    t, heads, hd = x.shape
    if x.stride(-1) != 1 or hd % 2 or hd // 2 != next_pow2(hd // 2):
        raise ValueError(f"need a contiguous last dim and hd/2 a power of 2 (hd = {hd})")
    if tuple(cos.shape) != (t, hd // 2) or tuple(sin.shape) != (t, hd // 2):
        raise ValueError(f"cos / sin must be {(t, hd // 2)}, got {tuple(cos.shape)}")
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if t:
        block_h = min(BLOCK_HEADS, next_pow2(heads))
        _rope_kernel[(t, -(-heads // block_h))](
            x, cos, sin, heads, x.stride(0), x.stride(1), cos.stride(0), sin.stride(0),
            HALF=hd // 2, BLOCK_H=block_h, num_warps=NUM_WARPS,
        )  # fmt: skip
    return x


def aot_specs(dtype: torch.dtype = torch.bfloat16, head_dim: int = 64) -> list[KernelSpec]:
    act = ptr_type(dtype)
    sig = {
        "x_ptr": act,
        "cos_ptr": "*fp32",
        "sin_ptr": "*fp32",
        "n_heads": "i32",
        "stride_xt": "i32",
        "stride_xh": "i32",
        "stride_ct": "i32",
        "stride_st": "i32",
        "HALF": "constexpr",
        "BLOCK_H": "constexpr",
    }
    const = {"HALF": head_dim // 2, "BLOCK_H": BLOCK_HEADS}
    return [KernelSpec("rope", _rope_kernel, sig, const, num_warps=NUM_WARPS)]

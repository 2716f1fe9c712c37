"""Half-split (NeoX) rotary embedding in Triton, applied in place, and its reference.

x (T, heads, hd) is rotated with given cos / sin (T, hd/2) in fp32 (the torch model computes
the YaRN tables from integer positions): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), with
x1 / x2 the first / second halves of each head. q and k of the fused qkv projection are adjacent
heads, so one launch on a view of both rotates them together; `rope_and_cache_` also writes k
and v into the KV cache in that launch, and `rope_and_write_` into the slots of a page pool.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import KernelSpec, next_pow2, ptr_type

NUM_WARPS = 4


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, hd), cos / sin (T, hd/2) -> rotated copy, computed in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.float()[:, None], sin.float()[:, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, start, n_rotated, n_k, n_heads,
    stride_xt, stride_xh, stride_ct, stride_st, stride_kh, stride_kl, stride_vh, stride_vl,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, CACHE: tl.constexpr, POS_IN_MEMORY: tl.constexpr,
    SLOTS: tl.constexpr,
):  # fmt: skip
    """grid (T, head tiles): heads [0, n_rotated) rotated in place; with CACHE, heads
    [n_rotated - n_k, n_rotated) (k, rotated) and [n_rotated, n_heads) (v) also stored in the
    caches at position start + t (start read from pos_ptr with POS_IN_MEMORY), or with SLOTS at
    position pos_ptr[t] (none where that is negative)."""
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HALF)
    c = tl.load(cos_ptr + tok * stride_ct + offs_d).to(tl.float32)[None, :]  # (1, hd/2)
    s = tl.load(sin_ptr + tok * stride_st + offs_d).to(tl.float32)[None, :]
    rotated = (head < n_rotated)[:, None]
    mask = (head < n_heads)[:, None]
    p1 = x_ptr + tok * stride_xt + head[:, None] * stride_xh + offs_d[None, :]  # (BH, hd/2)
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
    dt = x_ptr.dtype.element_ty
    y1 = tl.where(rotated, x1 * c - x2 * s, x1).to(dt)
    y2 = tl.where(rotated, x2 * c + x1 * s, x2).to(dt)
    tl.store(p1, y1, mask=rotated)
    tl.store(p1 + HALF, y2, mask=rotated)
    if CACHE:
        if SLOTS:
            pos = tl.load(pos_ptr + tok).to(tl.int64)
        else:
            if POS_IN_MEMORY:
                start = tl.load(pos_ptr).to(tl.int64)
            pos = start + tok
        kvh = head[:, None] - (n_rotated - n_k)  # k heads 0 .. n_k - 1, then v heads
        is_k = (kvh >= 0) & rotated
        is_v = mask & ~rotated
        if pos >= 0:
            pk = k_cache_ptr + kvh * stride_kh + pos * stride_kl + offs_d[None, :]
            tl.store(pk, y1.to(k_cache_ptr.dtype.element_ty), mask=is_k)
            tl.store(pk + HALF, y2.to(k_cache_ptr.dtype.element_ty), mask=is_k)
            pv = v_cache_ptr + (kvh - n_k) * stride_vh + pos * stride_vl + offs_d[None, :]
            tl.store(pv, y1.to(v_cache_ptr.dtype.element_ty), mask=is_v)
            tl.store(pv + HALF, y2.to(v_cache_ptr.dtype.element_ty), mask=is_v)


BLOCK_HEADS = 16


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (T, heads, hd) in place (any strides, last dim contiguous); returns x."""
    t, heads, hd = x.shape
    _check(x, cos, sin)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if t:
        block_h = min(BLOCK_HEADS, next_pow2(heads))
        _rope_kernel[(t, -(-heads // block_h))](
            x, cos, sin, x, x, x, 0, heads, 0, heads,
            x.stride(0), x.stride(1), cos.stride(0), sin.stride(0), 0, 0, 0, 0, HALF=hd // 2,
            BLOCK_H=block_h, CACHE=False, POS_IN_MEMORY=False, SLOTS=False, num_warps=NUM_WARPS,
        )  # fmt: skip
    return x


def rope_and_cache_(
    qkv: torch.Tensor,
    n_q: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int | torch.Tensor,
) -> None:
    """qkv (T, n_q + 2 nkv, hd): rotate q and k in place and store k and v in the caches
    (nkv, L, hd) at positions start.. (an int, or a (1,) int64 tensor on the device, read there
    so that a CUDA graph can replay the launch). One launch instead of a rotation and two copies.
    """
    t, heads, hd = qkv.shape
    nkv = (heads - n_q) // 2
    _check(qkv, cos, sin)
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != nkv or k_cache.shape[2] != hd:
        raise ValueError(f"caches {tuple(k_cache.shape)} do not hold {nkv} heads of {hd}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the caches must be contiguous in their last dimension")
    in_memory = isinstance(start, torch.Tensor)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if t:
        block_h = min(BLOCK_HEADS, next_pow2(heads))
        _rope_kernel[(t, -(-heads // block_h))](
            qkv, cos, sin, k_cache, v_cache,
            start if in_memory else k_cache, 0 if in_memory else start, n_q + nkv, nkv, heads,
            qkv.stride(0), qkv.stride(1), cos.stride(0), sin.stride(0), k_cache.stride(0),
            k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), HALF=hd // 2,
            BLOCK_H=block_h, CACHE=True, POS_IN_MEMORY=in_memory, SLOTS=False,
            num_warps=NUM_WARPS,
        )  # fmt: skip


def rope_and_write_(
    qkv: torch.Tensor,
    n_q: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """`rope_and_cache_` into a page pool: k and v of token t stored at slot slots[t] (T,) of
    k_pages / v_pages (slots, nkv, hd), not at all where slots[t] < 0 (padding rows)."""
    t, heads, hd = qkv.shape
    nkv = (heads - n_q) // 2
    _check(qkv, cos, sin)
    if k_pages.shape != v_pages.shape or k_pages.shape[1:] != (nkv, hd):
        raise ValueError(f"pages {tuple(k_pages.shape)} do not hold {nkv} heads of {hd}")
    if k_pages.stride(-1) != 1 or v_pages.stride(-1) != 1 or tuple(slots.shape) != (t,):
        raise ValueError(f"need pages contiguous in their last dimension and {t} slots")
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if t:
        block_h = min(BLOCK_HEADS, next_pow2(heads))
        _rope_kernel[(t, -(-heads // block_h))](
            qkv, cos, sin, k_pages, v_pages, slots.contiguous(), 0, n_q + nkv, nkv, heads,
            qkv.stride(0), qkv.stride(1), cos.stride(0), sin.stride(0), k_pages.stride(1),
            k_pages.stride(0), v_pages.stride(1), v_pages.stride(0), HALF=hd // 2,
            BLOCK_H=block_h, CACHE=True, POS_IN_MEMORY=False, SLOTS=True, num_warps=NUM_WARPS,
        )  # fmt: skip


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    t, _, hd = x.shape
    if x.stride(-1) != 1 or hd % 2 or hd // 2 != next_pow2(hd // 2):
        raise ValueError(f"need a contiguous last dim and hd/2 a power of 2 (hd = {hd})")
    if tuple(cos.shape) != (t, hd // 2) or tuple(sin.shape) != (t, hd // 2):
        raise ValueError(f"cos / sin must be {(t, hd // 2)}, got {tuple(cos.shape)}")


def aot_specs(dtype: torch.dtype = torch.bfloat16, head_dim: int = 64) -> list[KernelSpec]:
    """rope_, rope_and_cache_ (position as an argument or in memory) and rope_and_write_ at the
    model's heads."""
    act = ptr_type(dtype)
    specs = []
    for cache, in_memory, slots in ((False, False, False), (True, False, False),
                                    (True, True, False), (True, False, True)):  # fmt: skip
        sig = {"x_ptr": act, "cos_ptr": "*fp32", "sin_ptr": "*fp32", "k_cache_ptr": act,
               "v_cache_ptr": act, "pos_ptr": "*i64" if in_memory or slots else act}  # fmt: skip
        sig |= dict.fromkeys(["start", "n_rotated", "n_k", "n_heads"], "i32")
        sig |= dict.fromkeys(["stride_xt", "stride_xh", "stride_ct", "stride_st", "stride_kh",
                              "stride_kl", "stride_vh", "stride_vl"], "i32")  # fmt: skip
        const = {"HALF": head_dim // 2, "BLOCK_H": BLOCK_HEADS, "CACHE": cache,
                 "POS_IN_MEMORY": in_memory, "SLOTS": slots}  # fmt: skip
        specs.append(KernelSpec("rope", _rope_kernel, sig,
                                const, num_warps=NUM_WARPS))  # fmt: skip
    return specs

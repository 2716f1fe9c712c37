"""Mixture of experts with MXFP4 experts dequantised inside Triton kernels, and its reference.

Shapes: T = tokens, H = hidden size, E = experts, A = active experts per token, I = expert
intermediate size, P = T * A (token, expert) pairs. Expert weights stay packed, as 16-byte groups
of 32 weights with one scale: mlp1 blocks [E, 2I, H/32, 16] / scales [E, 2I, H/32] (glu and linear
rows interleaved), mlp2 blocks [E, H, I/32, 16] / scales [E, H, I/32]; blocks run along the input
dimension.

The kernels read the groups with their nibbles reordered once at load (`kernel_layout`): read as
four little-endian int32 words, word q holds in bits 4k..4k+3 weight 4k + q of its group. A thread
then loads a group as one 16-byte vector, and for each nibble position k the matching inputs of
its four words are four adjacent elements (one vector load). Nibbles k and k + 4 of a word sit 16
bits apart, so one mask-and-shift places both as fp16 bit patterns (`_e2m1_pairs`).

Two paths, both computing mlp1 + clamped SwiGLU in one kernel and mlp2 in a second:
- decode (a few tokens): one program per (pair, row tile), matrix-vector products that keep
  per-thread partial sums over the whole input and reduce once; mlp2 loops over a token's A
  experts and applies the router weights and the sum in registers.
- grouped (prefill): pairs sorted by expert, cut into tiles of BLOCK_M rows of one expert, and
  multiplied with tl.dot; the A partial outputs of a token are summed afterwards.
"""

from __future__ import annotations

from typing import Literal

import torch
import triton
import triton.language as tl

from ..mxfp4 import dequantize
from .common import KernelSpec, cdiv, next_pow2, ptr_type

Path = Literal["decode", "grouped"]

# Block configurations the host code chooses from; all are compiled ahead of time in the tests
# (model.triton.aot). Decode: 128 threads each loading one 16-byte group per iteration, and
# enough programs (4 pairs x 360 for mlp1, 360 for mlp2 at gpt-oss shapes) to keep every SM of
# an H100 busy; registers stay under 64 so that many warps can wait on memory at once.
DECODE_MLP1 = {"BLOCK_I": 8, "BLOCK_G": 8, "num_warps": 4}
DECODE_MLP2 = {"BLOCK_N": 8, "BLOCK_G": 16, "num_warps": 4}
# Grouped tiles by BLOCK_M; picked among compiled variants for no register spills on sm_80 and
# sm_90 (the fp32 dequantised weight tiles are what fill the registers).
GROUPED_BLOCK_M = (16, 64)
GROUPED_MLP1 = {
    16: {"BLOCK_I": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2},
    64: {"BLOCK_I": 32, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2},
}
GROUPED_MLP2 = {
    16: {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2},
    64: {"BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2},
}
DECODE_MAX_TOKENS = 4  # beyond this the grouped path reads each expert's weights once
ROUTE_WARPS = 1  # one token's 32 or 128 logits


def kernel_layout(blocks: torch.Tensor) -> torch.Tensor:
    """Packed blocks (..., groups, 16) as stored -> the same weights in the kernels' nibble order.

    Stored: byte j holds weights 2j (low nibble) and 2j + 1. Kernel: byte j = 4q + m holds
    weights 8m + q (low) and 8m + 4 + q (high), i.e. word q holds weight 4k + q at nibble k.
    Done one expert at a time to bound the temporary memory.
    """
    if blocks.dtype != torch.uint8 or blocks.shape[-1] != 16:
        raise ValueError(f"expected packed uint8 blocks (..., 16), got {tuple(blocks.shape)}")
    out = torch.empty(blocks.shape, dtype=torch.uint8, device=blocks.device)
    for src, dst in zip(blocks.reshape(-1, *blocks.shape[-3:]), out.view(-1, *blocks.shape[-3:]),
                        strict=True):  # fmt: skip
        nib = torch.stack([src & 15, src >> 4], dim=-1).view(*src.shape[:-1], 8, 4)  # [k, q]
        nib = nib.transpose(-1, -2).reshape(*src.shape[:-1], 16, 2)  # nibble 8q + k
        dst.copy_(nib[..., 0] | (nib[..., 1] << 4))
    return out


# --- reference -------------------------------------------------------------------------------


def moe_reference(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w1_blocks: torch.Tensor,
    w1_scales: torch.Tensor,
    b1: torch.Tensor,
    w2_blocks: torch.Tensor,
    w2_scales: torch.Tensor,
    b2: torch.Tensor,
    *,
    limit: float = 7.0,
    alpha: float = 1.702,
) -> torch.Tensor:
    """Plain PyTorch: x (T, H), ids / weights (T, A) -> (T, H), in fp32, cast to x's dtype."""
    xf = x.float()
    w1 = dequantize(w1_blocks[ids], w1_scales[ids], torch.float32)  # (T, A, 2I, H)
    w2 = dequantize(w2_blocks[ids], w2_scales[ids], torch.float32)  # (T, A, H, I)
    h = torch.einsum("th,taoh->tao", xf, w1) + b1[ids].float()  # (T, A, 2I)
    glu = h[..., 0::2].clamp(max=limit)
    lin = h[..., 1::2].clamp(min=-limit, max=limit)
    h = glu * torch.sigmoid(alpha * glu) * (lin + 1)  # (T, A, I)
    y = torch.einsum("tai,taoi->tao", h, w2) + b2[ids].float()  # (T, A, H)
    return (y * weights.float()[..., None]).sum(dim=1).to(x.dtype)


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def _fp16_bits_to_f32(bits):
    """Low 16 bits of an int32 (an fp16 bit pattern) -> fp32."""
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _e2m1_pairs(u):
    """e2m1 codes in bits 0..3 and 16..19 of int32 u -> both values times 2**-14, in fp32.

    As an fp16 bit pattern with the sign at bit 15 and the three magnitude bits at 11..9, a code
    reads as its value times 2**-14 exactly (the two codes with a zero exponent as subnormals,
    which fp16 always keeps); both patterns are built with the same few bit operations.
    """
    t = ((u & 0x00070007) << 9) | ((u & 0x00080008) << 12)
    return _fp16_bits_to_f32(t & 0xFFFF), _fp16_bits_to_f32(t >> 16)


@triton.jit
def _swiglu(glu, lin, limit, alpha):
    glu = tl.minimum(glu, limit)
    lin = tl.minimum(tl.maximum(lin, -limit), limit)
    return glu * tl.sigmoid(alpha * glu) * (lin + 1.0)


@triton.jit
def _rows_dot(
    b_rows, s_rows, mask_r, x_row, n_groups, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr
):  # fmt: skip
    """Packed rows (kernel layout) . x -> (BLOCK_R,) fp32, scales applied.

    b_rows: int32 pointers to each row's first word; s_rows: pointers to its scales; x_row: the
    input, 16-byte aligned. Partial sums stay per (row, group, word) until the loop ends.
    """
    offs_g = tl.arange(0, BLOCK_G)
    offs_q = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_R, BLOCK_G, 4], dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        g = g0 + offs_g
        mask_g = g < n_groups
        mask = mask_r[:, None] & mask_g[None, :]
        words = g[None, :, None] * 4 + offs_q[None, None, :]
        w = tl.load(b_rows[:, None, None] + words, mask=mask[:, :, None], other=0)  # (R, G, 4)
        x_g = x_row + g[None, :, None] * 32 + offs_q[None, None, :]  # weight q of each group
        mask_x = mask_g[None, :, None]
        part = tl.zeros([BLOCK_R, BLOCK_G, 4], dtype=tl.float32)
        for k in tl.static_range(4):  # nibbles k and k + 4: weights 4k + q and 4k + 16 + q
            lo, hi = _e2m1_pairs(w >> (4 * k))
            part += lo * tl.load(x_g + 4 * k, mask=mask_x, other=0.0).to(tl.float32)
            part += hi * tl.load(x_g + 4 * k + 16, mask=mask_x, other=0.0).to(tl.float32)
        s = tl.load(s_rows[:, None] + g[None, :], mask=mask, other=0).to(tl.float32)
        acc += part * tl.exp2(s - 113.0)[:, :, None]  # 2**(s - 127), times the 2**14 above
    return tl.sum(tl.sum(acc, axis=2), axis=1)


@triton.jit
def _mlp1_decode_kernel(
    x_ptr, ids_ptr, blocks_ptr, scales_ptr, bias_ptr, h_ptr, N_GROUPS, N_INTER, A, stride_be,
    stride_bn, stride_se, stride_sn, stride_bias, limit, alpha, BLOCK_I: tl.constexpr,
    BLOCK_G: tl.constexpr,
):  # fmt: skip
    """h[pair, i] = swiglu(x[token] . W1[e, 2i], x[token] . W1[e, 2i + 1]); grid (P, I tiles).

    x (T, 32 N_GROUPS) and h (P, N_INTER) contiguous; blocks as int32 words, stride_be and
    stride_bn counted in 16-byte groups (so every row is known to start 16-byte aligned).
    """
    pair = tl.program_id(0)
    tok = pair // A
    e = tl.load(ids_ptr + pair).to(tl.int64)
    rows = tl.program_id(1) * 2 * BLOCK_I + tl.arange(0, 2 * BLOCK_I)  # glu, linear, glu, ...
    mask_r = rows < 2 * N_INTER
    b_rows = blocks_ptr + (e * stride_be + rows.to(tl.int64) * stride_bn) * 4
    s_rows = scales_ptr + e * stride_se + rows.to(tl.int64) * stride_sn
    x_row = x_ptr + tok.to(tl.int64) * N_GROUPS * 32
    y = _rows_dot(b_rows, s_rows, mask_r, x_row, N_GROUPS, 2 * BLOCK_I, BLOCK_G)
    y += tl.load(bias_ptr + e * stride_bias + rows, mask=mask_r, other=0.0).to(tl.float32)
    glu, lin = tl.split(tl.reshape(y, [BLOCK_I, 2]))
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    out = _swiglu(glu, lin, limit, alpha)
    tl.store(h_ptr + pair.to(tl.int64) * N_INTER + offs_i, out, mask=offs_i < N_INTER)


@triton.jit
def _mlp2_decode_kernel(
    h_ptr, ids_ptr, w_ptr, blocks_ptr, scales_ptr, bias_ptr, res_ptr, out_ptr, N_GROUPS, N, A,
    stride_be, stride_bn, stride_se, stride_sn, stride_bias, RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
):  # fmt: skip
    """out[t, n] = sum_a w[t, a] (h[t A + a] . W2[e_a, n] + b2[e_a, n]) (+ res[t, n] with
    RESIDUAL); grid (T, N tiles).

    h (P, 32 N_GROUPS) fp32, res and out (T, N) contiguous; blocks as for the mlp1 kernel.
    """
    tok = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    out = tl.zeros([BLOCK_N], dtype=tl.float32)
    if RESIDUAL:
        out += tl.load(res_ptr + tok.to(tl.int64) * N + offs_n, mask=mask_n).to(tl.float32)
    for a in range(0, A):
        pair = tok * A + a
        e = tl.load(ids_ptr + pair).to(tl.int64)
        b_rows = blocks_ptr + (e * stride_be + offs_n.to(tl.int64) * stride_bn) * 4
        s_rows = scales_ptr + e * stride_se + offs_n.to(tl.int64) * stride_sn
        h_row = h_ptr + pair.to(tl.int64) * N_GROUPS * 32
        y = _rows_dot(b_rows, s_rows, mask_n, h_row, N_GROUPS, BLOCK_N, BLOCK_G)
        y += tl.load(bias_ptr + e * stride_bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        out += tl.load(w_ptr + pair).to(tl.float32) * y
    o = out_ptr + tok.to(tl.int64) * N + offs_n
    tl.store(o, out.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _low_weight(jj):
    """Byte index along a row (kernel layout) -> the weight in its low nibble; the high nibble
    holds that weight + 4. Byte 4q + m of a group holds weights 8m + q and 8m + 4 + q."""
    j = jj % 16
    return (jj // 16) * 32 + 8 * (j % 4) + j // 4


@triton.jit
def _dequant_tile(blocks_ptr, scales_ptr, rows, mask_rows, jj, mask_j, stride_bn, stride_sn):
    """Packed rows (BN,) x bytes jj (BK/2,) -> (low, high) nibble weights, each (BK/2, BN) fp32,
    transposed for tl.dot."""
    mask = mask_rows[None, :] & mask_j[:, None]
    b = tl.load(blocks_ptr + rows[None, :] * stride_bn + jj[:, None], mask=mask, other=0)
    b = b.to(tl.int32)
    s = tl.load(scales_ptr + rows[None, :] * stride_sn + (jj // 16)[:, None], mask=mask, other=0)
    s = tl.exp2(s.to(tl.float32) - 113.0)  # 2**(s - 127), times 2**14 (see _e2m1_pairs)
    lo, hi = _e2m1_pairs(b | (b << 12))  # the high nibble moved to bits 16..19
    return lo * s, hi * s


@triton.jit
def _mlp1_grouped_kernel(
    x_ptr, order_ptr, tiles_ptr, n_tiles, blocks_ptr, scales_ptr, bias_ptr, h_ptr, K, N_INTER, A,
    stride_xt, stride_be, stride_bn, stride_se, stride_sn, stride_bias, stride_hp, limit, alpha,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """h[sorted row, i] for a tile of rows of one expert; grid (tiles, I tiles).

    tiles (3, n_tiles) int32: expert, first sorted row, end of the expert's rows.
    """
    tile = tl.program_id(0)
    e = tl.load(tiles_ptr + tile).to(tl.int64)
    start = tl.load(tiles_ptr + n_tiles + tile)
    end = tl.load(tiles_ptr + 2 * n_tiles + tile)
    offs_m = start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < end
    tok = tl.load(order_ptr + offs_m, mask=mask_m, other=0).to(tl.int64) // A  # (BM,)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < N_INTER
    rows = 2 * offs_i.to(tl.int64)
    offs_j = tl.arange(0, BLOCK_K // 2)
    b_base = blocks_ptr + e * stride_be
    s_base = scales_ptr + e * stride_se
    acc_g = tl.zeros([BLOCK_M, BLOCK_I], dtype=tl.float32)
    acc_l = tl.zeros([BLOCK_M, BLOCK_I], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        jj = k0 // 2 + offs_j
        mask_j = jj < K // 2
        mask_x = mask_m[:, None] & mask_j[None, :]
        x_rows = x_ptr + tok[:, None] * stride_xt + _low_weight(jj)[None, :]
        x_lo = tl.load(x_rows, mask=mask_x, other=0.0)  # (BM, BK/2)
        x_hi = tl.load(x_rows + 4, mask=mask_x, other=0.0)
        lo, hi = _dequant_tile(b_base, s_base, rows, mask_i, jj, mask_j, stride_bn, stride_sn)
        acc_g = tl.dot(x_lo, lo.to(x_lo.dtype), acc_g, input_precision="ieee")
        acc_g = tl.dot(x_hi, hi.to(x_lo.dtype), acc_g, input_precision="ieee")
        lo, hi = _dequant_tile(b_base, s_base, rows + 1, mask_i, jj, mask_j, stride_bn, stride_sn)
        acc_l = tl.dot(x_lo, lo.to(x_lo.dtype), acc_l, input_precision="ieee")
        acc_l = tl.dot(x_hi, hi.to(x_lo.dtype), acc_l, input_precision="ieee")
    bias = bias_ptr + e * stride_bias + rows
    glu = acc_g + tl.load(bias, mask=mask_i, other=0.0).to(tl.float32)[None, :]
    lin = acc_l + tl.load(bias + 1, mask=mask_i, other=0.0).to(tl.float32)[None, :]
    out = _swiglu(glu, lin, limit, alpha)  # (BM, BI)
    h_rows = h_ptr + offs_m[:, None].to(tl.int64) * stride_hp + offs_i[None, :]
    tl.store(h_rows, out.to(h_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_i[None, :])


@triton.jit
def _mlp2_grouped_kernel(
    h_ptr, order_ptr, tiles_ptr, n_tiles, w_ptr, blocks_ptr, scales_ptr, bias_ptr, y_ptr, K, N,
    stride_hp, stride_be, stride_bn, stride_se, stride_sn, stride_bias, stride_yp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y[pair, n] = w[pair] (h[sorted row] . W2[e, n] + b2[e, n]); grid (tiles, N tiles)."""
    tile = tl.program_id(0)
    e = tl.load(tiles_ptr + tile).to(tl.int64)
    start = tl.load(tiles_ptr + n_tiles + tile)
    end = tl.load(tiles_ptr + 2 * n_tiles + tile)
    offs_m = start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < end
    pair = tl.load(order_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    offs_j = tl.arange(0, BLOCK_K // 2)
    b_base = blocks_ptr + e * stride_be
    s_base = scales_ptr + e * stride_se
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        jj = k0 // 2 + offs_j
        mask_j = jj < K // 2
        mask_h = mask_m[:, None] & mask_j[None, :]
        h_rows = h_ptr + offs_m[:, None].to(tl.int64) * stride_hp + _low_weight(jj)[None, :]
        h_lo = tl.load(h_rows, mask=mask_h, other=0.0)
        h_hi = tl.load(h_rows + 4, mask=mask_h, other=0.0)
        lo, hi = _dequant_tile(b_base, s_base, rows, mask_n, jj, mask_j, stride_bn, stride_sn)
        acc = tl.dot(h_lo, lo.to(h_lo.dtype), acc, input_precision="ieee")
        acc = tl.dot(h_hi, hi.to(h_lo.dtype), acc, input_precision="ieee")
    bias = tl.load(bias_ptr + e * stride_bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + pair, mask=mask_m, other=0.0).to(tl.float32)
    y = (acc + bias[None, :]) * w[:, None]
    y_rows = y_ptr + pair[:, None] * stride_yp + offs_n[None, :]
    tl.store(y_rows, y.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _route_kernel(
    logits_ptr, ids_ptr, w_ptr, E, stride_lt, A: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_A: tl.constexpr,
):  # fmt: skip
    """The A largest router logits of a token, largest first (the lower expert first among
    equals), and their softmax in fp32; grid (T,)."""
    tok = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    logits = tl.load(logits_ptr + tok * stride_lt + offs, mask=offs < E, other=float("-inf"))
    logits = logits.to(tl.float32)
    slots = tl.arange(0, BLOCK_A)
    top = tl.full([BLOCK_A], float("-inf"), tl.float32)
    ids = tl.zeros([BLOCK_A], dtype=tl.int32)
    for a in tl.static_range(A):
        best = tl.max(logits, axis=0)
        i = tl.min(tl.where(logits == best, offs, BLOCK_E), axis=0)
        top = tl.where(slots == a, best, top)
        ids = tl.where(slots == a, i, ids)
        logits = tl.where(offs == i, float("-inf"), logits)
    p = tl.exp(top - tl.max(top, axis=0))  # the unused slots give exp(-inf) = 0
    p = p / tl.sum(p, axis=0)
    tl.store(ids_ptr + tok * A + slots, ids.to(tl.int64), mask=slots < A)
    tl.store(w_ptr + tok * A + slots, p.to(w_ptr.dtype.element_ty), mask=slots < A)


# --- host ------------------------------------------------------------------------------------


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`gpt_oss.route` in one launch: logits (T, E) -> expert ids (T, A) int64, largest logit
    first, and their softmax weights (T, A) in the logits' dtype."""
    t, e = logits.shape
    if not 1 <= top_k <= e:
        raise ValueError(f"top_k must be in 1..{e}, got {top_k}")
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    ids = torch.empty(t, top_k, device=logits.device, dtype=torch.long)
    weights = torch.empty(t, top_k, device=logits.device, dtype=logits.dtype)
    if t:
        _route_kernel[(t,)](
            logits, ids, weights, e, logits.stride(0), A=top_k, BLOCK_E=next_pow2(e),
            BLOCK_A=next_pow2(top_k), num_warps=ROUTE_WARPS,
        )  # fmt: skip
    return ids, weights


def moe(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w1_blocks: torch.Tensor,
    w1_scales: torch.Tensor,
    b1: torch.Tensor,
    w2_blocks: torch.Tensor,
    w2_scales: torch.Tensor,
    b2: torch.Tensor,
    *,
    limit: float = 7.0,
    alpha: float = 1.702,
    residual: torch.Tensor | None = None,
    path: Path | None = None,
) -> torch.Tensor:
    """x (T, H), expert ids / router weights (T, A) -> sum_a w_a expert_a(x) (T, H), x's dtype.

    The blocks must be in the kernels' nibble order (`kernel_layout`). residual (T, H): added to
    the sum before it is rounded to x's dtype. path: "decode" or "grouped"; None picks decode
    for at most DECODE_MAX_TOKENS tokens.
    """
    t, hdim = x.shape
    e, two_i = w1_blocks.shape[:2]
    inter = two_i // 2
    _check_packed(w1_blocks, w1_scales, (e, two_i, hdim // 32))
    _check_packed(w2_blocks, w2_scales, (e, hdim, inter // 32))
    x = x.contiguous()
    ids = ids.contiguous()
    weights = weights.contiguous()
    a = ids.shape[1]
    if path is None:
        path = "decode" if t <= DECODE_MAX_TOKENS else "grouped"
    if path == "decode":
        # fp32 between the two kernels: it is tiny next to the weights, and bf16 would round it.
        h = torch.empty(t * a, inter, device=x.device, dtype=torch.float32)  # (P, I)
        cfg1, cfg2 = DECODE_MLP1, DECODE_MLP2
        _mlp1_decode_kernel[(t * a, cdiv(inter, cfg1["BLOCK_I"]))](
            x, ids, w1_blocks.view(torch.int32), w1_scales, b1, h, hdim // 32, inter, a,
            w1_blocks.stride(0) // 16, w1_blocks.stride(1) // 16, w1_scales.stride(0),
            w1_scales.stride(1), b1.stride(0), limit, alpha, BLOCK_I=cfg1["BLOCK_I"],
            BLOCK_G=cfg1["BLOCK_G"], num_warps=cfg1["num_warps"],
        )  # fmt: skip
        out = torch.empty_like(x)
        res = out if residual is None else residual.contiguous()
        _mlp2_decode_kernel[(t, cdiv(hdim, cfg2["BLOCK_N"]))](
            h, ids, weights, w2_blocks.view(torch.int32), w2_scales, b2, res, out, inter // 32,
            hdim, a, w2_blocks.stride(0) // 16, w2_blocks.stride(1) // 16, w2_scales.stride(0),
            w2_scales.stride(1), b2.stride(0), RESIDUAL=residual is not None,
            BLOCK_N=cfg2["BLOCK_N"], BLOCK_G=cfg2["BLOCK_G"], num_warps=cfg2["num_warps"],
        )  # fmt: skip
        return out
    if path != "grouped":
        raise ValueError(f"unknown MoE path {path!r} (decode or grouped)")
    h = torch.empty(t * a, inter, device=x.device, dtype=x.dtype)  # (P, I), a tl.dot operand
    block_m = grouped_block_m(t * a, e)
    order, tiles = expert_tiles(ids, e, block_m)
    n_tiles = tiles.shape[1]
    cfg1, cfg2 = GROUPED_MLP1[block_m], GROUPED_MLP2[block_m]
    _mlp1_grouped_kernel[(n_tiles, cdiv(inter, cfg1["BLOCK_I"]))](
        x, order, tiles, n_tiles, w1_blocks, w1_scales, b1, h, hdim, inter, a, x.stride(0),
        w1_blocks.stride(0), w1_blocks.stride(1), w1_scales.stride(0), w1_scales.stride(1),
        b1.stride(0), h.stride(0), limit, alpha, BLOCK_M=block_m, BLOCK_I=cfg1["BLOCK_I"],
        BLOCK_K=cfg1["BLOCK_K"], num_warps=cfg1["num_warps"], num_stages=cfg1["num_stages"],
    )  # fmt: skip
    y = torch.empty(t * a, hdim, device=x.device, dtype=torch.float32)  # (P, H), pair order
    _mlp2_grouped_kernel[(n_tiles, cdiv(hdim, cfg2["BLOCK_N"]))](
        h, order, tiles, n_tiles, weights, w2_blocks, w2_scales, b2, y, inter, hdim, h.stride(0),
        w2_blocks.stride(0), w2_blocks.stride(1), w2_scales.stride(0), w2_scales.stride(1),
        b2.stride(0), y.stride(0), BLOCK_M=block_m, BLOCK_N=cfg2["BLOCK_N"],
        BLOCK_K=cfg2["BLOCK_K"], num_warps=cfg2["num_warps"], num_stages=cfg2["num_stages"],
    )  # fmt: skip
    # A token's pairs are adjacent rows: sum them in fp32 (deterministic, unlike atomics).
    total = y.view(t, a, hdim).sum(dim=1)
    return (total if residual is None else total + residual.float()).to(x.dtype)


def grouped_block_m(pairs: int, num_experts: int) -> int:
    """Rows per tile: small tiles when experts get few rows each, so little work is padding."""
    return (
        GROUPED_BLOCK_M[0] if pairs <= 2 * GROUPED_BLOCK_M[0] * num_experts else GROUPED_BLOCK_M[1]
    )


def expert_tiles(
    ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the pairs by expert and cut each expert's rows into tiles of `block_m`.

    -> order (P,) int32: pair index of each sorted row; tiles (3, n_tiles) int32: expert,
    first sorted row and end of that expert's rows. One host sync (the number of tiles).
    """
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True).to(torch.int32)
    counts = torch.bincount(flat, minlength=num_experts)  # (E,)
    per_expert = (counts + block_m - 1) // block_m
    n_tiles = int(per_expert.sum())
    expert = torch.repeat_interleave(
        torch.arange(num_experts, device=ids.device), per_expert, output_size=n_tiles
    )  # (n_tiles,)
    group_start = torch.cumsum(counts, 0) - counts
    first_tile = torch.cumsum(per_expert, 0) - per_expert
    index = torch.arange(n_tiles, device=ids.device) - first_tile[expert]
    start = group_start[expert] + index * block_m
    end = group_start[expert] + counts[expert]
    return order, torch.stack([expert, start, end]).to(torch.int32)


def _check_packed(blocks: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(blocks.shape) != (*shape, 16) or tuple(scales.shape) != shape:
        raise ValueError(
            f"packed weight shapes {tuple(blocks.shape)} / {tuple(scales.shape)} do not match "
            f"{(*shape, 16)} / {shape}"
        )
    # The kernels address a row's bytes and scales as contiguous runs, rows in whole groups.
    if blocks.stride(-1) != 1 or blocks.stride(-2) != 16 or scales.stride(-1) != 1:
        raise ValueError("packed weights must be contiguous within a row")
    if blocks.stride(0) % 16 or blocks.stride(1) % 16 or blocks.data_ptr() % 4:
        raise ValueError("packed weights must be laid out in whole 16-byte groups")


# --- ahead-of-time compilation ---------------------------------------------------------------


def aot_specs(dtype: torch.dtype = torch.bfloat16) -> list[KernelSpec]:
    """Every kernel configuration `moe` can launch, with activations of `dtype`."""
    act = ptr_type(dtype)
    u8, i64, i32 = "*u8", "*i64", "*i32"
    strides = ["stride_be", "stride_bn", "stride_se", "stride_sn", "stride_bias"]
    sig1 = {"x_ptr": act, "ids_ptr": i64, "blocks_ptr": i32, "scales_ptr": u8, "bias_ptr": act,
            "h_ptr": "*fp32"}  # fmt: skip
    sig1 |= dict.fromkeys(["N_GROUPS", "N_INTER", "A", *strides], "i32")
    sig1 |= {"limit": "fp32", "alpha": "fp32"}
    sig2 = {"h_ptr": "*fp32", "ids_ptr": i64, "w_ptr": act, "blocks_ptr": i32, "scales_ptr": u8,
            "bias_ptr": act, "res_ptr": act, "out_ptr": act}  # fmt: skip
    sig2 |= dict.fromkeys(["N_GROUPS", "N", "A", *strides], "i32")
    specs = [
        KernelSpec(
            "moe_mlp1_decode",
            _mlp1_decode_kernel,
            sig1,
            {"BLOCK_I": DECODE_MLP1["BLOCK_I"], "BLOCK_G": DECODE_MLP1["BLOCK_G"]},
            num_warps=DECODE_MLP1["num_warps"],
        ),
    ]
    for res in (False, True):
        cfg = DECODE_MLP2
        const = {"RESIDUAL": res, "BLOCK_N": cfg["BLOCK_N"], "BLOCK_G": cfg["BLOCK_G"]}
        specs.append(
            KernelSpec("moe_mlp2_decode", _mlp2_decode_kernel, sig2, const, cfg["num_warps"])
        )
    for num_experts, top_k in ((32, 4), (128, 4)):  # gpt-oss-20b and 120b
        sig = {"logits_ptr": act, "ids_ptr": i64, "w_ptr": act, "E": "i32", "stride_lt": "i32"}
        const = {"A": top_k, "BLOCK_E": num_experts, "BLOCK_A": next_pow2(top_k)}
        specs.append(KernelSpec("moe_route", _route_kernel, sig, const, num_warps=ROUTE_WARPS))
    scalars = ["K", "N_INTER", "A"]
    strides1 = ["stride_xt", *strides, "stride_hp"]
    g1 = {
        "x_ptr": act,
        "order_ptr": i32,
        "tiles_ptr": i32,
        "n_tiles": "i32",
        "blocks_ptr": u8,
        "scales_ptr": u8,
        "bias_ptr": act,
        "h_ptr": act,
    }
    g1 |= dict.fromkeys(scalars + strides1, "i32") | {"limit": "fp32", "alpha": "fp32"}
    g2 = {
        "h_ptr": act,
        "order_ptr": i32,
        "tiles_ptr": i32,
        "n_tiles": "i32",
        "w_ptr": act,
        "blocks_ptr": u8,
        "scales_ptr": u8,
        "bias_ptr": act,
        "y_ptr": "*fp32",
    }
    g2 |= dict.fromkeys(
        [
            "K",
            "N",
            "stride_hp",
            "stride_be",
            "stride_bn",
            "stride_se",
            "stride_sn",
            "stride_bias",
            "stride_yp",
        ],
        "i32",
    )
    for bm in GROUPED_BLOCK_M:
        cfg1, cfg2 = GROUPED_MLP1[bm], GROUPED_MLP2[bm]
        c1 = {"BLOCK_M": bm, "BLOCK_I": cfg1["BLOCK_I"], "BLOCK_K": cfg1["BLOCK_K"]}
        specs.append(
            KernelSpec(
                "moe_mlp1_grouped",
                _mlp1_grouped_kernel,
                g1,
                c1,
                num_warps=cfg1["num_warps"],
                num_stages=cfg1["num_stages"],
            )
        )
        c2 = {"BLOCK_M": bm, "BLOCK_N": cfg2["BLOCK_N"], "BLOCK_K": cfg2["BLOCK_K"]}
        specs.append(
            KernelSpec(
                "moe_mlp2_grouped",
                _mlp2_grouped_kernel,
                g2,
                c2,
                num_warps=cfg2["num_warps"],
                num_stages=cfg2["num_stages"],
            )
        )
    return specs

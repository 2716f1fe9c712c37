"""Causal GQA attention with per-head sinks and an optional sliding window, in Triton.

Shapes: T = queries, S = keys, nh / nkv = query / key-value heads, rep = nh / nkv, hd = head dim.
q (T, nh, hd) at positions q_start.., k / v (nkv, S, hd) at positions k_start.. (a KV-cache
slice), sinks (nh,) fp32 logits, window None (fully causal) or W: query i sees key j when
0 <= i - j < W. Output (T, nh hd).

The sink is one more softmax column with no value: the kernels start the running maximum at
the sink's logit and the running denominator at exp(0) = 1, so it takes its share of the
probability mass without any extra pass. Softmax runs in base 2 (exp2 is the fast instruction):
scores and sinks are multiplied by log2(e).

- prefill: flash-style; one program per (query tile, head), looping over only the key tiles
  the causal mask and the window let it see.
- decode: the rep query heads sharing a key-value head (times T queries) form one row tile, so
  each key is read once per kv head; the keys are split over programs (flash-decoding) and a
  small kernel merges the splits and the sink (with one split, as for the sliding-window layers,
  the decode kernel merges the sink itself: one launch).
- paged decode (`paged_attention`, the batching engine's decode step): B rows of one query each,
  every row attending to its own keys, scattered over the slots of a page pool (slots, nkv, hd):
  `slots` (B, S) lists them in position order from `k_start[b]`, padded at the end. One program
  per (kv head, row, split), the same row tile and splits as decode; each row's length is read
  from memory (q_start[b] + 1 - k_start[b]), so a launch's shapes do not depend on the lengths
  (a CUDA graph can replay it with the padding width fixed).
"""

from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl

from ..transformer import attention as model_attention
from .common import KernelSpec, cdiv, next_pow2, ptr_type

LOG2E = 1.4426950408889634
PREFILL = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
DECODE = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
DECODE_MAX_ROWS = 16  # decode kernel when T * rep rows fit one 16-row tile (tl.dot minimum)
MAX_SPLITS = 32  # flash-decoding: at most this many programs per kv head


# --- reference -------------------------------------------------------------------------------


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_start: int,
    k_start: int,
    window: int | None,
) -> torch.Tensor:
    """The model's PyTorch attention in fp32: -> (T, nh hd), q's dtype."""
    out = model_attention(q.float(), k.float(), v.float(), sinks, q_start, k_start, window)
    return out.to(q.dtype)


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc):
    """Fold one key tile into the running max, denominator and numerator of each row: s (rows,
    BN) base-2 logits, -inf where masked; v (BN, hd)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    corr = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * corr + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * corr[:, None], input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _store_split(
    m_i, l_i, acc, sinks_ptr, head, mask_r, o_ptr, o_offs, m_ptr, l_ptr, acc_ptr, part,
    HEAD_DIM: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    """A split's rows: FINAL (the only split), the output with the sink merged at o_ptr + o_offs
    (rows, hd); else the fp32 partials at rows `part` of m / l / acc."""
    if FINAL:
        sink = tl.load(sinks_ptr + head, mask=mask_r, other=0.0).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m_i, sink)
        w = tl.exp2(m_i - m)
        out = acc * (w / (l_i * w + tl.exp2(sink - m)))[:, None]
        tl.store(o_ptr + o_offs, out.to(o_ptr.dtype.element_ty), mask=mask_r[:, None])
    else:
        tl.store(m_ptr + part, m_i)
        tl.store(l_ptr + part, l_i)
        offs_d = tl.arange(0, HEAD_DIM)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc)


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, sinks_ptr, o_ptr, T, S, q_start, k_start, window, qk_scale, stride_qt,
    stride_qh, stride_kh, stride_ks, stride_vh, stride_vs, stride_ot, REP: tl.constexpr,
    HEAD_DIM: tl.constexpr, SLIDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """grid (query tiles, nh)."""
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    kvh = head // REP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < T
    q = tl.load(
        q_ptr + offs_m[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=mask_m[:, None],
        other=0.0,
    )  # (BM, hd)
    qpos = q_start + offs_m
    # Keys this tile can see: up to its last query's position, and from the window's start.
    hi = tl.minimum(S, q_start + pid_m * BLOCK_M + BLOCK_M - k_start)
    lo = 0
    if SLIDING:
        lo = tl.maximum(0, q_start + pid_m * BLOCK_M - window + 1 - k_start)
        lo = (lo // BLOCK_N) * BLOCK_N
    sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + sink
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < S
        kt = tl.load(
            k_base + offs_n[None, :] * stride_ks + offs_d[:, None], mask=mask_n[None, :], other=0.0
        )  # (hd, BN)
        s = tl.dot(q, kt, input_precision="ieee") * qk_scale  # (BM, BN), base-2 logits
        kpos = k_start + offs_n
        allowed = (kpos[None, :] <= qpos[:, None]) & mask_n[None, :]
        if SLIDING:
            allowed &= (qpos[:, None] - kpos[None, :]) < window
        s = tl.where(allowed, s, float("-inf"))
        v = tl.load(
            v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=mask_n[:, None], other=0.0
        )  # (BN, hd)
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)  # m_i finite: starts at the sink
    out = acc / l_i[:, None]
    o = o_ptr + offs_m[:, None] * stride_ot + head * HEAD_DIM + offs_d[None, :]
    tl.store(o, out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None])


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, m_ptr, l_ptr, acc_ptr, pos_ptr, sinks_ptr, o_ptr, T, S, q_start, k_start,
    window, qk_scale, stride_qt, stride_qh, stride_kh, stride_ks, stride_vh, stride_vs, stride_ot,
    REP: tl.constexpr, HEAD_DIM: tl.constexpr, SLIDING: tl.constexpr,
    POS_IN_MEMORY: tl.constexpr, FINAL: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One split of the keys for one kv head -> partial (max, denominator, numerator) per row.

    grid (nkv, splits). Row r is query r // REP of head kvh REP + r % REP. Partials are fp32:
    m / l (splits, nkv, BLOCK_R), acc (splits, nkv, BLOCK_R, hd); no sink here. FINAL (one
    split): merge the sink and write the output instead, saving the combine launch. POS_IN_MEMORY:
    q_start is read from pos_ptr (a CUDA graph replays the launch at every position), so the
    splits are cut here from the keys actually seen; splits left without keys store an empty
    partial.
    """
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    n_kv = tl.num_programs(0)
    if POS_IN_MEMORY:
        q_start = tl.load(pos_ptr).to(tl.int32)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    tq = offs_r // REP
    head = kvh * REP + offs_r % REP
    mask_r = tq < T
    q = tl.load(
        q_ptr + tq[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=mask_r[:, None],
        other=0.0,
    )  # (BR, hd)
    qpos = q_start + tq
    hi = tl.minimum(S, q_start + T - k_start)
    lo = 0
    if SLIDING:
        lo = tl.maximum(0, q_start - window + 1 - k_start)
    split_len = tl.cdiv(tl.cdiv(hi - lo, tl.num_programs(1)), BLOCK_N) * BLOCK_N
    first = lo + split * split_len
    last = tl.minimum(hi, first + split_len)
    # A large finite start keeps exp2(m_old - m_new) defined when a split sees no key.
    m_i = tl.zeros([BLOCK_R], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    for start_n in range(first, last, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < last
        kt = tl.load(
            k_base + offs_n[None, :] * stride_ks + offs_d[:, None], mask=mask_n[None, :], other=0.0
        )  # (hd, BN)
        s = tl.dot(q, kt, input_precision="ieee") * qk_scale  # (BR, BN)
        kpos = k_start + offs_n
        allowed = (kpos[None, :] <= qpos[:, None]) & mask_n[None, :]
        if SLIDING:
            allowed &= (qpos[:, None] - kpos[None, :]) < window
        s = tl.where(allowed, s, float("-inf"))
        v = tl.load(
            v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=mask_n[:, None], other=0.0
        )  # (BN, hd)
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
    o_offs = tq[:, None] * stride_ot + head[:, None] * HEAD_DIM + offs_d[None, :]
    part = (split * n_kv + kvh) * BLOCK_R + offs_r
    _store_split(m_i, l_i, acc, sinks_ptr, head, mask_r, o_ptr, o_offs, m_ptr, l_ptr, acc_ptr,
                 part, HEAD_DIM, FINAL)  # fmt: skip


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, slots_ptr, start_ptr, first_ptr, m_ptr, l_ptr, acc_ptr, sinks_ptr, o_ptr,
    window, qk_scale, stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
    stride_sb, stride_ob, REP: tl.constexpr, HEAD_DIM: tl.constexpr, SLIDING: tl.constexpr,
    FINAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One split of one row's keys for one kv head: grid (nkv, B, splits). Rows r < REP of the
    tile are the query heads kvh REP + r; row b sees its first n = start[b] + 1 - first[b] slots.
    Partials as in `_decode_kernel`, (splits, B, nkv, BLOCK_R) rows; FINAL merges the sink."""
    kvh = tl.program_id(0)
    b = tl.program_id(1)
    split = tl.program_id(2)
    n_kv, n_rows = tl.num_programs(0), tl.num_programs(1)
    n = (tl.load(start_ptr + b) + 1 - tl.load(first_ptr + b)).to(tl.int32)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    head = kvh * REP + offs_r % REP
    mask_r = offs_r < REP
    q = tl.load(
        q_ptr + b * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
        mask=mask_r[:, None],
        other=0.0,
    )  # (BR, hd)
    split_len = tl.cdiv(tl.cdiv(n, tl.num_programs(2)), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(n, lo + split_len)
    m_i = tl.zeros([BLOCK_R], dtype=tl.float32) - 1.0e30  # finite: a split may see no key
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        slot = tl.load(slots_ptr + b * stride_sb + offs_n, mask=mask_n, other=0).to(tl.int64)
        kt = tl.load(
            k_ptr + slot[None, :] * stride_ks + kvh * stride_kh + offs_d[:, None],
            mask=mask_n[None, :],
            other=0.0,
        )  # (hd, BN)
        s = tl.dot(q, kt, input_precision="ieee") * qk_scale  # (BR, BN)
        allowed = mask_n[None, :]
        if SLIDING:  # the query is at position first + n - 1, key j at first + j
            allowed &= (n - 1 - offs_n)[None, :] < window
        s = tl.where(allowed, s, float("-inf"))
        v = tl.load(
            v_ptr + slot[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :],
            mask=mask_n[:, None],
            other=0.0,
        )  # (BN, hd)
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
    o_offs = b * stride_ob + head[:, None] * HEAD_DIM + offs_d[None, :]
    part = ((split * n_rows + b) * n_kv + kvh) * BLOCK_R + offs_r
    _store_split(m_i, l_i, acc, sinks_ptr, head, mask_r, o_ptr, o_offs, m_ptr, l_ptr, acc_ptr,
                 part, HEAD_DIM, FINAL)  # fmt: skip


@triton.jit
def _decode_combine_kernel(
    m_ptr, l_ptr, acc_ptr, sinks_ptr, o_ptr, T, n_splits, stride_ob, stride_ot,
    REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Merge the splits of one kv head of one row with the sink: grid (nkv, B), partials
    (splits, B, nkv, BLOCK_R) rows (B = 1 for `_decode_kernel`'s)."""
    kvh = tl.program_id(0)
    b = tl.program_id(1)
    n_kv, n_rows = tl.num_programs(0), tl.num_programs(1)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    tq = offs_r // REP
    head = kvh * REP + offs_r % REP
    mask_r = tq < T
    m = tl.load(sinks_ptr + head, mask=mask_r, other=0.0).to(tl.float32) * 1.4426950408889634
    l_tot = tl.zeros([BLOCK_R], dtype=tl.float32) + 1.0  # the sink's exp2(0)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    for split in range(0, n_splits):
        row = ((split * n_rows + b) * n_kv + kvh) * BLOCK_R + offs_r
        m_s = tl.load(m_ptr + row)
        m_new = tl.maximum(m, m_s)
        corr, w = tl.exp2(m - m_new), tl.exp2(m_s - m_new)
        l_tot = l_tot * corr + tl.load(l_ptr + row) * w
        acc_s = tl.load(acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :])
        acc = acc * corr[:, None] + acc_s * w[:, None]
        m = m_new
    out = acc / l_tot[:, None]
    o = o_ptr + b * stride_ob + tq[:, None] * stride_ot + head[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(o, out.to(o_ptr.dtype.element_ty), mask=mask_r[:, None])


# --- host ------------------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_start: int | torch.Tensor,
    k_start: int,
    window: int | None,
    *,
    path: str | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Same contract as `attention_reference`; path "prefill" or "decode" (None: by size).

    q_start may be a one-element integer tensor on q's device (decode path only): the kernels
    read it there, so the launch is the same at every position and a CUDA graph can replay it;
    then k / v are the whole cache buffers (k_start 0) and the keys past q_start are ignored.
    splits: key splits per kv head on the decode path (None: enough to fill the GPU).
    """
    t, nh, hd = q.shape
    nkv, s, _ = k.shape
    if nh % nkv or hd != next_pow2(hd) or hd < 16:
        raise ValueError(f"need nh ({nh}) a multiple of nkv ({nkv}), hd ({hd}) a power of 2 >= 16")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    rep = nh // nkv
    sliding = window is not None
    qk_scale = LOG2E / math.sqrt(hd)
    sinks = sinks.contiguous()
    out = torch.empty(t, nh * hd, device=q.device, dtype=q.dtype)
    in_memory = isinstance(q_start, torch.Tensor)
    if path is None:
        path = "decode" if t * rep <= DECODE_MAX_ROWS else "prefill"
    if in_memory and (path != "decode" or t * rep > DECODE_MAX_ROWS or k_start != 0):
        raise ValueError("a position tensor needs the decode path over the whole cache (k_start 0)")
    if path == "prefill":
        cfg = PREFILL
        _prefill_kernel[(cdiv(t, cfg["BLOCK_M"]), nh)](
            q, k, v, sinks, out, t, s, q_start, k_start, window or 0, qk_scale, q.stride(0),
            q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
            REP=rep, HEAD_DIM=hd, SLIDING=sliding, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
        return out
    if path != "decode":
        raise ValueError(f"unknown attention path {path!r} (prefill or decode)")
    cfg = DECODE
    block_r = decode_rows(t, rep)
    if in_memory:  # the most keys any position can see
        span = s if window is None else min(s, window + t - 1)
    else:  # the keys this step's queries see
        lo = max(0, q_start - window + 1 - k_start) if window is not None else 0
        span = max(1, min(s, q_start + t - k_start) - lo)
    if splits is None:
        splits = min(MAX_SPLITS, cdiv(span, 4 * cfg["BLOCK_N"]))
    f32 = dict(device=q.device, dtype=torch.float32)
    final = splits == 1
    m = torch.empty(0 if final else splits, nkv, block_r, **f32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(*m.shape, hd, **f32)
    # Without a position tensor, m stands in for pos_ptr: the kernel does not read it then.
    pos, q0 = (q_start, 0) if isinstance(q_start, torch.Tensor) else (m, q_start)
    _decode_kernel[(nkv, splits)](
        q, k, v, m, l_sum, acc, pos, sinks, out, t, s, q0, k_start, window or 0, qk_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), REP=rep, HEAD_DIM=hd, SLIDING=sliding, POS_IN_MEMORY=in_memory,
        FINAL=final, BLOCK_R=block_r, BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    if not final:
        _decode_combine_kernel[(nkv, 1)](
            m, l_sum, acc, sinks, out, t, splits, 0, out.stride(0), REP=rep, HEAD_DIM=hd,
            BLOCK_R=block_r,
        )  # fmt: skip
    return out


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slots: torch.Tensor,
    sinks: torch.Tensor,
    q_start: torch.Tensor,
    k_start: torch.Tensor,
    window: int | None,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """One new query per row over a page pool: q (B, nh, hd) at positions q_start (B,); k / v
    (slots, nkv, hd); slots (B, S) the slots of row b's keys at positions k_start[b]..q_start[b],
    padded at the end (the padding is not read). -> (B, nh hd) in q's dtype.

    Nothing is read back to the host: the launch depends only on the shapes, so a CUDA graph can
    replay it. splits: key splits per (row, kv head) (None: from S, enough to fill the GPU).
    """
    b, nh, hd = q.shape
    _, nkv, _ = k.shape
    if nh % nkv or hd != next_pow2(hd) or hd < 16 or nh // nkv > DECODE_MAX_ROWS:
        raise ValueError(f"need nh ({nh}) a multiple of nkv ({nkv}) by at most "
                         f"{DECODE_MAX_ROWS}, hd ({hd}) a power of 2 >= 16")  # fmt: skip
    if k.shape != v.shape or k.shape[2] != hd or slots.shape[0] != b:
        raise ValueError(f"k {tuple(k.shape)}, v {tuple(v.shape)}, slots {tuple(slots.shape)} "
                         f"do not fit q {tuple(q.shape)}")  # fmt: skip
    for name, x in (("q", q), ("k", k), ("v", v), ("slots", slots)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    rep = nh // nkv
    sinks = sinks.contiguous()
    cfg = DECODE
    block_r = decode_rows(1, rep)
    if splits is None:  # B rows already make B programs per kv head
        splits = max(1, min(cdiv(MAX_SPLITS, b), cdiv(slots.shape[1], 4 * cfg["BLOCK_N"])))
    out = torch.empty(b, nh * hd, device=q.device, dtype=q.dtype)
    f32 = dict(device=q.device, dtype=torch.float32)
    final = splits == 1
    m = torch.empty(0 if final else splits, b, nkv, block_r, **f32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(*m.shape, hd, **f32)
    if b:
        _paged_decode_kernel[(nkv, b, splits)](
            q, k, v, slots, q_start.contiguous(), k_start.contiguous(), m, l_sum, acc,
            sinks, out, window or 0, LOG2E / math.sqrt(hd), q.stride(0), q.stride(1),
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), slots.stride(0), out.stride(0),
            REP=rep, HEAD_DIM=hd, SLIDING=window is not None, FINAL=final, BLOCK_R=block_r,
            BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    if b and not final:
        _decode_combine_kernel[(nkv, b)](
            m, l_sum, acc, sinks, out, 1, splits, out.stride(0), 0, REP=rep, HEAD_DIM=hd,
            BLOCK_R=block_r,
        )  # fmt: skip
    return out


def decode_rows(t: int, rep: int) -> int:
    """Row tile of the decode kernel: T * rep rows, padded to a power of 2 >= 16 (tl.dot)."""
    return max(16, next_pow2(t * rep))


# --- ahead-of-time compilation ---------------------------------------------------------------


def aot_specs(
    dtype: torch.dtype = torch.bfloat16, rep: int = 8, head_dim: int = 64
) -> list[KernelSpec]:
    """Every configuration `attention` and `paged_attention` can launch for the real model's
    heads (64 q / 8 kv)."""
    act = ptr_type(dtype)
    strides = ["stride_qt", "stride_qh", "stride_kh", "stride_ks", "stride_vh", "stride_vs"]
    # Decode row tiles for T = 1 .. DECODE_MAX_ROWS / rep queries.
    row_tiles = sorted({decode_rows(t, rep) for t in range(1, DECODE_MAX_ROWS // rep + 1)})
    specs = []
    for sliding in (True, False):
        sig = {"q_ptr": act, "k_ptr": act, "v_ptr": act, "sinks_ptr": "*fp32", "o_ptr": act}
        sig |= dict.fromkeys(["T", "S", "q_start", "k_start", "window"], "i32")
        sig |= {"qk_scale": "fp32"} | dict.fromkeys([*strides, "stride_ot"], "i32")
        const = {
            "REP": rep,
            "HEAD_DIM": head_dim,
            "SLIDING": sliding,
            "BLOCK_M": PREFILL["BLOCK_M"],
            "BLOCK_N": PREFILL["BLOCK_N"],
        }
        specs.append(
            KernelSpec(
                "attn_prefill",
                _prefill_kernel,
                sig,
                const,
                num_warps=PREFILL["num_warps"],
                num_stages=PREFILL["num_stages"],
            )
        )
        # Each row tile, the position as an argument or (CUDA graphs) in memory.
        for block_r in row_tiles:
            for in_memory, final in itertools.product((False, True), (False, True)):
                sig = {"q_ptr": act, "k_ptr": act, "v_ptr": act}
                sig |= dict.fromkeys(["m_ptr", "l_ptr", "acc_ptr"], "*fp32")
                sig |= {"pos_ptr": "*i64" if in_memory else "*fp32", "sinks_ptr": "*fp32"}
                sig |= {"o_ptr": act} | dict.fromkeys(["T", "S", "q_start", "k_start"], "i32")
                sig |= {"window": "i32", "qk_scale": "fp32"}
                sig |= dict.fromkeys([*strides, "stride_ot"], "i32")
                const = {
                    "REP": rep,
                    "HEAD_DIM": head_dim,
                    "SLIDING": sliding,
                    "POS_IN_MEMORY": in_memory,
                    "FINAL": final,
                    "BLOCK_R": block_r,
                    "BLOCK_N": DECODE["BLOCK_N"],
                }
                specs.append(
                    KernelSpec(
                        "attn_decode",
                        _decode_kernel,
                        sig,
                        const,
                        num_warps=DECODE["num_warps"],
                        num_stages=DECODE["num_stages"],
                    )
                )
        for final in (False, True):
            sig = {"q_ptr": act, "k_ptr": act, "v_ptr": act}
            sig |= dict.fromkeys(["slots_ptr", "start_ptr", "first_ptr"], "*i64")
            sig |= dict.fromkeys(["m_ptr", "l_ptr", "acc_ptr", "sinks_ptr"], "*fp32")
            sig |= {"o_ptr": act, "window": "i32", "qk_scale": "fp32"}
            sig |= dict.fromkeys(["stride_qb", "stride_qh", "stride_ks", "stride_kh", "stride_vs",
                                  "stride_vh", "stride_sb", "stride_ob"], "i32")  # fmt: skip
            const = {
                "REP": rep,
                "HEAD_DIM": head_dim,
                "SLIDING": sliding,
                "FINAL": final,
                "BLOCK_R": decode_rows(1, rep),
                "BLOCK_N": DECODE["BLOCK_N"],
            }
            specs.append(
                KernelSpec(
                    "attn_paged_decode",
                    _paged_decode_kernel,
                    sig,
                    const,
                    num_warps=DECODE["num_warps"],
                    num_stages=DECODE["num_stages"],
                )
            )
    for block_r in row_tiles:
        sig = {
            "m_ptr": "*fp32",
            "l_ptr": "*fp32",
            "acc_ptr": "*fp32",
            "sinks_ptr": "*fp32",
            "o_ptr": act,
            "T": "i32",
            "n_splits": "i32",
            "stride_ob": "i32",
            "stride_ot": "i32",
        }
        const = {"REP": rep, "HEAD_DIM": head_dim, "BLOCK_R": block_r}
        specs.append(
            KernelSpec(
                "attn_decode_combine",
                _decode_combine_kernel,
                sig,
                const,
            )
        )
    return specs

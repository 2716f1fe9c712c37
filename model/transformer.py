"""gpt-oss in plain PyTorch: tokens (T,) or a batch (B, T), optional KV cache.

Shapes: B = sequences, T = new tokens, S = attended keys, H = hidden size, nh / nkv = query /
key-value heads, hd = head dim, E = experts, A = active experts per token, I = expert intermediate
size. Parameter names follow the reference (`original/`) checkpoint.

Every row of a batch has its own start position, and the cache decides which keys a row attends
to: `KVCache` holds one sequence contiguously, `kv_pages.PagedBatch` many in shared pages. The
MoE sees the batch's tokens as one set, so each expert a step needs is read once.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .config import ModelConfig
from .mxfp4 import dequantize

# Whether torch's bf16 matrix products run at speed on this CPU (AVX-512 BF16 or AMX); else
# the CPU paths compute bf16 products in fp32.
_BF16_GEMM_FAST = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()

# --- cache -----------------------------------------------------------------------------------


class KVLayer(Protocol):
    """Where one layer's keys and values live: the cache decides what each row attends to."""

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """Store the new k / v (B, nkv, T, hd) of rows starting at `start` -> the keys and values
        each row attends to (B, nkv, S, hd) and the position of each row's first key."""
        ...


class Cache(Protocol):
    def layer(self, i: int) -> KVLayer: ...


class KVCache:
    """Keys and values of every layer, allocated once for `max_len` positions, updated in place.

    Sliding-window layers keep a full-length buffer too; attention only reads their last
    `sliding_window` positions, so their cost stays bounded while the bookkeeping stays trivial.
    """

    def __init__(
        self, config: ModelConfig, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        shape = (config.num_key_value_heads, max_len, config.head_dim)  # (nkv, L, hd)
        self.k = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)
        ]
        self.v = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)
        ]
        self.max_len = max_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def layer(self, i: int) -> CacheLayer:
        return CacheLayer(self.k[i], self.v[i])


class CacheLayer:
    """One layer of a `KVCache`: (nkv, L, hd) buffers that new keys and values are written into."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Store k / v (1, nkv, T, hd) at positions start.. -> the keys and values to attend to
        (1, nkv, S, hd) and the position of the first."""
        end = start + k.shape[-2]
        self.k[:, start:end] = k[0]
        self.v[:, start:end] = v[0]
        first = 0 if window is None else max(0, start - window + 1)
        return self.k[None, :, first:end], self.v[None, :, first:end], first


# --- modules, in reading order ---------------------------------------------------------------


class Transformer(nn.Module):
    inv_freq: torch.Tensor  # (hd/2,) fp32, YaRN-scaled; not in checkpoints

    def __init__(self, config: ModelConfig, *, packed_experts: bool = False) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.block = nn.ModuleList(
            [Block(config, i, packed_experts) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.unembedding = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        start: int | torch.Tensor = 0,
        cache: Cache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """tokens (T,) at positions start..start+T-1 -> logits (T, vocab), or (1, vocab); or a
        batch (B, T) starting at `start`, one int for all rows or a (B,) int64 tensor -> (B, T or
        1, vocab).

        With (T,) tokens start may be a (1,) int64 tensor on the device with the Triton attention
        (CUDA graphs).
        """
        return self.unembedding(self.hidden(tokens, start, cache, last_only))

    def hidden(
        self,
        tokens: torch.Tensor,
        start: int | torch.Tensor = 0,
        cache: Cache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """The final normed hidden states (..., T or 1, H): `forward` before the unembedding."""
        x = self.embedding(tokens)  # (T, H) or (B, T, H)
        steps = torch.arange(tokens.shape[-1], device=tokens.device)
        batched = tokens.dim() == 2 and isinstance(start, torch.Tensor)
        positions = start[:, None] + steps if batched else start + steps  # (T,) or (B, T)
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.config)
        for i, block in enumerate(self.block):
            x = block(x, start, cos, sin, None if cache is None else cache.layer(i))
        if last_only:
            x = x[..., -1:, :]
        return self.norm(x)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, packed_experts: bool) -> None:
        super().__init__()
        self.attn = AttentionBlock(config, layer)
        self.mlp = MLPBlock(config, packed_experts)

    def forward(
        self,
        x: torch.Tensor,
        start: int | torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: KVLayer | None,
    ) -> torch.Tensor:
        x = x + self.attn(x, start, cos, sin, kv)
        return x + self.mlp(x)


class RMSNorm(nn.Module):
    """RMSNorm in fp32 with a learned fp32 scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 and _cpu_kernels_apply(x):
            return cpu_kernels.rms_norm(x, self.scale, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.scale).to(x.dtype)


class AttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.window = config.sliding_window if config.is_sliding(layer) else None
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.qkv = Linear(config.hidden_size, config.qkv_dim)
        self.sinks = nn.Parameter(torch.zeros(self.nh, dtype=torch.float32))
        self.out = Linear(self.nh * self.hd, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        start: int | torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: KVLayer | None,
    ) -> torch.Tensor:
        if x.dim() == 2:  # one sequence: a batch of one
            return self(x[None], start, cos, sin, kv)[0]
        b, t, _ = x.shape
        qkv = self.qkv(self.norm(x))  # (B, T, (nh + 2 nkv) hd)
        if t == 1 and hasattr(kv, "slots") and _cpu_kernels_apply(x):
            return self.out(self._attend_pages(qkv, cos, sin, start, kv))
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = apply_rope(q.view(b, t, self.nh, self.hd), cos, sin)
        k = apply_rope(k.view(b, t, self.nkv, self.hd), cos, sin).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(b, t, self.nkv, self.hd).transpose(1, 2)
        first = start  # position of the first key in k / v
        if kv is not None:
            k, v, first = kv.update(k, v, start, self.window)
        o = attention(q, k, v, self.sinks, start, first, self.window)  # (B, T, nh hd)
        return self.out(o)

    def _attend_pages(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start: int | torch.Tensor,
        kv: Any,
    ) -> torch.Tensor:
        """Decode rows (B, 1) of the batching engine, RoPE, cache write and attention over its
        pages in one call (`cpu_kernels.paged_decode`): qkv (B, 1, (nh + 2 nkv) hd) ->
        (B, 1, nh hd)."""
        b = qkv.shape[0]
        write, read, firsts = kv.slots(self.window)
        starts = start if isinstance(start, torch.Tensor) else torch.full_like(firsts, start)
        o = cpu_kernels.paged_decode(qkv.view(b, -1), cos, sin, kv.k, kv.v, write, read,
                                     self.sinks, starts, firsts, self.nh, self.window)  # fmt: skip
        return o.view(b, 1, self.nh * self.hd)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_start: int | torch.Tensor,
    k_start: int | torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Causal (optionally sliding-window) GQA attention with one sink logit per head: the sink
    is one more softmax column that has no value.

    q (..., T, nh, hd) at positions q_start.., k / v (..., nkv, S, hd) at positions k_start..
    -> (..., T, nh hd); any leading dimensions are a batch. The starts are ints, or (B,) tensors
    for a batch (B, ...) whose rows start apart: keys past a row's last query are masked, so
    rows of different lengths pad their keys at the end.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and not _BF16_GEMM_FAST:
        # (torch's bf16 batched products are several times slower there than fp32 ones)
        o = attention(q.float(), k.float(), v.float(), sinks, q_start, k_start, window)
        return o.to(q.dtype)
    *batch, t, nh, hd = q.shape
    nkv, s = k.shape[-3], k.shape[-2]
    rep = nh // nkv
    q = q.reshape(*batch, t, nkv, rep, hd).movedim(-4, -2)  # (..., nkv, rep, T, hd)
    # the rep query heads of a key head are rows of one product: no broadcast copy of the keys
    scores = (q.reshape(*batch, nkv, rep * t, hd) @ k.transpose(-1, -2)).float() / math.sqrt(hd)
    scores = scores.view(*batch, nkv, rep, t, s)
    qpos = _positions(q_start, t, q.device)[..., :, None]  # (T, 1) or (B, T, 1)
    kpos = _positions(k_start, s, q.device)[..., None, :]  # (1, S) or (B, 1, S)
    allowed = kpos <= qpos
    if window is not None:
        allowed &= qpos - kpos < window
    if allowed.dim() == 3:  # (B, T, S) -> (B, 1, 1, T, S)
        allowed = allowed[:, None, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    sink = sinks.float().view(nkv, rep, 1, 1).expand(*batch, nkv, rep, t, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    o = probs.to(v.dtype).reshape(*batch, nkv, rep * t, s) @ v  # (..., nkv, rep T, hd)
    return o.view(*batch, nkv, rep, t, hd).movedim(-2, -4).reshape(*batch, t, nh * hd)


def _positions(start: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """start.. start+n-1: (n,) for an int, (B, n) for a (B,) tensor of starts."""
    steps = torch.arange(n, device=device)
    if isinstance(start, torch.Tensor) and start.dim() == 1 and start.numel() > 1:
        return start[:, None].to(device) + steps
    return start + steps


class MLPBlock(nn.Module):
    """Top-k routed mixture of SwiGLU experts."""

    def __init__(self, config: ModelConfig, packed_experts: bool) -> None:
        super().__init__()
        self.top_k = config.experts_per_token
        self.limit, self.alpha = config.swiglu_limit, config.swiglu_alpha
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.gate = Linear(config.hidden_size, config.num_experts)
        self.experts: DenseExperts | MXFP4Experts = (
            MXFP4Experts(config) if packed_experts else DenseExperts(config)
        )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return route(self.gate(x), self.top_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The tokens of a batch are one set to route: an expert is read once per step.
        return self._moe(self.norm(x).reshape(-1, x.shape[-1])).view(x.shape)

    def _moe(self, t: torch.Tensor) -> torch.Tensor:
        """Routed experts on normalised tokens t (T, H)."""
        ids, weights = self.route(t)  # (T, A) each
        if isinstance(self.experts, MXFP4Experts) and _fused_moe(t):
            e = self.experts
            mlp1 = (e.mlp1_blocks, e.mlp1_scales, e.mlp1_bias)
            mlp2 = (e.mlp2_blocks, e.mlp2_scales, e.mlp2_bias)
            return cpu_kernels.moe_mxfp4(t, ids, weights, mlp1, mlp2, self.alpha, self.limit)
        flat = ids.flatten()  # (T A,)
        order = flat.argsort()
        counts = torch.bincount(flat, minlength=self.experts.num_experts).tolist()
        rows = order // self.top_k  # token of each sorted (token, expert) pair
        ys = t.new_empty(len(flat), t.shape[1])  # (T A, H): output of every (token, expert) pair
        at = 0
        for e, n in enumerate(counts):  # one pass per expert hit: each weight is read once
            if n == 0:
                continue
            pairs = order[at : at + n]
            at += n
            h = self.experts.mlp1(e, t[rows[at - n : at]]).float()  # (n, 2I), SwiGLU in fp32
            h = swiglu(h, self.alpha, self.limit).to(t.dtype)  # (n, I)
            ys[pairs] = self.experts.mlp2(e, h)  # (n, H)
        ys = ys.view(*ids.shape, -1).float()  # (T, A, H)
        return (ys * weights.float()[..., None]).sum(dim=1).to(t.dtype)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Slow reference: gather the A experts of every token and apply them."""
        t = self.norm(x)
        ids, weights = self.route(t)  # (T, A)
        w1, b1, w2, b2 = self.experts.gather(ids, t.dtype)  # (T, A, 2I, H) ...
        h = torch.einsum("tah,taoh->tao", t[:, None].expand(-1, self.top_k, -1), w1) + b1
        h = swiglu(h, self.alpha, self.limit)  # (T, A, I)
        y = torch.einsum("tai,taoi->tao", h, w2) + b2  # (T, A, H)
        return (y * weights[..., None]).sum(dim=1)


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (T, E) -> expert ids (T, A), sorted by logit, and their weights (T, A)."""
    top, ids = torch.topk(logits, top_k, dim=-1, sorted=True)
    return ids, torch.softmax(top, dim=-1, dtype=torch.float32).to(logits.dtype)  # fp32 inside


def swiglu(x: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU on interleaved columns: glu = even, linear = odd. (..., 2I) -> (..., I)."""
    glu, lin = x[..., 0::2], x[..., 1::2]
    glu = glu.clamp(max=limit)
    lin = lin.clamp(min=-limit, max=limit)
    return glu * torch.sigmoid(alpha * glu) * (lin + 1)


class DenseExperts(nn.Module):
    """All experts as stacked dense weights, [out, in] like nn.Linear."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.intermediate_size
        self.num_experts = e
        self.mlp1_weight = nn.Parameter(torch.empty(e, 2 * i, h))
        self.mlp1_bias = nn.Parameter(torch.zeros(e, 2 * i))
        self.mlp2_weight = nn.Parameter(torch.empty(e, h, i))
        self.mlp2_bias = nn.Parameter(torch.zeros(e, h))

    def mlp1(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.mlp1_weight[e], self.mlp1_bias[e])  # (n, H) -> (n, 2I)

    def mlp2(self, e: int, h: torch.Tensor) -> torch.Tensor:
        return linear(h, self.mlp2_weight[e], self.mlp2_bias[e])  # (n, I) -> (n, H)

    def expert(self, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return self.mlp1_weight[e], self.mlp1_bias[e], self.mlp2_weight[e], self.mlp2_bias[e]

    def gather(self, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return (
            self.mlp1_weight[ids],
            self.mlp1_bias[ids],
            self.mlp2_weight[ids],
            self.mlp2_bias[ids],
        )


class MXFP4Experts(nn.Module):
    """All experts kept packed in MXFP4; an expert is dequantised when it is used."""

    mlp1_blocks: torch.Tensor  # (E, 2I, H/32, 16) uint8
    mlp1_scales: torch.Tensor  # (E, 2I, H/32) uint8
    mlp2_blocks: torch.Tensor  # (E, H, I/32, 16) uint8
    mlp2_scales: torch.Tensor  # (E, H, I/32) uint8

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.intermediate_size
        self.num_experts = e
        u8 = torch.uint8
        self.register_buffer("mlp1_blocks", torch.empty(e, 2 * i, h // 32, 16, dtype=u8))
        self.register_buffer("mlp1_scales", torch.empty(e, 2 * i, h // 32, dtype=u8))
        self.register_buffer("mlp2_blocks", torch.empty(e, h, i // 32, 16, dtype=u8))
        self.register_buffer("mlp2_scales", torch.empty(e, h, i // 32, dtype=u8))
        self.mlp1_bias = nn.Parameter(torch.zeros(e, 2 * i))
        self.mlp2_bias = nn.Parameter(torch.zeros(e, h))

    def mlp1(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return _mxfp4_linear(x, self.mlp1_blocks[e], self.mlp1_scales[e], self.mlp1_bias[e])

    def mlp2(self, e: int, h: torch.Tensor) -> torch.Tensor:
        return _mxfp4_linear(h, self.mlp2_blocks[e], self.mlp2_scales[e], self.mlp2_bias[e])

    def expert(self, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w1 = dequantize(self.mlp1_blocks[e], self.mlp1_scales[e], dtype)  # (2I, H)
        w2 = dequantize(self.mlp2_blocks[e], self.mlp2_scales[e], dtype)  # (H, I)
        return w1, self.mlp1_bias[e], w2, self.mlp2_bias[e]

    def gather(self, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w1 = dequantize(self.mlp1_blocks[ids], self.mlp1_scales[ids], dtype)
        w2 = dequantize(self.mlp2_blocks[ids], self.mlp2_scales[ids], dtype)
        return w1, self.mlp1_bias[ids], w2, self.mlp2_bias[ids]


FUSED_MAX_ROWS = 64
"""Up to this many fp32 tokens per expert, CPU runs the fused packed kernel; beyond, dequantise
once. bf16 tokens always take the fused kernel (its int16 path beats dequantising at any count)."""


def _mxfp4_linear(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """x (n, in) @ W.T + bias for W (out, in) packed in MXFP4."""
    fused = x.shape[0] <= FUSED_MAX_ROWS or x.dtype != torch.float32
    if x.device.type == "cpu" and fused and cpu_kernels.available():
        return cpu_kernels.mxfp4_linear(x, blocks, scales, bias)
    return linear(x, dequantize(blocks, scales, x.dtype), bias)


def _cpu_kernels_apply(x: torch.Tensor) -> bool:
    """Whether inference on x runs through `cpu_kernels`' fused ops: on a CPU, without autograd,
    with the kernels built. Each replaces tens of small torch ops a layer."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and cpu_kernels.available()


FUSED_MOE_MAX_TOKENS = 16
"""Up to this many bf16 tokens a CPU MoE runs as one `cpu_kernels.moe_mxfp4` call (decode and
batched decode); a prefill chunk keeps the per-expert int16 calls, whose SwiGLU and sums run in
torch's threaded ops (the fused call's are serial: 128 tokens prefill 15% slower through it)."""


def _fused_moe(t: torch.Tensor) -> bool:
    """Whether a MoE runs as one `cpu_kernels.moe_mxfp4` call: for a few bf16 tokens (its int16
    products; fp32 keeps the exact per-expert kernel)."""
    return t.dtype != torch.float32 and t.shape[0] <= FUSED_MOE_MAX_TOKENS and _cpu_kernels_apply(t)


class Linear(nn.Linear):
    """nn.Linear; on the CPU, inference in bf16 streams the weight through `cpu_kernels`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


BF16_KERNEL_MAX_ROWS = 16
"""Up to this many rows, a CPU bf16 product runs the streaming kernel (torch's is far slower on
CPUs without AVX-512 BF16); beyond, the product is compute-bound and torch's GEMM takes it."""
FP32_GEMM_MIN_ROWS = 32
"""From this many rows, on a CPU without AVX-512 BF16, a bf16 product runs torch's fp32 GEMM on
upcast operands: 2.8x faster at 128 rows than its bf16 GEMM there, the upcast included."""


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) @ w.T + b, w (out, in)."""
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        rows = x.numel() // x.shape[-1]
        if (
            w.dtype == torch.bfloat16
            and rows <= BF16_KERNEL_MAX_ROWS
            and w.is_contiguous()
            and cpu_kernels.available()
        ):
            y = cpu_kernels.bf16_linear(x.reshape(rows, x.shape[-1]), w, b)
            return y.view(*x.shape[:-1], w.shape[0])
        if rows == 1 and x.dim() == 2:  # torch.mv beats a one-row GEMM
            y = torch.mv(w, x[0])
            return (y if b is None else y + b)[None]
        if w.dtype == torch.bfloat16 and rows >= FP32_GEMM_MIN_ROWS and not _BF16_GEMM_FAST:
            bias = None if b is None else b.float()
            return F.linear(x.float(), w.float(), bias).to(x.dtype)
    return F.linear(x, w, b)


# --- rotary embedding --------------------------------------------------------------------------


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """YaRN inverse frequencies (hd/2,), fp32: interpolation 1/(s f) blended with 1/f on a ramp."""
    d, base = config.head_dim, config.rope_theta
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (hd/2,)
    scale = config.rope_scaling_factor
    if scale <= 1:
        return (1.0 / freq).float()
    ctx = config.initial_context_length

    def correction_dim(rotations: float) -> float:
        return d * math.log(ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(config.rope_ntk_beta), correction_dim(config.rope_ntk_alpha)
    low, high = max(low, 0.0), min(high, d - 1.0)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 where frequencies are kept as they are
    inv = (1 / (scale * freq)) * (1 - extrapolate) + (1 / freq) * extrapolate
    return inv.float()


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles in fp32 from integer positions (...) -> cos, sin (..., hd/2) in fp32, YaRN-scaled."""
    concentration = 0.1 * math.log(config.rope_scaling_factor) + 1.0
    if config.rope_scaling_factor <= 1:
        concentration = 1.0
    angles = positions.float()[..., None] * inv_freq.float()
    return angles.cos() * concentration, angles.sin() * concentration


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split (NeoX) rotation of x (..., T, heads, hd) by cos / sin (..., T, hd/2), in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)

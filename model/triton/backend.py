"""The Triton backend: model surgery on the PyTorch gpt-oss.

`use_triton(transformer)` swaps, in place, every block for one that shares the same parameters
and runs the Triton kernels; the embedding and the qkv / out / router / unembedding matrix
products stay in PyTorch, where cuBLAS is as good as it gets. A block with MXFP4 experts fuses
its residual adds: the out projection's bias and the residual add run with the MLP's RMSNorm
(`add_rms_norm`), routing is one kernel, and the MoE's second kernel adds the residual, so a
one-token step is 10-11 launches per layer. Experts loaded dense keep the PyTorch MoE and block
(its norms still become Triton's). The swapped model keeps the forward signatures, so both
engines run it unchanged: `OneSequence` with its contiguous `KVCache` (tokens (T,)), and the
batching engine with its paged cache (tokens (B, T): a decode step's B rows attend over the
pages in one launch per layer, and the MoE takes the B T tokens as one set).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..transformer import (
    AttentionBlock,
    Block,
    CacheLayer,
    MLPBlock,
    MXFP4Experts,
    RMSNorm,
    Transformer,
)
from .attention import attention, paged_attention
from .moe import kernel_layout, moe, route
from .norm import add_rms_norm, rms_norm
from .rope import rope_, rope_and_cache_, rope_and_write_


class TritonRMSNorm(nn.Module):
    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.scale = norm.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)


class PagedLayer(Protocol):
    """A layer of the batching engine's paged cache (`kv_pages.PagedBatch.layer`), as the kernels
    use it: the key and value slots (slots, nkv, hd), and which of them the batch writes and
    reads (`slots(window)` -> write (B T,), read (B, S) padded, each row's first position (B,))."""

    k: torch.Tensor
    v: torch.Tensor

    def slots(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class TritonAttentionBlock(nn.Module):
    """AttentionBlock with RoPE and attention in Triton; the same parameters and cache use."""

    def __init__(self, block: AttentionBlock) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd, self.window = block.nh, block.nkv, block.hd, block.window
        self.norm = TritonRMSNorm(block.norm) if isinstance(block.norm, RMSNorm) else block.norm
        self.qkv, self.sinks, self.out = block.qkv, block.sinks, block.out

    def forward(
        self,
        x: torch.Tensor,
        start: int | torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: CacheLayer | PagedLayer | None,
    ) -> torch.Tensor:
        return self.out(self.attend(x, start, cos, sin, kv))

    def attend(
        self,
        x: torch.Tensor,
        start: int | torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: CacheLayer | PagedLayer | None,
    ) -> torch.Tensor:
        """The attention output before the out projection, (T, nh hd) or (B, T, nh hd).

        x (T, H): one sequence, in a `KVCache` or uncached; start an int, or a (1,) int64 tensor
        on the device (a decode step that a CUDA graph replays at every position: the cache is
        written and read where the tensor says). x (B, T, H): the batching engine's rows in its
        paged cache, start (B,) int64 or one int for all rows.
        """
        if x.dim() == 3:
            if kv is None or isinstance(kv, CacheLayer):
                raise ValueError("a batch (B, T, H) needs the paged cache of the batching engine")
            return self._attend_paged(x, start, cos, sin, kv)
        t, nh, nkv, hd = x.shape[0], self.nh, self.nkv, self.hd
        qkv = self.qkv(self.norm(x)).view(t, nh + 2 * nkv, hd)
        q = qkv[:, :nh]
        if kv is None:
            rope_(qkv[:, : nh + nkv], cos, sin)  # q and k, in place
            k = qkv[:, nh : nh + nkv].transpose(0, 1)  # (nkv, T, hd)
            v = qkv[:, nh + nkv :].transpose(0, 1)
            return attention(q, k, v, self.sinks, start, start, self.window)
        rope_and_cache_(qkv, nh, cos, sin, kv.k, kv.v, start)
        if isinstance(start, torch.Tensor):  # the whole cache; attention reads the position
            return attention(q, kv.k, kv.v, self.sinks, start, 0, self.window)
        end = start + t
        first = 0 if self.window is None else max(0, start - self.window + 1)
        k, v = kv.k[:, first:end], kv.v[:, first:end]  # (nkv, S, hd)
        return attention(q, k, v, self.sinks, start, first, self.window)

    def _attend_paged(
        self,
        x: torch.Tensor,
        start: int | torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: PagedLayer,
    ) -> torch.Tensor:
        """Rows of one token each (decode) attend over the pages in place; a longer chunk (the
        engine prefills one sequence at a time) attends over its keys gathered."""
        b, t, _ = x.shape
        nh, nkv, hd = self.nh, self.nkv, self.hd
        qkv = self.qkv(self.norm(x)).view(b * t, nh + 2 * nkv, hd)
        write, read, firsts = kv.slots(self.window)
        half = hd // 2  # cos / sin: (T, hd/2) for one start, (B, T, hd/2) for a start per row
        cos, sin = (c.expand(b, t, half).reshape(b * t, half) for c in (cos, sin))
        rope_and_write_(qkv, nh, cos, sin, kv.k, kv.v, write)
        q = qkv[:, :nh]  # (B T, nh, hd)
        if t == 1:
            starts = start if isinstance(start, torch.Tensor) else torch.full_like(firsts, start)
            o = paged_attention(q, kv.k, kv.v, read, self.sinks, starts, firsts, self.window)
            return o.view(b, 1, nh * hd)
        if b != 1:
            raise ValueError(f"prefill chunks of {b} rows: the paged prefill takes one at a time")
        start = int(start)  # (a one-element tensor: one host sync per chunk)
        first = start + t - read.shape[1]  # one row: no padding
        k, v = kv.k[read[0]].transpose(0, 1), kv.v[read[0]].transpose(0, 1)  # (nkv, S, hd)
        return attention(q, k, v, self.sinks, start, first, self.window)[None]


class TritonMLPBlock(nn.Module):
    """MLPBlock whose MXFP4 experts run in the fused Triton kernels, and routing in one kernel.

    It takes over the block's expert tensors, the packed ones reordered for the kernels
    (`kernel_layout`, one expert at a time, so loading 120b needs little extra memory).
    """

    def __init__(self, block: MLPBlock) -> None:
        super().__init__()
        ex = block.experts
        assert isinstance(ex, MXFP4Experts)
        self.norm, self.gate = TritonRMSNorm(block.norm), block.gate
        self.top_k, self.limit, self.alpha = block.top_k, block.limit, block.alpha
        self.register_buffer("mlp1_blocks", kernel_layout(ex.mlp1_blocks))
        del ex.mlp1_blocks  # frees the stored order before the next tensor is reordered
        self.register_buffer("mlp2_blocks", kernel_layout(ex.mlp2_blocks))
        del ex.mlp2_blocks
        self.mlp1_scales, self.mlp1_bias = ex.mlp1_scales, ex.mlp1_bias
        self.mlp2_scales, self.mlp2_bias = ex.mlp2_scales, ex.mlp2_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(self.norm(x))

    def experts(self, t: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The routed experts on normalised t (..., H), plus `residual` if given. A batch's
        tokens are one set (B T, H): each expert the step needs is read once."""
        shape = t.shape
        t = t.reshape(-1, shape[-1])
        ids, weights = route(self.gate(t), self.top_k)  # (T, A) each
        return moe(
            t, ids, weights,
            self.mlp1_blocks, self.mlp1_scales, self.mlp1_bias,
            self.mlp2_blocks, self.mlp2_scales, self.mlp2_bias,
            limit=self.limit, alpha=self.alpha,
            residual=None if residual is None else residual.reshape(t.shape),
        ).view(shape)  # fmt: skip


class TritonBlock(nn.Module):
    """Block with MXFP4 experts, its residual adds fused into the kernels around them."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.attn = TritonAttentionBlock(block.attn)
        self.mlp = TritonMLPBlock(block.mlp)

    def forward(
        self,
        x: torch.Tensor,
        start: int | torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: CacheLayer | PagedLayer | None,
    ) -> torch.Tensor:
        out = self.attn.out
        h = F.linear(self.attn.attend(x, start, cos, sin, kv), out.weight)  # bias added below
        x, t = add_rms_norm(x, h, out.bias, self.mlp.norm.scale, self.mlp.norm.eps)
        return self.mlp.experts(t, residual=x)


def use_triton(model: Transformer) -> Transformer:
    """Swap the Triton modules into `model`, in place; returns it."""
    model.norm = TritonRMSNorm(model.norm)
    for i, block in enumerate(model.block):
        if isinstance(block.mlp.experts, MXFP4Experts):
            model.block[i] = TritonBlock(block)
        else:
            block.attn = TritonAttentionBlock(block.attn)
            block.mlp.norm = TritonRMSNorm(block.mlp.norm)
    return model

"""Triton kernels against their plain-PyTorch references, over a grid of small shapes.

Without a GPU the kernels run in Triton's CPU interpreter, in fp32 (the interpreter's bf16
tl.dot is not faithful); shapes are small and tiles are the real ones, so masking is exercised.
"""

from __future__ import annotations

import pytest
import torch

from harmony_agent.model.config import ModelConfig
from harmony_agent.model.mxfp4 import dequantize
from harmony_agent.model.transformer import apply_rope, rope_cos_sin, rope_inv_freq, route
from harmony_agent.model.triton.common import kernel_test_mode

with kernel_test_mode() as MODE:
    pytest.importorskip("triton")
    from harmony_agent.model.triton import attention as triton_attention
    from harmony_agent.model.triton import moe as triton_moe
    from harmony_agent.model.triton import norm as triton_norm
    from harmony_agent.model.triton import rope as triton_rope

# In a process that imported triton before the interpreter could be enabled (the whole suite:
# transformers' gpt-oss imports it), test_triton_interpreter.py runs this file in a fresh one.
if MODE == "unavailable":
    pytest.skip("triton imported without the interpreter: run in a subprocess by "
                "test_triton_interpreter.py", allow_module_level=True)  # fmt: skip
DEVICE = "cuda" if MODE == "gpu" else "cpu"


def test_kernels_are_built_for_this_machine() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(triton_moe._mlp1_decode_kernel, InterpretedFunction) == (MODE != "gpu")


# --- MoE -------------------------------------------------------------------------------------


def experts(e: int, h: int, i: int, seed: int) -> dict[str, torch.Tensor]:
    """Random packed experts: every byte value (so every nibble) and scales around 2**-3."""
    g = torch.Generator().manual_seed(seed)

    def packed(rows: int, inp: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (e, rows, inp // 32, 16), generator=g, dtype=torch.uint8)
        scales = torch.randint(122, 126, (e, rows, inp // 32), generator=g, dtype=torch.uint8)
        return blocks, scales

    w1b, w1s = packed(2 * i, h)
    w2b, w2s = packed(h, i)
    t = {
        "w1_blocks": w1b,
        "w1_scales": w1s,
        "b1": torch.randn(e, 2 * i, generator=g),
        "w2_blocks": w2b,
        "w2_scales": w2s,
        "b2": torch.randn(e, h, generator=g),
    }
    return {k: v.to(DEVICE) for k, v in t.items()}


def routing(t: int, e: int, a: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:a] for _ in range(t)])  # (T, A)
    weights = torch.softmax(torch.randn(t, a, generator=g), dim=-1)
    return ids.to(DEVICE), weights.to(DEVICE)


@pytest.mark.parametrize(
    ("t", "h", "i", "e", "a", "path"),
    [
        (1, 64, 64, 4, 2, "decode"),
        (2, 160, 96, 6, 3, "decode"),  # several K chunks with a masked tail
        (9, 64, 64, 4, 2, "grouped"),  # BLOCK_M 16
        (40, 160, 96, 2, 2, "grouped"),  # BLOCK_M 64, experts with 40 rows
        (5, 64, 32, 8, 1, None),  # top-1, experts left unused
    ],
)
def test_moe_matches_reference(t: int, h: int, i: int, e: int, a: int, path: str | None) -> None:
    w = experts(e, h, i, seed=t)
    ids, weights = routing(t, e, a, seed=t + 1)
    x = 2.0 * torch.randn(t, h, generator=torch.Generator().manual_seed(t)).to(DEVICE)
    ref = triton_moe.moe_reference(x, ids, weights, **w)
    out = triton_moe.moe(x, ids, weights, **kernel_layout(w), path=path)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def kernel_layout(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return w | {k: triton_moe.kernel_layout(w[k]) for k in ("w1_blocks", "w2_blocks")}


def test_kernel_layout_puts_weight_4k_plus_q_at_nibble_k_of_word_q() -> None:
    codes = torch.randint(0, 16, (3, 2, 32), generator=torch.Generator().manual_seed(0))
    stored = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)  # (rows, groups, 16)
    words = triton_moe.kernel_layout(stored).view(torch.int32).long() & 0xFFFFFFFF  # (.., 4)
    for q in range(4):
        for k in range(8):
            assert torch.equal((words[..., q] >> (4 * k)) & 15, codes[..., 4 * k + q])


@pytest.mark.parametrize("path", ["decode", "grouped"])
def test_moe_adds_the_residual(path: str) -> None:
    w = experts(4, 64, 64, seed=2)
    ids, weights = routing(3, 4, 2, seed=3)
    g = torch.Generator().manual_seed(4)
    x, res = torch.randn(3, 64, generator=g).to(DEVICE), torch.randn(3, 64, generator=g).to(DEVICE)
    ref = triton_moe.moe_reference(x, ids, weights, **w) + res
    out = triton_moe.moe(x, ids, weights, **kernel_layout(w), residual=res, path=path)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("t", "e", "a"), [(1, 32, 4), (5, 128, 4), (2, 6, 1), (1, 8, 8)])
def test_route_matches_the_model(t: int, e: int, a: int) -> None:
    logits = torch.randn(t, e, generator=torch.Generator().manual_seed(e)).to(DEVICE)
    want_ids, want_w = route(logits.cpu(), a)
    ids, w = triton_moe.route(logits, a)
    assert ids.dtype == torch.long and torch.equal(ids.cpu(), want_ids)
    torch.testing.assert_close(w.cpu(), want_w, rtol=1e-6, atol=1e-6)


def test_moe_reference_exercises_the_swiglu_clamps() -> None:
    """The test inputs are large enough that both clamps bind (else they are untested)."""
    w = experts(4, 64, 64, seed=0)
    ids, _ = routing(6, 4, 2, seed=1)
    x = 2.0 * torch.randn(6, 64, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    w1 = dequantize(w["w1_blocks"][ids], w["w1_scales"][ids], torch.float32)
    h = torch.einsum("th,taoh->tao", x, w1) + w["b1"][ids]
    assert (h[..., 0::2] > 7).any() and (h[..., 1::2].abs() > 7).any()


def test_expert_tiles_cover_each_pair_once() -> None:
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [3, 2]])
    order, tiles = triton_moe.expert_tiles(ids, num_experts=5, block_m=2)
    assert ids.flatten()[order.long()].tolist() == [0, 0, 1, 2, 3, 3, 3, 3]
    assert tiles.tolist() == [[0, 1, 2, 3, 3], [0, 2, 3, 4, 6], [2, 3, 4, 8, 8]]


def test_grouped_block_m_grows_with_rows_per_expert() -> None:
    assert triton_moe.grouped_block_m(64, 32) == 16
    assert triton_moe.grouped_block_m(1024 * 4, 32) == 64


# --- attention -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "q_start", "k_start", "nh", "nkv", "hd", "window", "path", "splits"),
    [
        (7, 0, 0, 4, 2, 16, None, "prefill", None),
        (70, 0, 0, 4, 2, 32, 8, "prefill", None),  # two query tiles; the window skips key tiles
        (20, 30, 23, 4, 1, 16, 8, "prefill", None),  # a sliding-window cache slice
        (9, 120, 0, 2, 2, 16, None, "prefill", None),  # chunked prefill after a cached prefix
        (1, 40, 0, 4, 2, 16, 8, "decode", None),
        (1, 40, 33, 4, 2, 16, 8, "decode", None),  # window slice of the cache
        (3, 100, 0, 8, 2, 16, None, "decode", None),  # 3 queries x 4 heads in one row tile
        (1, 300, 0, 4, 1, 16, None, "decode", 3),  # flash-decoding splits, merged with the sink
        (2, 200, 0, 4, 2, 32, 64, "decode", 4),  # splits that see no key for some rows
        (4, 16, 0, 4, 2, 16, None, None, None),
    ],
)
def test_attention_matches_reference(
    t: int,
    q_start: int,
    k_start: int,
    nh: int,
    nkv: int,
    hd: int,
    window: int | None,
    path: str | None,
    splits: int | None,
) -> None:
    g = torch.Generator().manual_seed(t * 1000 + q_start)
    s = q_start + t - k_start
    q = torch.randn(t, nh, hd, generator=g).to(DEVICE)
    k = torch.randn(nkv, s, hd, generator=g).to(DEVICE)
    v = torch.randn(nkv, s, hd, generator=g).to(DEVICE)
    sinks = (2 * torch.randn(nh, generator=g)).to(DEVICE)
    ref = triton_attention.attention_reference(q, k, v, sinks, q_start, k_start, window)
    out = triton_attention.attention(
        q, k, v, sinks, q_start, k_start, window, path=path, splits=splits
    )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_attention_with_strided_cache_views() -> None:
    """k / v as the engine passes them: slices of a (nkv, max_len, hd) cache."""
    g = torch.Generator().manual_seed(3)
    cache_k = torch.randn(2, 64, 16, generator=g).to(DEVICE)
    cache_v = torch.randn(2, 64, 16, generator=g).to(DEVICE)
    q = torch.randn(1, 4, 16, generator=g).to(DEVICE)
    sinks = torch.zeros(4).to(DEVICE)
    k, v = cache_k[:, 20:31], cache_v[:, 20:31]  # positions 20..30
    ref = triton_attention.attention_reference(q, k, v, sinks, 30, 20, 11)
    torch.testing.assert_close(
        triton_attention.attention(q, k, v, sinks, 30, 20, 11), ref, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("t", "pos", "window", "splits"),
    [(1, 0, None, None), (1, 37, 8, None), (1, 150, None, 3), (2, 90, 64, 4), (4, 20, None, None)],
)
def test_attention_reads_the_position_from_memory(
    t: int, pos: int, window: int | None, splits: int | None
) -> None:
    """The CUDA-graph decode launch: the whole cache buffer, filled past the queries with keys
    they must not see, and the position in a device tensor."""
    g = torch.Generator().manual_seed(pos)
    nh, nkv, hd, max_len = 4, 2, 16, 192
    q = torch.randn(t, nh, hd, generator=g).to(DEVICE)
    cache_k = (10 * torch.randn(nkv, max_len, hd, generator=g)).to(DEVICE)
    cache_v = torch.randn(nkv, max_len, hd, generator=g).to(DEVICE)
    sinks = torch.randn(nh, generator=g).to(DEVICE)
    end = pos + t
    ref = triton_attention.attention_reference(
        q, cache_k[:, :end], cache_v[:, :end], sinks, pos, 0, window
    )
    position = torch.tensor([pos], device=DEVICE)
    out = triton_attention.attention(q, cache_k, cache_v, sinks, position, 0, window, splits=splits)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_attention_position_tensor_needs_the_decode_path() -> None:
    q, k = torch.zeros(1, 4, 16, device=DEVICE), torch.zeros(2, 8, 16, device=DEVICE)
    position = torch.tensor([3], device=DEVICE)
    with pytest.raises(ValueError, match="decode path"):
        triton_attention.attention(q, k, k, torch.zeros(4, device=DEVICE), position, 0, None,
                                   path="prefill")  # fmt: skip


@pytest.mark.parametrize(
    ("starts", "nh", "nkv", "hd", "window", "whole", "splits"),
    [
        ([5, 70, 0, 130], 4, 2, 16, None, False, None),
        ([5, 70, 0, 130], 4, 2, 16, 8, False, None),  # each row reads its window
        ([40, 9, 100], 4, 2, 16, 8, True, None),  # rows read past the window: masked
        ([5, 70, 0], 4, 1, 32, 300, False, None),  # a window longer than the rows
        ([300, 0, 64], 4, 2, 16, None, False, 3),  # splits, some without a key for short rows
    ],
)
def test_paged_attention_matches_reference(
    starts: list[int],
    nh: int,
    nkv: int,
    hd: int,
    window: int | None,
    whole: bool,
    splits: int | None,
) -> None:
    """Rows of different lengths over scattered slots of one pool, padded with slots that hold
    keys the rows must not see; each row as the reference attention over its own keys."""
    g = torch.Generator().manual_seed(sum(starts) + (window or 0))
    firsts = [0 if window is None or whole else max(0, s - window + 1) for s in starts]
    lengths = [s + 1 - f for s, f in zip(starts, firsts, strict=True)]
    n_slots = sum(lengths) + 16
    k = torch.randn(n_slots, nkv, hd, generator=g)
    v = torch.randn(n_slots, nkv, hd, generator=g)
    k[-16:], v[-16:] = 1e4, 1e4  # the padding's keys: seen, they would dominate
    order = torch.randperm(n_slots - 16, generator=g)
    rows, at = [], 0
    for n in lengths:
        pad = torch.randint(n_slots - 16, n_slots, (max(lengths) - n,), generator=g)
        rows.append(torch.cat([order[at : at + n], pad]))
        at += n
    slots = torch.stack(rows)  # (B, S)
    q = torch.randn(len(starts), nh, hd, generator=g)
    sinks = 2 * torch.randn(nh, generator=g)
    want = torch.cat([
        triton_attention.attention_reference(
            q[b : b + 1], k[slots[b, :n]].transpose(0, 1), v[slots[b, :n]].transpose(0, 1),
            sinks, starts[b], firsts[b], window,
        )
        for b, n in enumerate(lengths)
    ])  # fmt: skip
    on = {"device": DEVICE}
    out = triton_attention.paged_attention(
        q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), slots.to(DEVICE), sinks.to(DEVICE),
        torch.tensor(starts, **on), torch.tensor(firsts, **on), window, splits=splits,
    )  # fmt: skip
    torch.testing.assert_close(out.cpu(), want, rtol=1e-4, atol=1e-5)


# --- RMSNorm and RoPE ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 64), (5, 72), (2, 3, 2880)])
def test_rms_norm_matches_reference(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(len(shape))
    x = (3 * torch.randn(shape, generator=g)).to(DEVICE)
    scale = torch.rand(shape[-1], generator=g).to(DEVICE) + 0.5
    ref = triton_norm.rms_norm_reference(x, scale, 1e-5)
    torch.testing.assert_close(triton_norm.rms_norm(x, scale, 1e-5), ref, rtol=1e-5, atol=1e-5)


def test_add_rms_norm_returns_the_sum_and_its_norm() -> None:
    g = torch.Generator().manual_seed(8)
    x, h = torch.randn(3, 72, generator=g).to(DEVICE), torch.randn(3, 72, generator=g).to(DEVICE)
    bias, scale = torch.randn(72, generator=g).to(DEVICE), torch.rand(72, generator=g).to(DEVICE)
    total, normed = triton_norm.add_rms_norm(x, h, bias, scale, 1e-5)
    torch.testing.assert_close(total, x + h + bias, rtol=1e-6, atol=1e-6)
    want = triton_norm.rms_norm_reference(x + h + bias, scale, 1e-5)
    torch.testing.assert_close(normed, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("start", "heads", "hd"), [(0, 6, 16), (100_000, 20, 64)])
def test_rope_matches_the_model(start: int, heads: int, hd: int) -> None:
    """YaRN tables from the torch model, positions past the original 4096 context too."""
    config = ModelConfig(head_dim=hd)
    positions = torch.arange(start, start + 5)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(config), config)  # (T, hd/2) fp32
    g = torch.Generator().manual_seed(heads)
    qkv = torch.randn(5, (heads + 2) * hd, generator=g).to(DEVICE)
    x = qkv[:, : heads * hd].view(5, heads, hd)  # a strided view, rotated in place
    x0, tail = x.cpu().clone(), qkv[:, heads * hd :].clone()
    ref = apply_rope(x0, cos, sin)
    torch.testing.assert_close(triton_rope.rope_reference(x0, cos, sin), ref)
    out = triton_rope.rope_(x, cos.to(DEVICE), sin.to(DEVICE))
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(qkv[:, heads * hd :], tail, rtol=0, atol=0)  # v untouched


@pytest.mark.parametrize("in_memory", [False, True])
def test_rope_and_cache_rotates_and_stores_k_and_v(in_memory: bool) -> None:
    """One launch: q and k rotated in place, k (rotated) and v written to the caches."""
    t, nh, nkv, hd, start = 3, 4, 2, 16, 7
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(t, nh + 2 * nkv, hd, generator=g).to(DEVICE)
    cos, sin = torch.rand(t, hd // 2, generator=g), torch.rand(t, hd // 2, generator=g)
    k_cache = torch.randn(nkv, 16, hd, generator=g).to(DEVICE)
    v_cache = torch.randn(nkv, 16, hd, generator=g).to(DEVICE)
    want_qk = triton_rope.rope_reference(qkv[:, : nh + nkv].cpu(), cos, sin)
    want_k, want_v = k_cache.cpu().clone(), v_cache.cpu().clone()
    want_k[:, start : start + t] = want_qk[:, nh:].transpose(0, 1)
    want_v[:, start : start + t] = qkv[:, nh + nkv :].cpu().transpose(0, 1)
    want_qkv = torch.cat([want_qk, qkv[:, nh + nkv :].cpu()], dim=1)
    pos = torch.tensor([start], device=DEVICE) if in_memory else start
    triton_rope.rope_and_cache_(qkv, nh, cos.to(DEVICE), sin.to(DEVICE), k_cache, v_cache, pos)
    torch.testing.assert_close(qkv.cpu(), want_qkv, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_cache.cpu(), want_k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_cache.cpu(), want_v, rtol=0, atol=0)


def test_rope_and_write_stores_k_and_v_at_the_slots() -> None:
    """Into a page pool (slots, nkv, hd): token t's k and v at slot slots[t]; slot -1 (a padding
    row) stores nothing."""
    t, nh, nkv, hd = 3, 4, 2, 16
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(t, nh + 2 * nkv, hd, generator=g).to(DEVICE)
    cos, sin = torch.rand(t, hd // 2, generator=g), torch.rand(t, hd // 2, generator=g)
    k_pages = torch.randn(10, nkv, hd, generator=g).to(DEVICE)
    v_pages = torch.randn(10, nkv, hd, generator=g).to(DEVICE)
    slots = [7, -1, 2]
    want_qk = triton_rope.rope_reference(qkv[:, : nh + nkv].cpu(), cos, sin)
    want_k, want_v = k_pages.cpu().clone(), v_pages.cpu().clone()
    for i, slot in enumerate(slots):
        if slot >= 0:
            want_k[slot] = want_qk[i, nh:]
            want_v[slot] = qkv[i, nh + nkv :].cpu()
    triton_rope.rope_and_write_(qkv, nh, cos.to(DEVICE), sin.to(DEVICE), k_pages, v_pages,
                                torch.tensor(slots, device=DEVICE))  # fmt: skip
    torch.testing.assert_close(qkv[:, : nh + nkv].cpu(), want_qk, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_pages.cpu(), want_k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_pages.cpu(), want_v, rtol=0, atol=0)


# --- bf16 activations ------------------------------------------------------------------------


def test_bf16_activations_without_tl_dot() -> None:
    """bf16 in and out for the kernels that do not use tl.dot (the interpreter's bf16 dot is
    not faithful; on a GPU every path runs in bf16). The interpreter truncates fp32 -> bf16
    where a GPU rounds, so the tolerance is a couple of bf16 ulps."""
    tol = {"rtol": 2e-2, "atol": 2e-2}
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 96, generator=g).to(DEVICE, torch.bfloat16)
    scale = (torch.rand(96, generator=g) + 0.5).to(DEVICE)
    out = triton_norm.rms_norm(x, scale)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, triton_norm.rms_norm_reference(x, scale), **tol)

    cos, sin = torch.rand(3, 8, generator=g), torch.rand(3, 8, generator=g)
    heads = x.view(3, 6, 16)
    ref = triton_rope.rope_reference(heads, cos, sin)
    torch.testing.assert_close(triton_rope.rope_(heads.clone(), cos, sin), ref, **tol)

    w = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in
         experts(4, 96, 64, seed=5).items()}  # fmt: skip
    ids, weights = routing(2, 4, 2, seed=6)
    weights = weights.to(torch.bfloat16)
    out = triton_moe.moe(x[:2], ids, weights, **kernel_layout(w), path="decode")
    assert out.dtype == torch.bfloat16
    ref = triton_moe.moe_reference(x[:2].float(), ids, weights.float(), **w)
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=5e-2)

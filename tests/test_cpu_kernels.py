"""The CPU kernels against PyTorch: the MXFP4 linear against dequantise-then-matmul, the fused
MoE against its experts one by one, paged decode against RoPE, the cache write and attention
over the gathered keys, the bf16 linear against an fp32 matmul, for every instruction-set path
this CPU can run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harmony_agent.model import cpu_kernels
from harmony_agent.model.mxfp4 import dequantize
from harmony_agent.model.transformer import (
    FP32_GEMM_MIN_ROWS,
    Linear,
    apply_rope,
    attention,
    linear,
    swiglu,
)

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason="no C++ compiler for the kernels"
)


def _variants() -> list[str]:
    """The native build, each lesser instruction set this CPU also runs, and plain C++."""
    lesser = {"avx512bf16": ["avx512", "avx2"], "avx512": ["avx2"]}
    return ["native", *lesser.get(cpu_kernels.isa(), []), "scalar"]


@pytest.fixture(params=_variants())
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(cpu_kernels.ISA_ENV, request.param)
    cpu_kernels.settings_changed()
    built = cpu_kernels.isa()  # built now, for this variant
    assert request.param == "native" or built == request.param
    yield built
    monkeypatch.undo()
    cpu_kernels.settings_changed()


@pytest.mark.parametrize("rows", [1, 3, 9, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp4_linear_matches_dequantised_matmul(isa: str, rows: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(rows)
    blocks = torch.randint(0, 256, (40, 3, 16), generator=g, dtype=torch.uint8)  # out 40, in 96
    scales = torch.randint(100, 140, (40, 3), generator=g).to(torch.uint8)
    x = torch.randn(rows, 96, generator=g).to(dtype)
    bias = torch.randn(40, generator=g).to(dtype)
    ref = x.float() @ dequantize(blocks, scales, torch.float32).T + bias.float()
    got = cpu_kernels.mxfp4_linear(x, blocks, scales, bias)
    assert got.dtype == dtype and got.shape == (rows, 40)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


def test_bf16_inputs_lose_far_less_than_their_own_rounding_in_the_int16_kernel(isa: str) -> None:
    # bf16 inputs run the int16 kernel: its rounding of x must stay far below the output's bf16
    # rounding (2**-9 relative), across blocks of very different scales
    g = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 256, (64, 90, 16), generator=g, dtype=torch.uint8)  # in 2880
    scales = torch.randint(110, 135, (64, 90), generator=g).to(torch.uint8)
    x = (torch.randn(3, 2880, generator=g) * torch.rand(3, 2880, generator=g) ** 4).bfloat16()
    ref = x.double() @ dequantize(blocks, scales, torch.float32).double().T
    got = cpu_kernels.mxfp4_linear(x.float().bfloat16(), blocks, scales)
    exact = cpu_kernels.mxfp4_linear(x.float(), blocks, scales)  # the fp32 kernel, for scale
    unrounded = cpu_kernels._load().mxfp4_linear_q16(x.float().contiguous(), blocks, scales)
    scale = ref.abs().max().item()
    assert (unrounded.double() - ref).abs().max().item() < 2e-4 * scale
    assert (exact.double() - ref).abs().max().item() < 1e-6 * scale
    assert (got.double() - ref).abs().max().item() < 2**-8 * scale


@pytest.mark.parametrize("rows", [cpu_kernels.BF16_DOT_MIN_ROWS, 37])
def test_many_bf16_rows_multiply_exact_bf16_weights(rows: int) -> None:
    # prefill on AVX-512 BF16: weights decoded to bf16 (exact) and exact bf16 products, so only
    # the fp32 sums round; tiles of 16 weight rows and 4 x rows, with edges on both
    if cpu_kernels.isa() != "avx512bf16":
        pytest.skip("the bf16 dot product path needs AVX-512 BF16")
    g = torch.Generator().manual_seed(rows)
    blocks = torch.randint(0, 256, (53, 5, 16), generator=g, dtype=torch.uint8)  # in 160
    scales = torch.randint(100, 140, (53, 5), generator=g).to(torch.uint8)
    x = torch.randn(rows, 160, generator=g).bfloat16()
    ref = x.double() @ dequantize(blocks, scales, torch.float32).double().T
    got = cpu_kernels._load().mxfp4_linear_bf16(x, blocks, scales)
    assert (got.double() - ref).abs().max().item() < 1e-6 * ref.abs().max().item()
    via = cpu_kernels.mxfp4_linear(x, blocks, scales)  # the entry point takes this path
    assert torch.equal(via, got.bfloat16())


def test_mxfp4_linear_on_strided_expert_views(isa: str) -> None:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 8, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(120, 130, (3, 8, 2), generator=g).to(torch.uint8)
    x = torch.randn(1, 64, generator=g)
    for e in range(3):
        ref = x @ dequantize(blocks[e], scales[e], torch.float32).T
        torch.testing.assert_close(cpu_kernels.mxfp4_linear(x, blocks[e], scales[e]), ref)


@pytest.mark.parametrize("rows", [1, 2, 5, 16])
@pytest.mark.parametrize(("out", "width"), [(37, 96), (64, 83)])  # odd rows; a K tail
def test_bf16_linear_matches_an_fp32_matmul(isa: str, rows: int, out: int, width: int) -> None:
    g = torch.Generator().manual_seed(rows + out)
    w = torch.randn(out, width, generator=g).bfloat16()
    x = torch.randn(rows, width, generator=g)
    bias = torch.randn(out, generator=g).bfloat16()
    ref = x @ w.float().T + bias.float()
    got = cpu_kernels.bf16_linear(x, w, bias)
    assert got.dtype == torch.float32 and got.shape == (rows, out)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    got16 = cpu_kernels.bf16_linear(x.bfloat16(), w)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(
        got16.float(), x.bfloat16().float() @ w.float().T, atol=3e-2, rtol=1e-2
    )


@pytest.mark.parametrize("tokens", [1, 13])  # 13: a tile of 8 and a tail, experts shared
def test_fused_moe_matches_the_experts_one_by_one_and_each_token_alone(
    isa: str, tokens: int
) -> None:
    g = torch.Generator().manual_seed(tokens)
    e, hidden, inter, top = 6, 64, 96, 2
    mlp1 = (torch.randint(0, 256, (e, 2 * inter, hidden // 32, 16), generator=g, dtype=torch.uint8),
            torch.randint(118, 128, (e, 2 * inter, hidden // 32), generator=g).to(torch.uint8),
            torch.randn(e, 2 * inter, generator=g).bfloat16())  # fmt: skip
    mlp2 = (torch.randint(0, 256, (e, hidden, inter // 32, 16), generator=g, dtype=torch.uint8),
            torch.randint(118, 128, (e, hidden, inter // 32), generator=g).to(torch.uint8),
            torch.randn(e, hidden, generator=g).bfloat16())  # fmt: skip
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=g)[:top] for _ in range(tokens)])
    gates = torch.softmax(torch.randn(tokens, top, generator=g), -1)
    got = cpu_kernels.moe_mxfp4(x, ids, gates, mlp1, mlp2, 1.702, 7.0)
    w1, w2 = (dequantize(m[0], m[1], torch.float64) for m in (mlp1, mlp2))
    ref = torch.zeros(tokens, hidden, dtype=torch.float64)
    for t in range(tokens):
        for a in range(top):
            i = int(ids[t, a])
            h = swiglu(w1[i] @ x[t].double() + mlp1[2][i].double(), 1.702, 7.0)
            ref[t] += gates[t, a].double() * (w2[i] @ h + mlp2[2][i].double())
    assert got.dtype == torch.bfloat16 and got.shape == (tokens, hidden)
    torch.testing.assert_close(got.double(), ref, atol=2**-8 * ref.abs().max().item(), rtol=2**-7)
    for t in range(tokens):  # a token's result does not depend on the others in its batch
        one = cpu_kernels.moe_mxfp4(x[t : t + 1], ids[t : t + 1], gates[t : t + 1], mlp1, mlp2,
                                    1.702, 7.0)  # fmt: skip
        assert torch.equal(one[0], got[t])


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_rotates_writes_and_attends_as_the_unfused_ops(
    isa: str, dtype: torch.dtype, window: int | None
) -> None:
    g = torch.Generator().manual_seed(7)
    nh, nkv, hd, slots = 4, 2, 16, 64
    store = torch.randn(slots, 3, nkv, hd, generator=g).to(dtype)  # k and v: strided views
    k, v = store[:, 0], store[:, 2]
    starts = torch.tensor([6, 20, 0])
    # row 0 holds its window's keys only; row 1 older ones too, which the window must mask
    firsts = torch.tensor([0 if window is None else 6 - window + 1, 0, 0])
    counts = (starts - firsts + 1).tolist()
    read = torch.zeros(3, max(counts), dtype=torch.int64)  # padded with slot 0 at the end
    for b, n in enumerate(counts):
        read[b, :n] = torch.randperm(slots, generator=g)[:n]
    write = read[torch.arange(3), torch.tensor(counts) - 1]  # each row's new key is its last
    qkv = torch.randn(3, (nh + 2 * nkv) * hd, generator=g).to(dtype)
    sinks = torch.randn(nh, generator=g)
    angles = starts[:, None].float() * torch.rand(hd // 2, generator=g)
    cos, sin = angles.cos() * 1.2, angles.sin() * 1.2  # (B, hd/2); YaRN scales them
    q, kn, vn = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = apply_rope(q.view(3, 1, nh, hd), cos[:, None], sin[:, None])  # the unfused ops
    kn = apply_rope(kn.view(3, 1, nkv, hd), cos[:, None], sin[:, None])
    want_k, want_v = k.clone(), v.clone()
    want_k[write], want_v[write] = kn[:, 0], vn.reshape(3, nkv, hd)
    got = cpu_kernels.paged_decode(qkv, cos, sin, k, v, write, read, sinks, starts, firsts, nh,
                                   window)  # fmt: skip
    assert got.dtype == dtype and got.shape == (3, nh * hd)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)
    for b, n in enumerate(counts):
        kb, vb = (c[read[b, :n]].transpose(0, 1).double() for c in (k, v))  # (nkv, n, hd)
        ref = attention(q[b].double(), kb, vb, sinks.double(), int(starts[b]), int(firsts[b]),
                        window)  # fmt: skip
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got[b].double(), ref[0], atol=tol, rtol=tol)


def test_rms_norm_matches_the_fp32_norm(isa: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 3, 200, generator=g) * 30).bfloat16()
    scale = torch.rand(200, generator=g) + 0.5
    xd = x.double()
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * scale.double()
    got = cpu_kernels.rms_norm(x, scale, 1e-5)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    torch.testing.assert_close(got.double(), ref, atol=0, rtol=2**-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_picks_what_torch_picks_ties_nans_and_infinities_included(
    isa: str, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(11)
    for trial in range(200):
        n = int(torch.randint(1, 200, (), generator=g))  # lanes of 16 and tails
        x = torch.randint(-4, 4, (n,), generator=g).to(dtype)  # many equal maxima
        spots = torch.randint(0, n, (2,), generator=g)
        if trial % 5 == 1:
            x[spots] = float("nan")
        if trial % 5 == 2:
            x[spots] = float("inf")
        if trial % 5 == 3:
            x[:] = float("-inf")
        assert cpu_kernels.argmax(x) == int(x.argmax()), x
    logits = torch.randn(201088, generator=g).to(dtype)
    assert cpu_kernels.argmax(logits) == int(logits.argmax())


def test_the_model_uses_the_kernel_in_inference_and_torch_for_training() -> None:
    layer = Linear(96, 40).bfloat16()
    x = torch.randn(2, 3, 96).bfloat16()  # leading batch dimensions
    with torch.inference_mode():
        got = layer(x)
    torch.testing.assert_close(
        got, cpu_kernels.bf16_linear(x.reshape(6, 96), layer.weight, layer.bias).view(2, 3, 40)
    )
    torch.testing.assert_close(
        got.float(), torch.nn.functional.linear(x, layer.weight, layer.bias).float(),
        atol=3e-2, rtol=2e-2,
    )  # fmt: skip
    layer(x).float().sum().backward()  # with gradients: torch's product, which has a backward
    assert layer.weight.grad is not None


def test_bf16_gemms_and_attention_stay_within_bf16_rounding_of_fp32() -> None:
    # past the streaming kernel's rows (and in attention), bf16 products run in fp32 on CPUs
    # without AVX-512 BF16: the result is fp32's, rounded once to bf16
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(48, 96, generator=g).bfloat16(), torch.randn(48, generator=g).bfloat16()
    x = torch.randn(FP32_GEMM_MIN_ROWS + 8, 96, generator=g).bfloat16()
    ref = x.double() @ w.double().T + b.double()
    with torch.inference_mode():
        got = linear(x, w, b)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=2**-8)
    q = torch.randn(1, 40, 8, 16, generator=g)
    k, v = torch.randn(2, 1, 2, 40, 16, generator=g).unbind(0)
    sinks = torch.randn(8, generator=g)
    ref = attention(q.double(), k.double(), v.double(), sinks.double(), 0, 0, 8)
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), sinks, 0, 0, 8)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=2e-2, rtol=2e-2)


def test_a_first_build_is_announced_and_a_cached_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = cpu_kernels.build_name()
    assert cpu_kernels.available()  # built (or cached) in torch's extension folder
    assert cpu_kernels.unbuilt_folder(name) is None
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = cpu_kernels.unbuilt_folder(name)
    assert folder is not None and folder.startswith(str(tmp_path))


def test_an_unknown_instruction_set_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_kernels.ISA_ENV, "sse9")
    cpu_kernels.settings_changed()
    with pytest.raises(ValueError, match="HARMONY_AGENT_CPU_ISA"):
        cpu_kernels.available()
    monkeypatch.undo()
    cpu_kernels.settings_changed()
    assert cpu_kernels.available()

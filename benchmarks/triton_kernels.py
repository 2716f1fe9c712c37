"""Triton kernels on a CUDA GPU at gpt-oss shapes: time, bandwidth, and the PyTorch baseline.

    python benchmarks/triton_kernels.py [--preset 20b|120b]

Decode is memory-bound, so each line gives the bytes a call must read, the achieved GB/s and
the ratio to the PyTorch reference run in the same process (dequantise-then-matmul for the
MoE, the model's attention). Without a GPU it says so and exits: the kernels are tested on CPU
under the interpreter, but interpreter timings mean nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from harmony_agent.model.config import PRESETS, ModelConfig


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds of `fn` (triton.testing.do_bench: warm-up, cache flush, CUDA events)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def report(name: str, ms: float, nbytes: int, base_ms: float) -> None:
    gbs = nbytes / ms / 1e6
    print(f"{name:<34} {ms * 1e3:9.1f} us  {gbs:8.1f} GB/s  x{base_ms / ms:5.2f} vs torch")


def moe_case(config: ModelConfig, tokens: int, path: str | None) -> None:
    from harmony_agent.model.mxfp4 import dequantize
    from harmony_agent.model.transformer import swiglu
    from harmony_agent.model.triton.moe import kernel_layout, moe

    e, h, i, a = (config.num_experts, config.hidden_size, config.intermediate_size,
                  config.experts_per_token)  # fmt: skip
    dev, dt = "cuda", torch.bfloat16
    w1b = torch.randint(0, 256, (e, 2 * i, h // 32, 16), device=dev, dtype=torch.uint8)
    w1s = torch.randint(118, 122, (e, 2 * i, h // 32), device=dev, dtype=torch.uint8)
    w2b = torch.randint(0, 256, (e, h, i // 32, 16), device=dev, dtype=torch.uint8)
    w2s = torch.randint(118, 122, (e, h, i // 32), device=dev, dtype=torch.uint8)
    b1, b2 = torch.randn(e, 2 * i, device=dev, dtype=dt), torch.randn(e, h, device=dev, dtype=dt)
    x = torch.randn(tokens, h, device=dev, dtype=dt)
    ids = torch.stack([torch.randperm(e, device=dev)[:a] for _ in range(tokens)])  # (T, A)
    weights = torch.softmax(torch.randn(tokens, a, device=dev), -1).to(dt)

    def torch_moe() -> torch.Tensor:
        out = torch.zeros_like(x)
        for ex in ids.unique().tolist():  # each used expert dequantised once, like the model
            rows, slot = (ids == ex).nonzero(as_tuple=True)
            w1 = dequantize(w1b[ex], w1s[ex], dt)
            w2 = dequantize(w2b[ex], w2s[ex], dt)
            y = swiglu(x[rows] @ w1.T + b1[ex], config.swiglu_alpha, config.swiglu_limit)
            out.index_add_(0, rows, (y @ w2.T + b2[ex]) * weights[rows, slot, None])
        return out

    k1b, k2b = kernel_layout(w1b), kernel_layout(w2b)  # the nibble order the kernels read

    def triton_moe() -> torch.Tensor:
        return moe(x, ids, weights, k1b, w1s, b1, k2b, w2s, b2, path=path)  # type: ignore[arg-type]

    used = int(ids.unique().numel())
    per_expert = (2 * i * h + h * i) // 2 + (2 * i * h + h * i) // 32  # packed bytes + scales
    torch.testing.assert_close(triton_moe(), torch_moe(), rtol=2e-2, atol=2e-2)
    report(f"moe T={tokens} ({path or 'auto'})", bench(triton_moe), used * per_expert,
           bench(torch_moe))  # fmt: skip


def attention_case(config: ModelConfig, tokens: int, context: int, window: int | None) -> None:
    from harmony_agent.model.transformer import attention as torch_attention
    from harmony_agent.model.triton.attention import attention

    nh, nkv, hd, dev, dt = (config.num_attention_heads, config.num_key_value_heads,
                            config.head_dim, "cuda", torch.bfloat16)  # fmt: skip
    start = context - tokens
    first = 0 if window is None else max(0, start - window + 1)
    q = torch.randn(tokens, nh, hd, device=dev, dtype=dt)
    k = torch.randn(nkv, context - first, hd, device=dev, dtype=dt)
    v = torch.randn(nkv, context - first, hd, device=dev, dtype=dt)
    sinks = torch.randn(nh, device=dev)
    nbytes = 2 * k.numel() * k.element_size()
    report(
        f"attention T={tokens} S={context} w={window}",
        bench(lambda: attention(q, k, v, sinks, start, first, window)),
        nbytes,
        bench(lambda: torch_attention(q, k, v, sinks, start, first, window)),
    )


def norm_case(config: ModelConfig, tokens: int) -> None:
    from harmony_agent.model.triton.norm import rms_norm, rms_norm_reference

    x = torch.randn(tokens, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    scale = torch.rand(config.hidden_size, device="cuda")
    report(f"rms_norm T={tokens}", bench(lambda: rms_norm(x, scale)), 2 * x.numel() * 2,
           bench(lambda: rms_norm_reference(x, scale)))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="20b", choices=["20b", "120b"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: the Triton kernel benchmark needs a GPU", file=sys.stderr)
        return 1
    config = PRESETS[args.preset]
    print(f"gpt-oss-{args.preset} shapes on {torch.cuda.get_device_name()}")
    for tokens, path in ((1, None), (4, "decode"), (4, "grouped"), (256, None)):
        moe_case(config, tokens, path)
    for context in (1024, 8192):
        attention_case(config, 1, context, None)
        attention_case(config, 1, context, config.sliding_window)
    attention_case(config, 256, 4096, None)
    norm_case(config, 1)
    norm_case(config, 256)
    return 0


if __name__ == "__main__":
    sys.exit(main())

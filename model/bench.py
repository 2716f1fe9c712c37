"""CPU benchmark: prefill and decode tok/s of our gpt-oss next to transformers, same checkpoint.

Runs one after the other in the same process (the first is freed before the second loads), on a
20b-shaped slice by default, and reports the share of the memory-bandwidth roofline for decode:
bytes read per decoded token / time, against a copy bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PRESETS, ModelConfig


@dataclass
class Result:
    name: str
    prefill_tok_s: float
    decode_tok_s: float
    load_s: float
    tokens: list[int]


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by a large tensor copy, best of `repeats`."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def decode_bytes_per_token(c: ModelConfig, context: int, weight_bytes: float = 2.0) -> float:
    """Bytes read per decoded token at batch 1: active weights, KV cache, one embedding row."""
    h, i = c.hidden_size, c.intermediate_size
    per_layer = weight_bytes * (
        h * c.qkv_dim
        + c.num_attention_heads * c.head_dim * h
        + c.num_experts * h  # qkv out gate
        + c.experts_per_token * (2 * i * h + h * i)  # active experts
    ) + weight_bytes * (c.qkv_dim + h + c.num_experts + c.experts_per_token * (2 * i + h))
    kv = 0.0
    for layer in range(c.num_hidden_layers):
        seen = min(context, c.sliding_window) if c.is_sliding(layer) else context
        kv += 2 * seen * c.num_key_value_heads * c.head_dim * weight_bytes
    return c.num_hidden_layers * per_layer + kv + weight_bytes * h * (c.vocab_size + 1)  # fmt: skip


def bench_ours(path: Path, prompt: list[int], n_decode: int, experts: str) -> Result:
    from .loading import load_model
    from .protocol import Sampling

    t0 = time.perf_counter()
    m = load_model(path, device="cpu", dtype=torch.bfloat16, experts=experts, progress=False)  # type: ignore[arg-type]
    load_s = time.perf_counter() - t0
    m.logits(prompt[:8])  # warm up
    m.reset()
    with torch.inference_mode():
        t0 = time.perf_counter()
        m.prefill(prompt)
        prefill_s = time.perf_counter() - t0
    m.reset()
    gen = m.generate(prompt, stop_tokens=[], max_tokens=n_decode + 1, sampling=Sampling(0))
    out = [next(gen)]  # prefill + first token
    t0 = time.perf_counter()
    out.extend(gen)
    decode_s = time.perf_counter() - t0
    del m
    gc.collect()
    return Result("ours", len(prompt) / prefill_s, n_decode / decode_s, load_s, out)


def bench_transformers(path: Path, prompt: list[int], n_decode: int) -> Result:
    from transformers import GptOssForCausalLM

    t0 = time.perf_counter()
    m = GptOssForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.inference_mode():
        m(ids[:, :8])  # warm up
        t0 = time.perf_counter()
        res = m(ids, use_cache=True)
        prefill_s = time.perf_counter() - t0
        cache = res.cache
        out.append(int(res.logits[0, -1].argmax()))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            res = m(torch.tensor([[out[-1]]]), cache=cache, use_cache=True)
            cache = res.cache
            out.append(int(res.logits[0, -1].argmax()))
        decode_s = time.perf_counter() - t0
    impl = getattr(m.config, "_experts_implementation", None)
    del m, res, cache
    gc.collect()
    name = f"transformers (experts: {impl})"
    return Result(name, len(prompt) / prefill_s, n_decode / decode_s, load_s, out)


def slice_config(preset: str, layers: int, experts: int | None, vocab: int | None) -> ModelConfig:
    base = PRESETS[preset]
    return dataclasses.replace(
        base,
        num_hidden_layers=layers,
        num_experts=experts or base.num_experts,
        vocab_size=vocab or base.vocab_size,
    )


def run_bench(
    *,
    checkpoint: Path | None = None,
    workdir: Path = Path("/tmp/harmony-agent-bench"),
    preset: str = "20b",
    layers: int = 4,
    experts: int | None = None,
    vocab: int | None = None,
    prompt_len: int = 128,
    decode_tokens: int = 32,
    threads: int = 2,
    with_transformers: bool = True,
    our_experts: str = "auto",
    print_fn: Callable[[str], None] = print,
) -> dict[str, object]:
    """Write (or reuse) a slice checkpoint in the HF dense bf16 layout and time both models."""
    from .checkpoint import Checkpoint, write_random_checkpoint

    torch.set_num_threads(threads)
    if checkpoint is None:
        config = slice_config(preset, layers, experts, vocab)
        checkpoint = workdir / (
            f"{preset}-L{config.num_hidden_layers}-E{config.num_experts}-V{config.vocab_size}"
        )
        if not (checkpoint / "config.json").is_file():
            print_fn(f"writing a random {checkpoint.name} checkpoint (HF layout, dense bf16)...")
            write_random_checkpoint(checkpoint, config, layout="hf", mxfp4=False)
    config = Checkpoint(checkpoint).config
    bw = copy_bandwidth()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=g).tolist()
    results = []
    if with_transformers:
        results.append(bench_transformers(checkpoint, prompt, decode_tokens))
    results.append(bench_ours(checkpoint, prompt, decode_tokens, our_experts))
    nbytes = decode_bytes_per_token(config, prompt_len + decode_tokens // 2)
    roofline = bw / nbytes
    print_fn(
        f"checkpoint {checkpoint} | {config.num_hidden_layers} layers, "
        f"{config.num_experts} experts top-{config.experts_per_token}, "
        f"hidden {config.hidden_size}, vocab {config.vocab_size} | "
        f"bf16, {threads} threads, prompt {prompt_len}, decode {decode_tokens}"
    )
    print_fn(
        f"copy bandwidth {bw / 1e9:.1f} GB/s (read + write); decode reads {nbytes / 1e9:.2f} GB "
        f"per token -> roofline {roofline:.1f} tok/s"
    )
    for r in results:
        print_fn(
            f"{r.name:32s} prefill {r.prefill_tok_s:7.1f} tok/s  "
            f"decode {r.decode_tok_s:6.2f} tok/s "
            f"({100 * r.decode_tok_s / roofline:4.1f}% of roofline, "
            f"{r.decode_tok_s * nbytes / 1e9:5.1f} GB/s)  load {r.load_s:5.1f} s"
        )
    summary: dict[str, object] = {
        "config": config.to_reference_json(),
        "copy_bandwidth_gb_s": bw / 1e9,
        "decode_gb_per_token": nbytes / 1e9,
        "results": [dataclasses.asdict(r) for r in results],
    }
    if len(results) == 2:
        ref, ours = results
        same = sum(a == b for a, b in zip(ref.tokens, ours.tokens, strict=True))
        print_fn(
            f"ours / transformers: decode {ours.decode_tok_s / ref.decode_tok_s:.2f}x, prefill "
            f"{ours.prefill_tok_s / ref.prefill_tok_s:.2f}x; greedy tokens equal: "
            f"{same}/{len(ours.tokens)}"
        )
        summary["decode_speedup"] = ours.decode_tok_s / ref.decode_tok_s
        summary["prefill_speedup"] = ours.prefill_tok_s / ref.prefill_tok_s
    (workdir / "last_bench.json").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "last_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

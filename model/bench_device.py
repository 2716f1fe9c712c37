"""GPU benchmark: batch-1 prefill and decode of full-size random gpt-oss models.

    harmony-agent bench --device cuda --preset 120b        # or 20b; --backend torch to compare

The weights are random, generated straight onto the device (no 61 GiB checkpoint on disk), with
experts packed in MXFP4 as in the released checkpoints. Prefill is timed at each prompt length,
decode as greedy generation after it; the report gives peak device memory and the share of the
HBM roofline: bytes read per decoded token (MXFP4 experts at 4.25 bits a weight, the rest bf16,
plus the KV cache) over a copy bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .bench import decode_bytes_per_token, first_token
from .config import PRESETS
from .gpt_oss import GptOss
from .loading import resolve_device
from .one_sequence import OneSequence
from .protocol import Sampling
from .triton.decode_graph import PagedDecodeGraphs


def device_bandwidth(device: torch.device, nbytes: int = 2 << 30, repeats: int = 10) -> float:
    """Bytes moved per second (read + write) by a large copy on `device`, best of `repeats`."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def run_device_bench(
    *,
    preset: str = "20b",
    layers: int | None = None,
    device: str = "cuda",
    backend: str = "triton",
    prompt_lens: Sequence[int] = (2048, 8192),
    decode_tokens: int = 128,
    seed: int = 0,
    out: Path | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, object]:
    """Time prefill at each prompt length and decode after it; return (and print) the figures."""
    from .checkpoint import random_tensors
    from .loading import build_model

    dev = resolve_device(device)
    config = PRESETS[preset]
    if layers is not None:
        config = dataclasses.replace(config, num_hidden_layers=layers)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    model = build_model(
        config, random_tensors(config, seed=seed, packed=True, dtype=torch.bfloat16, device=dev),
        packed=True, dtype=torch.bfloat16, device=dev, backend=backend,
        max_context=max(prompt_lens) + decode_tokens + 1,
    )  # fmt: skip
    build_s = time.perf_counter() - t0
    weights_gib = _allocated_gib(dev)
    bandwidth = device_bandwidth(dev) if dev.type == "cuda" else float("nan")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in prompt_lens:
        prompt = torch.randint(0, config.vocab_size, (n,), generator=g).tolist()
        model.reset()
        first_token(model, prompt[:64])  # warm up: kernels compiled, caches allocated
        model.reset()
        _sync(dev)
        t0 = time.perf_counter()
        first_token(model, prompt)
        _sync(dev)
        prefill_s = time.perf_counter() - t0
        decode_tok_s = _decode_tok_s(model, prompt, decode_tokens)
        eager_tok_s = None
        engine = model.engine
        # The same steps one kernel at a time, for the ratio (either engine's graphs).
        if isinstance(engine, OneSequence) and engine.cuda_graph:
            engine.cuda_graph = False
            eager_tok_s = _decode_tok_s(model, prompt, decode_tokens)
            engine.cuda_graph = True
        elif isinstance(graphs := engine.transformer, PagedDecodeGraphs) and graphs.capture:
            graphs.capture = False
            eager_tok_s = _decode_tok_s(model, prompt, decode_tokens)
            graphs.capture = True
        nbytes = decode_bytes_per_token(config, n + decode_tokens // 2, packed_experts=True)
        rows.append({
            "prompt_tokens": n,
            "prefill_tok_s": n / prefill_s,
            "decode_tok_s": decode_tok_s,
            "decode_eager_tok_s": eager_tok_s,
            "decode_gb_per_token": nbytes / 1e9,
            "roofline_tok_s": bandwidth / nbytes,
            "roofline_share": decode_tok_s * nbytes / bandwidth,
        })  # fmt: skip
    summary: dict[str, object] = {
        "preset": preset,
        "layers": config.num_hidden_layers,
        "device": str(dev)
        + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "backend": backend,
        "cuda_graph": model.graph_captured,
        "build_s": build_s,
        "weights_gib": weights_gib,
        "peak_gib": _peak_gib(dev),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "results": rows,
    }
    print_fn(
        f"gpt-oss-{preset} ({config.num_hidden_layers} layers, random MXFP4 experts) on "
        f"{summary['device']}, backend {backend}: weights {weights_gib:.1f} GiB, peak "
        f"{summary['peak_gib']:.1f} GiB, copy bandwidth {bandwidth / 1e9:.0f} GB/s"
    )
    for r in rows:
        eager = r["decode_eager_tok_s"]
        print_fn(
            f"  prompt {r['prompt_tokens']:6d}: prefill {r['prefill_tok_s']:9.0f} tok/s | decode "
            f"{r['decode_tok_s']:7.1f} tok/s = {100 * r['roofline_share']:4.1f}% of the "
            f"{r['roofline_tok_s']:.0f} tok/s roofline ({r['decode_gb_per_token']:.2f} GB/token)"
            + (f" | without the CUDA graph {eager:.1f} tok/s" if eager else "")
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _decode_tok_s(model: GptOss, prompt: list[int], decode_tokens: int) -> float:
    """Greedy tokens per second after `prompt`. Not timed: the prefill, and the first decode
    step, which captures the CUDA graph."""
    model.reset()
    tokens = model.generate(
        prompt, stop_tokens=(), max_tokens=decode_tokens + 2, sampling=Sampling(0)
    )
    next(tokens), next(tokens)
    _sync(model.device)
    t0 = time.perf_counter()
    produced = sum(1 for _ in tokens)
    return produced / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated_gib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _peak_gib(device: torch.device) -> float:
    return (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )

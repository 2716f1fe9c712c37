"""CPU benchmark: prefill and decode tok/s of our gpt-oss next to transformers, same checkpoint.

Runs one after the other in the same process (the first is freed before the second loads), on a
20b-shaped slice by default, and reports the share of the memory-bandwidth roofline for decode:
bytes read per decoded token / time, against a copy bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import PRESETS, ModelConfig

if TYPE_CHECKING:
    from .gpt_oss import GptOss
    from .loading import Experts


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


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes read per second by summing a large tensor (what a decode step does to its weights)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


MXFP4_BYTES = 17 / 32
"""Bytes per MXFP4 weight: 16 bytes of 4-bit codes and one scale byte per 32 weights."""


def decode_bytes_per_token(c: ModelConfig, context: int, *, packed_experts: bool) -> float:
    """Bytes read per decoded token at batch 1: active weights, KV cache, one embedding row.
    Everything is bf16 (2 bytes) but the active experts' weights when `packed_experts` (MXFP4)."""
    h, i = c.hidden_size, c.intermediate_size
    expert_bytes = MXFP4_BYTES if packed_experts else 2.0
    per_layer = 2.0 * (h * c.qkv_dim + c.num_attention_heads * c.head_dim * h + c.num_experts * h)
    per_layer += expert_bytes * c.experts_per_token * 3 * i * h  # mlp1 (2i x h) and mlp2 (h x i)
    per_layer += 2.0 * (c.qkv_dim + h + c.num_experts + c.experts_per_token * (2 * i + h))  # biases
    kv = 0.0
    for layer in range(c.num_hidden_layers):
        seen = min(context, c.sliding_window) if c.is_sliding(layer) else context
        kv += 2 * seen * c.num_key_value_heads * c.head_dim * 2.0
    return c.num_hidden_layers * per_layer + kv + 2.0 * h * (c.vocab_size + 1)


class OursRunner:
    """Our engine: timed prefill of the prompt, then greedy decode through generate()."""

    def __init__(self, path: Path, experts: Experts) -> None:
        from .checkpoint import Checkpoint
        from .loading import load_model

        t0 = time.perf_counter()
        self.m = load_model(
            path, device="cpu", dtype=torch.bfloat16, experts=experts, progress=False
        )
        self.load_s = time.perf_counter() - t0
        self.name = f"ours (experts: {experts})"
        self.packed_experts = experts == "mxfp4" or (experts == "auto" and Checkpoint(path).packed)

    def run(self, prompt: list[int], n_decode: int) -> tuple[float, float, list[int]]:
        from .protocol import Sampling

        m = self.m
        m.reset()
        t0 = time.perf_counter()
        first_token(m, prompt)
        prefill_s = time.perf_counter() - t0
        m.reset()
        gen = m.generate(prompt, stop_tokens=[], max_tokens=n_decode + 1, sampling=Sampling(0))
        out = [next(gen)]  # prefill + first token
        t0 = time.perf_counter()
        out.extend(gen)
        return prefill_s, time.perf_counter() - t0, out


def first_token(model: GptOss, prompt: list[int]) -> int:
    """The prefill of `prompt` (and one sampled token, a negligible part of it)."""
    from .protocol import Sampling

    return next(model.generate(prompt, stop_tokens=(), max_tokens=1, sampling=Sampling(0)))


class TransformersRunner:
    """transformers' GptOssForCausalLM with its default kernels, decoding through its cache."""

    def __init__(self, path: Path) -> None:
        from transformers import GptOssForCausalLM

        t0 = time.perf_counter()
        self.m = GptOssForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        self.load_s = time.perf_counter() - t0
        impl = getattr(self.m.config, "_experts_implementation", None)
        self.name = f"transformers (experts: {impl})"
        self.packed_experts = False  # on the CPU it computes with bf16 experts

    @torch.inference_mode()
    def run(self, prompt: list[int], n_decode: int) -> tuple[float, float, list[int]]:
        t0 = time.perf_counter()
        res = self.m(torch.tensor([prompt]), use_cache=True)
        prefill_s = time.perf_counter() - t0
        cache = res.cache
        out = [int(res.logits[0, -1].argmax())]
        t0 = time.perf_counter()
        for _ in range(n_decode):
            res = self.m(torch.tensor([[out[-1]]]), cache=cache, use_cache=True)
            cache = res.cache
            out.append(int(res.logits[0, -1].argmax()))
        return prefill_s, time.perf_counter() - t0, out


def slice_config(preset: str, layers: int, experts: int | None, vocab: int | None) -> ModelConfig:
    base = PRESETS[preset]
    return dataclasses.replace(
        base,
        num_hidden_layers=layers,
        num_experts=experts or base.num_experts,
        vocab_size=vocab or base.vocab_size,
    )


def slice_checkpoint(
    workdir: Path,
    preset: str,
    layers: int,
    experts: int | None,
    vocab: int | None,
    print_fn: Callable[[str], None] = print,
) -> Path:
    """A random slice of the preset in the HF dense bf16 layout, written once and reused."""
    from .checkpoint import write_random_checkpoint

    config = slice_config(preset, layers, experts, vocab)
    folder = workdir / (
        f"{preset}-L{config.num_hidden_layers}-E{config.num_experts}-V{config.vocab_size}"
    )
    if not (folder / "config.json").is_file():
        print_fn(f"writing a random {folder.name} checkpoint (HF layout, dense bf16)...")
        write_random_checkpoint(folder, config, layout="hf", mxfp4=False)
    return folder


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
    our_experts: Experts = "auto",
    rounds: int = 3,
    bandwidth_bytes: int = 1 << 30,
    print_fn: Callable[[str], None] = print,
) -> dict[str, object]:
    """Write (or reuse) a slice checkpoint in the HF dense bf16 layout and time both models."""
    from .checkpoint import Checkpoint

    torch.set_num_threads(threads)
    if checkpoint is None:
        checkpoint = slice_checkpoint(workdir, preset, layers, experts, vocab, print_fn)
    config = Checkpoint(checkpoint).config
    # the machine may be shared: measure around the runs and keep the best figures
    copy_bw, read_bw = copy_bandwidth(bandwidth_bytes), read_bandwidth(bandwidth_bytes)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=g).tolist()
    runners: list[OursRunner | TransformersRunner] = []
    if with_transformers:
        runners.append(TransformersRunner(checkpoint))
    runners.append(OursRunner(checkpoint, our_experts))
    for runner in runners:
        runner.run(prompt[:16], 2)  # warm up
    # alternate the runners, keep each one's best round: other load on the machine hits both
    best: dict[str, list[float]] = {r.name: [float("inf"), float("inf")] for r in runners}
    tokens: dict[str, list[int]] = {}
    for _ in range(rounds):
        for runner in runners:
            prefill_s, decode_s, tokens[runner.name] = runner.run(prompt, decode_tokens)
            b = best[runner.name]
            b[0], b[1] = min(b[0], prefill_s), min(b[1], decode_s)
        copy_bw = max(copy_bw, copy_bandwidth(bandwidth_bytes))
        read_bw = max(read_bw, read_bandwidth(bandwidth_bytes))
    bw = max(copy_bw, read_bw)
    results = [
        Result(x.name, prompt_len / best[x.name][0], decode_tokens / best[x.name][1], x.load_s,
               tokens[x.name])
        for x in runners
    ]  # fmt: skip
    context = prompt_len + decode_tokens // 2
    # What each engine reads per token: MXFP4 experts are 17/32 byte a weight, not 2.
    nbytes = {
        r.name: decode_bytes_per_token(config, context, packed_experts=r.packed_experts)
        for r in runners
    }
    del runners
    gc.collect()
    print_fn(
        f"checkpoint {checkpoint} | {config.num_hidden_layers} layers, "
        f"{config.num_experts} experts top-{config.experts_per_token}, "
        f"hidden {config.hidden_size}, vocab {config.vocab_size} | "
        f"bf16, {threads} threads, prompt {prompt_len}, decode {decode_tokens}, best of {rounds}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print_fn(
        f"bandwidth: copy {copy_bw / 1e9:.1f} GB/s (read + write), read {read_bw / 1e9:.1f} GB/s"
    )
    for r in results:
        roofline = bw / nbytes[r.name]
        print_fn(
            f"{r.name:32s} prefill {r.prefill_tok_s:7.1f} tok/s  "
            f"decode {r.decode_tok_s:6.2f} tok/s "
            f"({100 * r.decode_tok_s / roofline:4.1f}% of its roofline {roofline:.1f}: "
            f"{nbytes[r.name] / 1e9:.2f} GB/token, {r.decode_tok_s * nbytes[r.name] / 1e9:5.1f} "
            f"GB/s)  load {r.load_s:5.1f} s"
        )
    summary: dict[str, object] = {
        "config": config.to_reference_json(),
        "copy_bandwidth_gb_s": copy_bw / 1e9,
        "read_bandwidth_gb_s": read_bw / 1e9,
        "decode_gb_per_token": {name: n / 1e9 for name, n in nbytes.items()},
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

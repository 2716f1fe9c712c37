"""CPU benchmark: prefill and decode tok/s of our gpt-oss next to transformers, same checkpoint,
and next to llama.cpp's llama-bench on a GGUF of it when a llama.cpp build is given.

The legs take turns in the same run, on a 20b-shaped slice by default, and each reports its share
of the memory-bandwidth roofline for decode: bytes read per decoded token / time, against a copy
bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
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
    load_s: float | None  # None: llama-bench loads the model in each of its runs
    tokens: list[int]  # greedy; none from llama-bench


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
        from transformers import GptOssForCausalLM, Mxfp4Config

        from .checkpoint import Checkpoint

        # MXFP4 experts dequantised to bf16 on load, exactly: left to itself it refuses to load
        # without accelerate, and without the `kernels` package dequantises on the CPU anyway.
        packed = {"quantization_config": Mxfp4Config(dequantize=True)}
        t0 = time.perf_counter()
        self.m = GptOssForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16, **(packed if Checkpoint(path).packed else {})
        ).eval()
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


class LlamaCppError(ValueError):
    """A llama.cpp leg cannot run: no llama-bench, or a llama.cpp step failed (one line)."""


def llama_cpp_tools(root: Path) -> tuple[Path, Path | None]:
    """llama-bench in a llama.cpp build folder (ROOT/build/bin/, as a cmake build of the source
    tree and the tests' cached build have it, ROOT/bin/ or ROOT/), and convert_hf_to_gguf.py
    where the source tree is there too (ROOT/, or ROOT/src/ in the tests' cache)."""
    root = root.expanduser()
    bench = next((b for b in (root / "build" / "bin", root / "bin", root)
                  if (b / "llama-bench").is_file()), None)  # fmt: skip
    if bench is None:
        raise LlamaCppError(f"no llama-bench in {root} (looked in build/bin/, bin/ and the folder)")
    sources = (root / "convert_hf_to_gguf.py", root / "src" / "convert_hf_to_gguf.py")
    converter = next((c for c in sources if c.is_file()), None)
    return bench / "llama-bench", converter


def llama_bench(
    bench: Path, gguf: Path, *, threads: int, prompt: int = 0, decode: int = 0, depth: int = 0
) -> float:
    """llama-bench's tok/s for one test, one repetition after its own warm-up: the prefill of
    `prompt` tokens, or the decode of `decode` tokens after `depth` tokens of context."""
    command = [str(bench), "-m", str(gguf), "-p", str(prompt), "-n", str(decode), "-d", str(depth),
               "-t", str(threads), "-r", "1", "-o", "json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        said = done.stderr.strip().splitlines()[-1:]
        raise LlamaCppError(f"llama-bench failed (exit {done.returncode}): {' '.join(said)}")
    (result,) = json.loads(done.stdout)
    return float(result["avg_ts"])


class LlamaCppRunner:
    """llama.cpp's llama-bench on a GGUF of the checkpoint: the prefill from an empty cache, the
    decode after a prompt's worth of context, as the other legs decode (its own random tokens)."""

    def __init__(self, bench: Path, gguf: Path, threads: int, packed_experts: bool) -> None:
        self.bench, self.gguf, self.threads = bench, gguf, threads
        self.name = "llama.cpp (llama-bench)"
        self.load_s = None
        self.packed_experts = packed_experts

    def run(self, prompt: list[int], n_decode: int) -> tuple[float, float, list[int]]:
        n = len(prompt)
        prefill = llama_bench(self.bench, self.gguf, threads=self.threads, prompt=n)
        decode = llama_bench(self.bench, self.gguf, threads=self.threads, decode=n_decode, depth=n)
        return n / prefill, n_decode / decode, []


def llama_cpp_gguf(
    checkpoint: Path,
    workdir: Path,
    converter: Path | None,
    print_fn: Callable[[str], None] = print,
) -> tuple[Path, str]:
    """`checkpoint` as a GGUF for llama.cpp, written into `workdir` once (again when the
    checkpoint is newer), and by what: llama.cpp's convert_hf_to_gguf.py where it can read the
    checkpoint, else our writer (the tests check that the two write the same file)."""
    from harmony_agent.encoding import VOCAB_SIZE

    from .checkpoint import Checkpoint
    from .gguf import convert_to_gguf, write_hf_tokenizer

    ckpt = Checkpoint(checkpoint)
    if converter is None:
        why = "no convert_hf_to_gguf.py in the llama.cpp folder"
    elif ckpt.layout != "hf":
        why = "convert_hf_to_gguf.py reads the HF layout, not this checkpoint's original one"
    elif ckpt.config.vocab_size < VOCAB_SIZE:
        why = (f"convert_hf_to_gguf.py takes only the whole {VOCAB_SIZE}-token vocabulary, "
               f"not this slice's {ckpt.config.vocab_size}")  # fmt: skip
    else:
        why = None
    how = f"our GGUF writer ({why})" if why else "llama.cpp's convert_hf_to_gguf.py"
    out = workdir / f"{checkpoint.name}.{'ours' if why else 'convert_hf_to_gguf'}.gguf"
    newest = max(f.stat().st_mtime for f in checkpoint.rglob("*") if f.is_file())
    if out.is_file() and out.stat().st_mtime >= newest:
        return out, how
    print_fn(f"writing {out} with {how}...")
    workdir.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    if why:
        convert_to_gguf(checkpoint, partial)
    else:
        # It reads the tokenizer from the model's folder: link the weights next to ours (a
        # tokenizer.json the checkpoint may hold is left alone).
        staging = out.with_name(out.name + ".convert")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for f in checkpoint.iterdir():
            if f.name == "config.json" or ".safetensors" in f.name:
                (staging / f.name).symlink_to(f.resolve())
        write_hf_tokenizer(staging)
        log = out.with_name(out.name + ".log")
        command = [sys.executable, str(converter), str(staging), "--outtype", "auto",
                   "--outfile", str(partial)]  # fmt: skip
        with log.open("w") as f:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        shutil.rmtree(staging)
        if done.returncode:
            raise LlamaCppError(f"convert_hf_to_gguf.py failed (exit {done.returncode}); see {log}")
        log.unlink()
    partial.rename(out)
    return out, how


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
    *,
    mxfp4: bool = False,
) -> Path:
    """A random slice of the preset in the HF layout, bf16 with dense or MXFP4 experts, written
    once and reused."""
    from .checkpoint import write_random_checkpoint

    config = slice_config(preset, layers, experts, vocab)
    folder = workdir / (
        f"{preset}-L{config.num_hidden_layers}-E{config.num_experts}-V{config.vocab_size}"
        + ("-mxfp4" if mxfp4 else "")
    )
    if not (folder / "config.json").is_file():
        kind = "MXFP4 experts, bf16 elsewhere" if mxfp4 else "dense bf16"
        print_fn(f"writing a random {folder.name} checkpoint (HF layout, {kind})...")
        write_random_checkpoint(folder, config, layout="hf", mxfp4=mxfp4)
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
    llama_cpp: Path | None = None,
    rounds: int = 3,
    bandwidth_bytes: int = 1 << 30,
    print_fn: Callable[[str], None] = print,
) -> dict[str, object]:
    """Write (or reuse) a slice checkpoint in the HF layout and time our engine, transformers
    and, given a llama.cpp build folder `llama_cpp`, its llama-bench on a GGUF of the slice. With
    llama.cpp the slice has MXFP4 experts, as llama.cpp runs gpt-oss, so every leg runs the same
    weights; without, dense bf16 ones."""
    from .checkpoint import Checkpoint

    torch.set_num_threads(threads)
    tools = None if llama_cpp is None else llama_cpp_tools(llama_cpp)  # before any slow work
    if checkpoint is None:
        checkpoint = slice_checkpoint(workdir, preset, layers, experts, vocab, print_fn,
                                      mxfp4=tools is not None)  # fmt: skip
    ckpt = Checkpoint(checkpoint)
    config = ckpt.config
    weights = ["MXFP4 experts, bf16 elsewhere" if ckpt.packed else "bf16, dense experts"]
    if with_transformers and ckpt.packed:
        weights.append("transformers dequantises the experts to bf16 on load (exactly)")
    if our_experts == ("dense" if ckpt.packed else "mxfp4"):
        weights.append("ours dequantises them (exactly)" if ckpt.packed else
                       "ours quantises them to MXFP4: not the weights the others run")  # fmt: skip
    if tools is not None:
        gguf, written_by = llama_cpp_gguf(checkpoint, workdir, tools[1], print_fn)
        weights.append(f"llama.cpp runs {gguf.name}, the same tensors written by {written_by}")
    # the machine may be shared: measure around the runs and keep the best figures
    copy_bw, read_bw = copy_bandwidth(bandwidth_bytes), read_bandwidth(bandwidth_bytes)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=g).tolist()
    runners: list[OursRunner | TransformersRunner | LlamaCppRunner] = []
    if with_transformers:
        runners.append(TransformersRunner(checkpoint))
    runners.append(OursRunner(checkpoint, our_experts))
    if tools is not None:
        runners.append(LlamaCppRunner(tools[0], gguf, threads, ckpt.packed))
    for runner in runners:
        runner.run(prompt[:16], 2)  # warm up
    # alternate the runners, keep each one's best round: other load on the machine hits them all
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
    print_fn("weights: " + "; ".join(weights))
    print_fn(
        f"bandwidth: copy {copy_bw / 1e9:.1f} GB/s (read + write), read {read_bw / 1e9:.1f} GB/s"
    )
    share: dict[str, float] = {}
    for r in results:
        roofline = bw / nbytes[r.name]
        share[r.name] = r.decode_tok_s / roofline
        load = "-" if r.load_s is None else f"{r.load_s:.1f} s"
        print_fn(
            f"{r.name:32s} prefill {r.prefill_tok_s:7.1f} tok/s  "
            f"decode {r.decode_tok_s:6.2f} tok/s "
            f"({100 * share[r.name]:4.1f}% of its roofline {roofline:.1f}: "
            f"{nbytes[r.name] / 1e9:.2f} GB/token, {r.decode_tok_s * nbytes[r.name] / 1e9:5.1f} "
            f"GB/s)  load {load}"
        )
    summary: dict[str, object] = {
        "config": config.to_reference_json(),
        "copy_bandwidth_gb_s": copy_bw / 1e9,
        "read_bandwidth_gb_s": read_bw / 1e9,
        "decode_gb_per_token": {name: n / 1e9 for name, n in nbytes.items()},
        "decode_roofline_share": share,
        "weights": weights,
        "results": [dataclasses.asdict(r) for r in results],
    }
    ours = results[int(with_transformers)]  # after transformers, before llama.cpp
    ratios: dict[str, dict[str, float]] = {}
    for other in results:
        if other is ours:
            continue
        ratios[other.name] = {"decode": ours.decode_tok_s / other.decode_tok_s,
                              "prefill": ours.prefill_tok_s / other.prefill_tok_s}  # fmt: skip
        line = (f"ours / {other.name.split(' (')[0]}: decode {ratios[other.name]['decode']:.2f}x, "
                f"prefill {ratios[other.name]['prefill']:.2f}x")  # fmt: skip
        if other.tokens:
            same = sum(a == b for a, b in zip(other.tokens, ours.tokens, strict=True))
            line += f"; greedy tokens equal: {same}/{len(ours.tokens)}"
        print_fn(line)
    summary["ratios"] = ratios  # ours / each other leg
    if with_transformers:
        summary["decode_speedup"] = ratios[results[0].name]["decode"]
        summary["prefill_speedup"] = ratios[results[0].name]["prefill"]
    (workdir / "last_bench.json").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "last_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

"""Model subcommands for the `harmony-agent` CLI: random-checkpoint, inspect, convert, bench.

`add_model_commands(subparsers)` registers them; each handler returns an exit code, and errors are
one line on stderr with no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# OpenMP workers that spin after each parallel region steal the CPU from the main thread when the
# machine is shared: measured 2.8 s -> 0.68 s per gpt-oss-20b token on 2 busy cores. Takes effect
# only if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

Handler = Callable[[argparse.Namespace], int]


def add_model_commands(subparsers: Any) -> None:
    """Register the model subcommands on an argparse subparsers object (sets `handler`)."""
    p = subparsers.add_parser("random-checkpoint", help="write a random gpt-oss checkpoint")
    p.add_argument("path", type=Path, help="folder to write")
    p.add_argument(
        "--preset", choices=["20b", "120b", "tiny"], default="tiny", help="shapes (default: tiny)"
    )
    p.add_argument("--layers", type=int, help="number of layers (default: the preset's)")
    p.add_argument("--experts", type=int, help="number of experts (default: the preset's)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's)")
    p.add_argument(
        "--layout",
        choices=["original", "hf"],
        default="original",
        help="the reference original/ layout or Hugging Face's (default: original)",
    )
    p.add_argument("--dense", action="store_true", help="dense experts instead of MXFP4")
    p.add_argument(
        "--dtype", choices=["bf16", "fp32"], default="bf16", help="of the weights (default: bf16)"
    )
    p.add_argument("--seed", type=int, default=0, help="of the random weights (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite what the folder holds")
    p.set_defaults(handler=_guard(_random_checkpoint))

    p = subparsers.add_parser("inspect", help="show a checkpoint's config, tensors and sizes")
    p.add_argument("path", type=Path, help="checkpoint folder")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.set_defaults(handler=_guard(_inspect))

    p = subparsers.add_parser(
        "convert",
        help="rewrite a checkpoint in another layout, or as / from a GGUF file (llama.cpp's)",
    )
    p.add_argument("src", type=Path, help="checkpoint folder or .gguf file to read")
    p.add_argument(
        "dst", type=Path, help="folder to write, or a .gguf file (one that llama.cpp loads)"
    )
    p.add_argument(
        "--layout",
        choices=["original", "hf"],
        help="the layout of the folder to write (required unless DST is a .gguf file)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mxfp4", action="store_true", help="quantise dense experts to MXFP4")
    group.add_argument("--dense", action="store_true", help="dequantise MXFP4 experts")
    p.add_argument("--force", action="store_true", help="overwrite what DST holds")
    p.set_defaults(handler=_guard(_convert))

    p = subparsers.add_parser(
        "bench",
        help="prefill/decode speed: CPU vs transformers, or a full-size model on --device cuda",
    )
    p.add_argument("--checkpoint", type=Path, help="benchmark this checkpoint instead")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/harmony-agent-bench"),
        help="where the slice checkpoint is written and reused (default: %(default)s)",
    )
    p.add_argument(
        "--preset", choices=["20b", "120b", "tiny"], default="20b", help="shapes (default: 20b)"
    )
    p.add_argument(
        "--layers", type=int, help="layers (default: 4 on CPU, the whole model on a GPU)"
    )
    p.add_argument("--experts", type=int, help="number of experts (default: the preset's)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's)")
    p.add_argument(
        "--prompt-len", type=int, default=128, help="prompt tokens on the CPU (default: 128)"
    )
    p.add_argument(
        "--decode", type=int, help="tokens to decode (default: 32 on the CPU, 256 on a GPU)"
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    p.add_argument(
        "--our-experts",
        choices=["auto", "dense", "mxfp4"],
        default="auto",
        help="how our engine holds the experts (default: as stored)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="size of the copy test")
    p.add_argument("--no-transformers", action="store_true", help="skip the reference run")
    p.add_argument(
        "--llama-cpp",
        type=Path,
        metavar="DIR",
        help="also time llama.cpp's llama-bench from this build folder (with bin/ or build/bin/) "
        "on a GGUF of the slice, whose experts are then MXFP4 in every leg",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu: a slice vs transformers; cuda: the full-size model with random MXFP4 weights",
    )
    p.add_argument(
        "--backend",
        choices=["triton", "torch"],
        default="triton",
        help="on a GPU (default: triton)",
    )
    p.add_argument(
        "--prompt-lens",
        type=int,
        nargs="+",
        default=[2048, 8192],
        help="on a GPU: prompt lengths to time (default: 2048 8192)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        metavar="N",
        help="decode N sequences at once (e.g. 1 4 8 16): aggregate and per-sequence tok/s as "
        "ratios to 1, and the prefix cache's saving for two conversations taking turns",
    )
    p.set_defaults(handler=_guard(_bench))


def _guard(fn: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from .checkpoint import CheckpointError

        try:
            return fn(args)
        except BrokenPipeError:
            raise  # the reader left (`| head`): the front end ends quietly
        except (CheckpointError, ValueError, OSError) as e:
            print(f"harmony-agent: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("harmony-agent: interrupted", file=sys.stderr)
            return 130

    return run


def _config(preset: str, layers: int | None, experts: int | None, vocab: int | None) -> Any:
    from .config import PRESETS

    base = PRESETS[preset]
    return dataclasses.replace(
        base,
        num_hidden_layers=layers or base.num_hidden_layers,
        num_experts=experts or base.num_experts,
        vocab_size=vocab or base.vocab_size,
    )


def _refuse_to_overwrite(folder: Path, force: bool) -> None:
    """Weights are never overwritten silently: a folder with anything in it needs --force."""
    if not force and folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty; pass --force to overwrite what it holds")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder")


def _random_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import write_random_checkpoint

    _refuse_to_overwrite(args.path, args.force)
    config = _config(args.preset, args.layers, args.experts, args.vocab)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    folder = write_random_checkpoint(
        args.path, config, layout=args.layout, seed=args.seed, mxfp4=not args.dense, dtype=dtype
    )
    print(f"wrote {folder} ({args.layout} layout, {'dense' if args.dense else 'MXFP4'} experts)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .checkpoint import Checkpoint

    ckpt = Checkpoint(args.path)
    c = ckpt.config
    gib = 1 << 30
    kind = "MXFP4" if ckpt.packed else "dense"
    print(f"{ckpt.folder}: {ckpt.layout} layout, {len(ckpt.files)} file(s), "
          f"{ckpt.nbytes() / gib:.2f} GiB, experts {kind}")  # fmt: skip
    for k, v in c.to_reference_json().items():
        print(f"  {k:24s} {v}")
    counts = c.param_counts()
    total = sum(counts.values())
    print(
        f"parameters: {total / 1e9:.3f} B total, {c.active_params_per_token() / 1e9:.3f} B active"
    )
    for k, v in counts.items():
        print(f"  {k:24s} {v / 1e6:12.2f} M")
    experts = counts["experts"]
    rest = total - experts
    mxfp4 = experts * (0.5 + 1 / 32) + rest * 2  # 4 bits + one scale byte per 32 values
    print(f"memory (weights): bf16 with MXFP4 experts {mxfp4 / gib:.2f} GiB, "
          f"all bf16 {total * 2 / gib:.2f} GiB")  # fmt: skip
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2
    print(f"KV cache (bf16): {per_token * 1024 / (1 << 20):.1f} MiB per 1024 tokens")
    if args.tensors:
        for name, t in ckpt.tensors():
            print(f"  {name:44s} {str(t.dtype).removeprefix('torch.'):9s} {tuple(t.shape)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_checkpoint
    from .gguf import convert_from_gguf, convert_to_gguf, is_gguf

    mxfp4 = True if args.mxfp4 else False if args.dense else None
    if is_gguf(args.dst):
        if args.layout:
            raise ValueError("--layout is for a checkpoint folder; DST is a .gguf file")
        if args.dst.is_dir():
            raise ValueError(f"{args.dst} is a folder, not a .gguf file")
        if args.dst.exists() and not args.force:
            raise ValueError(f"{args.dst} exists; pass --force to overwrite it")
        path = convert_to_gguf(args.src, args.dst, mxfp4=mxfp4)
        print(f"wrote {path} (GGUF)")
        return 0
    if not args.layout:
        raise ValueError("give --layout original or hf for the folder to write")
    _refuse_to_overwrite(args.dst, args.force)
    convert = convert_from_gguf if is_gguf(args.src) else convert_checkpoint
    folder = convert(args.src, args.dst, layout=args.layout, mxfp4=mxfp4)
    print(f"wrote {folder} ({args.layout} layout)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.llama_cpp and (args.concurrency or args.device != "cpu"):
        raise ValueError("--llama-cpp goes with the CPU benchmark, not --concurrency or --device")
    if args.concurrency:
        return _bench_concurrency(args)
    if args.device != "cpu":
        from .bench_device import run_device_bench

        run_device_bench(
            preset=args.preset, layers=args.layers, device=args.device, backend=args.backend,
            prompt_lens=args.prompt_lens, decode_tokens=args.decode or 256,
            out=args.workdir / "last_device_bench.json",
        )  # fmt: skip
        return 0
    from .bench import run_bench

    run_bench(
        checkpoint=args.checkpoint,
        workdir=args.workdir,
        preset=args.preset,
        layers=args.layers or 4,
        experts=args.experts,
        vocab=args.vocab,
        prompt_len=args.prompt_len,
        decode_tokens=args.decode or 32,
        threads=args.threads,
        with_transformers=not args.no_transformers,
        our_experts=args.our_experts,
        llama_cpp=args.llama_cpp,
        rounds=args.rounds,
        bandwidth_bytes=args.bandwidth_mib << 20,
    )
    return 0


def _bench_concurrency(args: argparse.Namespace) -> int:
    import torch

    from .bench import slice_checkpoint
    from .bench_concurrency import run_concurrency_bench
    from .loading import load_model

    levels = sorted(set(args.concurrency))
    if levels[0] < 1:
        raise ValueError("--concurrency takes numbers of sequences, 1 or more")
    torch.set_num_threads(args.threads)
    decode = args.decode or 32
    checkpoint = args.checkpoint or slice_checkpoint(
        args.workdir, args.preset, args.layers or 4, args.experts, args.vocab
    )
    per_sequence = args.prompt_len + decode + 64
    model = load_model(
        checkpoint, device=args.device, dtype=torch.bfloat16, experts=args.our_experts,
        backend="torch", max_context=per_sequence, cache_tokens=levels[-1] * per_sequence,
        progress=False,
    )  # fmt: skip
    print(
        f"checkpoint {checkpoint} on {args.device}: {args.threads} threads, bf16, experts "
        f"{args.our_experts}"
    )
    run_concurrency_bench(model, levels=levels, prompt_len=args.prompt_len, decode_tokens=decode)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m harmony_agent.model.cli ...` (the agent CLI embeds
    these commands)."""
    parser = argparse.ArgumentParser(prog="python -m harmony_agent.model.cli")
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

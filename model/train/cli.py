"""`harmony-agent finetune`: train a gpt-oss checkpoint on transcript JSONL files.

harmony-agent finetune runs/*.jsonl --model CKPT --out OUT               # full fine-tuning
harmony-agent finetune runs/*.jsonl --model CKPT --lora-rank 8 --out OUT  # LoRA, merged
harmony-agent finetune runs/*.jsonl --model CKPT --lora-rank 8 --adapter-only --out OUT
harmony-agent finetune data.jsonl --init config.json --compact-vocab --out OUT  # from scratch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

PROG = "harmony-agent finetune"


def add_finetune_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register `finetune` on an argparse subparsers object; its handler is `args.handler`."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a gpt-oss model on transcripts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="+", metavar="TRANSCRIPT", help="transcript JSONL files")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", metavar="PATH", help="checkpoint folder to start from")
    start.add_argument(
        "--init",
        metavar="CONFIG",
        help="train from scratch: a preset (tiny, 20b, 120b) or a reference config.json",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="compute dtype")
    p.add_argument(
        "--seed", type=int, default=0, help="of the shuffle and any fresh weights (default: 0)"
    )
    p.add_argument("--max-tokens", type=int, help="reject examples longer than this")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 2 * rank)")
    p.add_argument(
        "--lora-targets", default="qkv,out,mlp1,mlp2", help="comma-separated: qkv,out,mlp1,mlp2"
    )
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="write the LoRA adapters only (load them beside the checkpoint), not a merged model",
    )
    p.add_argument(
        "--compact-vocab",
        action="store_true",
        help="train only the vocabulary rows the data uses (the others must be zero: --init)",
    )
    p.add_argument(
        "--compact-out", metavar="FILE", help="also write a compact single file (--compact-vocab)"
    )
    p.add_argument(
        "--tie-embeddings",
        action="store_true",
        help="train one matrix as embedding and unembedding (exported as two equal tensors)",
    )
    p.add_argument("--qat-steps", type=int, default=0, help="last N steps quantisation-aware")
    p.add_argument(
        "--layout",
        choices=("original", "hf"),
        default="original",
        help="layout of the checkpoint written (default: original)",
    )
    p.add_argument("--dense", action="store_true", help="export dense experts (no MXFP4)")
    p.add_argument(
        "--save-dtype",
        choices=("fp32", "bf16"),
        default="bf16",
        help="dtype of the weights written (default: bf16)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    p.set_defaults(handler=run_finetune)
    return p


def run_finetune(args: argparse.Namespace) -> int:
    """The command's handler: 0 on success, 1 with a one-line error on stderr."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # the reader left (`| head`): the front end ends quietly
    except Exception as e:  # every failure is one line, no traceback
        from ..checkpoint import CheckpointError
        from ..train import FinetuneError

        known = (FinetuneError, CheckpointError, ValueError, OSError)
        detail = str(e) if isinstance(e, known) else f"{type(e).__name__}: {e}"
        print(f"{PROG}: error: {detail}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import torch

    from harmony_agent.encoding import harmony_encoding

    from ..checkpoint import Checkpoint
    from ..config import PRESETS, ModelConfig
    from ..train import data, export, loop
    from .lora import add_lora, save_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("steps", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.compact_out and not args.compact_vocab:
        raise ValueError("--compact-out needs --compact-vocab")
    if args.adapter_only and not args.lora_rank:
        raise ValueError("--adapter-only needs --lora-rank")
    for path in args.data:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such transcript file")
    encoding = harmony_encoding()
    examples = data.load_examples(args.data, encoding=encoding, max_tokens=args.max_tokens)

    if args.init is not None:
        if args.init in PRESETS:
            config = PRESETS[args.init]
        else:
            import json

            try:
                config = ModelConfig.from_reference_json(json.loads(Path(args.init).read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{args.init}: not a preset or a reference config.json ({e})"
                ) from None
        tf = loop.init_transformer(config, seed=args.seed)
    else:
        Checkpoint(args.model)  # fails fast, with the checkpoint's own message
        tf = loop.load_trainable(args.model)
        config = tf.config
    vocab = None
    if args.compact_vocab:
        vocab = data.CompactVocab(data.used_tokens(examples, encoding), config.vocab_size)
        if args.init is not None:
            loop.zero_rows_outside(tf, vocab.ids.tolist())
        loop.shrink_vocab(tf, vocab)
    if args.tie_embeddings:
        loop.tie_embeddings(tf)
    targets = [t for t in args.lora_targets.split(",") if t]
    if args.lora_rank:
        add_lora(tf, args.lora_rank, args.lora_alpha, targets, seed=args.seed)

    trained = sum(e.trained_tokens for e in examples)
    print(f"{len(examples)} examples, {trained} trained tokens", file=sys.stderr)
    settings = loop.FinetuneConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup=min(args.warmup, args.steps),
        dtype=args.dtype,
        seed=args.seed,
        quantization_aware_steps=args.qat_steps,
    )
    on_step, close = loop.progress_printer(
        settings.steps, show_bar=False if args.no_progress else None
    )
    try:
        stats = loop.finetune(tf, examples, settings, vocab=vocab, on_step=on_step)
    finally:
        close()
    save_dtype = torch.float32 if args.save_dtype == "fp32" else torch.bfloat16
    if args.adapter_only:
        alpha = args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_rank
        out = save_adapter(tf, args.out, rank=args.lora_rank, alpha=alpha, targets=targets)
    else:
        out = export.export_checkpoint(
            tf, args.out, vocab=vocab, layout=args.layout, mxfp4=not args.dense, dtype=save_dtype
        )
    if args.compact_out and vocab is not None:
        export.save_compact(tf, vocab, args.compact_out, dtype=save_dtype)
    print(
        f"trained {settings.steps} steps in {stats.seconds:.0f} s "
        f"({stats.tokens_per_second:,.0f} tok/s), loss {stats.losses[0]:.4f} -> "
        f"{stats.losses[-1]:.4f}; wrote {out}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m harmony_agent.model.train.cli ...` (the same as `harmony-agent finetune ...`)."""
    parser = argparse.ArgumentParser(prog="harmony-agent")
    add_finetune_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["finetune", *(argv if argv is not None else sys.argv[1:])])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

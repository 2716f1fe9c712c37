"""Training: the model prepared for it, the batched forward, the loss, quantisation-aware steps and
the optimizer loop.

Shapes: B = batch, T = tokens, H = hidden, V = (compact) vocabulary.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint, repack
from ..config import ModelConfig
from ..mxfp4 import dequantize, quantize
from ..train import FinetuneError
from ..transformer import DenseExperts, Transformer, rope_inv_freq
from .data import CompactVocab, Example

# --- models ------------------------------------------------------------------------------------


def init_transformer(config: ModelConfig, *, seed: int = 0) -> Transformer:
    """A fresh fp32 model with dense experts, initialised for training from scratch.

    Small normal weights, output projections scaled down with depth (GPT-2 style) so the residual
    stream starts near the embeddings; biases and sinks zero, norm scales one.
    """
    g = torch.Generator().manual_seed(seed)
    tf = Transformer(config)
    out_std = 0.02 / math.sqrt(2 * config.num_hidden_layers)
    with torch.no_grad():
        for name, p in tf.named_parameters():
            if name.endswith("norm.scale"):
                p.fill_(1.0)
            elif name.endswith(("bias", "sinks")):
                p.zero_()
            elif name.endswith(("out.weight", "mlp2_weight")):
                p.copy_(torch.randn(p.shape, generator=g) * out_std)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return tf


def load_trainable(path: str | os.PathLike[str]) -> Transformer:
    """A checkpoint (either layout, MXFP4 or dense experts) as an fp32 model with dense experts."""
    from ..loading import _module_name

    ckpt = Checkpoint(path)
    tf = Transformer(ckpt.config)
    state = {_module_name(n): t.float() for n, t in repack(ckpt.tensors(), False, torch.float32)}
    tf.load_state_dict(state, strict=True)
    return tf


def shrink_vocab(tf: Transformer, vocab: CompactVocab) -> Transformer:
    """The same model with only `vocab`'s embedding and unembedding rows (in place)."""
    c = tf.config
    if tf.embedding.weight.shape[0] != c.vocab_size:
        raise ValueError("the model is already compact")
    keep = torch.ones(c.vocab_size, dtype=torch.bool)
    keep[vocab.ids] = False
    for w in (tf.embedding.weight, tf.unembedding.weight):
        if w[keep].any():
            raise FinetuneError(
                "the model has nonzero embedding rows outside the compact vocabulary; train "
                "it with the full vocabulary"
            )
    emb = nn.Embedding(len(vocab), c.hidden_size)
    unemb = nn.Linear(c.hidden_size, len(vocab), bias=False)
    with torch.no_grad():
        emb.weight.copy_(tf.embedding.weight[vocab.ids])
        unemb.weight.copy_(tf.unembedding.weight[vocab.ids])
    tf.embedding, tf.unembedding = emb, unemb
    return tf


def tie_embeddings(tf: Transformer) -> Transformer:
    """Share one matrix between the embedding and the unembedding (in place) while training.

    gpt-oss unties them, and the export writes two (equal) tensors; tying helps a model trained
    from scratch copy tokens it has rarely seen (numbers): once attention learns to move a token's
    embedding, the same row reads it out, for every token alike.
    """
    if tf.embedding.weight.shape != tf.unembedding.weight.shape:
        raise ValueError("embedding and unembedding shapes differ")
    tf.unembedding.weight = tf.embedding.weight
    return tf


def zero_rows_outside(tf: Transformer, ids: Iterable[int]) -> None:
    """Zero the embedding and unembedding rows of every token not in `ids` (in place)."""
    keep = torch.zeros(tf.embedding.weight.shape[0], dtype=torch.bool)
    keep[list(ids)] = True
    with torch.no_grad():
        tf.embedding.weight[~keep] = 0
        tf.unembedding.weight[~keep] = 0


def rope_buffers(tf: Transformer) -> None:
    """Recompute the non-persistent RoPE buffer (after building a model on the meta device)."""
    tf.inv_freq = rope_inv_freq(tf.config)


# --- batched forward for training ----------------------------------------------------------------


def forward_batch(
    tf: Transformer, tokens: torch.Tensor, prefix: int = 0, *, hidden: bool = False
) -> torch.Tensor:
    """tokens (B, T), right-padded, at positions 0..T-1 -> logits (B, T - prefix, V) for the
    positions from `prefix` on (`hidden`: the normed final hidden states (B, T - prefix, H)).

    Causal masking keeps padding out of every real token's result. The first `prefix` tokens
    must be the same in every row (a shared system prompt): they run once, and the rows attend
    to their keys and values, which is exact and saves most of the work when the prompt is long
    and the trained part short.
    """
    shared = SharedPrefix()
    if prefix:
        tf.hidden(tokens[:1, :prefix], 0, shared)  # stores the prefix's keys and values
    h = tf.hidden(tokens[:, prefix:], prefix, shared)
    return h if hidden else tf.unembedding(h)


class SharedPrefix:
    """A cache for rows with the same first tokens: the first forward stores the keys and values
    of one copy of them, later forwards' rows attend to those and to their own. Nothing is written
    in place, so gradients flow through both."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer(self, i: int) -> _SharedLayer:
        return _SharedLayer(self.kv, i)


class _SharedLayer:
    def __init__(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]], i: int) -> None:
        self.kv, self.i = kv, i

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        past = self.kv.setdefault(self.i, (k, v))
        if past[0] is k:  # the prefix itself
            return k, v, start
        b = k.shape[0]
        k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)  # (B, nkv, P + T, hd)
        v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
        return k, v, start - past[0].shape[2]


def token_losses(logits: torch.Tensor, targets: torch.Tensor, zero_rows: int = 0) -> torch.Tensor:
    """Cross-entropy (..., V) logits vs (...,) targets, counting `zero_rows` more logits of 0."""
    logits = logits.float()
    lse = logits.logsumexp(dim=-1)
    if zero_rows:
        lse = torch.logaddexp(lse, torch.tensor(math.log(zero_rows), device=lse.device))
    return lse - logits.gather(-1, targets[..., None])[..., 0]


def fake_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """`w` rounded to MXFP4 in the forward, identity in the backward (straight-through)."""
    blocks, scales = quantize(w.detach())
    q = dequantize(blocks, scales, torch.float32).view(w.shape).to(w.dtype)
    return w + (q - w).detach()


class FakeQuantExperts(nn.Module):
    """Dense experts that compute with their MXFP4 rounding (model surgery for QAT)."""

    def __init__(self, dense: DenseExperts) -> None:
        super().__init__()
        self.dense = dense
        self.num_experts = dense.num_experts

    def mlp1(self, e: int, x: torch.Tensor) -> torch.Tensor:
        w1, b1, _, _ = self.dense.expert(e, x.dtype)
        return F.linear(x, fake_mxfp4(w1), b1)  # (n, H) -> (n, 2I)

    def mlp2(self, e: int, h: torch.Tensor) -> torch.Tensor:
        _, _, w2, b2 = self.dense.expert(e, h.dtype)
        return F.linear(h, fake_mxfp4(w2), b2)  # (n, I) -> (n, H)

    def expert(self, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2 = self.dense.expert(e, dtype)
        return fake_mxfp4(w1), b1, fake_mxfp4(w2), b2

    def gather(self, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2 = self.dense.gather(ids, dtype)
        return fake_mxfp4(w1), b1, fake_mxfp4(w2), b2


def set_quantization_aware(tf: Transformer, on: bool) -> None:
    """Swap every block's dense experts for fake-quantised ones (or back)."""
    for block in tf.block:
        experts = block.mlp.experts
        if on and isinstance(experts, DenseExperts):
            block.mlp.experts = FakeQuantExperts(experts)  # type: ignore[assignment]
        elif not on and isinstance(experts, FakeQuantExperts):
            block.mlp.experts = experts.dense


@dataclass
class FinetuneConfig:
    """How to train."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (linear warm-up, then cosine decay to `lr * min_lr_ratio`)."""
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    dtype: Literal["fp32", "bf16"] = "fp32"
    """bf16 runs the forward under autocast; weights and optimizer state stay fp32."""
    seed: int = 0
    quantization_aware_steps: int = 0
    """The last N steps compute experts with their MXFP4 rounding (straight-through)."""
    bucket_by_length: bool = False
    """Batch examples of similar lengths together (less padding); batches still come shuffled."""


@dataclass
class TrainStats:
    losses: list[float] = field(default_factory=list)
    """Mean loss per optimizer step."""
    tokens: int = 0
    """Tokens run through the model (prompt and trained)."""
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


StepCallback = Callable[[int, float, float], None]
"""on_step(step, loss, tokens_per_second)."""


def finetune(
    tf: Transformer,
    examples: Sequence[Example],
    config: FinetuneConfig,
    *,
    vocab: CompactVocab | None = None,
    on_step: StepCallback | None = None,
) -> TrainStats:
    """Train `tf` (in place) on `examples`: full fine-tuning, or LoRA when adapters were added
    (only parameters with requires_grad train). `vocab`: `tf` is compact (see `shrink_vocab`)."""
    if not examples:
        raise FinetuneError("no training examples")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    params = [p for p in tf.parameters() if p.requires_grad]
    if not params:
        raise FinetuneError("the model has no trainable parameters")
    opt = torch.optim.AdamW(
        params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    zero_rows = vocab.zero_rows if vocab is not None else 0
    batches = _batches(examples, config.batch_size, rng, vocab, config.bucket_by_length)
    tf.train()
    stats = TrainStats()
    started = time.perf_counter()
    qat_from = config.steps - config.quantization_aware_steps
    try:
        for step in range(config.steps):
            if step == qat_from and config.quantization_aware_steps:
                set_quantization_aware(tf, True)
            lr = _lr(step, config)
            for group in opt.param_groups:
                group["lr"] = lr
            total = 0.0
            for _ in range(config.grad_accum):
                tokens, mask, real = next(batches)
                p = shared_prefix(tokens, mask)
                trained = mask[:, p + 1 :].bool()
                with torch.autocast("cpu", torch.bfloat16, enabled=config.dtype == "bf16"):
                    h = forward_batch(tf, tokens, p, hidden=True)  # positions p.. predict p + 1..
                    # Unembed only the positions that are trained on: with a full vocabulary
                    # the logits of every position would dwarf the rest of the step.
                    logits = tf.unembedding(h[:, :-1][trained])  # (N, V)
                losses = token_losses(logits, tokens[:, p + 1 :][trained], zero_rows)
                loss = losses.sum() / max(1, len(losses))
                (loss / config.grad_accum).backward()
                total += loss.item() / config.grad_accum
                stats.tokens += real
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            stats.losses.append(total)
            stats.seconds = time.perf_counter() - started
            if on_step is not None:
                on_step(step + 1, total, stats.tokens_per_second)
    finally:
        set_quantization_aware(tf, False)
        tf.eval()
    return stats


def shared_prefix(tokens: torch.Tensor, mask: torch.Tensor) -> int:
    """How many leading tokens every row shares and no trained token needs as a position."""
    same = (tokens == tokens[:1]).all(dim=0)  # (T,)
    common = int(same.long().cumprod(0).sum())
    trained = mask.any(dim=0).nonzero()
    first = int(trained[0]) if len(trained) else tokens.shape[1]
    return max(0, min(common, first - 1))


def _lr(step: int, config: FinetuneConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def _batches(
    examples: Sequence[Example],
    size: int,
    rng: random.Random,
    vocab: CompactVocab | None,
    bucket: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Endless shuffled batches: tokens (B, T) right-padded, loss mask (B, T), real tokens."""
    order: list[int] = []
    while True:
        if len(order) < size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
            if bucket:  # sort windows of 32 batches by length, then shuffle the batches
                windows = [sorted(order[i : i + 32 * size], key=lambda j: len(examples[j].tokens))
                           for i in range(0, len(order), 32 * size)]  # fmt: skip
                cut = [w[i : i + size] for w in windows for i in range(0, len(w), size)]
                full = [b for b in cut if len(b) == size]
                rng.shuffle(full)
                order = [j for b in full + [b for b in cut if len(b) < size] for j in b]
        chosen, order = [examples[i] for i in order[:size]], order[size:]
        t = max(len(e.tokens) for e in chosen)
        tokens = torch.zeros(len(chosen), t, dtype=torch.long)
        mask = torch.zeros(len(chosen), t)
        for row, e in enumerate(chosen):
            tokens[row] = e.tokens[-1]  # padding: any token the vocabulary has
            tokens[row, : len(e.tokens)] = torch.tensor(e.tokens)
            mask[row, : len(e.tokens)] = torch.tensor(e.loss, dtype=torch.float32)
        if vocab is not None:
            tokens = vocab.compact(tokens)
        yield tokens, mask, sum(len(e.tokens) for e in chosen)


def progress_printer(
    total: int, *, every: int = 50, show_bar: bool | None = None
) -> tuple[StepCallback, Callable[[], None]]:
    """An `on_step` callback: a rich progress bar with loss and tok/s on a terminal, else a line
    on stderr every `every` steps. Returns (callback, close)."""
    if show_bar is None:
        show_bar = sys.stderr.isatty()
    if not show_bar:

        def log(step: int, loss: float, tps: float) -> None:
            if step % every == 0 or step == total:
                print(f"step {step}/{total}  loss {loss:.4f}  {tps:,.0f} tok/s", file=sys.stderr)

        return log, lambda: None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("train", total=total, loss=float("nan"), tps=0.0)
    bar.start()

    def update(step: int, loss: float, tps: float) -> None:
        bar.update(task, completed=step, loss=loss, tps=tps)

    return update, bar.stop

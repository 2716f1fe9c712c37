"""Fine-tuning gpt-oss on harmony transcripts: full or LoRA, fp32 or bf16, exported for load_model.

Data: transcript JSONL files (the agent's format: `{"type": "message", "message": {...}}` lines,
system and developer messages included; `run` records are ignored). A system message that follows
other messages starts a new conversation, so concatenated transcripts are read as many. Each turn
that ends in a final answer becomes one example, rendered with harmony's training rendering (the
answer ends in `<|return|>`) and with the analysis of earlier finished turns dropped, exactly as
the agent prompts the model. The loss covers what the model generates: every assistant message
except the `<|start|>assistant` header of one that follows a user or tool message (the agent's
prompt already ends with it).

Compact vocabulary: a model whose embedding and unembedding rows are zero outside a small set of
tokens (a demo model trained from scratch) trains on those rows only. A zero unembedding row gives
logit 0, so the full-vocabulary softmax is still exact: logsumexp over the kept rows plus
`log(vocab - kept)`. Rows outside the set stay zero.

Shapes: B = batch, T = tokens, H = hidden, V = (compact) vocabulary.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from openai_harmony import (
    Conversation,
    HarmonyEncoding,
    HarmonyError,
    Message,
    RenderConversationConfig,
    Role,
)
from torch import nn

from .checkpoint import Checkpoint, Layout, expected_shapes, repack, write_checkpoint
from .config import ModelConfig
from .encoding import harmony_encoding
from .gpt_oss import (
    AttentionBlock,
    DenseExperts,
    Transformer,
    apply_rope,
    rope_cos_sin,
    rope_inv_freq,
)
from .mxfp4 import dequantize, quantize


class FinetuneError(Exception):
    """Training data or settings that cannot be used; the message names the file and line."""


# --- data: transcripts -> examples -------------------------------------------------------------


@dataclass
class Example:
    """One rendered conversation: `tokens`, and `loss[i]` True where token i is trained on."""

    tokens: list[int]
    loss: list[bool]
    source: str = ""

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss)


def read_conversations(path: str | os.PathLike[str]) -> list[list[Message]]:
    """The conversations of a transcript file (a system message after others starts a new one)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FinetuneError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise FinetuneError(f"{path}: not UTF-8 text") from None
    conversations: list[list[Message]] = []
    current: list[Message] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if record.get("type") != "message":
                continue
            message = Message.from_dict(record["message"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise FinetuneError(f"{path}:{number}: not a transcript record ({e})") from None
        if message.author.role == Role.SYSTEM and current:
            conversations.append(current)
            current = []
        current.append(message)
    if current:
        conversations.append(current)
    return conversations


_RENDER = RenderConversationConfig(auto_drop_analysis=False)  # dropping is done per turn below


def conversation_examples(
    messages: Sequence[Message], encoding: HarmonyEncoding | None = None, source: str = ""
) -> list[Example]:
    """One example per turn that ends in a final answer (earlier turns are context)."""
    encoding = encoding or harmony_encoding()
    finals = [
        i
        for i, m in enumerate(messages)
        if m.author.role == Role.ASSISTANT and m.channel == "final"
    ]
    if not finals:
        raise FinetuneError(f"{source}: no final answer from the assistant: nothing to train on")
    examples = []
    for n, end in enumerate(finals):
        previous = finals[n - 1] if n else -1
        # What the agent shows for this turn: earlier turns without anything on the analysis
        # channel (reasoning, python calls and their results), as harmony prescribes.
        context = [m for m in messages[: previous + 1] if m.channel != "analysis"]
        turn = list(messages[previous + 1 : end + 1])
        examples.append(_render_example([*context, *turn], len(context), encoding, source))
    return examples


def _render_example(
    messages: list[Message], first_trained: int, encoding: HarmonyEncoding, source: str
) -> Example:
    try:
        tokens = encoding.render_conversation_for_training(
            Conversation.from_messages(messages), _RENDER
        )
        # Where each message starts. Harmony renders the system and developer messages with
        # knowledge of the rest (e.g. the tools), so those are measured by rendering the prefix;
        # later messages render on their own (the agent's prompt relies on that too).
        head = 0
        while head < len(messages) and messages[head].author.role in (Role.SYSTEM, Role.DEVELOPER):
            head += 1
        bounds = [
            len(encoding.render_conversation(Conversation.from_messages(messages[:k]), _RENDER))
            for k in range(head + 1)
        ]
        for m in messages[head:]:
            bounds.append(bounds[-1] + len(encoding.render(m)))
    except HarmonyError as e:
        raise FinetuneError(
            f"{source}: the conversation does not render as harmony ({e})"
        ) from None
    if bounds[-1] != len(tokens) or not all(a < b for a, b in itertools.pairwise(bounds)):
        raise FinetuneError(f"{source}: the conversation does not render message by message")
    start = encoding.encode("<|start|>", allowed_special="all")[0]
    role = encoding.encode("assistant", allowed_special="all")
    loss = [False] * len(tokens)
    for k in range(first_trained, len(messages)):
        if messages[k].author.role != Role.ASSISTANT:
            continue
        a, b = bounds[k], bounds[k + 1]
        prev = messages[k - 1].author.role if k else None
        if prev != Role.ASSISTANT:
            # The prompt ends with `<|start|>assistant`: the model does not generate it.
            if tokens[a : a + 1 + len(role)] != [start, *role]:
                raise FinetuneError(f"{source}: unexpected header for message {k}")
            a += 1 + len(role)
        loss[a:b] = [True] * (b - a)
    return Example(tokens, loss, source)


def load_examples(
    paths: Iterable[str | os.PathLike[str]],
    *,
    encoding: HarmonyEncoding | None = None,
    max_tokens: int | None = None,
) -> list[Example]:
    """Every example of every transcript file; a conversation that does not render is an error."""
    encoding = encoding or harmony_encoding()
    examples = []
    for path in paths:
        for c, messages in enumerate(read_conversations(path), 1):
            source = f"{path}: conversation {c}"
            for example in conversation_examples(messages, encoding, source):
                if max_tokens is not None and len(example.tokens) > max_tokens:
                    raise FinetuneError(
                        f"{source}: {len(example.tokens)} tokens, more than --max-tokens "
                        f"({max_tokens})"
                    )
                examples.append(example)
    if not examples:
        raise FinetuneError("no training examples in the given transcripts")
    return examples


# --- compact vocabulary --------------------------------------------------------------------------


class CompactVocab:
    """A sorted set of token ids kept as embedding rows; every other row is zero."""

    def __init__(self, ids: Iterable[int], vocab_size: int) -> None:
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)  # (V,)
        self.vocab_size = vocab_size
        if len(self.ids) and (self.ids[0] < 0 or self.ids[-1] >= vocab_size):
            raise ValueError(f"token ids must be in 0..{vocab_size - 1}")
        self._index = torch.full((vocab_size,), -1, dtype=torch.long)
        self._index[self.ids] = torch.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def compact(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self._index[tokens]
        if (out < 0).any():
            missing = sorted(set(tokens[out < 0].tolist()))[:5]
            raise FinetuneError(f"tokens {missing} are not in the compact vocabulary")
        return out

    @property
    def zero_rows(self) -> int:
        return self.vocab_size - len(self.ids)


def used_tokens(examples: Iterable[Example], encoding: HarmonyEncoding) -> set[int]:
    """Tokens of the examples plus every 1-3 digit number token: any number the model may have
    to copy, seen in training or not, gets a trained row."""
    ids: set[int] = set()
    for example in examples:
        ids.update(example.tokens)
    for n in range(1000):
        for text in {str(n), f"{n:02d}", f"{n:03d}"}:
            tokens = encoding.encode(text, allowed_special=set())
            if len(tokens) == 1:
                ids.add(tokens[0])
    return ids


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
    from .loading import _module_name

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


# --- batched forward for training ----------------------------------------------------------------


def forward_batch(
    tf: Transformer, tokens: torch.Tensor, prefix: int = 0, *, hidden: bool = False
) -> torch.Tensor:
    """tokens (B, T), right-padded, at positions 0..T-1 -> logits (B, T - prefix, V) for the
    positions from `prefix` on (`hidden`: the normed final hidden states (B, T - prefix, H)).

    The same computation as `Transformer.forward` for each row (which takes one sequence), with
    the module's own parameters; causal masking keeps padding out of every real token's result.
    The first `prefix` tokens must be the same in every row (a shared system prompt): they run
    once, and the rows attend to their keys and values, which is exact and saves most of the
    work when the prompt is long and the trained part short.
    """
    t = tokens.shape[1]
    head = tokens[:1, :prefix]  # (1, P)
    xp, xs = tf.embedding(head), tf.embedding(tokens[:, prefix:])  # (1, P, H), (B, S, H)
    positions = torch.arange(t, device=tokens.device)
    cos, sin = rope_cos_sin(positions, tf.inv_freq, tf.config)
    for block in tf.block:
        kv = None
        if prefix:
            ap, kv = _attention_batch(block.attn, xp, cos[:prefix], sin[:prefix], 0, None)
            xp = xp + ap
        xs = xs + _attention_batch(block.attn, xs, cos[prefix:], sin[prefix:], prefix, kv)[0]
        # One MoE call for all tokens: it routes tokens, the rows do not matter.
        flat = torch.cat([xp.reshape(-1, xp.shape[-1]), xs.reshape(-1, xs.shape[-1])])
        out = block.mlp(flat)
        xp = xp + out[: xp.shape[1]].view(xp.shape)
        xs = xs + out[xp.shape[1] :].view(xs.shape)
    xs = tf.norm(xs)
    return xs if hidden else tf.unembedding(xs)


def _attention_batch(
    attn: AttentionBlock,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    start: int,
    past: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """x (B, T, H) at positions start.. attending to `past` keys / values (1, nkv, 1, start, hd)
    and to itself -> (out (B, T, H), (k, v) of x)."""
    b, t, _ = x.shape
    nh, nkv, hd = attn.nh, attn.nkv, attn.hd
    qkv = attn.qkv(attn.norm(x))  # (B, T, (nh + 2 nkv) hd)
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = apply_rope(q.view(b, t, nh, hd), cos, sin)  # cos (T, 1, hd/2) broadcasts over B
    k = apply_rope(k.view(b, t, nkv, hd), cos, sin)
    q = q.view(b, t, nkv, nh // nkv, hd).permute(0, 2, 3, 1, 4)  # (B, nkv, rep, T, hd)
    k = k.permute(0, 2, 1, 3)[:, :, None]  # (B, nkv, 1, T, hd)
    v = v.view(b, t, nkv, hd).permute(0, 2, 1, 3)[:, :, None]
    own = (k, v)
    if past is not None:
        k = torch.cat([past[0].expand(b, -1, -1, -1, -1), k], dim=3)  # (B, nkv, 1, S, hd)
        v = torch.cat([past[1].expand(b, -1, -1, -1, -1), v], dim=3)
    s = k.shape[3]
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(hd)  # (B, nkv, rep, T, S)
    qpos = torch.arange(start, start + t, device=x.device)[:, None]
    kpos = torch.arange(start + t - s, start + t, device=x.device)[None, :]
    allowed = kpos <= qpos
    if attn.window is not None:
        allowed &= qpos - kpos < attn.window
    scores = scores.masked_fill(~allowed, float("-inf"))
    sink = attn.sinks.float().view(1, nkv, nh // nkv, 1, 1).expand(b, -1, -1, t, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    o = probs.to(v.dtype) @ v  # (B, nkv, rep, T, hd)
    return attn.out(o.permute(0, 3, 1, 2, 4).reshape(b, t, nh * hd)), own


def token_losses(logits: torch.Tensor, targets: torch.Tensor, zero_rows: int = 0) -> torch.Tensor:
    """Cross-entropy (..., V) logits vs (...,) targets, counting `zero_rows` more logits of 0."""
    logits = logits.float()
    lse = logits.logsumexp(dim=-1)
    if zero_rows:
        lse = torch.logaddexp(lse, torch.tensor(math.log(zero_rows), device=lse.device))
    return lse - logits.gather(-1, targets[..., None])[..., 0]


# --- quantisation-aware training ---------------------------------------------------------------


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


# --- training ----------------------------------------------------------------------------------


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
    batches = _batches(examples, config.batch_size, rng, vocab)
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
    examples: Sequence[Example], size: int, rng: random.Random, vocab: CompactVocab | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Endless shuffled batches: tokens (B, T) right-padded, loss mask (B, T), real tokens."""
    order: list[int] = []
    while True:
        if len(order) < size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
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


# --- export ------------------------------------------------------------------------------------


def canonical_tensors(
    tf: Transformer, *, vocab: CompactVocab | None = None, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors under checkpoint names, dense experts, full vocabulary, in `dtype`."""
    from .lora import merged_state

    state = merged_state(tf)
    config = tf.config
    for name in expected_shapes(config, packed=False):
        t = state[_state_name(name)].detach().float()
        if vocab is not None and name in ("embedding.weight", "unembedding.weight"):
            full = torch.zeros(vocab.vocab_size, t.shape[1])
            full[vocab.ids] = t
            t = full
        yield name, t.to(dtype).clone()  # a copy: tied weights must not share storage on disk


def _state_name(name: str) -> str:
    """Checkpoint name -> state-dict name of a dense-expert Transformer."""
    for p in ("mlp1_weight", "mlp1_bias", "mlp2_weight", "mlp2_bias"):
        name = name.replace(f"mlp.{p}", f"mlp.experts.{p}")
    return name


def export_checkpoint(
    tf: Transformer,
    path: str | os.PathLike[str],
    *,
    vocab: CompactVocab | None = None,
    layout: Layout = "original",
    mxfp4: bool = True,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write `tf` (LoRA adapters merged) as a checkpoint `load_model` reads; experts re-quantised
    to MXFP4 unless `mxfp4` is False."""
    config = tf.config
    if vocab is not None:
        config = ModelConfig(**{**config.to_reference_json(), "vocab_size": vocab.vocab_size})
    if mxfp4 and (config.hidden_size % 32 or config.intermediate_size % 32):
        raise FinetuneError("MXFP4 experts need hidden_size and intermediate_size multiples of 32")
    tensors = repack(canonical_tensors(tf, vocab=vocab, dtype=dtype), mxfp4, dtype)
    return write_checkpoint(path, config, tensors, layout=layout, packed=mxfp4)


# --- compact files: a small model shipped as its kept rows --------------------------------------

COMPACT_FORMAT = "harmony-agent-compact-v1"


def save_compact(
    tf: Transformer,
    vocab: CompactVocab,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
) -> Path:
    """One safetensors file: the kept vocabulary rows, MXFP4 experts, everything else in `dtype`.
    `expand_compact` turns it into a checkpoint folder."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"vocab_ids": vocab.ids.to(torch.int32)}
    config = ModelConfig(**{**tf.config.to_reference_json(), "vocab_size": vocab.vocab_size})
    for name, t in repack(canonical_tensors(tf, dtype=dtype), True, dtype):
        tensors[name] = t.contiguous()
    meta = {
        "format": COMPACT_FORMAT,
        "config": json.dumps(config.to_reference_json()),
        **(metadata or {}),
    }
    path = Path(path)
    save_file(tensors, str(path), metadata=meta)
    return path


def expand_compact(
    path: str | os.PathLike[str], folder: str | os.PathLike[str], *, layout: Layout = "original"
) -> Path:
    """Write the checkpoint folder a compact file stands for (zero rows for the other tokens)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != COMPACT_FORMAT:
            raise FinetuneError(f"{path}: not a compact model file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    config = ModelConfig(**json.loads(meta["config"]))
    ids = tensors.pop("vocab_ids").long()

    def full() -> Iterator[tuple[str, torch.Tensor]]:
        for name in expected_shapes(config, packed=True):
            t = tensors[name]
            if name in ("embedding.weight", "unembedding.weight"):
                rows = torch.zeros(config.vocab_size, t.shape[1], dtype=t.dtype)
                rows[ids] = t
                t = rows
            yield name, t

    return write_checkpoint(folder, config, full(), layout=layout, packed=True)


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


def rope_buffers(tf: Transformer) -> None:
    """Recompute the non-persistent RoPE buffer (after building a model on the meta device)."""
    tf.inv_freq = rope_inv_freq(tf.config)

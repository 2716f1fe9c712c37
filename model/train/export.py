"""The trained model written back: a checkpoint `load_model` reads, or a compact file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..checkpoint import Layout, expected_shapes, repack, write_checkpoint
from ..compact import write_compact
from ..config import ModelConfig
from ..train import FinetuneError
from ..transformer import Transformer
from .data import CompactVocab
from .lora import merged_state


def canonical_tensors(
    tf: Transformer, *, vocab: CompactVocab | None = None, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors under checkpoint names, dense experts, full vocabulary, in `dtype`."""
    state = merged_state(tf)
    config = tf.config
    for name in expected_shapes(config, packed=False):
        t = state[state_name(name)].detach().float()
        if vocab is not None and name in ("embedding.weight", "unembedding.weight"):
            full = torch.zeros(vocab.vocab_size, t.shape[1])
            full[vocab.ids] = t
            t = full
        yield name, t.to(dtype).clone()  # a copy: tied weights must not share storage on disk


def state_name(name: str) -> str:
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


def save_compact(
    tf: Transformer,
    vocab: CompactVocab,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
) -> Path:
    """One safetensors file: the kept vocabulary rows, MXFP4 experts, everything else in `dtype`
    (`model.compact`). `expand_compact` turns it into a checkpoint folder."""
    config = ModelConfig(**{**tf.config.to_reference_json(), "vocab_size": vocab.vocab_size})
    tensors = repack(canonical_tensors(tf, dtype=dtype), True, dtype)
    return write_compact(path, config, vocab.ids, tensors, metadata=metadata)

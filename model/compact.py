"""Compact model files: a small model shipped as one safetensors file of its kept vocabulary
rows, expanded on first use into an ordinary checkpoint folder (zero rows for the other tokens).

The demo model ships this way; `harmony-agent finetune --compact-out` writes such files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .checkpoint import CheckpointError, Layout, expected_shapes, write_checkpoint
from .config import ModelConfig

COMPACT_FORMAT = "harmony-agent-compact-v1"
_EMBEDDINGS = ("embedding.weight", "unembedding.weight")


def write_compact(
    path: str | os.PathLike[str],
    config: ModelConfig,
    vocab_ids: torch.Tensor,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """One file: `tensors` (checkpoint names, packed experts; the embeddings hold only the rows
    of `vocab_ids`, in order) and the full `config`."""
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {"vocab_ids": vocab_ids.to(torch.int32)}
    out.update((name, t.contiguous()) for name, t in tensors)
    meta = {
        "format": COMPACT_FORMAT,
        "config": json.dumps(config.to_reference_json()),
        **(metadata or {}),
    }
    path = Path(path)
    save_file(out, str(path), metadata=meta)
    return path


def expand_compact(
    path: str | os.PathLike[str], folder: str | os.PathLike[str], *, layout: Layout = "original"
) -> Path:
    """Write the checkpoint folder a compact file stands for (zero rows for the other tokens)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != COMPACT_FORMAT:
            raise CheckpointError(f"{path}: not a compact model file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    config = ModelConfig(**json.loads(meta["config"]))
    ids = tensors.pop("vocab_ids").long()

    def full() -> Iterator[tuple[str, torch.Tensor]]:
        for name in expected_shapes(config, packed=True):
            t = tensors[name]
            if name in _EMBEDDINGS:
                rows = torch.zeros(config.vocab_size, t.shape[1], dtype=t.dtype)
                rows[ids] = t
                t = rows
            yield name, t

    return write_checkpoint(folder, config, full(), layout=layout, packed=True)

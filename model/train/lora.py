"""LoRA adapters for gpt-oss: attention projections (qkv, out) and expert projections (mlp1, mlp2).

Model surgery: `add_lora` swaps each target for a wrapper holding the frozen original and a
low-rank update `scale * B @ A` (B starts at zero, so training starts from the original model).
Expert adapters are one (A, B) pair per expert, stacked like the experts themselves; they wrap
dense or MXFP4 experts alike, so an adapter can run beside a packed checkpoint (`load_adapter`).
`merge_lora` folds the updates into plain modules (dense experts) for export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..transformer import Block, DenseExperts, MXFP4Experts, Transformer

TARGETS = ("qkv", "out", "mlp1", "mlp2")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Module):
    """`base(x) + scale * x A^T B^T` with `base` frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.randn(rank, w.shape[1], dtype=torch.float32) / rank)
        self.lora_b = nn.Parameter(torch.zeros(w.shape[0], rank, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_a.to(x.dtype), self.lora_b.to(x.dtype)
        return self.base(x) + (x @ a.T @ b.T) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None
        )
        with torch.no_grad():
            out.weight.copy_(self.base.weight.float() + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


class LoRAExperts(nn.Module):
    """Experts (dense or MXFP4, frozen) plus one low-rank update per expert for mlp1 and mlp2."""

    def __init__(
        self, base: DenseExperts | MXFP4Experts, rank: int, alpha: float, targets: Iterable[str]
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.num_experts = e = base.num_experts
        self.scale = alpha / rank
        w1, _, w2, _ = base.expert(0, torch.float32)  # (2I, H), (H, I)
        targets = set(targets)
        self.mlp1_a = self.mlp1_b = self.mlp2_a = self.mlp2_b = None
        if "mlp1" in targets:
            self.mlp1_a = nn.Parameter(torch.randn(e, rank, w1.shape[1]) / rank)
            self.mlp1_b = nn.Parameter(torch.zeros(e, w1.shape[0], rank))
        if "mlp2" in targets:
            self.mlp2_a = nn.Parameter(torch.randn(e, rank, w2.shape[1]) / rank)
            self.mlp2_b = nn.Parameter(torch.zeros(e, w2.shape[0], rank))

    def _delta(self, a: nn.Parameter | None, b: nn.Parameter | None, idx: torch.Tensor | int):
        if a is None or b is None:
            return None
        return self.scale * (b[idx] @ a[idx])

    def mlp1(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # The frozen base computes its own way (packed experts stay packed); the update is
        # applied as two thin matmuls.
        y = self.base.mlp1(e, x)  # (n, H) -> (n, 2I)
        if self.mlp1_a is None or self.mlp1_b is None:
            return y
        return y + self.scale * (x @ self.mlp1_a[e].T.to(x.dtype) @ self.mlp1_b[e].T.to(x.dtype))

    def mlp2(self, e: int, h: torch.Tensor) -> torch.Tensor:
        y = self.base.mlp2(e, h)  # (n, I) -> (n, H)
        if self.mlp2_a is None or self.mlp2_b is None:
            return y
        return y + self.scale * (h @ self.mlp2_a[e].T.to(h.dtype) @ self.mlp2_b[e].T.to(h.dtype))

    def expert(self, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2 = self.base.expert(e, dtype)
        d1, d2 = self._delta(self.mlp1_a, self.mlp1_b, e), self._delta(self.mlp2_a, self.mlp2_b, e)
        w1 = w1 if d1 is None else w1 + d1.to(dtype)
        w2 = w2 if d2 is None else w2 + d2.to(dtype)
        return w1, b1, w2, b2

    def gather(self, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2 = self.base.gather(ids, dtype)
        d1 = self._delta(self.mlp1_a, self.mlp1_b, ids)
        d2 = self._delta(self.mlp2_a, self.mlp2_b, ids)
        w1 = w1 if d1 is None else w1 + d1.to(dtype)
        w2 = w2 if d2 is None else w2 + d2.to(dtype)
        return w1, b1, w2, b2

    def merged(self) -> DenseExperts:
        e = self.num_experts
        parts = [self.expert(i, torch.float32) for i in range(e)]
        w1 = torch.stack([p[0] for p in parts])
        w2 = torch.stack([p[2] for p in parts])
        dense = DenseExperts.__new__(DenseExperts)
        nn.Module.__init__(dense)
        dense.num_experts = e
        dense.mlp1_weight = nn.Parameter(w1.detach().clone())
        dense.mlp1_bias = nn.Parameter(self.base.mlp1_bias.detach().float().clone())
        dense.mlp2_weight = nn.Parameter(w2.detach().clone())
        dense.mlp2_bias = nn.Parameter(self.base.mlp2_bias.detach().float().clone())
        return dense


def add_lora(
    tf: Transformer,
    rank: int = 8,
    alpha: float | None = None,
    targets: Iterable[str] = TARGETS,
    *,
    seed: int = 0,
) -> Transformer:
    """Freeze `tf` and wrap its `targets` with rank-`rank` adapters (in place); alpha defaults to
    2 * rank."""
    targets = tuple(targets)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)} (choose from {TARGETS})")
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    alpha = float(alpha if alpha is not None else 2 * rank)
    if not all(isinstance(block, Block) for block in tf.block):
        raise ValueError(
            "LoRA adapters run on the torch backend: load the model with backend='torch'"
        )  # the triton blocks fuse the out projection and the experts into their kernels
    torch.manual_seed(seed)
    tf.requires_grad_(False)
    for block in tf.block:
        attn = block.attn
        if "qkv" in targets:
            attn.qkv = LoRALinear(attn.qkv, rank, alpha)  # type: ignore[assignment]
        if "out" in targets:
            attn.out = LoRALinear(attn.out, rank, alpha)  # type: ignore[assignment]
        if {"mlp1", "mlp2"} & set(targets):
            block.mlp.experts = LoRAExperts(block.mlp.experts, rank, alpha, targets)  # type: ignore[assignment]
    return tf


def merge_lora(tf: Transformer) -> Transformer:
    """Fold every adapter into its module (in place): plain Linears, dense fp32 experts."""
    for block in tf.block:
        attn = block.attn
        if isinstance(attn.qkv, LoRALinear):
            attn.qkv = attn.qkv.merged()
        if isinstance(attn.out, LoRALinear):
            attn.out = attn.out.merged()
        if isinstance(block.mlp.experts, LoRAExperts):
            block.mlp.experts = block.mlp.experts.merged()
    return tf


def merged_state(tf: Transformer) -> dict[str, torch.Tensor]:
    """The state dict of `tf` with adapters folded in and experts dense, without changing `tf`."""
    state: dict[str, torch.Tensor] = {}
    for name, module in tf.named_modules():
        if isinstance(module, (LoRALinear, LoRAExperts)):
            continue
        if name and any(name.startswith(w + ".") for w in _wrapped(tf)):
            continue
        for pname, p in module.named_parameters(recurse=False):
            state[f"{name}.{pname}" if name else pname] = p
    for name in _wrapped(tf):
        module = tf.get_submodule(name)
        merged = module.merged()  # type: ignore[operator]
        for pname, p in merged.named_parameters():
            state[f"{name}.{pname}"] = p
    # Packed experts that were never wrapped: dequantise them.
    for i, block in enumerate(tf.block):
        experts = block.mlp.experts
        if isinstance(experts, MXFP4Experts):
            parts = [experts.expert(e, torch.float32) for e in range(experts.num_experts)]
            state[f"block.{i}.mlp.experts.mlp1_weight"] = torch.stack([p[0] for p in parts])
            state[f"block.{i}.mlp.experts.mlp2_weight"] = torch.stack([p[2] for p in parts])
    # Fake-quantised experts (quantisation-aware training) export their dense weights.
    return {k.replace(".experts.dense.", ".experts."): v for k, v in state.items()}


def _wrapped(tf: Transformer) -> list[str]:
    return [n for n, m in tf.named_modules() if isinstance(m, (LoRALinear, LoRAExperts))]


def adapter_state(tf: Transformer) -> dict[str, torch.Tensor]:
    """The adapter tensors only."""
    return {
        n: p.detach().contiguous()
        for n, p in tf.named_parameters()
        if ".lora_" in n or n.split(".")[-1] in ("mlp1_a", "mlp1_b", "mlp2_a", "mlp2_b")
    }


def save_adapter(
    tf: Transformer,
    folder: str | os.PathLike[str],
    *,
    rank: int,
    alpha: float,
    targets: Iterable[str],
) -> Path:
    """Write the adapters (`adapter.safetensors` + `adapter_config.json`) to `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(tf), str(folder / ADAPTER_FILE))
    config = {"rank": rank, "alpha": alpha, "targets": list(targets)}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_adapter(tf: Transformer, folder: str | os.PathLike[str]) -> Transformer:
    """Wrap `tf` (e.g. `load_model(...).transformer`, MXFP4 experts included) with the adapters
    saved in `folder`, to run them beside the checkpoint without merging."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
        tensors = load_file(str(folder / ADAPTER_FILE))
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: not a LoRA adapter folder ({e})") from None
    add_lora(tf, config["rank"], config["alpha"], config["targets"])
    device = tf.embedding.weight.device
    with torch.no_grad():
        for name, t in tensors.items():
            tf.get_parameter(name).copy_(t.to(device))
    return tf.requires_grad_(False)

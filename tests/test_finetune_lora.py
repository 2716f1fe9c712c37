"""LoRA: merged equals unmerged, only adapters train, adapters run beside a packed checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from harmony_agent.model import load_model
from harmony_agent.model.checkpoint import write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.train.data import Example
from harmony_agent.model.train.loop import FinetuneConfig, finetune, forward_batch, init_transformer
from harmony_agent.model.train.lora import (
    LoRAExperts,
    LoRALinear,
    add_lora,
    load_adapter,
    merge_lora,
    save_adapter,
)

CONFIG = ModelConfig(
    num_hidden_layers=2,
    num_experts=4,
    experts_per_token=2,
    vocab_size=256,
    hidden_size=32,
    intermediate_size=32,
    head_dim=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=8,
)


def with_random_adapters(tf: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    add_lora(tf, rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B starts at zero (a no-op adapter): make the test see the update
        for name, p in tf.named_parameters():
            if name.endswith(("lora_b", "mlp1_b", "mlp2_b")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return tf


def test_merged_equals_unmerged() -> None:
    tf = with_random_adapters(init_transformer(CONFIG, seed=0))
    tokens = torch.randint(0, 256, (20,))
    with torch.no_grad():
        before = tf(tokens)
        reference = torch.stack([tf.block[0].mlp.forward_reference(tf.embedding(tokens))])
        merge_lora(tf)
        after = tf(tokens)
        reference_after = torch.stack([tf.block[0].mlp.forward_reference(tf.embedding(tokens))])
    assert not any(isinstance(m, (LoRALinear, LoRAExperts)) for m in tf.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(reference_after, reference, atol=1e-5, rtol=0)


def test_only_adapters_train() -> None:
    tf = add_lora(init_transformer(CONFIG, seed=0), rank=2)
    frozen = {n: p.detach().clone() for n, p in tf.named_parameters() if not p.requires_grad}
    examples = [Example(list(range(10 + i, 40 + i)), [False] * 5 + [True] * 25) for i in range(4)]
    stats = finetune(tf, examples, FinetuneConfig(steps=4, batch_size=2, lr=1e-2, warmup=1))
    assert len(stats.losses) == 4
    for name, p in tf.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert any(p.abs().sum() > 0 for n, p in tf.named_parameters() if n.endswith("lora_b"))


def test_adapter_beside_a_packed_checkpoint_equals_merging(tmp_path: Path) -> None:
    ckpt = write_random_checkpoint(tmp_path / "ckpt", CONFIG, dtype=torch.float32)
    model = load_model(ckpt)
    trained = with_random_adapters(copy.deepcopy(model.transformer).requires_grad_(True))
    targets = ("qkv", "out", "mlp1", "mlp2")
    save_adapter(trained, tmp_path / "adapter", rank=4, alpha=8.0, targets=targets)
    tokens = list(range(3, 40))
    with torch.no_grad():
        merged = forward_batch(merge_lora(trained), torch.tensor([tokens]))[0]
    load_adapter(model.transformer, tmp_path / "adapter")
    torch.testing.assert_close(model.logits(tokens), merged, atol=1e-5, rtol=0)

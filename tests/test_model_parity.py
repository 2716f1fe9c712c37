"""The PyTorch gpt-oss against transformers' GptOssForCausalLM on small random checkpoints.

The reference is built from the same random weights: loaded by transformers itself from a dense
Hugging Face checkpoint, or assembled here from the reference-layout tensors (with transformers'
own MXFP4 dequantisation), so name mapping, transposes and dequantisation are checked too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harmony_agent.model import load_model
from harmony_agent.model.checkpoint import write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.transformer import Block, KVCache, rope_cos_sin, rope_inv_freq

transformers = pytest.importorskip("transformers")
from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402
from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIGS = {
    # window 8 with 24 tokens; MQA; top-1 routing
    "mqa-top1": ModelConfig(
        num_hidden_layers=3, num_experts=4, experts_per_token=1, vocab_size=128, hidden_size=64,
        intermediate_size=32, head_dim=16, num_attention_heads=4, num_key_value_heads=1,
        sliding_window=8,
    ),
    # GQA 4:1, 8 experts top-4
    "gqa-top4": ModelConfig(
        num_hidden_layers=2, num_experts=8, experts_per_token=4, vocab_size=96, hidden_size=96,
        intermediate_size=64, head_dim=8, num_attention_heads=8, num_key_value_heads=2,
        sliding_window=8,
    ),
    # MHA, all experts active, short window, wide heads
    "mha-all": ModelConfig(
        num_hidden_layers=4, num_experts=3, experts_per_token=3, vocab_size=64, hidden_size=64,
        intermediate_size=96, head_dim=32, num_attention_heads=2, num_key_value_heads=2,
        sliding_window=5,
    ),
}  # fmt: skip
TOKENS = [3, 17, 5, 60, 1, 2, 33, 33, 33, 7, 9, 11, 40, 41, 0, 12, 5, 5, 19, 23, 44, 8, 2, 30]


def hf_config(c: ModelConfig) -> GptOssConfig:
    return GptOssConfig(
        num_hidden_layers=c.num_hidden_layers,
        num_local_experts=c.num_experts,
        num_experts_per_tok=c.experts_per_token,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        head_dim=c.head_dim,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        sliding_window=c.sliding_window,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        attn_implementation="eager",  # type: ignore[call-arg]
    )


def hf_from_reference_layout(folder: Path, c: ModelConfig) -> GptOssForCausalLM:
    """transformers' model holding the weights of a reference-layout checkpoint."""
    from safetensors.torch import load_file

    sd = load_file(folder / "model.safetensors")
    out = {
        "model.embed_tokens.weight": sd["embedding.weight"],
        "model.norm.weight": sd["norm.scale"],
        "lm_head.weight": sd["unembedding.weight"],
    }
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    for i in range(c.num_hidden_layers):
        a, m, hf = f"block.{i}.attn.", f"block.{i}.mlp.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            wq, wk, wv = sd[a + f"qkv.{kind}"].split([q, kv, kv])
            out |= {
                hf + f"self_attn.{p}_proj.{kind}": w
                for p, w in zip("qkv", (wq, wk, wv), strict=True)
            }
            out[hf + f"self_attn.o_proj.{kind}"] = sd[a + f"out.{kind}"]
            out[hf + f"mlp.router.{kind}"] = sd[m + f"gate.{kind}"]
        out[hf + "self_attn.sinks"] = sd[a + "sinks"]
        out[hf + "input_layernorm.weight"] = sd[a + "norm.scale"]
        out[hf + "post_attention_layernorm.weight"] = sd[m + "norm.scale"]
        for ours, theirs in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            if m + f"{ours}_weight.blocks" in sd:
                w = convert_moe_packed_tensors(
                    sd[m + f"{ours}_weight.blocks"], sd[m + f"{ours}_weight.scales"],
                    dtype=torch.float32,
                )  # fmt: skip
            else:
                w = sd[m + f"{ours}_weight"].transpose(1, 2)
            out[hf + f"mlp.experts.{theirs}"] = w
            out[hf + f"mlp.experts.{theirs}_bias"] = sd[m + f"{ours}_bias"]
    model = GptOssForCausalLM(hf_config(c)).eval()
    model.load_state_dict({k: v.float() for k, v in out.items()}, strict=True)
    return model


def hf_logits(model: GptOssForCausalLM, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


@pytest.mark.parametrize("mxfp4", [True, False], ids=["mxfp4", "dense"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_layout_matches_transformers(tmp_path: Path, name: str, mxfp4: bool) -> None:
    c = CONFIGS[name]
    folder = write_random_checkpoint(tmp_path, c, mxfp4=mxfp4, dtype=torch.float32, seed=1)
    ours = load_model(folder, device="cpu", progress=False).logits(TOKENS)
    ref = hf_logits(hf_from_reference_layout(folder, c), TOKENS)
    assert ref.std() > 0.1  # a live model, not a degenerate one
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_layout_matches_transformers(tmp_path: Path, name: str) -> None:
    c = CONFIGS[name]
    folder = write_random_checkpoint(tmp_path, c, layout="hf", mxfp4=False, dtype=torch.float32)
    ours = load_model(folder, device="cpu", progress=False).logits(TOKENS)
    hf = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    torch.testing.assert_close(ours, hf_logits(hf.eval(), TOKENS), atol=1e-4, rtol=1e-4)


def test_hf_mxfp4_layout_equals_reference_layout(tmp_path: Path) -> None:
    c = CONFIGS["gqa-top4"]
    ref = write_random_checkpoint(tmp_path / "ref", c, mxfp4=True, dtype=torch.float32, seed=3)
    hf = write_random_checkpoint(
        tmp_path / "hf", c, layout="hf", mxfp4=True, dtype=torch.float32, seed=3, shard_bytes=20000
    )
    assert (hf / "model.safetensors.index.json").is_file()  # sharded
    a = load_model(ref, progress=False).logits(TOKENS)
    b = load_model(hf, progress=False).logits(TOKENS)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_cached_chunks_match_uncached_forward(tmp_path: Path) -> None:
    """Chunked prefill then single-token steps across the sliding window, in place."""
    c = CONFIGS["gqa-top4"]
    m = load_model(write_random_checkpoint(tmp_path, c, dtype=torch.float32), progress=False)
    full = m.logits(TOKENS)
    cache = KVCache(c, 64, torch.device("cpu"), torch.float32)
    ids = torch.tensor(TOKENS)
    pieces, start = [], 0
    with torch.inference_mode():
        for size in (5, 9, 1, 1, 3, 1, 4):
            pieces.append(m.transformer(ids[start : start + size], start, cache))
            start += size
    torch.testing.assert_close(torch.cat(pieces), full, atol=1e-5, rtol=1e-5)


def test_grouped_moe_matches_gather_reference(tmp_path: Path) -> None:
    c = CONFIGS["gqa-top4"]
    for mxfp4 in (True, False):
        folder = write_random_checkpoint(tmp_path / str(mxfp4), c, mxfp4=mxfp4, dtype=torch.float32)
        block = load_model(folder, progress=False).transformer.block[1]
        assert isinstance(block, Block)
        mlp = block.mlp
        x = torch.randn(11, c.hidden_size)
        with torch.inference_mode():
            torch.testing.assert_close(mlp(x), mlp.forward_reference(x), atol=1e-5, rtol=1e-5)


def test_rope_matches_transformers_far_past_original_context() -> None:
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    c = ModelConfig(head_dim=64)
    hf = GptOssRotaryEmbedding(hf_config(c))
    positions = torch.tensor([0, 1, 127, 4095, 4096, 4097, 50_000, 100_003, 131_071])
    hf_cos, hf_sin = hf(torch.zeros(1, dtype=torch.float32), positions[None])
    cos, sin = rope_cos_sin(positions, rope_inv_freq(c), c)
    torch.testing.assert_close(cos, hf_cos[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, hf_sin[0], atol=1e-5, rtol=0)
    # fp32 angles from integer positions stay within fp32 rounding of the exact (fp64) angle
    exact = positions.double()[:, None] * rope_inv_freq(c).double()[None]
    concentration = 0.1 * math.log(32) + 1
    torch.testing.assert_close(cos.double(), exact.cos() * concentration, atol=2e-2, rtol=0)

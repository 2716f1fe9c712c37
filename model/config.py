"""gpt-oss hyperparameters, named after the reference checkpoint's `config.json` keys."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a gpt-oss model; defaults are gpt-oss-20b. `ModelConfig(**reference_json)`."""

    num_hidden_layers: int = 24
    num_experts: int = 32
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0

    # Not in the reference config.json: fixed by the architecture.
    swiglu_alpha = 1.702
    norm_eps = 1e-5

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not 0 < self.experts_per_token <= self.num_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) must be in 1..{self.num_experts}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even")

    @property
    def context_length(self) -> int:
        """Longest context the YaRN-scaled RoPE was made for (131072 for gpt-oss)."""
        return int(self.initial_context_length * self.rope_scaling_factor)

    def is_sliding(self, layer: int) -> bool:
        """Even layers attend to a sliding window; odd layers are fully causal."""
        return layer % 2 == 0

    @property
    def qkv_dim(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    # --- config.json in both layouts -------------------------------------------------------

    @classmethod
    def from_reference_json(cls, data: dict[str, Any]) -> ModelConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        for name in names:
            if name not in data:
                raise KeyError(name)
        return cls(**{k: data[k] for k in names})

    def to_reference_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `GptOssConfig` dict (`rope_scaling` or `rope_parameters`)."""
        rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
        kw: dict[str, Any] = {
            "num_hidden_layers": data["num_hidden_layers"],
            "num_experts": data.get("num_local_experts", data.get("num_experts")),
            "experts_per_token": data.get("num_experts_per_tok", data.get("experts_per_token")),
            "vocab_size": data["vocab_size"],
            "hidden_size": data["hidden_size"],
            "intermediate_size": data["intermediate_size"],
            "head_dim": data.get("head_dim") or data["hidden_size"] // data["num_attention_heads"],
            "num_attention_heads": data["num_attention_heads"],
            "num_key_value_heads": data["num_key_value_heads"],
            "sliding_window": data.get("sliding_window") or 128,
            "rope_theta": data.get("rope_theta", rope.get("rope_theta", 150000.0)),
        }
        if "swiglu_limit" in data:
            kw["swiglu_limit"] = data["swiglu_limit"]
        if rope:
            kw["rope_scaling_factor"] = rope.get("factor", 32.0)
            kw["rope_ntk_alpha"] = rope.get("beta_slow", 1.0)
            kw["rope_ntk_beta"] = rope.get("beta_fast", 32.0)
            kw["initial_context_length"] = rope.get("original_max_position_embeddings", 4096)
        if None in kw.values():
            missing = [k for k, v in kw.items() if v is None]
            raise KeyError(missing[0])
        return cls(**kw)

    def to_hf_json(self) -> dict[str, Any]:
        n = self.num_hidden_layers
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "num_hidden_layers": n,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "layer_types": [
                "sliding_attention" if self.is_sliding(i) else "full_attention" for i in range(n)
            ],
            "initial_context_length": self.initial_context_length,
            "max_position_embeddings": self.context_length,
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": self.rope_scaling_factor,
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "truncate": False,
                "original_max_position_embeddings": self.initial_context_length,
            },
            "rms_norm_eps": self.norm_eps,
            "attention_bias": True,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
        }

    # --- sizes -----------------------------------------------------------------------------

    def param_counts(self) -> dict[str, int]:
        """Parameters by part: embedding, unembedding, attention, router, experts, norms."""
        n, h, e = self.num_hidden_layers, self.hidden_size, self.num_experts
        inter = self.intermediate_size
        attn = h * self.qkv_dim + self.qkv_dim + self.num_attention_heads * self.head_dim * h
        attn += h + self.num_attention_heads
        experts = e * (2 * inter * h + 2 * inter + h * inter + h)
        return {
            "embedding": self.vocab_size * h,
            "unembedding": self.vocab_size * h,
            "attention": n * attn,
            "router": n * (e * h + e),
            "experts": n * experts,
            "norms": (2 * n + 1) * h,
        }

    def active_params_per_token(self) -> int:
        c = self.param_counts()
        frac = self.experts_per_token / self.num_experts
        return (
            c["unembedding"]
            + c["attention"]
            + c["router"]
            + c["norms"]
            + math.ceil(c["experts"] * frac)
            + self.hidden_size
        )


PRESETS: dict[str, ModelConfig] = {
    "20b": ModelConfig(),
    "120b": ModelConfig(num_hidden_layers=36, num_experts=128),
    "tiny": ModelConfig(
        num_hidden_layers=4,
        num_experts=8,
        experts_per_token=2,
        vocab_size=512,
        hidden_size=64,
        intermediate_size=64,
        head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
    ),
}
"""Named shapes for random checkpoints and benchmarks."""

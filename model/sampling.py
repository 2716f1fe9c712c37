"""Choosing the next token from logits, reproducibly when a seed is given."""

from __future__ import annotations

import torch

from . import cpu_kernels
from .protocol import Sampling


def generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    """The random stream of one generation: None when greedy, seeded when a seed is given."""
    if sampling.temperature == 0:
        return None
    gen = torch.Generator(device=device)
    if sampling.seed is None:
        gen.seed()
    else:
        gen.manual_seed(sampling.seed)
    return gen


def sample(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
    if sampling.temperature == 0 or gen is None:
        if (
            logits.device.type == "cpu"
            and logits.dim() == 1
            and logits.dtype in (torch.bfloat16, torch.float32)
            and cpu_kernels.available()
        ):
            return cpu_kernels.argmax(logits)
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        p, idx = probs.sort(descending=True)
        keep = p.cumsum(0) - p < sampling.top_p  # the smallest prefix whose mass reaches top_p
        p = p * keep
        choice = torch.multinomial(p / p.sum(), 1, generator=gen)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=gen))

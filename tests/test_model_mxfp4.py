"""MXFP4 packing: dequantisation against a per-element reference and transformers."""

from __future__ import annotations

import pytest
import torch

from harmony_agent.model.mxfp4 import FP4_VALUES, dequantize, quantize

pytestmark = pytest.mark.usefixtures("one_thread")


def slow_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """One value at a time, straight from the format description."""
    *prefix, g, _ = blocks.shape
    out = torch.empty(*prefix, g * 32, dtype=torch.float64)
    flat_b, flat_s, flat_o = blocks.reshape(-1, g, 16), scales.reshape(-1, g), out.view(-1, g * 32)
    for r in range(flat_b.shape[0]):
        for j in range(g):
            scale = 2.0 ** (int(flat_s[r, j]) - 127)
            for k in range(16):
                byte = int(flat_b[r, j, k])
                flat_o[r, j * 32 + 2 * k] = FP4_VALUES[byte & 0xF] * scale
                flat_o[r, j * 32 + 2 * k + 1] = FP4_VALUES[byte >> 4] * scale
    return out


def random_packed(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (*shape, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 140, shape, generator=g).to(torch.uint8)
    return blocks, scales


def test_dequantize_matches_the_format() -> None:
    blocks, scales = random_packed((3, 2))
    ref = slow_dequantize(blocks, scales)
    torch.testing.assert_close(dequantize(blocks, scales, torch.float32).double(), ref)
    # bf16 holds every FP4 value times a power of two exactly
    torch.testing.assert_close(dequantize(blocks, scales, torch.bfloat16).double(), ref)


def test_dequantize_matches_transformers() -> None:
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    blocks, scales = random_packed((2, 5, 3), seed=1)  # [E, out, G]
    theirs = mx.convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
    torch.testing.assert_close(dequantize(blocks, scales, torch.float32), theirs.transpose(1, 2))


def test_quantize_roundtrips_representable_values() -> None:
    blocks, scales = random_packed((4, 3), seed=2)
    w = dequantize(blocks, scales, torch.float32)
    b2, s2 = quantize(w)
    torch.testing.assert_close(dequantize(b2, s2, torch.float32), w, atol=0, rtol=0)


def test_quantize_error_is_bounded() -> None:
    w = torch.randn(8, 64)
    b, s = quantize(w)
    assert b.shape == (8, 2, 16) and s.shape == (8, 2)
    back = dequantize(b, s, torch.float32)
    amax = w.view(8, 2, 32).abs().amax(-1, keepdim=True)
    # the coarsest FP4 step is 2 (between 4 and 6) at a scale with amax <= 6 * 2**e < 2 amax
    assert ((back - w).view(8, 2, 32).abs() <= amax / 3 + 1e-6).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.zeros(3, 33))

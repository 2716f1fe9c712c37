"""MXFP4: 32 FP4 (e2m1) values per block sharing one power-of-two scale.

`blocks` uint8 [..., G, 16] holds two values per byte (low nibble = even element), `scales`
uint8 [..., G] the exponent with bias 127. Blocks run along the input (last) dimension, so a
weight [out, in] is stored as blocks [out, in // 32, 16] and scales [out, in // 32].
"""

from __future__ import annotations

import itertools

import torch

FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
BLOCK = 32

_PAIR_LUT: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _pair_lut(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256, 2): both FP4 values of every byte, low nibble first."""
    key = (dtype, device)
    if key not in _PAIR_LUT:
        values = torch.tensor(FP4_VALUES, dtype=torch.float32)
        byte = torch.arange(256)
        lut = torch.stack([values[byte & 0xF], values[byte >> 4]], dim=-1)
        _PAIR_LUT[key] = lut.to(device=device, dtype=dtype)
    return _PAIR_LUT[key]


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., G, 16] blocks + [..., G] scales -> [..., G * 32] values in `dtype`."""
    *prefix, g, b = blocks.shape
    assert tuple(scales.shape) == (*prefix, g), (blocks.shape, scales.shape)
    lut = _pair_lut(dtype, blocks.device)
    values = torch.nn.functional.embedding(blocks.int(), lut)  # (..., G, 16, 2)
    # 2**(s - 127) in fp32: exact for every byte except 255 (inf), which never encodes weights.
    scale = torch.exp2(scales.float() - 127).to(dtype)  # (..., G)
    values = values.view(*prefix, g, 2 * b) * scale[..., None]
    return values.view(*prefix, g * 2 * b)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round [..., N] (N a multiple of 32) to MXFP4: (blocks [..., N/32, 16], scales [..., N/32]).

    Round to nearest with the block scale chosen so the largest magnitude fits under 6.
    """
    *prefix, n = weight.shape
    if n % BLOCK:
        raise ValueError(f"last dimension ({n}) must be a multiple of {BLOCK}")
    w = weight.float().reshape(*prefix, n // BLOCK, BLOCK)
    amax = w.abs().amax(dim=-1)  # (..., G)
    exp = torch.ceil(torch.log2(amax.clamp_min(2.0**-126) / 6.0)).clamp(-127, 127)
    scaled = w / torch.exp2(exp)[..., None]  # |scaled| <= 6
    # The nearest magnitude, a tie to the smaller one: the midpoints between them as boundaries
    # (no (..., 8) distance tensor: 20b's experts would need 17 GB for it).
    mags = FP4_VALUES[:8]
    mids = torch.tensor([(a + b) / 2 for a, b in itertools.pairwise(mags)], device=w.device)
    idx = torch.bucketize(scaled.abs().contiguous(), mids, out_int32=True)  # (..., G, 32)
    nibble = torch.where((scaled < 0) & (idx > 0), idx + 8, idx).to(torch.uint8)
    blocks = nibble[..., 0::2] | (nibble[..., 1::2] << 4)
    scales = (exp + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()

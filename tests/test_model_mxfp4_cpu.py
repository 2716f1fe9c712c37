"""The fused MXFP4 CPU kernel against dequantise-then-matmul."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harmony_agent.model import mxfp4_cpu
from harmony_agent.model.mxfp4 import dequantize

pytestmark = pytest.mark.skipif(not mxfp4_cpu.available(), reason="no C++ compiler for the kernel")


@pytest.mark.parametrize("rows", [1, 3, 9, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_matches_dequantised_matmul(rows: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(rows)
    blocks = torch.randint(0, 256, (40, 3, 16), generator=g, dtype=torch.uint8)  # out 40, in 96
    scales = torch.randint(100, 140, (40, 3), generator=g).to(torch.uint8)
    x = torch.randn(rows, 96, generator=g).to(dtype)
    bias = torch.randn(40, generator=g).to(dtype)
    ref = x.float() @ dequantize(blocks, scales, torch.float32).T + bias.float()
    got = mxfp4_cpu.mxfp4_linear(x, blocks, scales, bias)
    assert got.dtype == dtype and got.shape == (rows, 40)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


def test_fused_linear_on_strided_expert_views() -> None:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 8, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(120, 130, (3, 8, 2), generator=g).to(torch.uint8)
    x = torch.randn(1, 64, generator=g)
    for e in range(3):
        ref = x @ dequantize(blocks[e], scales[e], torch.float32).T
        torch.testing.assert_close(mxfp4_cpu.mxfp4_linear(x, blocks[e], scales[e]), ref)


def test_a_first_build_is_announced_and_a_cached_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert mxfp4_cpu.available()  # built (or cached) in torch's extension folder
    assert mxfp4_cpu.unbuilt_folder("harmony_agent_mxfp4_cpu_v2") is None
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = mxfp4_cpu.unbuilt_folder("harmony_agent_mxfp4_cpu_v2")
    assert folder is not None and folder.startswith(str(tmp_path))

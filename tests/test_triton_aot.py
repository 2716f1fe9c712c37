"""Every Triton kernel configuration compiles for H100 (sm_90) and A100 (sm_80) without a GPU.

One subprocess (without TRITON_INTERPRET, whose interpreted kernels cannot be compiled) runs
`python -m harmony_agent.model.triton.aot --json`, compiling each configuration the host code can
choose at the real model's shapes down to a cubin; each (configuration, target) is then checked
against the device's limits: shared memory per block, registers per thread and per SM, threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harmony_agent.model.triton.common import kernel_test_mode

with kernel_test_mode():  # imports the kernel modules as the other kernel tests need them
    pytest.importorskip("triton")
    from harmony_agent.model.triton.aot import LIMITS, all_specs

    CASES = [(spec.label, arch) for spec in all_specs() for arch in sorted(LIMITS, reverse=True)]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, int], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the 3.9 default; silences its warning
    cmd = [sys.executable, "-m", "harmony_agent.model.triton.aot", "--json"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert rows, res.stderr[-4000:]
    return {(r["label"], r["arch"]): r for r in rows}


@pytest.mark.parametrize(("label", "arch"), CASES, ids=[f"sm{a}-{lb}" for lb, a in CASES])
def test_fits_the_device(
    compiled: dict[tuple[str, int], dict[str, Any]], label: str, arch: int
) -> None:
    row = compiled[(label, arch)]
    assert row["problems"] == [], row
    assert row["registers"] is not None, "cuobjdump reported no registers"
    # The block configurations were chosen so that ptxas spills nothing on either target.
    assert row["spill_bytes"] == 0, row


def test_limit_check_catches_what_does_not_fit() -> None:
    from harmony_agent.model.triton.aot import CompileResult, check_limits

    fits = CompileResult("k", 80, shared=160 * 1024, num_warps=8, registers=255, spill_bytes=0,
                         seconds=0.0)  # fmt: skip
    assert check_limits(fits) == []
    too_much_smem = CompileResult("k", 80, 200 * 1024, 4, 64, 0, 0.0)
    assert "shared" in check_limits(too_much_smem)[0]
    assert check_limits(CompileResult("k", 90, 200 * 1024, 4, 64, 0, 0.0)) == []  # H100: 227 KiB
    too_many_regs = CompileResult("k", 90, 0, 16, 255, 0, 0.0)  # 255 x 512 threads
    assert "per SM" in check_limits(too_many_regs)[0]
    assert "threads" in check_limits(CompileResult("k", 90, 0, 64, 32, 0, 0.0))[0]

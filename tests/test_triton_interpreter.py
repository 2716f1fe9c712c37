"""Run the interpreted Triton kernel tests in a fresh process when this one cannot.

`@triton.jit` fixes at import whether functions are compiled or interpreted. In the whole suite
transformers' gpt-oss imports triton (not interpreted) before the kernel tests are collected, so
on a machine without a GPU those tests skip themselves and this one runs them in a subprocess
that enables the interpreter before triton is imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harmony_agent.model.triton.common import kernel_test_mode

with kernel_test_mode() as MODE:
    pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_triton_kernels.py", "tests/test_triton_backend.py"]


@pytest.mark.skipif(MODE != "unavailable", reason="the kernel tests run in this process")
def test_kernel_tests_pass_in_a_fresh_process() -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-2000:]

"""Shared by the test modules that need the sandbox."""

from __future__ import annotations

import os

import pytest

from harmony_agent.sandbox import SandboxUnavailable, probe


def _sandbox_missing() -> str | None:
    try:
        probe()
    except SandboxUnavailable as e:
        return str(e)
    return None


SANDBOX_MISSING = _sandbox_missing()
if SANDBOX_MISSING and os.environ.get("CI"):
    # CI installs bubblewrap: a skip there would hide a missing install step.
    raise RuntimeError(f"the sandbox is unavailable in CI: {SANDBOX_MISSING}")

requires_sandbox = pytest.mark.skipif(
    SANDBOX_MISSING is not None, reason=f"no sandbox here: {SANDBOX_MISSING}"
)

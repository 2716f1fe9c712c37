"""Shared by the test modules that need the sandbox."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return int(line.split()[1]) * 1024 if line else 0


class PeakMemory:
    """What `sample()` read before, and at most, while the block ran."""

    def __init__(self, baseline: int) -> None:
        self.baseline = self.peak = baseline

    @property
    def grown_mib(self) -> float:
        return (self.peak - self.baseline) / (1 << 20)


@contextmanager
def peak_memory(sample: Callable[[], int] = rss_bytes) -> Iterator[PeakMemory]:
    """Sample memory every few milliseconds in a thread while the block runs."""
    result = PeakMemory(sample())
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            result.peak = max(result.peak, sample())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield result
    finally:
        done.set()
        watcher.join()

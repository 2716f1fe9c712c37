"""cgroup v1 memory and pids groups: one pair per sandboxed process tree.

cgroup v1 is what our machines offer (their cgroup v2 mount has no controllers enabled). A group
is made under the cgroup this process already belongs to, so limits set on us still apply. Where
the controllers are missing or not writable (not root, cgroup v2 only) the caller falls back to
rlimits; `available()` says which.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> Path | None:
    """The directory of the cgroup this process is in, for a v1 controller mounted at the usual
    place; None when there is none."""
    base = _ROOT / controller
    if not (base / "cgroup.procs").exists():
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            own = base / path.lstrip("/")
            # In a container the recorded path may not exist in our mount: use the mount's root.
            return own if own.is_dir() else base
    return None


def available(controller: str) -> Path | None:
    """The parent directory for new groups of `controller` when we can create them, else None."""
    parent = _own_path(controller)
    if parent is None or not os.access(parent, os.W_OK):
        return None
    probe = parent / f"harmony-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return None
    ok = (probe / "cgroup.procs").exists()
    with contextlib.suppress(OSError):
        probe.rmdir()
    return parent if ok else None


def _remove_stale(parent: Path) -> None:
    """Remove empty groups left by sandbox owners that died without cleaning up (SIGKILL)."""
    for d in parent.glob("harmony-sandbox-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                d.rmdir()  # fails, harmlessly, while processes remain inside


class CgroupSet:
    """Memory and pids groups for one sandbox: created with limits, joined by the sandbox's first
    process (writing its pid to `procs_files()`), emptied and removed by `destroy()`."""

    def __init__(self, memory_bytes: int | None, max_processes: int | None) -> None:
        name = f"harmony-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dirs: dict[str, Path] = {}
        try:
            if memory_bytes is not None and (parent := available("memory")) is not None:
                _remove_stale(parent)
                d = parent / name
                d.mkdir()
                self.dirs["memory"] = d
                (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
                # Without this the limit only covers RAM and the process can spill into swap.
                with contextlib.suppress(OSError):
                    (d / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            if max_processes is not None and (parent := available("pids")) is not None:
                _remove_stale(parent)
                d = parent / name
                d.mkdir()
                self.dirs["pids"] = d
                (d / "pids.max").write_text(str(max_processes))
        except OSError:
            self.destroy()
            raise

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed so far (0 when unknown)."""
        d = self.dirs.get("memory")
        if d is None:
            return 0
        try:
            for line in (d / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        """SIGKILL every process in the groups, repeating while a fork races the kill."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def destroy(self) -> None:
        self.kill_all()
        for d in self.dirs.values():
            # rmdir fails with EBUSY until the killed processes are reaped by their parent.
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        self.dirs.clear()

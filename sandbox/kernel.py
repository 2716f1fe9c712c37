"""Start an ipykernel inside the sandbox, reachable from the host over ZeroMQ IPC sockets.

The kernel has no network, so its sockets are Unix sockets in a host directory bind-mounted
into the sandbox (`/run/kernel`); the host client connects to the same files by their host path.
Each side gets its own connection file: the same key and socket names, but the kernel's points
at `/run/kernel/...` and the client's at the host directory. Interrupts must travel as messages
(`interrupt_request`): a signal would hit bwrap, not the kernel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from .config import SandboxConfig
from .process import SCRATCH, SandboxedProcess, probe, spawn

KERNEL_DIR = "/run/kernel"
"""Where the socket directory appears inside the sandbox."""
_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
# Kernel-side packages; their site directories must be visible inside.
_KERNEL_PACKAGES = ("ipykernel", "IPython", "zmq", "traitlets", "jupyter_client", "tornado")


class KernelProcess(Protocol):
    """A running kernel process, sandboxed or not."""

    connection_info: dict[str, Any]
    """What `jupyter_client` needs to connect (transport ipc, key, socket paths on the host)."""
    data_dir: Path
    """Host directory of the kernel's working directory (`/mnt/data` when sandboxed)."""
    data_dir_inside: str
    """That directory as code in the kernel sees it."""

    def alive(self) -> bool: ...
    def exit_status(self) -> int | None: ...
    def oom_kills(self) -> int: ...
    def stderr_tail(self) -> str: ...
    def kill(self) -> None: ...


class _Runtime:
    """A private host directory for the sockets, connection files and the kernel's stderr."""

    def __init__(self, owner: int | None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="harmony-kernel-"))
        self.ipc = self.root / "ipc"
        self.ipc.mkdir(mode=0o700)
        if owner is not None:
            # The kernel creates its sockets here as the sandbox uid.
            os.chown(self.ipc, owner, owner)
        self.key = secrets.token_hex(32)
        self.stderr_path = self.root / "kernel.stderr"

    def connection_info(self, ip: str) -> dict[str, Any]:
        return {
            "transport": "ipc",
            "ip": ip,
            "key": self.key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
            **_PORTS,
        }

    def write_kernel_file(self, ip: str, owner: int | None) -> Path:
        path = self.ipc / "connection.json"
        path.write_text(json.dumps(self.connection_info(ip)))
        if owner is not None:
            os.chown(path, owner, owner)
        path.chmod(0o400)
        return path

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _kernel_argv(connection_file: str) -> list[str]:
    # History is off: it would keep an SQLite file and a thread for nothing a model uses.
    return [
        sys.executable, "-m", "ipykernel_launcher", "-f", connection_file,
        "--HistoryManager.enabled=False",
    ]  # fmt: skip


def _kernel_env(tmp: str) -> dict[str, str]:
    return {
        "IPYTHONDIR": f"{tmp}/.ipython",
        "MPLCONFIGDIR": f"{tmp}/.matplotlib",
        "JUPYTER_RUNTIME_DIR": f"{tmp}/.jupyter",
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "TERM": "dumb",
    }


def _package_dirs() -> tuple[str, ...]:
    dirs = []
    for name in _KERNEL_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            # .../site-packages/ipykernel/__init__.py -> .../site-packages
            dirs.append(str(Path(spec.origin).resolve().parent.parent))
    return tuple(dirs)


class SandboxedKernel:
    """An ipykernel in a sandbox (see `sandbox.process` for what that does and does not stop)."""

    def __init__(self, data_dir: Path, config: SandboxConfig) -> None:
        config = replace(config, extra_ro_paths=(*config.extra_ro_paths, *_package_dirs()))
        support = probe(config)
        owner = config.uid if support.as_root else None
        self.data_dir = data_dir
        self.data_dir_inside = SCRATCH
        self._runtime = _Runtime(owner)
        try:
            kernel_file = self._runtime.write_kernel_file(f"{KERNEL_DIR}/kernel", owner)
            self.connection_info = self._runtime.connection_info(str(self._runtime.ipc / "kernel"))
            with open(self._runtime.stderr_path, "wb") as err:
                self._proc: SandboxedProcess = spawn(
                    _kernel_argv(f"{KERNEL_DIR}/{kernel_file.name}"),
                    scratch_dir=data_dir,
                    config=config,
                    env=_kernel_env("/tmp"),
                    binds={str(self._runtime.ipc): KERNEL_DIR},
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        except BaseException:
            self._runtime.remove()
            raise

    def alive(self) -> bool:
        return self._proc.alive()

    def exit_status(self) -> int | None:
        return self._proc.poll()

    def oom_kills(self) -> int:
        return self._proc.oom_kills()

    def stderr_tail(self) -> str:
        return self._runtime.stderr_tail()

    def kill(self) -> None:
        self._proc.kill()
        self._runtime.remove()


class UnsandboxedKernel:
    """A plain local ipykernel with the host user's full rights. DANGEROUS for untrusted code:
    it can read and write everything the host user can, reach the network and outlive nothing
    but its own process group. Used only on explicit opt-in, and as a benchmark baseline."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.data_dir_inside = str(data_dir)
        self._runtime = _Runtime(None)
        try:
            ip = str(self._runtime.ipc / "kernel")
            kernel_file = self._runtime.write_kernel_file(ip, None)
            self.connection_info = self._runtime.connection_info(ip)
            tmp = self._runtime.root / "tmp"
            tmp.mkdir()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(data_dir),
                "LANG": "C.UTF-8",
                **_kernel_env(str(tmp)),
            }
            with open(self._runtime.stderr_path, "wb") as err:
                self._popen = subprocess.Popen(
                    _kernel_argv(str(kernel_file)),
                    cwd=data_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
        except BaseException:
            self._runtime.remove()
            raise

    def alive(self) -> bool:
        return self._popen.poll() is None

    def exit_status(self) -> int | None:
        return self._popen.poll()

    def oom_kills(self) -> int:
        return 0

    def stderr_tail(self) -> str:
        return self._runtime.stderr_tail()

    def kill(self) -> None:
        # The kernel leads its own process group: take its children down with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5)
        self._runtime.remove()


def start_kernel(
    data_dir: str | os.PathLike[str],
    *,
    config: SandboxConfig | None = None,
    dangerously_unsandboxed: bool = False,
) -> KernelProcess:
    """Start a kernel whose working directory is `data_dir`; sandboxed unless told otherwise.

    Returns at once: the caller connects with `connection_info` and waits for the kernel to
    answer, watching `alive()`. Raises `SandboxUnavailable` when the sandbox cannot run here.
    """
    path = Path(data_dir)
    if dangerously_unsandboxed:
        return UnsandboxedKernel(path)
    return SandboxedKernel(path, config or SandboxConfig())

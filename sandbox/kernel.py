"""Start an ipykernel inside the sandbox, reachable from the host over ZeroMQ IPC sockets.

The kernel has no network, so its sockets are Unix sockets in a host directory bind-mounted
into the sandbox (`/run/kernel`). That directory is the sandbox's to change, so the host never
connects by those names: once the kernel has made its sockets, `sockets_ready()` pins each one
(an O_PATH descriptor, refused unless it is a socket) and the client connects through links to
`/proc/self/fd/N` in a directory only the host can write: to those inodes, whatever the sandbox
does to the names later. Interrupts must travel as messages (`interrupt_request`): a signal
would hit bwrap, not the kernel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from . import host_files
from .config import SandboxConfig
from .process import SCRATCH, SandboxedProcess, probe, spawn
from .uids import UidLease, lease_uid

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
    uid: int | None
    """The host uid the kernel's code runs as, when that is not the host process's own."""

    def sockets_ready(self) -> bool: ...
    def alive(self) -> bool: ...
    def exit_status(self) -> int | None: ...
    def oom_kills(self) -> int: ...
    def stderr_tail(self) -> str: ...
    def kill(self) -> None: ...


class _Runtime:
    """A private host directory (0700, the host's) for the kernel's socket directory, the
    connection files, the client's pinned socket links and the kernel's stderr."""

    def __init__(self, owner: int | None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="harmony-kernel-"))
        self.ipc = self.root / "ipc"
        self.ipc.mkdir(mode=0o700)
        if owner is not None:
            # The kernel creates its sockets here as the sandbox uid.
            os.chown(self.ipc, owner, owner)
        self.key = secrets.token_hex(32)
        self.stderr_path = self.root / "kernel.stderr"
        self.pinned = self.root / "client"
        self.pinned.mkdir(mode=0o700)
        self._pins: dict[str, int] = {}

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
        # Written before the kernel starts, in a directory made just now: nothing of the
        # sandbox can have planted a name there yet.
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

    def pin_sockets(self) -> bool:
        """Pin every socket the kernel has made so far; True once all are pinned. Raises
        OSError when a socket's name holds anything else."""
        dir_fd = host_files.open_dir(self.ipc)
        try:
            for port in _PORTS.values():
                name = f"kernel-{port}"
                if name not in self._pins:
                    fd = host_files.pin_socket(dir_fd, name)
                    if fd is None:
                        return False
                    self._pins[name] = fd
                    (self.pinned / name).symlink_to(f"/proc/self/fd/{fd}")
        finally:
            os.close(dir_fd)
        return True

    def remove(self) -> None:
        for fd in self._pins.values():
            os.close(fd)
        self._pins.clear()
        host_files.remove_tree(self.root)


# Run in the kernel at start. ipykernel sends what was printed since its last flush (every
# 0.2 s, when the printing thread lets go of the GIL) as one message: hundreds of MB in a flood,
# more than the kernel's memory holds. Flush every `limit` characters, and send only each
# message's head and tail, saying in "cut" how much went.
_CAP_STREAMS = """
def _cap_streams(limit):
    import sys
    def cap(msg):
        text = msg["content"].get("text", "")
        if len(text) > 2 * limit:
            msg["content"]["text"] = text[:limit] + text[-limit:]
            msg["content"]["cut"] = len(text) - 2 * limit
        return msg
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "register_hook"):
            continue
        stream.register_hook(cap)
        def write(text, _write=stream.write, _flush=stream.flush, _pending=[0]):
            written = _write(text)
            _pending[0] += len(text)
            if _pending[0] > limit:
                _pending[0] = 0
                _flush()
            return written
        stream.write = write
_cap_streams({limit})
del _cap_streams
"""


def _kernel_argv(connection_file: str, stream_chars: int | None) -> list[str]:
    # -I: the working directory (/mnt/data, the model's to write) is not on sys.path while the
    # kernel starts, so a planted `ipykernel_launcher.py` or `zmq.py` cannot replace it; IPython
    # adds it afterwards, behind the standard library, as in any notebook. History is off: it
    # would keep an SQLite file and a thread for nothing a model uses.
    argv = [
        sys.executable, "-I", "-m", "ipykernel_launcher", "-f", connection_file,
        "--HistoryManager.enabled=False",
    ]  # fmt: skip
    if stream_chars is not None:
        argv.append(f"--IPKernelApp.exec_lines={_CAP_STREAMS.format(limit=stream_chars)}")
    return argv


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

    def __init__(self, data_dir: Path, config: SandboxConfig, stream_chars: int | None) -> None:
        config = replace(config, extra_ro_paths=(*config.extra_ro_paths, *_package_dirs()))
        support = probe(config)
        self._lease: UidLease | None = None
        if support.as_root and config.uid is None:
            self._lease = lease_uid()
            config = replace(config, uid=self._lease.uid)
        owner = self.uid = config.uid if support.as_root else None
        self.data_dir = data_dir
        self.data_dir_inside = SCRATCH
        self._runtime = _Runtime(owner)
        try:
            kernel_file = self._runtime.write_kernel_file(f"{KERNEL_DIR}/kernel", owner)
            self.connection_info = self._runtime.connection_info(
                str(self._runtime.pinned / "kernel")
            )
            with open(self._runtime.stderr_path, "wb") as err:
                self._proc: SandboxedProcess = spawn(
                    _kernel_argv(f"{KERNEL_DIR}/{kernel_file.name}", stream_chars),
                    scratch_dir=data_dir,
                    config=config,
                    env=_kernel_env("/tmp"),
                    binds={str(self._runtime.ipc): KERNEL_DIR},
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        except BaseException:
            self._runtime.remove()
            self._release_uid()
            raise

    def sockets_ready(self) -> bool:
        """Whether the kernel has made all its sockets (now pinned; see the module docstring).
        Raises OSError when one of their names holds anything but a socket."""
        return self._runtime.pin_sockets()

    def alive(self) -> bool:
        return self._proc.alive()

    def exit_status(self) -> int | None:
        return self._proc.poll()

    def oom_kills(self) -> int:
        return self._proc.oom_kills()

    def stderr_tail(self) -> str:
        return self._runtime.stderr_tail()

    def kill(self) -> None:
        try:
            self._proc.kill()
            self._runtime.remove()
        finally:
            self._release_uid()

    def _release_uid(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None


class UnsandboxedKernel:
    """A plain local ipykernel with the host user's full rights. DANGEROUS for untrusted code:
    it can read and write everything the host user can, reach the network and outlive nothing
    but its own process group. Used only on explicit opt-in, and as a benchmark baseline."""

    def __init__(self, data_dir: Path, stream_chars: int | None) -> None:
        self.data_dir = data_dir
        self.data_dir_inside = str(data_dir)
        self.uid = None
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
                    _kernel_argv(str(kernel_file), stream_chars),
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

    def sockets_ready(self) -> bool:
        return True  # the code has the host user's rights anyway: nothing to pin against

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
    stream_chars: int | None = None,
) -> KernelProcess:
    """Start a kernel whose working directory is `data_dir`; sandboxed unless told otherwise.

    `stream_chars`: the kernel sends at most twice this many characters of printed output per
    message, its head and tail, with the number left out as the message's `cut`.

    Returns at once: the caller connects with `connection_info` and waits for the kernel to
    answer, watching `alive()`. Raises `SandboxUnavailable` when the sandbox cannot run here.
    """
    path = Path(data_dir)
    if dangerously_unsandboxed:
        return UnsandboxedKernel(path, stream_chars)
    return SandboxedKernel(path, config or SandboxConfig(), stream_chars)

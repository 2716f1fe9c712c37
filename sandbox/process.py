"""Run a process tree isolated from the host with bubblewrap, cgroups, rlimits and seccomp.

What the sandboxed process gets:
- its own network namespace, whose only interface (its private loopback) is down unless
  `SandboxConfig.loopback` asks for it: no host service (127.0.0.1 included), no other machine,
  no DNS;
- its own pid, IPC and UTS namespaces: /proc lists only the sandbox's processes, signals reach
  nothing outside;
- a read-only filesystem of `/usr` (with the `/bin`, `/lib*` links), a few files of `/etc`
  (dynamic linker cache, timezone, fonts, a synthetic passwd naming only the sandbox user) and
  the Python installation; a private tmpfs `/tmp` and `/dev/shm`; minimal `/dev`; the one
  writable host directory the caller names, seen as `/mnt/data`. Nothing of the project tree,
  `/root`, `/home`, the host's `/tmp` or other `/etc` files is visible;
- an unprivileged uid with no capabilities and no_new_privs (when the host runs us as root, a
  uid leased for this sandbox alone, see `uids`; otherwise the caller's own uid in a user
  namespace that cannot nest another);
- a cleared environment, holding only what the caller passes;
- limits: memory and process count per sandbox (cgroup v1 where we can create groups, rlimits
  otherwise), CPU seconds, file size and open files per process (rlimits);
- a seccomp deny list (see `_seccomp`) where libseccomp is available;
- an end: killing the sandbox kills every process in it (pid namespace, die-with-parent, cgroups).

What it does NOT protect against:
- kernel bugs: the sandbox shares the host kernel (namespaces and seccomp reduce, not remove,
  that surface) — a VM or gVisor is the answer where that matters;
- reading what the Python installation and `/usr` contain (installed packages, system files);
- filling the disk under the scratch directory (only single files are capped, by
  `file_size_bytes`), or the host's memory when no memory cgroup is available (RLIMIT_AS then
  caps each process, not the tree);
- using the CPU: nothing caps cores, only CPU seconds per process; callers time out their calls;
- side channels (timing, cache) and denial of service through shared kernel resources;
- anything the caller chooses to bind in (`extra_ro_paths`, extra binds).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, BinaryIO

from . import _cgroup, _seccomp, host_files, uids
from .config import SandboxConfig

log = logging.getLogger(__name__)

SCRATCH = "/mnt/data"
"""Where the writable scratch directory appears inside the sandbox."""
STAGE_FAILED = 70
"""Exit status of a sandbox whose stage refused to start the payload (see `_stage`)."""

_STAGE_SOURCE = (Path(__file__).with_name("_stage.py")).read_text()
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = ("ld.so.cache", "localtime", "fonts", "alternatives", "mime.types")


class SandboxUnavailable(RuntimeError):
    """The machine lacks what the sandbox needs. The message names what is missing."""


@dataclass(frozen=True)
class Support:
    """What this machine offers the sandbox."""

    bwrap: str
    """Path of the bubblewrap binary."""
    as_root: bool
    """True: bwrap runs privileged and code drops to `SandboxConfig.uid`. False: bwrap makes a
    user namespace and code keeps the caller's uid."""
    cgroups: tuple[str, ...]
    """cgroup v1 controllers we can use ("memory", "pids"); rlimits stand in for missing ones."""
    seccomp: str | None
    """None when seccomp filters can be built, else what is missing."""

    def summary(self) -> str:
        parts = [
            f"bwrap ({'root, drops to a sandbox uid' if self.as_root else 'user namespace'})",
            f"cgroups: {', '.join(self.cgroups) or 'none (rlimits only)'}",
            "seccomp: yes" if self.seccomp is None else f"seccomp: no ({self.seccomp})",
        ]
        return "; ".join(parts)


def python_roots() -> list[str]:
    """Host directories the running Python needs: its installation and its virtualenv, if any."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    return _outermost(r for r in roots if not _under(r, "/usr"))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _outermost(paths: Iterable[str]) -> list[str]:
    """Drop paths that lie under another path of the list."""
    kept: list[str] = []
    for p in sorted(set(paths)):
        if not any(_under(p, k) for k in kept):
            kept.append(p)
    return kept


class SandboxedProcess:
    """One process tree running in a sandbox. Create it with `spawn()`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        cgroups: _cgroup.CgroupSet | None,
        lease: uids.UidLease | None = None,
    ) -> None:
        self.popen = popen
        self._cgroups = cgroups
        self._lease = lease

    @property
    def pid(self) -> int:
        """The host pid of the bwrap process; it lives exactly as long as the payload."""
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit status once the payload has ended, else None. Never blocks."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def oom_kills(self) -> int:
        """How many processes of the sandbox the memory limit has killed."""
        return self._cgroups.oom_kills() if self._cgroups else 0

    def kill(self) -> None:
        """Kill everything in the sandbox, reap it and remove its cgroups. Idempotent."""
        if self._cgroups is not None:
            self._cgroups.kill_all()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        if self._cgroups is not None:
            self._cgroups.destroy()
            self._cgroups = None
        if self._lease is not None and self.popen.poll() is not None:
            self._lease.release()
            self._lease = None


@functools.cache
def _bwrap_help(bwrap: str) -> str:
    return subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout


@functools.cache
def _probe(as_root: bool) -> Support:
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the python sandbox needs Linux, not {sys.platform}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "the python sandbox needs bubblewrap: `bwrap` is not on PATH "
            "(Debian/Ubuntu: apt-get install bubblewrap)"
        )
    help_text = _bwrap_help(bwrap)
    for option in ("--clearenv", "--size", "--perms", "--die-with-parent"):
        if option not in help_text:
            raise SandboxUnavailable(
                f"bubblewrap at {bwrap} is too old: it lacks {option} (need 0.8 or newer)"
            )
    cgroups: tuple[str, ...] = ()
    if as_root:
        cgroups = tuple(c for c in ("memory", "pids") if _cgroup.available(c) is not None)
    support = Support(bwrap, as_root, cgroups, _seccomp.seccomp_available())
    if support.seccomp is not None:
        log.warning("sandboxes run without a seccomp filter: %s is unavailable", support.seccomp)
    # Namespaces can be refused by the kernel, a container runtime or an LSM: try one for real.
    lease = uids.lease_uid() if as_root else None
    with tempfile.TemporaryDirectory(prefix="harmony-probe-") as scratch:
        if lease is not None:
            os.chown(scratch, lease.uid, lease.uid)
        proc = _spawn(
            support,
            [sys.executable, "-I", "-S", "-c", "pass"],
            SandboxConfig(uid=lease.uid if lease else None, seccomp=False),
            scratch,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = proc.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            err = b"timed out after 30 s"
        finally:
            proc.kill()
            if lease is not None:
                lease.release()
    if proc.popen.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox on this machine: {last}")
    return support


def probe(config: SandboxConfig | None = None) -> Support:
    """What this machine offers; raises `SandboxUnavailable` naming what is missing. Cached."""
    del config  # what the machine offers does not depend on the limits asked for
    return _probe(os.geteuid() == 0)


def spawn(
    argv: Sequence[str],
    *,
    scratch_dir: str | os.PathLike[str],
    config: SandboxConfig | None = None,
    env: Mapping[str, str] | None = None,
    binds: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
) -> SandboxedProcess:
    """Start `argv` (a path inside the sandbox: the host's Python and `/usr` are there) sandboxed.

    `scratch_dir` is the host directory seen read-write as /mnt/data (the working directory);
    running as root it is given to the sandbox uid, with whatever earlier sandboxes left in it
    (files of other uids stay as they are). `binds` maps more host directories to
    read-write places inside (the caller prepares their ownership). `env` is the whole
    environment of the payload, on top of PATH/HOME/LANG defaults.
    Raises `SandboxUnavailable` when the machine cannot sandbox.
    """
    config = config or SandboxConfig()
    support = probe(config)
    lease = None
    if support.as_root and config.uid is None:
        lease = uids.lease_uid()
        config = replace(config, uid=lease.uid)
    try:
        if support.as_root:
            assert config.uid is not None
            adopt_scratch(scratch_dir, config.uid)
        proc = _spawn(
            support, argv, config, os.fspath(scratch_dir), env=env, binds=binds,
            stdin=stdin, stdout=stdout, stderr=stderr, lease=lease,
        )  # fmt: skip
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    return proc


def adopt_scratch(scratch_dir: str | os.PathLike[str], uid: int) -> None:
    """Give `uid` the scratch directory and what earlier leased uids left in it, following no
    name the sandbox could have planted."""
    # The caller's path is the host's own; only what lies inside it is the sandbox's.
    dir_fd = host_files.open_dir(os.path.realpath(scratch_dir))
    try:
        os.fchown(dir_fd, uid, uid)
        host_files.chown_tree(dir_fd, uid, only=lambda owner: uids.in_range(owner) and owner != uid)
    finally:
        os.close(dir_fd)


def _spawn(
    support: Support,
    argv: Sequence[str],
    config: SandboxConfig,
    scratch_dir: str,
    *,
    env: Mapping[str, str] | None = None,
    binds: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    lease: uids.UidLease | None = None,
) -> SandboxedProcess:
    files: list[BinaryIO] = []
    cgroups: _cgroup.CgroupSet | None = None
    try:
        uid = config.uid if support.as_root and config.uid is not None else os.getuid()
        gid = config.uid if support.as_root and config.uid is not None else os.getgid()
        args = _bwrap_args(support, config, scratch_dir, binds or {}, uid, gid, files)
        rlimits = {
            "RLIMIT_NPROC": config.max_processes,
            "RLIMIT_CPU": config.cpu_seconds,
            "RLIMIT_FSIZE": config.file_size_bytes,
            "RLIMIT_NOFILE": config.open_files,
            "RLIMIT_CORE": 0,
        }
        if support.as_root:
            cgroups = _cgroup.CgroupSet(config.memory_bytes, config.max_processes)
        if cgroups is None or "memory" not in cgroups.dirs:
            rlimits["RLIMIT_AS"] = config.memory_bytes
        full_env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": SCRATCH,
            "LANG": "C.UTF-8",
            "USER": "sandbox",
            "LOGNAME": "sandbox",
            "TMPDIR": "/tmp",
            **(env or {}),
        }
        settings = {
            "rlimits": rlimits,
            "uid": uid if support.as_root else None,
            "loopback_down": support.as_root and not config.loopback,
            "env": full_env,
            # The stage changes directory after switching uid: bwrap, still root but without
            # CAP_DAC_OVERRIDE, may not enter a 0700 directory the sandbox uid owns.
            "cwd": SCRATCH,
        }
        stage = [sys.executable, "-I", "-S", "-c", _STAGE_SOURCE, json.dumps(settings), *argv]
        # The shell joins the cgroups before exec'ing bwrap, so every process of the sandbox is
        # born inside them (moving the tree from outside afterwards would race its forks).
        procs = cgroups.procs_files() if cgroups else []
        join = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 71; shift; n=$((n-1)); done; exec "$@"'  # noqa: E501
        # Options go through a file (--args) so the host paths they name do not show in the
        # sandbox's /proc/1/cmdline.
        options = _data_file(b"".join(a.encode() + b"\0" for a in args[1:]), files)
        cmd = ["/bin/sh", "-c", join, "sh", str(len(procs)), *procs]
        cmd += [args[0], "--args", options, "--", *stage]
        popen = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=[f.fileno() for f in files],
            # Keep terminal signals (Ctrl-C) meant for the host program away from the sandbox.
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        if cgroups is not None:
            cgroups.destroy()
        raise
    finally:
        for f in files:
            f.close()
    return SandboxedProcess(popen, cgroups, lease)


def _data_file(data: bytes, files: list[BinaryIO]) -> str:
    """An unlinked file holding `data`, for bwrap's fd-taking options; returns the fd number."""
    f = tempfile.TemporaryFile()  # noqa: SIM115 - handed to bwrap, closed by the caller
    f.write(data)
    f.flush()
    f.seek(0)
    os.set_inheritable(f.fileno(), True)
    files.append(f)
    return str(f.fileno())


def _bwrap_args(
    support: Support,
    config: SandboxConfig,
    scratch_dir: str,
    binds: Mapping[str, str],
    uid: int,
    gid: int,
    files: list[BinaryIO],
) -> list[str]:
    args = [
        support.bwrap,
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", config.hostname,
        "--die-with-parent", "--new-session", "--clearenv",
    ]  # fmt: skip
    if support.as_root:
        # No user namespace: the stage keeps just enough to take the loopback down, empty the
        # bounding set and switch to the sandbox uid; that switch clears every capability.
        args += ["--cap-drop", "ALL"]
        caps = ["SETUID", "SETGID", "SETPCAP"] + ([] if config.loopback else ["NET_ADMIN"])
        args += [a for c in caps for a in ("--cap-add", f"CAP_{c}")]
    else:
        args += ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--cap-drop", "ALL"]
        if "--disable-userns" in _bwrap_help(support.bwrap):
            args.append("--disable-userns")
    made: set[str] = {"/"}

    def parents(dest: str) -> None:
        # bwrap makes missing parents 0700 (root-owned when privileged), which the sandbox uid
        # could not traverse: make them 0755 first.
        parts = Path(dest).parent.parts
        for i in range(2, len(parts) + 1):
            d = str(Path(*parts[:i]))
            if d not in made:
                made.add(d)
                args.extend(["--perms", "0755", "--dir", d])

    def ro_bind(src: str, dest: str) -> None:
        parents(dest)
        args.extend(["--ro-bind", src, dest])
        made.add(dest)

    ro_bind("/usr", "/usr")
    for name in _ROOT_LINKS:
        host = f"/{name}"
        if os.path.islink(host):
            args.extend(["--symlink", os.readlink(host), host])
        elif os.path.isdir(host):
            ro_bind(host, host)
    for name in _ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            ro_bind(f"/etc/{name}", f"/etc/{name}")
    # Synthetic /etc files. passwd and group hold only the sandbox's own account (getpwuid()
    # works, no host account is listed). Names resolve from /etc/hosts only: otherwise glibc
    # would query DNS at 127.0.0.1 and, with no network, wait out its timeouts before failing.
    etc = {
        "passwd": f"sandbox:x:{uid}:{gid}:sandbox:{SCRATCH}:/bin/sh\n",
        "group": f"sandbox:x:{gid}:\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        "hosts": f"127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {config.hostname}\n",
    }
    parents("/etc/passwd")
    for name, text in etc.items():
        # bwrap makes data files 0600, root-owned when privileged: unreadable without --perms.
        fd = _data_file(text.encode(), files)
        args += ["--perms", "0444", "--ro-bind-data", fd, f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    made.update({"/proc", "/dev"})
    size = str(config.tmp_size_bytes)
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    made.update({"/tmp", "/dev/shm"})
    for root in _outermost([*python_roots(), *config.extra_ro_paths]):
        if not _under(root, "/usr"):
            ro_bind(root, root)
    parents(SCRATCH)
    args += ["--bind", scratch_dir, SCRATCH]
    for host, dest in binds.items():
        parents(dest)
        args += ["--bind", host, dest]
    if config.seccomp and support.seccomp is None:
        bpf = _seccomp.build_filter_file()
        os.set_inheritable(bpf.fileno(), True)
        files.append(bpf)
        args += ["--seccomp", str(bpf.fileno())]
    return args


def run(
    argv: Sequence[str],
    *,
    scratch_dir: str | os.PathLike[str],
    config: SandboxConfig | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` sandboxed to completion, capturing its output; kill it after `timeout` seconds
    (the result's returncode is then -9)."""
    proc = spawn(
        argv, scratch_dir=scratch_dir, config=config, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.popen.communicate(input, timeout=timeout)
        code = proc.popen.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.popen.communicate()
        code = -signal.SIGKILL
    finally:
        proc.kill()
    return subprocess.CompletedProcess(list(argv), code, out, err)

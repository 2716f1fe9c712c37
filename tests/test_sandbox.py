"""The sandbox itself (`sandbox.run`): identity, privileges, filesystem, limits, seccomp, cleanup.

The python tool's tests attack the same properties through a kernel; these check the layer
below directly, one property each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _support import requires_sandbox, requires_seccomp

import harmony_agent.sandbox.process as sandbox_process
from harmony_agent.sandbox import SandboxConfig, SandboxUnavailable, lease_uid, probe, run, spawn

MiB = 1 << 20


pytestmark = requires_sandbox


def py(code: str, scratch: Path, config: SandboxConfig | None = None) -> str:
    result = run([sys.executable, "-c", code], scratch_dir=scratch, config=config, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_runs_unprivileged_without_capabilities(tmp_path: Path) -> None:
    out = py(
        "import json, os\n"
        "lines = open('/proc/self/status').read().splitlines()\n"
        "s = dict(l.split(':\\t', 1) for l in lines if ':\\t' in l)\n"
        "keys = ('CapPrm', 'CapEff', 'CapInh', 'CapAmb', 'NoNewPrivs', 'Seccomp')\n"
        "print(json.dumps({'ids': os.getresuid() + os.getresgid(), 'groups': os.getgroups(),"
        " **{k: s[k] for k in keys}}))",
        tmp_path,
    )
    status = json.loads(out)
    assert 0 not in status["ids"] and status["groups"] in ([], [status["ids"][3]])
    for cap in ("CapPrm", "CapEff", "CapInh", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    assert status["NoNewPrivs"] == "1"
    if probe().seccomp is None:
        assert status["Seccomp"] == "2"  # filter mode


def test_environment_is_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARMONY_SANDBOX_SECRET", "leak")
    out = py("import os\nprint(sorted(os.environ))", tmp_path)
    assert "HARMONY_SANDBOX_SECRET" not in out
    assert set(eval(out)) <= {"PATH", "HOME", "LANG", "USER", "LOGNAME", "TMPDIR", "LC_CTYPE"}


def test_filesystem_is_minimal_and_read_only(tmp_path: Path) -> None:
    out = py(
        "import os\nprint(sorted(os.listdir('/etc')))\n"
        "for p in ('/usr/x', '/etc/x', '/x'):\n"
        "    try:\n        open(p, 'w')\n        print('WROTE', p)\n"
        "    except OSError as e:\n        print(e.errno)\n"
        "open('/mnt/data/ok', 'w').write('fine')",
        tmp_path,
    )
    etc, *errors = out.splitlines()
    assert "shadow" not in etc and "hostname" not in etc and "resolv.conf" not in etc
    assert not any(e.startswith("WROTE") for e in errors)
    assert (tmp_path / "ok").read_text() == "fine"


def test_file_size_limit(tmp_path: Path) -> None:
    config = SandboxConfig(file_size_bytes=1 * MiB)
    out = py(
        "try:\n    open('/mnt/data/big', 'wb').write(b'x' * (2 << 20))\n    print('WROTE')\n"
        "except OSError as e:\n    print(e.errno)",
        tmp_path,
        config,
    )
    assert out.strip() == "27"  # EFBIG
    assert (tmp_path / "big").stat().st_size <= 1 * MiB


def test_memory_limit(tmp_path: Path) -> None:
    config = SandboxConfig(memory_bytes=256 * MiB)
    result = run(
        [sys.executable, "-c", "x = bytearray(1 << 30)\nprint('ALLOCATED')"],
        scratch_dir=tmp_path,
        config=config,
        timeout=30,
    )
    assert b"ALLOCATED" not in result.stdout
    assert result.returncode != 0  # OOM-killed (cgroup) or MemoryError (RLIMIT_AS)


def test_process_limit(tmp_path: Path) -> None:
    config = SandboxConfig(max_processes=16, uid=65430)
    out = py(
        "import os, time\nn = 0\n"
        "while True:\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\n"
        "print(n)\nos.kill(-1, 9)",
        tmp_path,
        config,
    )
    assert 0 < int(out) < 16


@requires_seccomp
def test_seccomp_denies_namespace_and_debugging_syscalls(tmp_path: Path) -> None:
    out = py(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def errno_of(r):\n    return ctypes.get_errno() if r != 0 else 0\n"
        "print(errno_of(libc.unshare(0x10000000)))\n"  # CLONE_NEWUSER
        "print(errno_of(libc.ptrace(0, 0, 0, 0)))\n"  # PTRACE_TRACEME
        "print(errno_of(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))",
        tmp_path,
    )
    assert out.split() == ["1", "1", "1"]  # EPERM each


@requires_seccomp
def test_seccomp_refuses_socket_families_beyond_unix_and_ip(tmp_path: Path) -> None:
    # Only creation is tried: no socket is connected anywhere.
    out = py(
        "import socket\n"
        "for family in (40, 17, 38, 31, 44, 255):\n"  # VSOCK, PACKET, ALG, BLUETOOTH, XDP, junk
        "    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):\n"
        "        try:\n            socket.socket(family, kind).close()\n"
        "            print('CREATED', family, kind)\n"
        "        except OSError as e:\n            pass\n"
        "for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):\n"
        "    socket.socket(family, socket.SOCK_STREAM).close()\n"
        "socket.socketpair()[0].close()\n"
        "print(socket.getaddrinfo('localhost', 80)[0][4])\n"
        "print('ok')",
        tmp_path,
    )
    assert "CREATED" not in out
    assert out.splitlines()[-1] == "ok"


def test_each_sandbox_has_a_uid_and_a_process_limit_of_its_own(tmp_path: Path) -> None:
    if not probe().as_root:
        pytest.skip("sandbox uids are chosen only when the host runs as root")
    config = SandboxConfig(max_processes=16)
    hog_dir, other_dir = tmp_path / "hog", tmp_path / "other"
    hog_dir.mkdir()
    other_dir.mkdir()
    # The first sandbox forks until it is refused and keeps every process it got.
    hog = spawn(
        [sys.executable, "-c",
         "import os, sys, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
         "    except OSError:\n        break\n"
         "    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    n += 1\n"
         "print(n, os.getuid(), flush=True)\ntime.sleep(60)"],
        scratch_dir=hog_dir, config=config, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert hog.popen.stdout is not None
        held, hog_uid = map(int, hog.popen.stdout.readline().split())
        assert held >= 10
        # The second can still start processes of its own, as another uid.
        out = py(
            "import os, subprocess\n"
            "procs = [subprocess.Popen(['sleep', '0.2']) for _ in range(8)]\n"
            "print(sum(p.wait() == 0 for p in procs), os.getuid())",
            other_dir,
            config,
        )
        started, other_uid = map(int, out.split())
        assert started == 8
        assert other_uid != hog_uid and 0 not in (hog_uid, other_uid)
    finally:
        hog.kill()


def processes_of(uid: int) -> list[str]:
    found = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid:
                found.append(p)
        except FileNotFoundError:
            pass
    return found


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_kill_ends_every_process(tmp_path: Path) -> None:
    uid = 65429
    proc = spawn(
        ["/bin/sh", "-c", "sleep 300 & sleep 300 & (sleep 300 &) ; wait"],
        scratch_dir=tmp_path,
        config=SandboxConfig(uid=uid),
    )
    assert wait_for(lambda: len(processes_of(uid)) >= 4)
    proc.kill()
    assert processes_of(uid) == []
    assert not proc.alive()


def test_sandbox_dies_with_its_host_process(tmp_path: Path) -> None:
    uid = 65428
    host = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom harmony_agent.sandbox import SandboxConfig, spawn\n"
         f"spawn(['/bin/sh', '-c', 'sleep 300 & wait'], scratch_dir={str(tmp_path)!r},"
         f" config=SandboxConfig(uid={uid}))\ntime.sleep(300)"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(processes_of(uid)) >= 2)
    finally:
        host.kill()
        host.wait()
    # bwrap --die-with-parent: nothing of the sandbox outlives the program that made it.
    assert wait_for(lambda: processes_of(uid) == [], 5)


def test_unavailable_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_process.shutil, "which", lambda name: None)
    sandbox_process._probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap"):
            probe()
    finally:
        monkeypatch.undo()
        sandbox_process._probe.cache_clear()
    probe()


def test_probe_reports_what_the_machine_offers() -> None:
    summary = probe().summary()
    assert summary.startswith("bwrap")
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
        assert "memory" in summary


def test_bubblewrap_error_is_reported(tmp_path: Path) -> None:
    # A payload that does not exist fails inside the sandbox, not in the host.
    result = run(["/nonexistent/program"], scratch_dir=tmp_path, timeout=30)
    assert result.returncode != 0
    assert b"/nonexistent/program" in result.stderr
    assert subprocess.run(["true"]).returncode == 0


def test_cpu_time_limit(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run(
        [sys.executable, "-c", "while True:\n    pass"],
        scratch_dir=tmp_path,
        config=SandboxConfig(cpu_seconds=1),
        timeout=30,
    )
    assert result.returncode != 0  # SIGXCPU
    assert time.monotonic() - start < 20


LOOPBACK_FLAGS = (
    "import fcntl, socket, struct\n"
    "with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
    "    got = fcntl.ioctl(s, 0x8913, struct.pack('16sh22x', b'lo', 0))\n"
    "print(struct.unpack('16sh22x', got)[1] & 1)"  # IFF_UP
)


def test_loopback_is_down_unless_asked_for(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a sandbox started as root takes the loopback down")
    assert py(LOOPBACK_FLAGS, tmp_path).strip() == "0"
    assert py(LOOPBACK_FLAGS, tmp_path, SandboxConfig(loopback=True)).strip() == "1"


def test_a_released_uid_keeps_no_process(tmp_path: Path) -> None:
    if not probe().as_root:
        pytest.skip("uids are leased only when the host runs as root")
    lease = lease_uid()
    # A process of the uid that no group or namespace holds (a browser's crash handler, say).
    straggler = subprocess.Popen(["sleep", "60"], user=lease.uid, group=lease.uid, extra_groups=[])
    try:
        lease.release()
        assert wait_for(lambda: straggler.poll() is not None, 5)
    finally:
        straggler.kill()
        straggler.wait()

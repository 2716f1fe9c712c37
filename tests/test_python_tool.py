"""The python tool: a stateful kernel in the sandbox, attacked by hostile programs.

Each hostile test attacks one property and then checks the tool still answers correctly. One
kernel serves most tests (a module fixture) to keep the file fast; tests that must see a fresh
kernel, or that change the tool, make their own.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import requires_sandbox

import harmony_agent.sandbox.process as sandbox_process
from harmony_agent.sandbox import SandboxConfig, SandboxUnavailable
from harmony_agent.tools.base import ToolCall
from harmony_agent.tools.python_tool import PythonTool

MiB = 1 << 20
SECRET_ENV = "HARMONY_TEST_PARENT_SECRET"
SECRET_VALUE = secrets.token_hex(16)
# A 1x1 PNG.
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


pytestmark = requires_sandbox


class Runner:
    """Drives a tool from sync tests on one event loop (the kernel client is bound to it)."""

    def __init__(self, tool: PythonTool) -> None:
        self.tool = tool
        self.loop = asyncio.new_event_loop()

    def __call__(self, code: str) -> str:
        return self.loop.run_until_complete(self.tool.call(ToolCall("python", code)))

    def close(self) -> None:
        self.loop.run_until_complete(self.tool.aclose())
        self.loop.close()

    def assert_works(self) -> None:
        """The tool answers the next call correctly (the property every hostile test ends on)."""
        assert self("print(6 * 7)") == "42"


@pytest.fixture(scope="module")
def run() -> Iterator[Runner]:
    # The secret is in our environment when the kernel starts, so the environment test is real.
    os.environ[SECRET_ENV] = SECRET_VALUE
    tool = PythonTool(
        timeout=20.0,
        sandbox=SandboxConfig(memory_bytes=512 * MiB, max_processes=64),
        interrupt_grace=2.0,
    )
    runner = Runner(tool)
    try:
        assert runner("1 + 1") == "2"  # starts the kernel
    finally:
        del os.environ[SECRET_ENV]
    yield runner
    runner.close()


@pytest.fixture
def short_timeout(run: Runner) -> Iterator[float]:
    old = run.tool.call_timeout
    run.tool.call_timeout = 1.0
    yield 1.0
    run.tool.call_timeout = old


# -- the tool's surface -------------------------------------------------------------------------


def test_declares_harmony_python_namespace(run: Runner) -> None:
    assert run.tool.name == "python"
    assert run.tool.recipients() == ["python"]
    assert run.tool.timeout is None  # the tool enforces its own per-call timeout
    assert "/mnt/data" in (run.tool.namespace_config().description or "")


def test_state_persists_across_calls(run: Runner) -> None:
    assert run("import math\nradius = 2.0") == "[no output]"
    assert run("round(math.pi * radius**2, 3)") == "12.566"


def test_streams_and_result_in_order(run: Runner) -> None:
    out = run("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n'result'")
    assert out == "to stdout\nto stderr\n'result'"


def test_traceback_is_plain_and_short(run: Runner) -> None:
    # Ten distinct frames (IPython already folds plain recursion).
    code = "def f0():\n    return 1 / 0\n" + "".join(
        f"def f{i}():\n    return f{i - 1}()\n" for i in range(1, 10)
    )
    out = run(code + "f9()")
    assert "\x1b[" not in out
    assert out.endswith("ZeroDivisionError: division by zero")
    assert "frames omitted" in out
    assert len(out.splitlines()) < 40


def test_a_syntax_error_reaches_the_model_once(run: Runner) -> None:
    out = run("def f(:")
    # Once: IPython sends the whole report as one entry, header and last line at once.
    assert out.count("def f(:") == 1 and out.count("SyntaxError") == 1, out
    assert out.startswith("  Cell In[") and out.endswith("          ^\nSyntaxError: invalid syntax")


def test_files_in_mnt_data_persist_and_reach_the_host(run: Runner) -> None:
    run("open('/mnt/data/notes.txt', 'w').write('kept')")
    assert (run.tool.data_dir / "notes.txt").read_text() == "kept"
    assert run("open('/mnt/data/notes.txt').read()") == "'kept'"
    assert run("import os\nos.getcwd()") == "'/mnt/data'"


def test_images_are_saved_and_named(run: Runner) -> None:
    out = run(
        "from IPython.display import Image, display\nimport base64\n"
        f"display(Image(data=base64.b64decode('{PNG_1PX}')))"
    )
    assert out.startswith("[image saved to /mnt/data/output_") and out.endswith(".png]")
    name = out.removeprefix("[image saved to /mnt/data/").removesuffix("]")
    assert (run.tool.data_dir / name).read_bytes() == base64.b64decode(PNG_1PX)


def test_long_output_is_truncated_with_a_marker(run: Runner) -> None:
    out = run("print('a' * 30000 + 'END')")
    limit = run.tool.max_output_chars
    assert len(out) < limit + 100
    assert f"[... {30003 - limit} characters cut ...]" in out
    assert out.endswith("END")


def test_timeout_interrupts_and_keeps_state(run: Runner, short_timeout: float) -> None:
    run("kept = 'yes'")
    out = run("import time\nprint('started')\ntime.sleep(60)")
    assert out.startswith("started")
    assert f"timed out after {short_timeout:g} s" in out
    assert "KeyboardInterrupt" not in out
    assert run("kept") == "'yes'"


def test_kernel_death_is_noticed_at_once(run: Runner) -> None:
    run("doomed = 1")
    start = time.monotonic()
    out = run("import os\nos._exit(3)")
    # The call's timeout is 20 s: a dead kernel must not look like a hang.
    assert time.monotonic() - start < 10
    assert "kernel exited" in out and "restarted" in out and "lost" in out
    assert "NameError" in run("doomed")
    run.assert_works()


# -- hostile programs -----------------------------------------------------------------------------


def test_cannot_connect_to_a_host_loopback_server(run: Runner) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    try:
        out = run(
            "import socket\ntry:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('CONNECTED')\nexcept OSError as e:\n    print('refused', e)"
        )
    finally:
        done.set()
        t.join()
        server.close()
    assert "CONNECTED" not in out and out.startswith("refused")
    assert accepted == []
    run.assert_works()


def test_no_dns(run: Runner) -> None:
    out = run(
        "import socket\ntry:\n    print(socket.getaddrinfo('pypi.org', 443))\n"
        "except OSError as e:\n    print('no dns', e)"
    )
    assert out.startswith("no dns")
    assert run("import os\nos.path.exists('/etc/resolv.conf')") == "False"
    run.assert_works()


def test_cannot_read_host_files(run: Runner, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    secret_files = [Path("/tmp") / f"harmony-secret-{token}", Path.home() / f".harmony-{token}"]
    for f in secret_files:
        f.write_text(token)
    try:
        paths = [*map(str, secret_files), "/etc/shadow", str(Path(__file__).resolve())]
        out = run(
            f"for p in {paths!r}:\n    try:\n        print(open(p).read())\n"
            "    except OSError as e:\n        print(type(e).__name__)"
        )
    finally:
        for f in secret_files:
            f.unlink()
    assert token not in out
    assert out.splitlines() == ["FileNotFoundError"] * 4
    run.assert_works()


def test_cannot_see_the_parent_environment(run: Runner) -> None:
    out = run(
        "import os\nprint(sorted(os.environ))\n"
        "for p in ('/proc/self/environ', '/proc/1/environ'):\n"
        "    try:\n        print(open(p).read())\n    except OSError as e:\n        print(e)"
    )
    assert SECRET_VALUE not in out and SECRET_ENV not in out
    run.assert_works()


def test_cannot_write_outside_the_scratch_dir(run: Runner) -> None:
    name = f"harmony-escape-{secrets.token_hex(8)}"
    targets = [f"/usr/{name}", f"/etc/{name}", f"{sandbox_process.python_roots()[0]}/{name}"]
    out = run(
        f"import os\nfor p in {targets!r}:\n    try:\n        open(p, 'w').write('x')\n"
        "        print('WROTE', p)\n    except OSError as e:\n        print(type(e).__name__)\n"
        f"open('/tmp/{name}', 'w').write('private tmp')"
    )
    assert "WROTE" not in out
    for target in targets:
        assert not os.path.exists(target)
    # The sandbox's /tmp is its own tmpfs, not the host's.
    assert not os.path.exists(f"/tmp/{name}")
    run.assert_works()


def test_sees_neither_host_directories_nor_host_processes(run: Runner) -> None:
    out = run(
        "import os\nprint(sorted(os.listdir('/')))\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print(len(pids))\n"
        "print(' | '.join(open(f'/proc/{p}/cmdline').read().replace(chr(0), ' ') for p in pids))"
    )
    top, count, cmdlines = out.split("\n", 2)
    assert set(eval(top)) <= {"bin", "dev", "etc", "lib", "lib64", "mnt", "proc", "root", "run",
                              "sbin", "tmp", "usr", "lib32", "libx32"}  # fmt: skip
    assert "work" not in top and "home" not in top
    assert int(count) < 10  # bwrap's init, the kernel and its helpers; the host has hundreds
    assert "pytest" not in cmdlines
    run.assert_works()


def test_fork_bomb_is_contained(run: Runner) -> None:
    out = run(
        "import os, time\nforks = 0\nerror = None\n"
        "for _ in range(10_000):\n"
        "    try:\n        pid = os.fork()\n"
        "    except OSError as e:\n        error = e\n        break\n"
        "    if pid == 0:\n"
        "        while True:\n"
        "            try:\n                os.fork()\n"
        "            except OSError:\n                time.sleep(0.05)\n"
        "    forks += 1\n"
        "print(forks, type(error).__name__)\n"
        "import signal\nfor _ in range(3):\n    os.kill(-1, signal.SIGKILL)\n    time.sleep(0.1)"
    )
    forks, error = out.split()
    assert int(forks) < 64 and error == "BlockingIOError"
    # The host can still fork.
    assert subprocess.run(["true"]).returncode == 0
    run.assert_works()


def test_memory_bomb_is_contained(run: Runner) -> None:
    out = run("hog = bytearray(2 << 30)\nprint('ALLOCATED')")
    assert "ALLOCATED" not in out
    assert "ran out of memory (limit 0.5 GiB)" in out or "MemoryError" in out
    run.assert_works()


def test_cpu_spin_is_stopped(run: Runner, short_timeout: float) -> None:
    out = run("while True:\n    pass")
    assert out.startswith(f"[Execution timed out after {short_timeout:g} s and was interrupted")
    run.assert_works()


def test_spin_that_ignores_interrupts_is_killed(run: Runner, short_timeout: float) -> None:
    out = run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass")
    assert f"timed out after {short_timeout:g} s" in out and "restarted" in out
    run.assert_works()


def test_cannot_kill_its_parent(run: Runner) -> None:
    run("survivor = 'here'")
    out = run(
        "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n    print('sent')\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    assert out in ("sent", "PermissionError")
    assert run("survivor") == "'here'"


def test_kill_everything_reaches_only_the_sandbox(run: Runner) -> None:
    # A host process of the sandbox's own uid: only the pid namespace keeps it out of reach.
    uid = run.tool.sandbox_uid
    assert uid is not None and uid != 0
    bystander = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        out = run("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'kill -9 -1'])")
        assert "kernel was killed by signal 9" in out and "restarted" in out
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    run.assert_works()


def test_a_tool_holding_all_its_processes_starves_no_other_tool() -> None:
    config = SandboxConfig(max_processes=32)
    hog, other = Runner(PythonTool(sandbox=config)), Runner(PythonTool(sandbox=config))
    try:
        out = hog(
            "import os, time\nheld = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n"
            "    if pid == 0:\n        time.sleep(120)\n        os._exit(0)\n    held += 1\nheld"
        )
        assert int(out) > 10
        # Its kernel starts, threads and all, and runs code that starts processes.
        assert other("import subprocess\nsubprocess.run(['echo', 'free'], text=True, "
                     "capture_output=True).stdout.strip()") == "'free'"  # fmt: skip
        assert hog.tool.sandbox_uid != other.tool.sandbox_uid
    finally:
        hog.close()
        other.close()


def test_cancelled_call_is_interrupted_and_the_tool_recovers(run: Runner) -> None:
    run("before = 'kept'")
    slow = run.tool.call(ToolCall("python", "import time\ntime.sleep(60)"))
    with pytest.raises(TimeoutError):
        run.loop.run_until_complete(asyncio.wait_for(slow, 1.0))
    assert run("before") == "'kept'"


def test_reset_restarts_the_kernel_and_keeps_the_files() -> None:
    runner = Runner(PythonTool(timeout=10.0))
    try:
        assert runner("x = 1\nopen('/mnt/data/kept.txt', 'w').write('kept')\nx") == "1"
        runner.loop.run_until_complete(runner.tool.reset())
        assert runner("x").endswith("NameError: name 'x' is not defined")
        assert runner("open('/mnt/data/kept.txt').read()") == "'kept'"
    finally:
        runner.close()


def test_state_survives_a_new_event_loop() -> None:
    tool = PythonTool(timeout=10.0)
    try:
        assert asyncio.run(tool.call(ToolCall("python", "x = 5\nx"))) == "5"
        # A second asyncio.run: a new loop, the same kernel.
        assert asyncio.run(tool.call(ToolCall("python", "x * 2"))) == "10"
    finally:
        asyncio.run(tool.aclose())


# -- lifecycle ------------------------------------------------------------------------------------


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                continue
    return pids


def test_aclose_leaves_nothing_running() -> None:
    uid = 65431  # not the module kernel's uid, so its processes do not count here
    runner = Runner(PythonTool(timeout=10.0, sandbox=SandboxConfig(uid=uid)))
    runner("import subprocess\nsubprocess.Popen(['sleep', '300'])\nopen('f', 'w').write('x')")
    assert _processes_of(uid)
    data_dir = runner.tool.data_dir
    runner.close()
    assert _processes_of(uid) == []
    assert not data_dir.exists()  # the default data dir is temporary


def test_kernel_that_cannot_start_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import harmony_agent.sandbox.kernel as sandbox_kernel

    monkeypatch.setattr(
        sandbox_kernel,
        "_kernel_argv",
        lambda *a: [sys.executable, "-c", "raise SystemExit('boom')"],
    )
    runner = Runner(PythonTool())
    try:
        out = runner("1")
    finally:
        runner.close()
    assert out == "The Python tool is unavailable: the Python kernel exited while starting: boom."


def test_refuses_clearly_without_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_process.shutil, "which", lambda name: None)
    sandbox_process._probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable) as info:
            PythonTool()
        message = str(info.value)
        assert "\n" not in message
        assert "bubblewrap" in message and "dangerously_allow_unsandboxed=True" in message
        with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
            tool = PythonTool(dangerously_allow_unsandboxed=True)
        runner = Runner(tool)
        try:
            # It runs, unconfined, in the host directory it was given.
            assert runner("import os\nos.getcwd()") == repr(str(tool.data_dir))
        finally:
            runner.close()
    finally:
        monkeypatch.undo()
        sandbox_process._probe.cache_clear()

"""The python tool's host side, attacked from inside the sandbox.

The host process is root and shares directories with model-written code (/mnt/data, the kernel's
socket directory): every name in them is the attacker's. These tests plant links, FIFOs and loops
there, race them against the host, flood the output and swap the kernel's sockets, and check the
host never follows a name the sandbox chose, stays within its memory and ends calls on time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import peak_memory, requires_sandbox

from harmony_agent.sandbox import SandboxConfig
from harmony_agent.tools.base import ToolCall
from harmony_agent.tools.python_tool import PythonTool

pytestmark = requires_sandbox

MiB = 1 << 20
PNG = b"\x89PNG\r\n\x1a\n" + b"attacker-chosen bytes"
DISPLAY = (
    "from IPython.display import Image, display\n"
    f"def show():\n    display(Image(data={PNG!r}, format='png'))\n"
)


def call(tool: PythonTool, code: str, loop: asyncio.AbstractEventLoop) -> str:
    return loop.run_until_complete(tool.call(ToolCall("python", code)))


@pytest.fixture
def tool() -> Iterator[tuple[PythonTool, asyncio.AbstractEventLoop]]:
    tool = PythonTool(
        timeout=20.0, sandbox=SandboxConfig(memory_bytes=512 * MiB), interrupt_grace=2.0
    )
    loop = asyncio.new_event_loop()
    yield tool, loop
    loop.run_until_complete(tool.aclose())
    loop.close()


@pytest.fixture
def victim_dir(tmp_path: Path) -> Path:
    # A root-owned host directory the sandbox cannot see; its path is no secret to an attacker.
    tmp_path.chmod(0o755)
    return tmp_path


def test_a_dangling_link_in_the_image_name_creates_no_host_file(tool, victim_dir: Path) -> None:
    tool_, loop = tool
    target = victim_dir / "planted.pth"
    out = call(
        tool_,
        DISPLAY + "import os\n"
        f"for n in range(1, 50):\n    os.symlink({str(target)!r}, f'/mnt/data/output_{{n}}.png')\n"
        "show()",
        loop,
    )
    assert not target.exists()
    # The image went to a name of its own, as a regular file holding exactly its bytes.
    assert out.startswith("[image saved to /mnt/data/output_") and out.endswith(".png]")
    name = out.removeprefix("[image saved to /mnt/data/").removesuffix("]")
    saved = os.lstat(tool_.data_dir / name)
    assert stat.S_ISREG(saved.st_mode) and saved.st_uid != 0
    assert (tool_.data_dir / name).read_bytes() == PNG


def test_racing_links_never_redirect_a_host_write(tool, victim_dir: Path) -> None:
    tool_, loop = tool
    victim = victim_dir / "root-owned.conf"
    victim.write_bytes(b"original")
    fifo = victim_dir / "fifo"
    os.mkfifo(fifo)
    # A process in the sandbox flips the next image name between absent and a link (to the host
    # file, then to a host FIFO) while the cell displays images: check-then-write loses this race.
    flip = (
        "import os, stat\n"
        f"targets = [{str(victim)!r}, {str(fifo)!r}]\n"
        "n = i = 0\n"
        "while True:\n"
        "    p = f'/mnt/data/output_{n + 1}.png'\n"
        "    try:\n"
        "        os.symlink(targets[i % 2], p)\n"
        "        i += 1\n"
        "        os.unlink(p)\n"
        "    except FileExistsError:\n"
        "        try:\n"
        "            n += stat.S_ISREG(os.lstat(p).st_mode)\n"
        "        except FileNotFoundError:\n"
        "            pass\n"
    )
    cell = (
        DISPLAY
        + "import subprocess, sys, time\n"
        + f"proc = subprocess.Popen([sys.executable, '-c', {flip!r}])\n"
        "time.sleep(0.5)\nfor _ in range(40):\n    show()\n    time.sleep(0.05)\nproc.kill()"
    )
    done = threading.Event()

    def unblock_fifo() -> None:
        # A host write that opened the FIFO would hang this test forever: release it, late.
        if not done.wait(15):
            with open(fifo, "rb"):
                pass

    watchdog = threading.Thread(target=unblock_fifo)
    watchdog.start()
    start = time.monotonic()
    try:
        out = call(tool_, cell, loop)
    finally:
        elapsed = time.monotonic() - start
        done.set()
        watchdog.join()
    assert victim.read_bytes() == b"original"
    assert elapsed < 12, f"the call blocked for {elapsed:.1f} s"
    assert out.count("[image saved to /mnt/data/output_") == 40, out
    for line in out.splitlines():
        name = line.removeprefix("[image saved to /mnt/data/").removesuffix("]")
        assert not os.path.islink(tool_.data_dir / name)
        assert (tool_.data_dir / name).read_bytes() == PNG


def test_a_link_loop_is_skipped_without_naming_host_paths(tool) -> None:
    tool_, loop = tool
    out = call(
        tool_,
        DISPLAY + "import os\nfor n in range(1, 20):\n"
        "    os.symlink(f'output_{n}.png', f'/mnt/data/output_{n}.png')\nshow()",
        loop,
    )
    assert out.startswith("[image saved to /mnt/data/output_")
    assert str(tool_.data_dir) not in out
    assert call(tool_, "print(6 * 7)", loop) == "42"


def test_an_output_flood_keeps_host_memory_and_the_timeout() -> None:
    timeout, grace = 6.0, 2.0
    tool = PythonTool(timeout=timeout, interrupt_grace=grace)
    loop = asyncio.new_event_loop()

    def timed(code: str) -> tuple[str, float]:
        start = time.monotonic()
        out = call(tool, code, loop)
        return out, time.monotonic() - start

    try:
        assert call(tool, "1", loop) == "1"
        with peak_memory() as memory:
            # 300 MiB of output, then a wait into the timeout.
            flood, flood_s = timed(
                "import sys, time\nline = 'x' * (1 << 20)\n"
                "for i in range(300):\n    sys.stdout.write(line)\n"
                "print('\\nFLOOD DONE', flush=True)\ntime.sleep(60)"
            )
            # Printing without end: the kernel itself drowns in its buffer and must be restarted.
            endless, endless_s = timed(
                "import sys\nline = 'x' * (1 << 20)\nwhile True:\n    sys.stdout.write(line)"
            )
        grown = memory.grown_mib
        print(
            f"\nhost RSS grew {grown:.0f} MiB during the floods; they took {flood_s:.1f} s and "
            f"{endless_s:.1f} s ({max(flood_s, endless_s) - timeout:+.1f} s past the timeout)"
        )
        assert grown < 100
        limit = tool.max_output_chars
        assert len(flood) < limit + 400 and len(endless) < limit + 400
        assert flood.startswith("x" * 100)
        assert "FLOOD DONE" in flood and "characters cut" in flood
        cut = int(flood.split("[... ", 1)[1].split(" characters cut", 1)[0])
        assert 300 * MiB - limit - 100 <= cut <= 300 * MiB
        assert f"timed out after {timeout:g} s and was interrupted" in flood
        assert f"timed out after {timeout:g} s" in endless
        for seconds in (flood_s, endless_s):
            assert seconds < timeout + grace + 3.0
        assert call(tool, "print(6 * 7)", loop) == "42"
    finally:
        loop.run_until_complete(tool.aclose())
        loop.close()


def test_a_new_event_loop_does_not_follow_swapped_kernel_sockets(tmp_path: Path) -> None:
    # A host Unix socket the attacker would like the root client to talk to.
    tmp_path.chmod(0o755)
    lure_path = str(tmp_path / "host-service.sock")
    lure = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lure.bind(lure_path)
    lure.listen(16)
    lure.settimeout(0.1)
    tool = PythonTool(timeout=10.0)
    try:
        assert asyncio.run(tool.call(ToolCall("python", "x = 5\nx"))) == "5"
        swap = (
            "import os\nfor name in sorted(os.listdir('/run/kernel')):\n"
            "    if name.startswith('kernel-'):\n"
            "        os.rename(f'/run/kernel/{name}', f'/run/kernel/.{name}')\n"
            f"        os.symlink({lure_path!r}, f'/run/kernel/{{name}}')\n"
            "print('swapped')"
        )
        assert asyncio.run(tool.call(ToolCall("python", swap))) == "swapped"
        # A second asyncio.run makes the tool connect again.
        out = asyncio.run(tool.call(ToolCall("python", "x * 2")))
        connections = 0
        while True:
            try:
                lure.accept()[0].close()
                connections += 1
            except TimeoutError:
                break
        assert connections == 0
        assert out == "10"
    finally:
        asyncio.run(tool.aclose())
        lure.close()


def test_files_planted_in_mnt_data_do_not_run_when_the_kernel_starts(tool) -> None:
    tool_, loop = tool
    planted = "open('/mnt/data/HIJACKED', 'w').write('ran at start-up')\n"
    out = call(
        tool_,
        "for name in ('ipykernel_launcher', 'ipykernel', 'zmq', 'traitlets', 'tornado'):\n"
        f"    open(f'/mnt/data/{{name}}.py', 'w').write({planted!r})\n"
        "import os\nos._exit(1)",
        loop,
    )
    assert "restarted" in out
    assert call(tool_, "print(6 * 7)", loop) == "42"
    assert not (tool_.data_dir / "HIJACKED").exists()


def test_a_tree_nested_thousands_deep_breaks_neither_restart_nor_cleanup() -> None:
    tool = PythonTool(timeout=30.0)
    loop = asyncio.new_event_loop()
    nest = (
        "import os\nfor top in ('/mnt/data/deep', '/run/kernel/deep'):\n"
        "    os.makedirs(top)\n    fd = os.open(top, os.O_RDONLY)\n"
        "    for _ in range(3000):\n"
        "        os.mkdir('d', dir_fd=fd)\n"
        "        open(os.open('f', os.O_WRONLY | os.O_CREAT, dir_fd=fd), 'w').close()\n"
        "        fd, up = os.open('d', os.O_RDONLY, dir_fd=fd), fd\n"
        "        os.close(up)\n"
        "print('nested')"
    )
    try:
        assert call(tool, nest, loop) == "nested"
        data_dir = tool.data_dir
        # The next start re-owns /mnt/data and the last one's runtime dir goes: both walk it.
        assert "restarted" in call(tool, "import os\nos._exit(1)", loop)
        assert call(tool, "print(6 * 7)", loop) == "42"
    finally:
        loop.run_until_complete(tool.aclose())
        loop.close()
    assert not data_dir.exists()

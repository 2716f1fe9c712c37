"""Shared by the test modules that need the sandbox."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pexpect
import pyte
import pytest

from harmony_agent.sandbox import SandboxUnavailable, probe

if TYPE_CHECKING:
    import openai


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


def _seccomp_missing() -> str | None:
    from harmony_agent.sandbox import probe

    return None if SANDBOX_MISSING else probe().seccomp


SECCOMP_MISSING = _seccomp_missing()
if SECCOMP_MISSING and os.environ.get("CI"):
    raise RuntimeError(f"seccomp is unavailable in CI: {SECCOMP_MISSING}")

requires_seccomp = pytest.mark.skipif(
    SECCOMP_MISSING is not None, reason=f"no seccomp here: {SECCOMP_MISSING}"
)


class LoopbackSite(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a free port) for the browser tests; `serving()` runs it."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving(*sites: LoopbackSite) -> Iterator[None]:
    for site in sites:
        threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        for site in sites:
            site.shutdown()
            site.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers with `reply`."""

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ROOT = Path(__file__).parent.parent
CALL = (
    "<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.add <|constrain|>json<|message|>{"a": 2, "b": 3}<|call|>'
)
FINAL = "<|channel|>final<|message|>The answer is **5**.<|return|>"
TOOLS = '''
from harmony_agent.tools import function_tool

@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b
'''
"""A module with one function tool, `add`: CALL calls it, FINAL answers."""
PROMPT = "›"
"""What to expect for chat's prompt `› `: prompt_toolkit draws the space as a cursor move."""


def cli_env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment the CLI tests run `harmony-agent` in: modules importable from `folder`,
    a fixed width, a cache and a configuration folder of its own (no MCP servers the user
    configured), and no cursor position requests from prompt_toolkit (pexpect's terminal
    never answers them: the prompt would wait, then warn)."""
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "COLUMNS": "100",
            "HARMONY_AGENT_CACHE": str(folder / "cache"), "PROMPT_TOOLKIT_NO_CPR": "1",
            "XDG_CONFIG_HOME": str(folder / "config"), **extra}  # fmt: skip


def spawn_cli(folder: Path, *args: str, **extra_env: str) -> pexpect.spawn:
    """`harmony-agent ARGS` in a pseudo-terminal of 40 x 100, run in `folder`."""
    return pexpect.spawn(sys.executable, ["-m", "harmony_agent", *args], cwd=str(folder),
                         env=cli_env(folder, **extra_env), encoding="utf-8", timeout=60,
                         dimensions=(40, 100))  # fmt: skip


class TerminalScreen:
    """What a terminal shows of the output written to it (pyte's emulator): pass one as a
    pexpect child's `logfile_read`, or as a rich Console's `file`. `written` keeps every escape
    code; `text` is the screen, lines stripped."""

    def __init__(self, columns: int = 100, lines: int = 40) -> None:
        self._screen = pyte.Screen(columns, lines)
        self._stream = pyte.Stream(self._screen)
        self.written = ""

    def write(self, data: str) -> int:
        self.written += data
        self._stream.feed(data)
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self._screen.display).strip("\n")


_SGR = re.compile(r"\x1b\[([0-9;:]*)m")


def colour_codes(output: str) -> list[str]:
    """The escape sequences in `output` that set a colour (foreground or background, any
    depth); bold, dim and the like are not colours (no-color.org)."""
    found = []
    for match in _SGR.finditer(output):
        params = [int(p) for p in re.split("[;:]", match.group(1)) if p]
        if any(30 <= p <= 38 or 40 <= p <= 48 or 90 <= p <= 97 or 100 <= p <= 107 for p in params):
            found.append(match.group(0))
    return found


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread; yields its
    base URL, `http://127.0.0.1:PORT`."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def in_turn(gens: list[Iterator[int]]) -> list[list[int]]:
    """Consume token generators in turn from one thread: their sequences decode in shared
    steps of the engine."""
    outs: list[list[int]] = [[] for _ in gens]
    live = set(range(len(gens)))
    while live:
        for i in sorted(live):
            try:
                outs[i].append(next(gens[i]))
            except StopIteration:
                live.discard(i)
    return outs


# -- the OpenAI-compatible server --------------------------------------------------------------

GREETING = (
    "<|channel|>analysis<|message|>The user greets me.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello!<|return|>"
)
WEATHER_CALL = (
    "<|channel|>analysis<|message|>I need the weather.<|end|><|start|>assistant<|channel|>"
    'commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
)
SUNNY = (
    "<|channel|>analysis<|message|>The tool says sunny.<|end|><|start|>assistant"
    "<|channel|>final<|message|>It is 18C and sunny in Paris.<|return|>"
)
KEPT_REASONING = "<|channel|>analysis<|message|>I need the weather.<|end|>"
"""WEATHER_CALL's reasoning as a later prompt of the same turn must hold it."""


@contextmanager
def serving_model(model: Any, **options: Any) -> Iterator[tuple[str, openai.OpenAI]]:
    """The server over `model` (named gpt-oss, a fixed date), live on 127.0.0.1: yields its URL
    and an openai SDK client for it (no retries)."""
    import openai

    from harmony_agent.agent.server import ServerConfig, create_app

    dated = {"current_date": "2025-06-01"}
    config = ServerConfig(model, model_name="gpt-oss", agent_options=dated, **options)
    with live_server(create_app(config)) as url:
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def decoded_prompt(model: Any, i: int) -> str:
    """The `i`th prompt a ScriptedModel received, special tokens written out."""
    from harmony_agent.encoding import harmony_encoding

    return harmony_encoding().decode(model.prompts[i])


def token_count(text: str) -> int:
    from harmony_agent.encoding import harmony_encoding

    return len(harmony_encoding().encode(text, allowed_special="all"))

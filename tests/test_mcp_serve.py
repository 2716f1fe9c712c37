"""`harmony-agent mcp python|browser`: our tools served over MCP, driven by the `mcp` SDK's own
client as other agents drive them, over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import LoopbackSite, QuietHandler, cli_env, live_server, requires_sandbox, serving
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from harmony_agent.tools import BrowserTool
from harmony_agent.tools.browser import LocalDocument, LocalSearchBackend
from harmony_agent.tools.mcp.serve import browser_server, http_app, python_server


def text(result: object) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")  # type: ignore[attr-defined]


@requires_sandbox
def test_python_over_stdio_keeps_state_and_contains_hostile_code(tmp_path: Path) -> None:
    async def main() -> None:
        server = StdioServerParameters(
            command=sys.executable, args=["-m", "harmony_agent", "mcp", "python"],
            env=cli_env(tmp_path), cwd=str(tmp_path),
        )  # fmt: skip
        async with Client(stdio_client(server)) as client:
            [tool] = (await client.list_tools()).tools
            assert tool.name == "python" and "sandbox" in (tool.description or "")
            assert text(await client.call_tool("python", {"code": "x = 41"})) == "[no output]"
            assert text(await client.call_tool("python", {"code": "x + 1"})) == "42"
            shadow = await client.call_tool("python", {"code": "open('/etc/shadow').read()"})
            assert "No such file or directory: '/etc/shadow'" in text(shadow)
            outside = await client.call_tool(
                "python", {"code": "open('/home/escaped.txt', 'w').write('x')"}
            )
            assert re.search(r"(PermissionError|FileNotFoundError|OSError)", text(outside))
            png = (
                "import base64; from IPython.display import Image, display; display(Image(base64."
                "b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQD"
                "J/pLvAAAAAElFTkSuQmCC')))"
            )
            shown = await client.call_tool("python", {"code": png})
            [image] = [block for block in shown.content if block.type == "image"]
            assert image.mime_type == "image/png" and "/mnt/data/output_1.png" in text(shown)

    asyncio.run(main())
    assert not Path("/home/escaped.txt").exists()


@pytest.fixture(scope="module")
def python_http() -> Iterator[tuple[str, object]]:
    server, sessions = python_server("http")
    with live_server(http_app(server, sessions)) as base:
        yield f"{base}/mcp", sessions


@requires_sandbox
def test_python_over_http_keeps_one_kernel_per_session(python_http: tuple[str, object]) -> None:
    url, sessions = python_http

    async def main() -> None:
        # The 2025 handshake: the SDK's Mcp-Session-Id is the session.
        async with Client(url, mode="legacy") as one, Client(url, mode="legacy") as two:
            await one.call_tool("python", {"code": "x = 'one'"})
            await two.call_tool("python", {"code": "x = 'two'"})
            assert text(await one.call_tool("python", {"code": "x"})) == "'one'"
            assert text(await two.call_tool("python", {"code": "x"})) == "'two'"
            assert len(sessions) == 2  # type: ignore[arg-type]
        assert len(sessions) == 0  # type: ignore[arg-type]  # the clients ended them: kernels gone
        # The 2026-07-28 protocol has no sessions: the first call hands out a handle.
        async with Client(url) as client:
            first = text(await client.call_tool("python", {"code": "y = 6"}))
            handle = re.search(r'pass "session": "([^"]+)"', first)
            assert handle, first
            again = await client.call_tool("python", {"code": "y * 7", "session": handle[1]})
            assert text(again) == "42"
            fresh = await client.call_tool("python", {"code": "y"})
            assert "NameError" in text(fresh)  # no handle: a new kernel
            unknown = await client.call_tool("python", {"code": "y", "session": "guessed"})
            assert unknown.is_error and "Unknown or expired session" in text(unknown)

    asyncio.run(main())


class Page(QuietHandler):
    def do_GET(self) -> None:
        self.reply(200, {"Content-Type": "text/html"}, b"<title>Local</title><p>secret admin</p>")


def test_browser_refuses_loopback_by_default_and_keeps_pages_per_session() -> None:
    site = LoopbackSite(Page)
    documents = [LocalDocument("https://example.org/mcp", "About MCP", "MCP connects tools.")]
    browser = BrowserTool(search_backend=LocalSearchBackend(documents))
    server, sessions = browser_server(browser, "http")

    async def main(url: str) -> None:
        async with Client(url, mode="legacy") as one, Client(url, mode="legacy") as two:
            names = {tool.name for tool in (await one.list_tools()).tools}
            assert names == {"search", "open", "find"}
            refused = await one.call_tool("open", {"id": f"{site.url}/"})
            assert refused.is_error and "secret" not in text(refused)
            assert "127.0.0.1" in text(refused)
            found = await one.call_tool("search", {"query": "MCP tools"})
            assert text(found).startswith("[0] ") and "About MCP" in text(found)
            match = await one.call_tool("find", {"pattern": "About", "cursor": 0})
            assert not match.is_error and "match at L" in text(match)
            # The other session has no pages: the first one's stack is its own.
            other = await two.call_tool("find", {"pattern": "About", "cursor": 0})
            assert other.is_error

    with serving(site), live_server(http_app(server, sessions)) as base:
        asyncio.run(main(f"{base}/mcp"))


def test_sessions_make_on_first_use_evict_the_least_recently_used_and_close_idle_ones() -> None:
    from harmony_agent.tools.mcp.serve import Sessions, SessionsFull

    made: list[str] = []
    closed: list[str] = []

    async def close(tool: str) -> None:
        closed.append(tool)

    def make() -> str:
        made.append(f"tool{len(made)}")
        return made[-1]

    async def main() -> None:
        sessions = Sessions(make, close, max_sessions=2, idle_seconds=3600)
        async with sessions.use("a") as a, sessions.use("b") as b:
            assert (a, b) == ("tool0", "tool1")
            with pytest.raises(SessionsFull):  # both busy: no room for a third
                async with sessions.use("c"):
                    pass
        async with sessions.use("a") as again:
            assert again == "tool0"  # the same session, the same tool
        async with sessions.use("c") as c:  # evicts "b", used longest ago
            assert c == "tool2" and closed == ["tool1"]
        sessions.idle_seconds = 0
        async with sessions.use("d"):  # "a" and "c" idled out first
            assert sorted(closed) == ["tool0", "tool1", "tool2"] and len(sessions) == 1
        await sessions.close_all()
        assert len(sessions) == 0 and closed[-1] == "tool3"

    asyncio.run(main())

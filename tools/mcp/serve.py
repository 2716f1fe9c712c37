"""Our safe tools for other agents: the sandboxed python and the browser as MCP servers.

    harmony-agent mcp python                      # stdio: one client, one kernel
    harmony-agent mcp browser --transport http    # http://127.0.0.1:8000/mcp

What a client keeps between calls (a kernel's variables, the browser's page stack) lives in a
session: over stdio the process is the session; over HTTP, with the 2025 handshake, the
`Mcp-Session-Id` the SDK gives out; with the 2026-07-28 protocol, which has no sessions, a
handle the first call returns and later calls pass back as their `session` argument. Sessions
idle for `idle_seconds` are closed, and at most `max_sessions` are open (the least recently used
idle one makes room). The tools are as safe as in the agent: the kernel runs in the sandbox, and
the browser follows its network policy (loopback and private addresses refused by default).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import mimetypes
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver import MCPServer as SDKServer
from mcp_types import CallToolResult, ImageContent, TextContent
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from openai_harmony import ToolNamespaceConfig
from pydantic import Field

from ..base import ToolCall, ToolError
from ..browser.pages import PageStack
from ..python_tool import PythonTool

if TYPE_CHECKING:
    from ..browser.tool import BrowserTool

T = TypeVar("T")
Cursor = Annotated[int, Field(description="The page, by its number in brackets; -1: the last one.")]
Transport = Literal["stdio", "http"]
IDLE_SECONDS = 30 * 60.0
MAX_SESSIONS = 8
Session = Annotated[
    str | None,
    Field(
        description="The session to continue, as an earlier call's result named it. Only for "
        "clients of the 2026-07-28 protocol over HTTP, which has no sessions of its own: leave "
        "it out otherwise, and on a first call."
    ),
]


class SessionsFull(ToolError):
    """Every session is busy and no new one may open."""


@dataclass
class _Entry(Generic[T]):
    tool: T
    used: float = field(default_factory=time.monotonic)
    busy: int = 0


class Sessions(Generic[T]):
    """One tool per client session: made on first use, closed when idle for long or evicted."""

    def __init__(
        self,
        make: Callable[[], T],
        close: Callable[[T], Awaitable[None]],
        *,
        max_sessions: int = MAX_SESSIONS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.make = make
        self.close = close
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._entries: dict[str, _Entry[T]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def use(self, key: str) -> AsyncIterator[T]:
        """The session's tool, made if it is new; kept busy (not evicted) while in use."""
        await self._reap()
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_sessions:
                await self._evict()
            entry = self._entries[key] = _Entry(self.make())
        entry.busy += 1
        try:
            yield entry.tool
        finally:
            entry.busy -= 1
            entry.used = time.monotonic()

    async def drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            await self.close(entry.tool)

    async def close_all(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        await asyncio.gather(*(self.close(e.tool) for e in entries), return_exceptions=True)

    async def _reap(self) -> None:
        now = time.monotonic()
        for key, entry in list(self._entries.items()):
            if not entry.busy and now - entry.used > self.idle_seconds:
                await self.drop(key)

    async def _evict(self) -> None:
        idle = [(e.used, k) for k, e in self._entries.items() if not e.busy]
        if not idle:
            raise SessionsFull(
                f"All {self.max_sessions} sessions are busy: try again when a call has finished."
            )
        await self.drop(min(idle)[1])


def _session_key(
    ctx: Any, transport: Transport, handle: str | None, sessions: Sessions[Any]
) -> tuple[str, str | None]:
    """Which session a call belongs to, and the handle to give the client when it is new."""
    if transport == "stdio":
        return "stdio", None
    if handle is not None:
        if f"handle:{handle}" not in sessions:
            raise ToolError(
                f"Unknown or expired session {handle!r}: call without `session` to start a new one."
            )
        return f"handle:{handle}", None
    # The SDK routes an Mcp-Session-Id only of a handshake-era request to its session (and
    # answers 404 for one it does not know); a 2026 request's header proves nothing.
    session_id = (ctx.headers or {}).get("mcp-session-id")
    if session_id and ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
        return f"session:{session_id}", None
    new = secrets.token_urlsafe(16)
    return f"handle:{new}", new


def _handle_note(handle: str | None) -> str:
    if handle is None:
        return ""
    return f'\n\n[This is session {handle}: pass "session": "{handle}" to continue in it.]'


def _result(
    text: str, *, error: bool = False, images: Sequence[tuple[bytes, str]] = ()
) -> CallToolResult:
    content: list[TextContent | ImageContent] = [TextContent(type="text", text=text)]
    for data, mime in images:
        content.append(
            ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime)
        )
    return CallToolResult(content=content, is_error=error)


# -- python ------------------------------------------------------------------------------------


def _python_description(timeout: float) -> str:
    return (
        "Run Python code in a stateful Jupyter notebook. Variables, imports and definitions "
        "persist between calls of one session; files saved in /mnt/data persist too. The code "
        "runs in a sandbox without network access and with limited memory and processes, and "
        f"is interrupted after {timeout:g} seconds. The result holds stdout and stderr, the "
        "value of the last expression and any traceback; plots and images are saved in "
        "/mnt/data, named in the text and returned as images."
    )


def python_server(
    transport: Transport = "stdio",
    *,
    timeout: float = 120.0,
    dangerously_allow_unsandboxed: bool = False,
    max_sessions: int = MAX_SESSIONS,
    idle_seconds: float = IDLE_SECONDS,
) -> tuple[SDKServer, Sessions[Any]]:
    """The python tool as an MCP server (`mcp` SDK), and its sessions. Raises
    `SandboxUnavailable` now, not at the first call, when code cannot be sandboxed."""

    class ServedPython(PythonTool):
        """Also keeps the images it saves, to send them as MCP image content."""

        def __init__(self) -> None:
            super().__init__(timeout, dangerously_allow_unsandboxed=dangerously_allow_unsandboxed)
            self.images: list[tuple[bytes, str]] = []
            self.turn = asyncio.Lock()
            """One call at a time, so that each call's images are its own."""

        def _save_image(self, data: bytes, ext: str) -> str:
            self.images.append((data, mimetypes.guess_type(f"x.{ext}")[0] or "image/png"))
            return super()._save_image(data, ext)

    async def close(tool: PythonTool) -> None:
        await tool.aclose()

    ServedPython()  # SandboxUnavailable now (no kernel starts until a call)
    sessions: Sessions[ServedPython] = Sessions(
        ServedPython, close, max_sessions=max_sessions, idle_seconds=idle_seconds
    )

    async def python(
        code: Annotated[str, Field(description="The Python code to run.")],
        ctx: Context,
        session: Session = None,
    ) -> CallToolResult:
        try:
            key, new = _session_key(ctx, transport, session, sessions)
            async with sessions.use(key) as tool, tool.turn:
                tool.images = []
                text = await tool.call(ToolCall(recipient="python", arguments=code))
        except ToolError as e:
            return _result(str(e), error=True)
        return _result(text + _handle_note(new), images=tool.images)

    server = _server("harmony-agent-python", sessions.close_all)
    description = _python_description(timeout)
    server.add_tool(python, name="python", description=description, structured_output=False)
    return server, sessions


# -- browser -----------------------------------------------------------------------------------


def browser_server(
    browser: BrowserTool,
    transport: Transport = "stdio",
    *,
    max_sessions: int = MAX_SESSIONS,
    idle_seconds: float = IDLE_SECONDS,
) -> tuple[SDKServer, Sessions[Any]]:
    """`browser`'s search, open and find as an MCP server. Sessions share its Chromium (one
    page load at a time) and each keeps a page stack of its own."""

    def make() -> BrowserTool:
        # A shallow copy shares the browser, the policy and the search service; only the
        # stack of pages, which cursors and link ids refer to, is the session's own.
        session = copy.copy(browser)
        session.stack = PageStack()
        return session

    async def close(tool: BrowserTool) -> None:
        pass  # what a session holds is its page stack; the shared browser closes with the server

    sessions: Sessions[BrowserTool] = Sessions(
        make, close, max_sessions=max_sessions, idle_seconds=idle_seconds
    )

    async def run(method: str, arguments: dict[str, Any], ctx: Context) -> CallToolResult:
        handle = arguments.pop("session", None)
        try:
            key, new = _session_key(ctx, transport, handle, sessions)
            async with sessions.use(key) as tool:
                text = await tool.call(
                    ToolCall(recipient=f"browser.{method}", arguments=json.dumps(arguments))
                )
        except ToolError as e:
            return _result(str(e), error=True)
        return _result(text + _handle_note(new))

    async def end() -> None:
        await sessions.close_all()
        await browser.aclose()

    config = ToolNamespaceConfig.browser()
    server = _server("harmony-agent-browser", end, instructions=config.description)
    descriptions = {t.name: t.description for t in config.tools}

    async def search(
        query: str, ctx: Context, topn: int = 10, session: Session = None
    ) -> CallToolResult:
        return await run("search", {"query": query, "topn": topn, "session": session}, ctx)

    async def open(
        ctx: Context,
        id: Annotated[int | str, Field(description="A link number, or a URL.")] = -1,
        cursor: Cursor = -1,
        loc: int = -1,
        num_lines: int = -1,
        view_source: bool = False,
        session: Session = None,
    ) -> CallToolResult:
        arguments = {"id": id, "cursor": cursor, "loc": loc, "num_lines": num_lines}
        arguments |= {"view_source": view_source, "session": session}
        return await run("open", arguments, ctx)

    async def find(
        pattern: str, ctx: Context, cursor: Cursor = -1, session: Session = None
    ) -> CallToolResult:
        return await run("find", {"pattern": pattern, "cursor": cursor, "session": session}, ctx)

    for function in (search, open, find):
        server.add_tool(
            function,
            name=function.__name__,
            description=descriptions[function.__name__],
            structured_output=False,
        )
    return server, sessions


# -- serving -----------------------------------------------------------------------------------


def _server(
    name: str, end: Callable[[], Awaitable[None]], instructions: str | None = None
) -> SDKServer:
    """An SDK server that runs `end` when it stops (the kernels, the browser)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: SDKServer) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {}
        finally:
            await end()

    return SDKServer(name, instructions=instructions, log_level="WARNING", lifespan=lifespan)


async def serve(
    server: SDKServer,
    sessions: Sessions[Any],
    transport: Transport,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve until stdin closes (stdio) or the process is interrupted (HTTP). Over HTTP the
    endpoint is `http://HOST:PORT/mcp` (port 0: a free one), told to `announce` once it
    listens."""
    if transport == "stdio":
        await server.run_stdio_async()
        return
    import uvicorn

    app = http_app(server, sessions, host)
    listener = socket.create_server((host, port))
    bound = listener.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    if announce is not None:
        announced = asyncio.create_task(_announce(web, f"http://{shown}:{bound[1]}/mcp", announce))
    try:
        await web.serve(sockets=[listener])
    finally:
        if announce is not None:
            announced.cancel()
        listener.close()


async def _announce(web: Any, url: str, announce: Callable[[str], None]) -> None:
    while not web.started:
        await asyncio.sleep(0.02)
    announce(url)


def http_app(server: SDKServer, sessions: Sessions[Any], host: str = "127.0.0.1") -> Any:
    """The streamable HTTP app (ASGI) at `/mcp`: the SDK's, closing a session's tool when its
    client ends the session (HTTP DELETE). `host` is where it listens: on loopback the SDK
    refuses requests for other host names (DNS rebinding)."""
    app = server.streamable_http_app(host=host)

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "DELETE":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")

        async def watch(message: dict[str, Any]) -> None:
            # Before the client hears that the session ended, its kernel is gone.
            ended = 200 <= int(message.get("status", 0)) < 300
            if message.get("type") == "http.response.start" and session_id and ended:
                await sessions.drop(f"session:{session_id}")
            await send(message)

        await app(scope, receive, watch)

    return wrapped

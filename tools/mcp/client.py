"""`MCPServer`: the tools of a Model Context Protocol server, as the model's developer functions.

    files = MCPServer("files", "npx", ["-y", "@modelcontextprotocol/server-filesystem", "."])
    Agent(model, tools=[files, MCPServer("docs", url="http://127.0.0.1:8000/mcp")])

Each connection runs on a thread of its own, with its own event loop: the SDK's transports are
anyio task groups that one task must enter and leave, while an agent may be driven from any loop
(the private one of `Agent.run`, the caller's for `arun`, a new one per run) and asks for the
tools' schemas synchronously, when it renders its first prompt.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import json
import mimetypes
import os
import re
import shlex
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jsonschema import SchemaError

from ..base import ToolError, ToolGroup
from ..function_schema import _clean, _inline_refs
from ..function_tool import FunctionTool

if TYPE_CHECKING:
    import mcp
    import mcp_types

STOP_SECONDS = 10.0
"""How long closing waits for a connection to end (the SDK gives a stdio server 2 s to exit on
its own, 2 more after SIGTERM, then kills it)."""
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_STDERR_TAIL_BYTES = 4096

_live: weakref.WeakSet[_Connection] = weakref.WeakSet()


class MCPServerError(Exception):
    """An MCP server that could not be started or listed; the message is one line naming it."""


class MCPServer(ToolGroup):
    """The tools of one MCP server, over stdio (`command`, `args`) or streamable HTTP (`url`).

    The server starts when the agent first needs its tools (its first prompt) or at `start()`,
    and stops with the agent (`aclose()`). Its tools are the model's `functions.<tool>`; where
    another tool has the same name, `functions.<name>_<tool>`. What a call returns reaches the
    model as text: text content as it is, structured content as JSON, images, audio and binary
    resources saved as files in `files_dir` and named. A server that fails to start raises
    `MCPServerError` at the first prompt; one that dies or times out during a call is a tool
    message, and is started again at the next call.

    Args:
        name: names the server in messages and prefixes its clashing tool names
            (letters, digits, `_` and `-`).
        command, args: the program to run, talking MCP over its stdin and stdout.
        env: environment variables for it, over the SDK's safe default (PATH, HOME, USER, ...;
            the rest of this process's environment is not passed on).
        cwd: its working directory.
        url: a streamable HTTP endpoint instead, e.g. `http://127.0.0.1:8000/mcp`.
        headers: HTTP headers to send with every request (an `Authorization`, say).
        timeout: seconds one call may take; None uses the agent's `tool_timeout`.
        startup_timeout: seconds to start, connect and list the tools.
        files_dir: where images and other binary results are saved; by default a new folder
            under the system's temporary directory, made at the first one and left for the user.
    """

    def __init__(
        self,
        name: str,
        command: str | None = None,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        startup_timeout: float = 30.0,
        files_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"MCP server name {name!r}: use letters, digits, '_' and '-' (it prefixes tool "
                "names the model sees)"
            )
        if (command is None) == (url is None):
            raise ValueError(f"MCP server {name!r}: give a command (stdio) or a url (HTTP)")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"MCP server {name!r}: url must start with http:// or https://")
        if isinstance(args, str):
            raise ValueError(f"MCP server {name!r}: args is a list of strings, not one string")
        self.name = name
        self.command = command
        self.args = list(args)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.url = url
        self.headers = dict(headers) if headers is not None else None
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._files_dir = Path(files_dir) if files_dir is not None else None
        self._file_lock = threading.Lock()
        self._lock = threading.Lock()
        self._connection: _Connection | None = None
        self._tools: list[FunctionTool] | None = None

    def __repr__(self) -> str:
        return f"MCPServer({self.name!r}, {self._where()!r})"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and list its tools now; raises `MCPServerError`."""
        self._wait_ready(self._connect(), self.startup_timeout)

    async def astart(self) -> None:
        """`start()` for async code: waits without blocking the event loop."""
        connection = self._connect()
        await connection.settled(self.startup_timeout)
        self._wait_ready(connection, 0)

    def function_tools(self) -> list[FunctionTool]:
        if self._tools is None or self._connection is None:
            self.start()
        assert self._tools is not None
        return self._tools

    def close(self) -> None:
        """Stop the server (the process, or the HTTP session); a later use starts it again."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.stop()
            connection.thread.join(STOP_SECONDS)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def reset(self) -> None:
        """A new conversation gets a new server session: whatever state the server kept for
        the old one (open files, a kernel's variables) is gone. Started again when used."""
        await self.aclose()
        self._tools = None  # listed anew: the next session may offer other tools

    def _connect(self) -> _Connection:
        """The live connection, or a new one that is starting."""
        with self._lock:
            if self._connection is None or not self._connection.alive():
                if self._connection is not None:
                    self._connection.stop()
                self._connection = _Connection(self)
            return self._connection

    def _wait_ready(self, connection: _Connection, timeout: float) -> None:
        try:
            listed = connection.ready.result(timeout)
        except Exception as e:
            problem = self._start_problem(connection, e)
            self._forget(connection)
            raise MCPServerError(f"MCP server {self.name!r} ({self._where()}) {problem}") from None
        if self._tools is None:
            self._tools = [self._function_tool(tool) for tool in listed]

    def _start_problem(self, connection: _Connection, error: Exception) -> str:
        if isinstance(error, concurrent.futures.TimeoutError):
            problem = f"did not start within {self.startup_timeout:g} s"
        else:
            problem = f"failed to start: {_describe(error)}"
        return problem + connection.stderr_note()

    def _forget(self, connection: _Connection) -> None:
        connection.stop()
        with self._lock:
            if self._connection is connection:
                self._connection = None

    def _where(self) -> str:
        if self.url is not None:
            return self.url
        return shlex.join([str(self.command), *self.args])

    # -- tools ---------------------------------------------------------------------------------

    def _function_tool(self, tool: mcp_types.Tool) -> FunctionTool:
        schema: dict[str, Any] = dict(tool.input_schema or {"type": "object"})
        schema.pop("$schema", None)  # a draft-07 declaration; harmony renders any draft alike
        # The model reads whole types: refs inlined, generated titles dropped; a recursive
        # type keeps its refs.
        with contextlib.suppress(TypeError):
            schema = _clean(_inline_refs(schema))
        try:
            return FunctionTool(
                name=_model_name(tool.name),
                description=tool.description or tool.title or "",
                parameters=schema,
                on_invoke=functools.partial(self._invoke, tool.name),
                timeout=self.timeout,
            )
        except SchemaError as e:
            raise MCPServerError(
                f"MCP server {self.name!r}: tool {tool.name!r} has an invalid input schema: "
                f"{e.message}"
            ) from None

    async def _invoke(self, tool: str, arguments: dict[str, Any]) -> str:
        connection = self._connect()
        await connection.settled(self.startup_timeout)  # a restart after the server stopped
        try:
            connection.ready.result(0)
        except Exception as e:
            problem = self._start_problem(connection, e)
            self._forget(connection)
            raise ToolError(f"MCP server {self.name!r} is not running: it {problem}.") from None
        try:
            result = await asyncio.wrap_future(connection.call(tool, arguments))
        except Exception as e:
            from mcp import MCPError
            from mcp_types import CONNECTION_CLOSED

            closed = isinstance(e, MCPError) and e.code == CONNECTION_CLOSED
            if isinstance(e, MCPError) and not closed:
                raise ToolError(f"MCP server {self.name!r} refused the call: {e.message}") from None
            if not closed and connection.alive():
                raise  # the agent reports it as the tool's error
            connection.lost = True
            raise ToolError(
                f"MCP server {self.name!r} has stopped{connection.stderr_note()}. It is started "
                "again at the next call; any state it kept is lost."
            ) from None
        text = self._result_text(tool, result)
        if result.is_error:
            raise ToolError(text or f"The tool {tool} failed and gave no message.")
        return text

    def _result_text(self, tool: str, result: mcp_types.CallToolResult) -> str:
        import mcp_types as types

        parts: list[str] = []
        for block in result.content:
            if isinstance(block, types.TextContent):
                parts.append(block.text)
            elif isinstance(block, types.ImageContent | types.AudioContent):
                kind = "image" if isinstance(block, types.ImageContent) else "audio"
                parts.append(self._saved(tool, kind, block.data, block.mime_type))
            elif isinstance(block, types.EmbeddedResource):
                resource = block.resource
                if isinstance(resource, types.TextResourceContents):
                    parts.append(f"[resource {resource.uri}]\n{resource.text}")
                else:
                    mime = resource.mime_type or "application/octet-stream"
                    parts.append(self._saved(tool, f"resource {resource.uri}", resource.blob, mime))
            elif isinstance(block, types.ResourceLink):
                about = f": {block.description}" if block.description else ""
                parts.append(f"[resource link {block.name} {block.uri}{about}]")
        structured = result.structured_content
        # Servers should also send structured content as JSON text: show it once.
        if structured is not None and not any(_carries(p, structured) for p in parts):
            parts.append(json.dumps(structured, ensure_ascii=False))
        return "\n\n".join(parts)

    def _saved(self, tool: str, kind: str, data: str, mime: str) -> str:
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return f"[{kind} ({mime}): the server sent data that is not base64]"
        path = self._save_file(tool, content, mime)
        return f"[{kind} saved as {path} ({mime}, {len(content)} bytes)]"

    def _save_file(self, tool: str, content: bytes, mime: str) -> Path:
        extension = mimetypes.guess_extension(mime.split(";")[0].strip()) or ".bin"
        with self._file_lock:
            if self._files_dir is None:
                self._files_dir = Path(tempfile.mkdtemp(prefix=f"harmony-agent-mcp-{self.name}-"))
            self._files_dir.mkdir(parents=True, exist_ok=True)
            for number in range(1, 1_000_000):
                path = self._files_dir / f"{_model_name(tool)}-{number}{extension}"
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "wb") as file:
                    file.write(content)
                return path
        raise OSError(f"no free file name for {tool} results in {self._files_dir}")


def start_all(servers: Sequence[MCPServer]) -> None:
    """Start several servers at once (each starts on its own thread) and wait for them all;
    if one fails, stop them all and raise its `MCPServerError`."""
    for server in servers:
        server._connect()
    try:
        for server in servers:
            server.start()
    except BaseException:
        for server in servers:
            server.close()
        raise


class _Connection:
    """One session with the server, run on its own thread and event loop until `stop()`."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.ready: concurrent.futures.Future[list[mcp_types.Tool]] = concurrent.futures.Future()
        """The server's tools, once connected; the error, if it could not be."""
        # Running: a waiter that gives up (asyncio's wrap_future cancels) cannot cancel it.
        self.ready.set_running_or_notify_cancel()
        self.lost = False
        """A call found the connection gone (the server exited, the HTTP server went away)."""
        # Where a stdio server's stderr goes: kept out of the terminal, its last line quoted
        # when the server fails.
        self.stderr: IO[bytes] | None = (
            tempfile.TemporaryFile() if server.url is None else None  # noqa: SIM115
        )
        self._client: mcp.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Any = None  # the anyio CancelScope that ends the session
        self._stopping = False
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"mcp-{server.name}", daemon=True)
        self.thread.start()
        _live.add(self)

    def alive(self) -> bool:
        return not (self._done.is_set() or self.lost)

    async def settled(self, timeout: float) -> None:
        """Wait, without blocking the event loop, until `ready` is done or `timeout` passed."""
        if not self.ready.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(self.ready), timeout)

    def call(self, tool: str, arguments: dict[str, Any]) -> concurrent.futures.Future[Any]:
        assert self._client is not None and self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._client.call_tool(tool, arguments), self._loop)

    def stop(self) -> None:
        """End the session (and the server process) from any thread; returns at once."""
        self._stopping = True
        loop, scope = self._loop, self._stop
        if loop is not None and scope is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(scope.cancel)
        if self.stderr is not None:
            self.stderr.close()  # the server keeps its own descriptor for what it still writes

    def stderr_note(self) -> str:
        """The last line the server wrote to stderr, as `: its stderr says "..."`."""
        if self.stderr is None:
            return ""
        try:
            size = self.stderr.seek(0, os.SEEK_END)
            self.stderr.seek(max(0, size - _STDERR_TAIL_BYTES))
            tail = self.stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return f'; its stderr says "{lines[-1][:300]}"' if lines else ""

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # the thread must end, and say why
            if not self.ready.done():
                self.ready.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
        finally:
            if not self.ready.done():
                self.ready.set_exception(RuntimeError("the connection ended before it was ready"))
            self._done.set()

    async def _main(self) -> None:
        import anyio
        from mcp import Client
        from mcp_types import Implementation

        self._loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:
            self._stop = scope
            if self._stopping:  # stopped before the loop existed
                return
            async with contextlib.AsyncExitStack() as stack:
                transport = await self._transport(stack)
                client = Client(
                    transport, client_info=Implementation(name="harmony-agent", version=_version())
                )
                await stack.enter_async_context(client)
                tools = await _list_tools(client)
                self._client = client
                self.ready.set_result(tools)
                await anyio.sleep_forever()

    async def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamable_http_client

        server = self.server
        if server.url is not None:
            http_client = None
            if server.headers:
                import httpx2  # the SDK's HTTP client; it takes headers only this way

                http_client = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=server.headers, timeout=httpx2.Timeout(30, read=300))
                )
            return streamable_http_client(server.url, http_client=http_client)
        assert server.command is not None and self.stderr is not None
        parameters = StdioServerParameters(
            command=server.command, args=server.args, env=server.env, cwd=server.cwd
        )
        return stdio_client(parameters, errlog=self.stderr)  # type: ignore[arg-type]


async def _list_tools(client: mcp.Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(1000):  # a server whose cursor never ends cannot hang the start
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _model_name(tool: str) -> str:
    """A tool name as a harmony recipient can carry it: `read-file` and `fs.read` become
    `read_file` and `fs_read`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", tool) or "_"


def _carries(text: str, structured: dict[str, Any]) -> bool:
    """Whether `text` already says what `structured` does: it is that object as JSON, or the one
    value of an object that only wraps it (`{"result": 5}`, `{"content": "..."}`: structured
    content must be an object, so SDKs wrap other values)."""
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    values = [structured, *structured.values()] if len(structured) == 1 else [structured]
    return any(value in (text, parsed) for value in values)


def _describe(error: BaseException) -> str:
    """One line for an error, with the innermost cause of an exception group."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    message = getattr(error, "error", None)  # the SDK's MCPError carries the peer's ErrorData
    if isinstance(getattr(message, "message", None), str):
        return str(message.message)  # type: ignore[union-attr]
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such program: {error.filename}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harmony-agent")
    except PackageNotFoundError:
        return "0"


@atexit.register
def _stop_all() -> None:
    """Servers nobody closed still stop when Python exits, instead of outliving it."""
    connections = list(_live)
    for connection in connections:
        connection.stop()
    for connection in connections:
        connection.thread.join(STOP_SECONDS)

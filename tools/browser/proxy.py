"""A small forward proxy that Chromium sends all its traffic through, enforcing the policy.

Why a proxy on top of Playwright's request routing: routing does not see redirect hops (the
browser follows a 302 to another host without asking), nor does it stop DNS rebinding (the
browser resolves the name again after our check). Here the proxy resolves each host itself,
checks every address and connects to a checked address, so whatever the page does — redirects,
`fetch`, iframes, `https` tunnels — it can only reach hosts the policy allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from .policy import NetworkPolicy, Refused, Target

REFUSED_HEADER = "X-Browser-Refused"
"""Set on the proxy's own 403 answers, so the tool can tell a refusal from a site's 403."""

_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te"}
_MAX_HEAD = 64 * 1024


class PolicyProxy:
    """An HTTP/1.1 forward proxy on 127.0.0.1 (plain requests and CONNECT tunnels)."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        max_response_bytes: int = 50 * 1024 * 1024,
        connect_timeout: float = 15.0,
    ) -> None:
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        self.connect_timeout = connect_timeout
        self.refusals: list[str] = []
        """Every refusal message, in order (the tool reports the one behind a failed load)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a peer went away or spoke nonsense: nothing to report to anyone
        except asyncio.CancelledError:
            pass  # close() ends open connections; asyncio would log a cancelled handler
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        method, target, _version = request_line.split(" ", 2)
        headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]

        if method.upper() == "CONNECT":
            host, _, port = target.rpartition(":")
            try:
                checked = await self.policy.check_host(host, int(port))
            except Refused as e:
                return await self._refuse(writer, str(e))
            upstream = await self._connect(checked)
            if upstream is None:
                return await self._answer(writer, 502, "Bad Gateway", "connection failed")
            up_reader, up_writer = upstream
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await self._pipe_both(reader, writer, up_reader, up_writer)
            return

        try:
            checked = await self.policy.check_url(target)
        except Refused as e:
            return await self._refuse(writer, str(e))
        parts = urlsplit(target)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        upgrade = any(k.strip().lower() == "upgrade" for k, _ in headers)
        kept = [(k, v) for k, v in headers if k.strip().lower() not in _HOP_BY_HOP]
        # One request per connection: the next request on Chromium's proxy connection may be
        # for another host, so it must come back through the policy check.
        kept.append(("Connection", " Upgrade" if upgrade else " close"))
        upstream = await self._connect(checked)
        if upstream is None:
            return await self._answer(writer, 502, "Bad Gateway", "connection failed")
        up_reader, up_writer = upstream
        out = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}:{v}\r\n" for k, v in kept)
        up_writer.write((out + "\r\n").encode("latin-1"))
        if upgrade:  # a websocket: both directions stay open, to this one checked host
            await self._pipe_both(reader, writer, up_reader, up_writer)
            return
        await self._copy_body(reader, up_writer, headers)
        response_head = await up_reader.readuntil(b"\r\n\r\n")
        writer.write(_force_close(response_head))
        await self._pipe(up_reader, writer)
        up_writer.close()

    async def _copy_body(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        headers: list[tuple[str, ...]],
    ) -> None:
        """Forward exactly the request body, so nothing after it reaches this upstream."""
        fields = {k.strip().lower(): v.strip() for k, v in headers}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                up_writer.write(size_line + await reader.readexactly(size + 2))
                if size == 0:
                    break
        elif length := int(fields.get("content-length", "0") or 0):
            up_writer.write(await reader.readexactly(length))
        await up_writer.drain()

    async def _connect(
        self, target: Target
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        # Connect to the addresses we checked, never to the name: no second DNS answer.
        for address in target.addresses:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(address, target.port), self.connect_timeout
                )
            except (OSError, TimeoutError):
                continue
        return None

    async def _refuse(self, writer: asyncio.StreamWriter, message: str) -> None:
        self.refusals.append(message)
        await self._answer(writer, 403, "Forbidden", message, refused=True)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        message: str,
        *,
        refused: bool = False,
    ) -> None:
        body = message.encode()
        extra = f"{REFUSED_HEADER}: {message.encode('ascii', 'replace').decode()}\r\n"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"{extra if refused else ''}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        sent = 0
        while chunk := await src.read(65536):
            sent += len(chunk)
            if sent > self.max_response_bytes:
                return  # cut the response: the page is over the size limit
            dst.write(chunk)
            await dst.drain()

    async def _pipe_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def upward() -> None:
            while chunk := await reader.read(65536):
                up_writer.write(chunk)
                await up_writer.drain()
            with contextlib.suppress(OSError):
                up_writer.write_eof()

        up = asyncio.ensure_future(upward())
        try:
            await self._pipe(up_reader, writer)
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            up_writer.close()


def _force_close(response_head: bytes) -> bytes:
    """The response head with `Connection: close`, so Chromium opens a new proxy connection."""
    lines = response_head.decode("latin-1").split("\r\n")[:-2]
    kept = [lines[0]] + [
        line for line in lines[1:] if line.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP
    ]
    return ("\r\n".join([*kept, "Connection: close", "", ""])).encode("latin-1")

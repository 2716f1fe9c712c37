"""An MCP server written with the `mcp` SDK, for the client tests: run it as a script (stdio),
or serve `server.streamable_http_app()` (HTTP)."""

from __future__ import annotations

import os
import struct
import sys
import zlib

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from pydantic import BaseModel

server = MCPServer("test-server", log_level="WARNING")
calls = 0
if "MCP_TEST_STARTED" in os.environ:  # tells a test that this process started
    open(os.environ["MCP_TEST_STARTED"], "a").close()


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    global calls
    calls += 1
    return a + b


@server.tool()
def calls_so_far() -> int:
    """How many times `add` ran in this server process."""
    return calls


class Weather(BaseModel):
    city: str
    celsius: float


@server.tool()
def weather(city: str) -> Weather:
    """The weather in a city, as structured content."""
    return Weather(city=city, celsius=21.5)


@server.tool()
def picture() -> Image:
    """A 1x1 red PNG."""
    return Image(data=_png(), format="png")


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with `reason`."""
    raise ToolError(f"failed on purpose: {reason}")


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await anyio.sleep(seconds)
    return "done"


@server.tool()
def crash() -> str:
    """Kills this server process."""
    print("crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


if __name__ == "__main__":
    server.run()

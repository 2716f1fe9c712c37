"""What an MCP tool call costs next to the same function as a `@function_tool`.

    python benchmarks/mcp_tool.py [--calls N]

The same `add(a, b)` three ways: a local `@function_tool`, and served by an `mcp` SDK server
(this script run with `--serve`) over stdio and over streamable HTTP on 127.0.0.1. Each is timed
as the agent calls it (`Toolbox.run`: argument validation, the call, the result as text), and
through whole scripted agent runs (`usage.tool_seconds` per call). Medians, in milliseconds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from harmony_agent.agent import Agent
from harmony_agent.agent.toolbox import Toolbox
from harmony_agent.model import ScriptedModel
from harmony_agent.tools import MCPServer, ToolCall, function_tool


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CALL = '<|channel|>commentary to=functions.add <|constrain|>json<|message|>{"a": 2, "b": 3}<|call|>'
FINAL = "<|channel|>final<|message|>5<|return|>"


def sdk_server():  # type: ignore[no-untyped-def]
    from mcp.server.mcpserver import MCPServer as SDKServer

    server = SDKServer("bench", log_level="WARNING")
    server.add_tool(add)
    return server


def dispatch_ms(tool: object, calls: int) -> float:
    """Median milliseconds of one call as the agent's toolbox makes it."""
    import asyncio

    async def measure() -> float:
        box = Toolbox([tool], default_timeout=None)  # type: ignore[list-item]
        call = ToolCall("functions.add", '{"a": 2, "b": 3}', "commentary")
        for _ in range(5):  # warm up: connections, caches
            await box.run(call)
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            output, is_error = await box.run(call)
            timings.append(time.perf_counter() - started)
            assert (output, is_error) == ("5", False), output
        return statistics.median(timings) * 1e3

    return asyncio.run(measure())


def agent_ms(tool: object, calls: int) -> float:
    """Tool seconds per call, in milliseconds, over a scripted run of `calls` calls."""
    agent = Agent(ScriptedModel([CALL] * calls + [FINAL]), tools=[tool], max_steps=calls + 1)  # type: ignore[list-item]
    result = agent.run("2 + 3?")
    assert result.status == "completed" and result.usage.tool_calls == calls
    return result.usage.tool_seconds / calls * 1e3


def serve_http() -> str:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    web = uvicorn.Server(
        uvicorn.Config(sdk_server().streamable_http_app(), host="127.0.0.1", port=port,
                       log_level="warning")
    )  # fmt: skip
    threading.Thread(target=web.run, daemon=True).start()
    while not web.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}/mcp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls timed per way (default 200)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sdk_server().run("stdio")
        return
    local = function_tool(add)
    stdio = MCPServer("bench", sys.executable, [str(Path(__file__).resolve()), "--serve"])
    http = MCPServer("bench", url=serve_http())
    for server in (stdio, http):
        server.start()
    print(f"{args.calls} calls each, median ms per call")
    print(f"{'':28} {'toolbox':>9} {'agent run':>10} {'vs local':>9}")
    base = None
    for name, tool in (("@function_tool", local), ("MCP stdio", stdio), ("MCP HTTP", http)):
        dispatch = dispatch_ms(tool, args.calls)
        run = agent_ms(tool, min(args.calls, 50))
        base = base or dispatch
        print(f"{name:28} {dispatch:9.3f} {run:10.3f} {dispatch / base:8.1f}x")
    for server in (stdio, http):
        server.close()


if __name__ == "__main__":
    main()

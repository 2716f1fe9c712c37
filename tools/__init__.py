"""Tools the model can call: developer functions, plugins, MCP servers' tools, and the built-in
python and browser."""

from typing import TYPE_CHECKING, Any

from harmony_agent.sandbox import SandboxUnavailable

from .base import BuiltinTool, ToolCall, ToolError, ToolGroup
from .function_tool import FunctionTool, function_tool
from .run_context import RunContext

if TYPE_CHECKING:
    from .browser.tool import BrowserTool
    from .mcp import MCPServer
    from .python_tool import PythonTool

__all__ = [
    "BrowserTool",
    "BuiltinTool",
    "FunctionTool",
    "MCPServer",
    "PythonTool",
    "RunContext",
    "SandboxUnavailable",
    "ToolCall",
    "ToolError",
    "ToolGroup",
    "function_tool",
]


def __getattr__(name: str) -> Any:
    # The built-in tools pull in jupyter_client and playwright: import them when asked for.
    if name == "PythonTool":
        from .python_tool import PythonTool

        return PythonTool
    if name == "BrowserTool":
        from .browser.tool import BrowserTool

        return BrowserTool
    if name == "MCPServer":
        from .mcp import MCPServer

        return MCPServer
    raise AttributeError(f"module 'tools' has no attribute {name!r}")

"""Tools the model can call: developer functions, plugins, and the built-in python and browser."""

from .base import BuiltinTool, ToolCall, ToolError
from .function_tool import FunctionTool, function_tool

__all__ = ["BuiltinTool", "FunctionTool", "ToolCall", "ToolError", "function_tool"]

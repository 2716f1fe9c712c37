"""Tools the model can call: developer functions, plugins, and the built-in python and browser."""

from .base import BuiltinTool, ToolCall, ToolError

__all__ = ["BuiltinTool", "ToolCall", "ToolError"]

"""The agent's tools, addressed by recipient: routing, time limits, and errors as text."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeAlias

from openai_harmony import ToolDescription, ToolNamespaceConfig

from harmony_agent.tools import BuiltinTool, RunContext, ToolCall, ToolError, ToolGroup
from harmony_agent.tools.function_tool import FunctionTool

Tool: TypeAlias = FunctionTool | BuiltinTool | ToolGroup


class Toolbox:
    """Routes each recipient the model writes to the tool that answers it.

    Groups (MCP servers) are asked for their tools when the box is first used, not when it is
    made: making one must not start servers."""

    def __init__(self, tools: Sequence[Tool], *, default_timeout: float | None) -> None:
        self.tools = list(tools)
        self.default_timeout = default_timeout
        self._routes: dict[str, FunctionTool | BuiltinTool] = {}
        for tool in self.tools:
            if isinstance(tool, FunctionTool):
                self._add(tool.recipient, tool)
            elif isinstance(tool, BuiltinTool):
                for recipient in tool.recipients():
                    self._add(recipient, tool)
            elif not isinstance(tool, ToolGroup):
                raise TypeError(
                    f"not a tool: {tool!r}; decorate functions with @function_tool or pass a "
                    f"BuiltinTool such as PythonTool() or an MCPServer"
                )
        self._groups = [t for t in self.tools if isinstance(t, ToolGroup)]
        self._functions = [t for t in self.tools if isinstance(t, FunctionTool)]
        self._expanded = not self._groups
        self._aliases: dict[str, str] = {}
        if self._expanded:
            self._alias_builtins()

    def _expand(self) -> None:
        """Add the groups' tools, prefixing a name that two tools share with its group's."""
        if self._expanded:
            return
        listed = [(group, group.function_tools()) for group in self._groups]
        counts = Counter(t.name for t in self._functions)
        counts.update(t.name for _, tools in listed for t in tools)
        for group, tools in listed:
            for tool in tools:
                if counts[tool.name] > 1:
                    tool = dataclasses.replace(tool, name=f"{group.name}_{tool.name}")
                self._add(tool.recipient, tool)
                self._functions.append(tool)
        self._expanded = True
        self._alias_builtins()

    def _alias_builtins(self) -> None:
        # Models often address built-ins as developer functions (`functions.python`).
        self._aliases = {
            f"functions.{r}": r
            for r, t in self._routes.items()
            if isinstance(t, BuiltinTool) and f"functions.{r}" not in self._routes
        }

    def _add(self, recipient: str, tool: FunctionTool | BuiltinTool) -> None:
        if recipient in self._routes:
            raise ValueError(f"two tools answer to {recipient!r}: rename one of them")
        self._routes[recipient] = tool

    def namespaces(self) -> list[ToolNamespaceConfig]:
        """Built-in namespaces, for the system message."""
        return [t.namespace_config() for t in self.tools if isinstance(t, BuiltinTool)]

    def functions(self) -> list[ToolDescription]:
        """Function tools, for the developer message."""
        self._expand()
        return [t.tool_description() for t in self._functions]

    def recipients(self) -> list[str]:
        """Every recipient a tool answers to."""
        self._expand()
        return list(self._routes)

    def resolve(self, recipient: str) -> str:
        """The canonical recipient: aliases mapped to the tool they stand for."""
        self._expand()
        recipient = recipient.strip()
        return self._aliases.get(recipient, recipient)

    async def run(self, call: ToolCall, context: RunContext[Any] | None = None) -> tuple[str, bool]:
        """Run one call: `(output, is_error)`. Every failure becomes text for the model.
        `context` goes to function tools that take one."""
        self._expand()
        tool = self._routes.get(call.recipient)
        if tool is None:
            available = ", ".join(self._routes) or "none"
            return f"Unknown tool {call.recipient!r}. Available tools: {available}.", True
        timeout = (
            tool.timeout
            if tool.timeout is not None
            else (self.default_timeout if isinstance(tool, FunctionTool) else None)
        )
        if isinstance(tool, FunctionTool):
            work = tool.invoke(call.arguments, context)
        else:
            work = tool.call(call)
        try:
            return await asyncio.wait_for(work, timeout), False
        except ToolError as e:
            return str(e), True
        except TimeoutError:
            return f"The call to {call.recipient} timed out after {timeout:g} seconds.", True
        except Exception as e:
            return (
                f"An error occurred while running the tool {call.recipient}. Please try again. "
                f"Error: {type(e).__name__}: {e}",
                True,
            )

    async def aclose(self) -> None:
        """Close every built-in tool and group (kernels, browsers, servers), even if one of
        them fails."""
        results = await asyncio.gather(
            *(t.aclose() for t in self.tools if isinstance(t, BuiltinTool | ToolGroup)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

"""What every tool is: a call comes in as text, text goes back to the model.

Two kinds, as harmony declares them:
- function tools (`FunctionTool`, made with `@function_tool`) live in the developer message's
  `functions` namespace and are addressed as `functions.NAME`;
- built-in tools (`BuiltinTool`: the browser, python) are namespaces declared in the system
  message and addressed as `NAMESPACE` or `NAMESPACE.METHOD` (`python`, `browser.open`).

A `ToolGroup` (an MCP server's tools) is a set of function tools found at run time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openai_harmony import ToolNamespaceConfig

if TYPE_CHECKING:
    from .function_tool import FunctionTool


@dataclass(frozen=True)
class ToolCall:
    """One call the model made."""

    recipient: str
    """The resolved recipient: `functions.add`, `python`, `browser.open`."""
    arguments: str
    """The message text: JSON for function tools, code for python, JSON for the browser."""
    channel: str | None = None
    """The channel the call was made on; the result goes back on the same channel."""
    content_type: str | None = None
    """The header's content type, e.g. `<|constrain|>json`."""

    @property
    def method(self) -> str:
        """The part after the namespace: `add` for `functions.add`, `open` for `browser.open`."""
        return self.recipient.partition(".")[2]


class ToolError(Exception):
    """An error the model can fix (bad arguments, a page that does not exist, ...).

    Raise it from a tool: its message is returned to the model as the tool's output and the run
    goes on, so the model can correct itself.
    """


class BuiltinTool(ABC):
    """A harmony built-in tool namespace, declared to the model in the system message."""

    name: str
    """The namespace, which is also the recipient prefix: `python`, `browser`."""
    timeout: float | None = None
    """Seconds the agent waits for one call before telling the model it timed out; None leaves
    time limits to the tool itself."""

    @abstractmethod
    def namespace_config(self) -> ToolNamespaceConfig:
        """The namespace as the system message declares it."""

    def recipients(self) -> list[str]:
        """Every recipient this tool answers to: `[python]`, `[browser.search, ...]`."""
        config = self.namespace_config()
        return [f"{self.name}.{t.name}" for t in config.tools] or [self.name]

    @abstractmethod
    async def call(self, call: ToolCall) -> str:
        """Run one call; return what the model sees. Raise `ToolError` for the model's mistakes."""

    async def reset(self) -> None:  # noqa: B027 - optional hook, most tools keep no state
        """Forget the state earlier calls left (a kernel's variables), as a new conversation
        starts: `Agent.reset_tools()` calls it. The tool stays usable."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most tools hold nothing
        """Release what the tool holds (a kernel, a browser). Called when the agent session ends."""


class ToolGroup(ABC):
    """Function tools that someone else defines and that are known only once asked for: an MCP
    server's. The agent asks at its first prompt; a tool name that another tool also has is
    shown to the model as `{name}_{tool}`."""

    name: str
    """Names the group in messages, and prefixes its tools' names where they clash."""

    @abstractmethod
    def function_tools(self) -> list[FunctionTool]:
        """The tools, in the `functions` namespace; may block while they are fetched. Raises
        (with a one-line message) when they cannot be had."""

    async def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget the state earlier calls left, as a new conversation starts."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the group holds (a server process, a connection)."""

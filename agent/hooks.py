"""Lifecycle hooks: code of yours that runs at fixed points of every run.

Subclass `AgentHooks`, override what you need, and pass an instance as `Agent(hooks=...)`. The
methods may be plain or async; each is awaited in the run's event loop. They see what the typed
events show, but also work with `run()` and can stop a tool call before it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harmony_agent.tools import ToolCall

if TYPE_CHECKING:
    from .result import RunResult


class AgentHooks:
    """No-op methods to override."""

    async def on_run_start(self, prompt: str | None) -> None:
        """A run begins with the user's `prompt` (None: it continues the history given)."""

    async def on_model_call(self, step: int, prompt_tokens: Sequence[int]) -> None:
        """Model call number `step` (from 1) is about to continue `prompt_tokens`."""

    async def on_tool_start(self, call: ToolCall) -> None:
        """`call` is about to run. Raise `ToolError(text)` to refuse it: the tool does not run
        and the model gets `text` as its answer (an approval gate, a budget, a policy)."""

    async def on_tool_end(self, call: ToolCall, output: str, is_error: bool) -> None:
        """`call` answered `output` (`is_error`: the answer reports a failure)."""

    async def on_run_end(self, result: RunResult) -> None:
        """The run ended, with any status."""

"""The agent: render the conversation, stream the model's reply, call tools, repeat."""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from openai_harmony import Message

from harmony_agent.model import Model, Sampling
from harmony_agent.tools import BuiltinTool, ToolGroup

from .conversation import developer_message, strip_preamble, system_message
from .events import AgentEvent, RunDone
from .hooks import AgentHooks
from .result import RunResult
from .run_loop import RunLoop
from .tool_choice import recipient_of
from .toolbox import Tool, Toolbox

T = TypeVar("T")
History = RunResult | Sequence[Message] | None


@dataclass
class Agent:
    """A gpt-oss agent: a model, the tools it may call, and the limits of one run.

    `run()` / `stream()` are for plain scripts; `arun()` / `astream()` for async programs. Tools
    that hold resources (the python kernel, the browser) live as long as the agent: close it with
    `close()` / `aclose()` or use it as a (async) context manager. Their state (the kernel's
    variables) outlives each run: `reset_tools()` clears it for a new conversation.
    """

    model: Model
    """Anything with `generate(prompt, *, stop_tokens, max_tokens, sampling)`: a checkpoint from
    `load_model`, or a `ScriptedModel`."""
    tools: Sequence[Tool] = ()
    """Function tools (`@function_tool`), built-in tools (`PythonTool()`, `BrowserTool()`) and
    MCP servers (`MCPServer(...)`, started at the first run)."""
    instructions: str | None = None
    """The developer's instructions, sent in the developer message."""
    reasoning_effort: Literal["low", "medium", "high"] = "medium"
    """How long the model thinks before answering."""
    sampling: Sampling = field(default_factory=Sampling)
    """Temperature, top-p and seed for every model call."""
    max_steps: int = 32
    """Model calls per run; a run that needs more ends with status `max_steps`."""
    max_turn_tokens: int = 8192
    """Tokens one model call may generate before the run ends with status `max_turn_tokens`."""
    max_total_tokens: int | None = None
    """Tokens the whole run may generate (None: no limit); past it, status `max_total_tokens`."""
    tool_choice: str = "auto"
    """"auto": the model decides; "required": it calls some tool, or a tool's name ("get_weather",
    "browser.search"): it calls that one - before its first tool call of each run; after it,
    the model decides again (as the Agents SDK resets tool_choice, so a run cannot loop)."""
    tool_timeout: float | None = 120.0
    """Seconds a function tool may take (unless it sets its own); the model is told when it
    times out. A sync function keeps running in its thread: Python cannot kill a thread."""
    knowledge_cutoff: str = "2024-06"
    """As the system message states it; gpt-oss was trained with 2024-06."""
    current_date: str | None = None
    """The date the system message states; None uses today's date at each run."""
    model_identity: str | None = None
    """Replaces harmony's default identity line in the system message."""
    hooks: AgentHooks | None = None
    """Code to run at fixed points of every run (`AgentHooks`): logging, approving tool calls."""
    _runner: asyncio.Runner | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_turn_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be at least 1, got {self.max_total_tokens}")
        recipient_of(self.tool_choice)  # a blank name is refused now
        self._toolbox()  # fail now, not mid-run, on a bad tool list

    def _toolbox(self) -> Toolbox:
        return Toolbox(self.tools, default_timeout=self.tool_timeout)

    def tool_recipients(self) -> list[str]:
        """Every recipient the model may address: `functions.add`, `python`, `browser.open`, ..."""
        return self._toolbox().recipients()

    def preamble(self, toolbox: Toolbox | None = None) -> list[Message]:
        """The system message and, when there are instructions or functions, the developer one."""
        toolbox = toolbox or self._toolbox()
        system = system_message(
            reasoning_effort=self.reasoning_effort,
            current_date=self.current_date or datetime.date.today().isoformat(),
            knowledge_cutoff=self.knowledge_cutoff,
            namespaces=toolbox.namespaces(),
            model_identity=self.model_identity,
        )
        developer = developer_message(self.instructions, toolbox.functions())
        return [system] if developer is None else [system, developer]

    # -- async core ---------------------------------------------------------------------------

    async def astream(
        self,
        prompt: str | None,
        *,
        history: History = None,
        transcript: str | os.PathLike[str] | None = None,
        context: Any = None,
    ) -> AsyncIterator[AgentEvent]:
        """Run the agent on `prompt`, yielding events as they happen; the last is `RunDone`.

        `history` continues a conversation (a previous `RunResult` or its messages, e.g. from
        `load_transcript`); with `prompt` None the model answers the history as it stands (it
        ends with a user message, or a tool's output given by the caller). `transcript`
        appends every message to that JSONL file as it completes; a new file first gets the
        system and developer messages and the history. `context` is handed to the function
        tools that take a `RunContext`, never shown to the model.
        """
        past = strip_preamble(history.messages if isinstance(history, RunResult) else history or [])
        if prompt is None and not past:
            raise ValueError("prompt None continues a history, but the history is empty")
        run = RunLoop(self, prompt, past, transcript, context)
        try:
            async with aclosing(run.events()) as events:
                async for event in events:
                    yield event
        finally:
            run.close()

    async def arun(
        self,
        prompt: str | None,
        *,
        history: History = None,
        transcript: str | os.PathLike[str] | None = None,
        context: Any = None,
    ) -> RunResult:
        """Run the agent on `prompt` until it answers or a limit ends the run."""
        run = self.astream(prompt, history=history, transcript=transcript, context=context)
        async with aclosing(run) as events:
            async for event in events:
                if isinstance(event, RunDone):
                    return event.result
        raise AssertionError("astream ended without RunDone")  # pragma: no cover

    async def areset_tools(self) -> None:
        """Clear the state tools keep between calls (the python kernel's variables): call it when
        a new conversation starts, so that nothing of an earlier one carries over."""
        await asyncio.gather(
            *(t.reset() for t in self.tools if isinstance(t, BuiltinTool | ToolGroup))
        )

    async def aclose(self) -> None:
        """Shut down the tools' resources (kernels, browsers)."""
        await self._toolbox().aclose()

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- sync wrappers --------------------------------------------------------------------------

    def run(
        self,
        prompt: str | None,
        *,
        history: History = None,
        transcript: str | os.PathLike[str] | None = None,
        context: Any = None,
    ) -> RunResult:
        """`arun` for plain scripts."""
        return self._sync(
            self.arun(prompt, history=history, transcript=transcript, context=context)
        )

    def stream(
        self,
        prompt: str | None,
        *,
        history: History = None,
        transcript: str | os.PathLike[str] | None = None,
        context: Any = None,
    ) -> Iterator[AgentEvent]:
        """`astream` for plain scripts."""
        events = self.astream(prompt, history=history, transcript=transcript, context=context)
        stepping: asyncio.Task[Any] | None = None

        async def step() -> tuple[bool, Any]:
            nonlocal stepping
            stepping = asyncio.current_task()
            try:
                return True, await anext(events)
            except StopAsyncIteration:
                return False, None
            finally:
                stepping = None

        async def close() -> None:
            # A Ctrl-C that lands after the runner scheduled a step but before it ran leaves that
            # step to start now, inside the generator: cancel it first, or aclose() finds the
            # generator running.
            if stepping is not None:
                stepping.cancel()
                await asyncio.wait([stepping])
            await events.aclose()

        try:
            while True:
                more, event = self._sync(step())
                if not more:
                    return
                yield event
        finally:
            self._sync(close())

    def reset_tools(self) -> None:
        """`areset_tools` for plain scripts."""
        self._sync(self.areset_tools())

    def close(self) -> None:
        """`aclose` for plain scripts; also ends the agent's private event loop."""
        if self._runner is None:
            return
        try:
            self._sync(self.aclose())
        finally:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "Agent.run()/stream() cannot be called from a running event loop; use "
                "`await agent.arun(...)` or `agent.astream(...)` there"
            )
        # One loop for the agent's lifetime: async tools (the browser) keep state bound to it.
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coro)

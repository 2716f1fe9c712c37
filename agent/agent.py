"""The agent: render the conversation, stream the model's reply, call tools, repeat."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import os
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from openai_harmony import (
    Author,
    HarmonyError,
    Message,
    Role,
    StreamableParser,
    StreamState,
)

from model import Model, Sampling, harmony_encoding
from tools import RunContext, ToolCall, ToolError

from ._tokens import stream_tokens
from .conversation import (
    Prompt,
    developer_message,
    drop_finished_analysis,
    strip_preamble,
    system_message,
    text_of,
)
from .events import (
    AgentEvent,
    CommentaryDelta,
    FinalDelta,
    MessageAdded,
    ReasoningDelta,
    RunDone,
    ToolCallDelta,
    ToolCalled,
    ToolResult,
)
from .hooks import AgentHooks
from .result import RunResult, Status, Usage
from .toolbox import Tool, Toolbox
from .transcript import TranscriptWriter

T = TypeVar("T")
History = RunResult | Sequence[Message] | None


@dataclass
class Agent:
    """A gpt-oss agent: a model, the tools it may call, and the limits of one run.

    `run()` / `stream()` are for plain scripts; `arun()` / `astream()` for async programs. Tools
    that hold resources (the python kernel, the browser) live as long as the agent: close it with
    `close()` / `aclose()` or use it as a (async) context manager.
    """

    model: Model
    """Anything with `generate(prompt, *, stop_tokens, max_tokens, sampling)`: a checkpoint from
    `load_model`, or a `ScriptedModel`."""
    tools: Sequence[Tool] = ()
    """Function tools (`@function_tool`) and built-in tools (`PythonTool()`, `BrowserTool()`)."""
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
        prompt: str,
        *,
        history: History = None,
        transcript: str | os.PathLike[str] | None = None,
        context: Any = None,
    ) -> AsyncIterator[AgentEvent]:
        """Run the agent on `prompt`, yielding events as they happen; the last is `RunDone`.

        `history` continues a conversation (a previous `RunResult` or its messages, e.g. from
        `load_transcript`). `transcript` appends every message to that JSONL file as it completes;
        a new file first gets the system and developer messages and the history. `context` is
        handed to the function tools that take a `RunContext`, never shown to the model.
        """
        started = time.perf_counter()
        encoding = harmony_encoding()
        call_token = encoding.encode("<|call|>", allowed_special="all")[0]
        stop_tokens = set(encoding.stop_tokens_for_assistant_actions())
        toolbox = self._toolbox()
        preamble = self.preamble(toolbox)
        past = strip_preamble(history.messages if isinstance(history, RunResult) else history or [])
        user = Message.from_role_and_content(Role.USER, prompt)
        messages = list(past)  # what the result reports
        prompt_tokens = Prompt(encoding, [*preamble, *drop_finished_analysis(past)])
        usage = Usage(context_limit=_context_limit(self.model))
        writer = TranscriptWriter(transcript) if transcript is not None else None
        if writer is not None and writer.is_new:
            for message in [*preamble, *past]:
                writer.message(message)

        def add(message: Message) -> MessageAdded:
            messages.append(message)
            prompt_tokens.append(message)
            if writer is not None:
                writer.message(message)
            return MessageAdded(message)

        async def done(
            status: Status, final: str | None = None, detail: str | None = None
        ) -> RunDone:
            usage.seconds = time.perf_counter() - started
            result = RunResult(final, status, detail, messages, usage)
            if writer is not None:
                writer.run_ended(result)
            await hook("on_run_end", result)
            return RunDone(result)

        async def hook(name: str, *args: Any) -> None:
            if self.hooks is not None:
                out = getattr(self.hooks, name)(*args)
                if inspect.isawaitable(out):  # plain methods are welcome too
                    await out

        try:
            await hook("on_run_start", prompt)
            yield add(user)
            for _ in range(self.max_steps):
                budget, limit = self.max_turn_tokens, "max_turn_tokens"
                if self.max_total_tokens is not None:
                    left = self.max_total_tokens - usage.output_tokens
                    if left <= 0:
                        yield await done("max_total_tokens", detail=_limit_detail(self, usage))
                        return
                    if left < budget:
                        budget, limit = left, "max_total_tokens"
                tokens = prompt_tokens.for_completion()
                if (room := _context_room(self.model, tokens)) is not None:
                    if room <= 0:
                        yield await done("max_context", detail=_context_detail(self.model, tokens))
                        return
                    if room < budget:
                        budget, limit = room, "max_context"
                usage.steps += 1
                usage.prompt_tokens += len(tokens)
                await hook("on_model_call", usage.steps, tokens)

                # Stream one model turn through the parser.
                parser = StreamableParser(encoding, Role.ASSISTANT)
                turn: list[Message] = []
                count, last, error = 0, None, None
                step_started = time.perf_counter()
                async with aclosing(
                    stream_tokens(
                        self.model,
                        tokens,
                        stop_tokens=stop_tokens,
                        max_tokens=budget,
                        sampling=self.sampling,
                    )
                ) as stream:
                    async for token in stream:
                        count, last = count + 1, token
                        try:
                            parser.process(token)
                        except HarmonyError as e:
                            error = f"the model's output is not valid harmony ({e})"
                            break
                        if delta := parser.last_content_delta:
                            yield _delta_event(parser, delta)
                        while len(parser.messages) > len(turn):
                            turn.append(parser.messages[len(turn)])
                            yield add(turn[-1])
                usage.model_seconds += time.perf_counter() - step_started
                usage.output_tokens += count
                usage.context_tokens = len(tokens) + count

                if error is None and last not in stop_tokens:
                    if count >= budget and limit == "max_context":
                        detail = _context_detail(self.model, tokens)
                        yield await done("max_context", detail=detail)
                        return
                    if count >= budget:
                        yield await done(limit, detail=_limit_detail(self, usage, limit))  # type: ignore[arg-type]
                        return
                    if parser.state != StreamState.EXPECT_START:
                        # Stopped without <|end|>/<|call|>/<|return|>: a truncated call must not
                        # run, and a truncated answer is not an answer.
                        error = "the model stopped in the middle of a message"
                if error is not None:
                    yield await done("invalid_output", detail=error)
                    return
                if not turn:
                    detail = "the model produced no complete message"
                    yield await done("invalid_output", detail=detail)
                    return

                reply = turn[-1]
                if reply.recipient and reply.recipient != "assistant":
                    call = ToolCall(
                        recipient=toolbox.resolve(reply.recipient),
                        arguments=text_of(reply),
                        channel=reply.channel,
                        content_type=reply.content_type,
                    )
                    yield ToolCalled(call)
                    tool_started = time.perf_counter()
                    run_context = RunContext(context, tuple(messages), call.recipient)
                    try:
                        await hook("on_tool_start", call)
                    except ToolError as e:  # refused: the model reads why, the tool never runs
                        output, is_error = str(e), True
                    else:
                        output, is_error = await toolbox.run(call, run_context)
                    await hook("on_tool_end", call, output, is_error)
                    seconds = time.perf_counter() - tool_started
                    usage.tool_calls += 1
                    usage.tool_seconds += seconds
                    yield ToolResult(call, output, is_error, seconds)
                    yield add(_tool_message(call, output))
                    continue
                if last == call_token:
                    yield await done(
                        "invalid_output",
                        detail="the model ended with <|call|> but addressed no tool",
                    )
                    return
                if reply.channel == "analysis":
                    yield await done(
                        "invalid_output",
                        detail="the model ended its turn on the "
                        "analysis channel, without a final answer",
                    )
                    return
                yield await done("completed", final=text_of(reply))
                return
            yield await done(
                "max_steps", detail=f"max_steps ({self.max_steps}) reached without a final answer"
            )
        finally:
            if writer is not None:
                writer.close()

    async def arun(
        self,
        prompt: str,
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
        prompt: str,
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
        prompt: str,
        *,
        history: History = None,
        transcript: str | os.PathLike[str] | None = None,
        context: Any = None,
    ) -> Iterator[AgentEvent]:
        """`astream` for plain scripts."""
        events = self.astream(prompt, history=history, transcript=transcript, context=context)

        async def step() -> tuple[bool, Any]:
            try:
                return True, await anext(events)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, event = self._sync(step())
                if not more:
                    return
                yield event
        finally:
            self._sync(events.aclose())

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


def _delta_event(parser: StreamableParser, delta: str) -> AgentEvent:
    recipient = parser.current_recipient
    if recipient and recipient != "assistant":
        return ToolCallDelta(recipient, delta)
    if parser.current_channel == "analysis":
        return ReasoningDelta(delta)
    if parser.current_channel == "commentary":
        return CommentaryDelta(delta)
    return FinalDelta(delta)


def _tool_message(call: ToolCall, output: str) -> Message:
    message = Message.from_author_and_content(Author.new(Role.TOOL, call.recipient), output)
    message = message.with_recipient("assistant")
    return message.with_channel(call.channel) if call.channel else message


def _context_limit(model: Model) -> int | None:
    limit = getattr(model, "max_context", None)
    return limit if isinstance(limit, int) else None


def _context_room(model: Model, prompt: list[int]) -> int | None:
    """Tokens the model may still generate after `prompt`, when it declares a `max_context`."""
    limit = _context_limit(model)
    return None if limit is None else limit - len(prompt)


def _context_detail(model: Model, prompt: list[int]) -> str:
    return (
        f"the conversation ({len(prompt)} tokens before this turn) filled the model's context of "
        f"{_context_limit(model)} tokens"
    )


def _limit_detail(agent: Agent, usage: Usage, limit: str = "max_total_tokens") -> str:
    if limit == "max_turn_tokens":
        return f"max_turn_tokens ({agent.max_turn_tokens}) reached inside one model turn"
    return f"max_total_tokens ({agent.max_total_tokens}) reached after {usage.output_tokens} tokens"

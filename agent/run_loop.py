"""One run of an agent, as a loop of small steps: budget the turn, stream it, classify how it
ended, call the tool it addressed, repeat."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from openai_harmony import Author, HarmonyError, Message, Role, StreamableParser, StreamState

from harmony_agent.model import Model, harmony_encoding
from harmony_agent.tools import RunContext, ToolCall, ToolError

from ._tokens import stream_tokens
from .conversation import Prompt, drop_finished_analysis, text_of
from .events import (
    AgentEvent,
    CommentaryDelta,
    FinalDelta,
    MessageAdded,
    ModelProgress,
    ReasoningDelta,
    RunDone,
    ToolCallDelta,
    ToolCalled,
    ToolResult,
)
from .hooks import AgentHooks
from .result import RunResult, Status, Usage
from .tool_choice import answer_begins, call_header
from .transcript import TranscriptWriter

if TYPE_CHECKING:
    from .agent import Agent

PROGRESS_SECONDS = 0.1
"""How often a model call reports its progress: often enough for a status line, and rarely
enough that a fast model does not pay for one event per token."""


@dataclass(frozen=True)
class Budget:
    """What the next model call may generate, and which limit says so."""

    tokens: int
    limit: Status
    prompt: list[int]


@dataclass(frozen=True)
class Ending:
    """How a run ends."""

    status: Status
    final: str | None = None
    detail: str | None = None
    raw: str | None = None


@dataclass
class Turn:
    """What one model call produced."""

    messages: list[Message] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    """Every token generated."""
    parsed: int = 0
    """How many of them make up `messages`; any after are a message not finished or invalid."""
    error: str | None = None
    """Why the output could not be parsed, when it could not."""
    mid_message: bool = False
    """The output stopped inside a message (no <|end|>, <|call|> or <|return|> closed it)."""

    @property
    def tokens(self) -> int:
        return len(self.output)

    @property
    def last_token(self) -> int | None:
        return self.output[-1] if self.output else None


class RunLoop:
    """The state of one run: the conversation so far, its usage, its transcript."""

    def __init__(
        self,
        agent: Agent,
        prompt: str | None,
        past: Sequence[Message],
        transcript: str | os.PathLike[str] | None,
        context: Any,
    ) -> None:
        self.started = time.perf_counter()
        self.agent = agent
        self.prompt = prompt
        self.context = context
        self.hooks = agent.hooks or AgentHooks()
        self.encoding = harmony_encoding()
        self.call_token = self.encoding.encode("<|call|>", allowed_special="all")[0]
        self.stop_tokens = set(self.encoding.stop_tokens_for_assistant_actions())
        self.toolbox = agent._toolbox()
        preamble = agent.preamble(self.toolbox)
        self.messages = list(past)
        """What the result reports: the conversation after the preamble."""
        self.tokens = Prompt(self.encoding, [*preamble, *drop_finished_analysis(past)])
        self.usage = Usage(context_limit=_context_limit(agent.model))
        self.writer = TranscriptWriter(transcript) if transcript is not None else None
        if self.writer is not None and self.writer.is_new:
            for message in [*preamble, *past]:
                self.writer.message(message)

    async def events(self) -> AsyncIterator[AgentEvent]:
        await _settle(self.hooks.on_run_start(self.prompt))
        if self.prompt is not None:  # None: the history already ends with what to answer
            yield self.add(Message.from_role_and_content(Role.USER, self.prompt))
        for _ in range(self.agent.max_steps):
            budget = self.budget()
            if isinstance(budget, Ending):
                yield await self.end(budget)
                return
            turn = Turn()
            async for event in self.stream_turn(budget, turn):
                yield event
            ending = self.classify(turn, budget)
            if ending is not None:
                yield await self.end(ending)
                return
            async for event in self.call_tool(turn.messages[-1]):
                yield event
        detail = f"max_steps ({self.agent.max_steps}) reached without a final answer"
        yield await self.end(Ending("max_steps", detail=detail))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    # -- the steps -----------------------------------------------------------------------------

    def budget(self) -> Budget | Ending:
        """The tightest of the turn, run and context limits, or the ending when one is spent."""
        agent, usage = self.agent, self.usage
        tokens, limit = agent.max_turn_tokens, "max_turn_tokens"
        if agent.max_total_tokens is not None:
            left = agent.max_total_tokens - usage.output_tokens
            if left <= 0:
                return Ending("max_total_tokens", detail=_limit_detail(agent, usage))
            if left < tokens:
                tokens, limit = left, "max_total_tokens"
        prompt = self.tokens.for_completion()
        if (room := _context_room(agent.model, prompt)) is not None:
            if room <= 0:
                return Ending("max_context", detail=_context_detail(agent.model, prompt))
            if room < tokens:
                tokens, limit = room, "max_context"
        return Budget(tokens, limit, prompt)  # type: ignore[arg-type]

    async def stream_turn(self, budget: Budget, turn: Turn) -> AsyncIterator[AgentEvent]:
        """Run one model call through the parser, yielding deltas and messages into `turn`."""
        usage = self.usage
        usage.steps += 1
        await _settle(self.hooks.on_model_call(usage.steps, budget.prompt))
        yield ModelProgress(usage.steps, usage.output_tokens)
        parser = StreamableParser(self.encoding, Role.ASSISTANT)
        started = time.perf_counter()
        prompt = budget.prompt
        forcing = self.agent.tool_choice != "auto" and usage.tool_calls == 0
        while True:
            usage.prompt_tokens += len(prompt)
            tokens = stream_tokens(
                self.agent.model,
                prompt,
                stop_tokens=self.stop_tokens,
                max_tokens=budget.tokens - turn.tokens,
                sampling=self.agent.sampling,
            )
            async for event in self._read(tokens, parser, turn, forcing):
                yield event
            if not forcing or not answer_begins(parser) or turn.error is not None:
                break
            # The model began an answer where a call is due: resume from a call's header.
            kept = turn.output[: turn.parsed]
            header = call_header(self.encoding, self.agent.tool_choice, first=not kept)
            turn.output = [*kept, *header]
            prompt = [*budget.prompt, *turn.output]
            parser = StreamableParser(self.encoding, Role.ASSISTANT)
            for token in turn.output:  # the messages it holds were reported already
                parser.process(token)
            forcing = False
            if turn.tokens >= budget.tokens:
                break
        usage.model_seconds += time.perf_counter() - started
        usage.output_tokens += turn.tokens
        usage.context_tokens = len(budget.prompt) + turn.tokens
        turn.mid_message = parser.state != StreamState.EXPECT_START

    async def _read(
        self, tokens: AsyncIterator[int], parser: StreamableParser, turn: Turn, forcing: bool
    ) -> AsyncIterator[AgentEvent]:
        """Stream `tokens` through `parser` into `turn`; when `forcing`, stop where an answer
        begins."""
        usage = self.usage
        reported = time.perf_counter()
        async with aclosing(tokens) as stream:
            async for token in stream:
                turn.output.append(token)
                if (now := time.perf_counter()) - reported >= PROGRESS_SECONDS:
                    reported = now
                    yield ModelProgress(usage.steps, usage.output_tokens + turn.tokens)
                try:
                    parser.process(token)
                except HarmonyError as e:
                    turn.error = f"the model's output is not valid harmony ({e})"
                    break
                if forcing and answer_begins(parser):
                    break
                if delta := parser.last_content_delta:
                    yield _delta_event(parser, delta)
                while len(parser.messages) > len(turn.messages):
                    turn.messages.append(parser.messages[len(turn.messages)])
                    turn.parsed = turn.tokens
                    yield self.add(turn.messages[-1])

    def classify(self, turn: Turn, budget: Budget) -> Ending | None:
        """How the run ends after `turn`, or None when the turn calls a tool."""
        ending = self._classify(turn, budget)
        unparsed = turn.output[turn.parsed :]
        if ending is None or not unparsed:
            return ending
        return replace(ending, raw=self.encoding.decode(unparsed))

    def _classify(self, turn: Turn, budget: Budget) -> Ending | None:
        error = turn.error
        if error is None and turn.last_token not in self.stop_tokens:
            if turn.tokens >= budget.tokens:
                return Ending(budget.limit, detail=self._limit_detail(budget))
            if turn.mid_message:
                # A truncated call must not run, and a truncated answer is not an answer.
                error = "the model stopped in the middle of a message"
        if error is not None:
            return Ending("invalid_output", detail=error)
        if not turn.messages:
            return Ending("invalid_output", detail="the model produced no complete message")
        reply = turn.messages[-1]
        if reply.recipient and reply.recipient != "assistant":
            return None
        if turn.last_token == self.call_token:
            return Ending(
                "invalid_output", detail="the model ended with <|call|> but addressed no tool"
            )
        if reply.channel == "analysis":
            detail = "the model ended its turn on the analysis channel, without a final answer"
            return Ending("invalid_output", detail=detail)
        return Ending("completed", final=text_of(reply))

    async def call_tool(self, reply: Message) -> AsyncIterator[AgentEvent]:
        """Run the tool `reply` addresses and add its answer to the conversation."""
        assert reply.recipient is not None
        call = ToolCall(
            recipient=self.toolbox.resolve(reply.recipient),
            arguments=text_of(reply),
            channel=reply.channel,
            content_type=reply.content_type,
        )
        yield ToolCalled(call)
        started = time.perf_counter()
        run_context = RunContext(self.context, tuple(self.messages), call.recipient)
        try:
            await _settle(self.hooks.on_tool_start(call))
        except ToolError as e:  # refused: the model reads why, the tool never runs
            output, is_error = str(e), True
        else:
            output, is_error = await self.toolbox.run(call, run_context)
        await _settle(self.hooks.on_tool_end(call, output, is_error))
        seconds = time.perf_counter() - started
        self.usage.tool_calls += 1
        self.usage.tool_seconds += seconds
        yield ToolResult(call, output, is_error, seconds)
        yield self.add(_tool_message(call, output))

    def _limit_detail(self, budget: Budget) -> str:
        if budget.limit == "max_context":
            return _context_detail(self.agent.model, budget.prompt)
        return _limit_detail(self.agent, self.usage, budget.limit)

    # -- bookkeeping ---------------------------------------------------------------------------

    def add(self, message: Message) -> MessageAdded:
        self.messages.append(message)
        self.tokens.append(message)
        if self.writer is not None:
            self.writer.message(message)
        return MessageAdded(message)

    async def end(self, ending: Ending) -> RunDone:
        self.usage.seconds = time.perf_counter() - self.started
        result = RunResult(
            ending.final, ending.status, ending.detail, self.messages, self.usage, raw=ending.raw
        )
        if self.writer is not None:
            self.writer.run_ended(result)
        await _settle(self.hooks.on_run_end(result))
        return RunDone(result)


async def _settle(outcome: object) -> None:
    """Hooks may be plain or async methods."""
    if inspect.isawaitable(outcome):
        await outcome


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


def _limit_detail(agent: Agent, usage: Usage, limit: Status = "max_total_tokens") -> str:
    if limit == "max_turn_tokens":
        return f"max_turn_tokens ({agent.max_turn_tokens}) reached inside one model turn"
    return f"max_total_tokens ({agent.max_total_tokens}) reached after {usage.output_tokens} tokens"

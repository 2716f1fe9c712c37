"""One request's run: the Agent over the client's conversation, reported as output items.

The protocol modules build a `RunSpec` from a request; `Runner.prepare` checks it against the
model (the prompt renders, fits the context) before any byte of the response is sent, and
`PreparedRun.events()` runs the agent. Built-in tools and the server's own functions run inside
the agent loop; a call to one of the client's functions ends the run there, unrun, as the
response's last item. Items are protocol-neutral: each module words them for its wire format.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from openai_harmony import (
    Conversation,
    DeveloperContent,
    HarmonyError,
    Message,
    RenderConversationConfig,
    Role,
)

from harmony_agent.model import Model, Sampling, harmony_encoding

from ..agent import Agent
from ..conversation import drop_finished_analysis, text_of
from ..events import (
    AgentEvent,
    CommentaryDelta,
    FinalDelta,
    MessageAdded,
    ReasoningDelta,
    RunDone,
    ToolCallDelta,
    ToolCalled,
)
from ..result import RunResult
from ..toolbox import Toolbox
from .client_tools import ClientFunction, ClientTools
from .config import ServerConfig
from .errors import ApiError, bad_request
from .store import Lease, ToolSessions

ItemKind: TypeAlias = Literal[
    "reasoning",  # the analysis channel
    "commentary",  # text for the user before or between tool calls
    "final",  # the answer
    "function_call",  # a call of the client's function: the client runs it
    "python",  # the built-in python, run here
    "browser",  # the built-in browser, run here
    "hidden",  # a call the server ran that no wire format shows (its own functions)
]
SERVER_CALLS = frozenset({"python", "browser", "hidden"})
_RENDER = RenderConversationConfig(auto_drop_analysis=False)  # as the run loop renders


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Item:
    """One output item: a message of the model, or a tool call with its result."""

    kind: ItemKind
    id: str
    recipient: str | None = None
    function: ClientFunction | None = None
    call_id: str | None = None
    text: str = ""
    """Reasoning, message text, or the call's arguments (the code, for python)."""
    messages: list[Message] = field(default_factory=list)
    """The harmony messages the item stands for: the model's, then a built-in tool's answer."""
    output: str | None = None
    """What a tool run here answered."""
    complete: bool = True
    """False when a limit cut the message off: it is not part of the conversation."""


@dataclass(frozen=True)
class ItemAdded:
    item: Item


@dataclass(frozen=True)
class ItemDelta:
    item: Item
    text: str


@dataclass(frozen=True)
class ItemDone:
    item: Item


@dataclass
class Usage:
    input_tokens: int = 0
    """Prompt tokens over every model call of the response."""
    cached_tokens: int = 0
    """Of those, the ones the model's prefix cache held (its engine reports them)."""
    output_tokens: int = 0
    reasoning_tokens: int = 0
    """Of the output, the tokens of analysis-channel text."""


@dataclass
class Outcome:
    """How the response ended."""

    status: Literal["completed", "function_call", "incomplete", "failed"]
    items: list[Item]
    messages: list[Message]
    """The conversation after the preamble, this response's messages included."""
    usage: Usage
    reason: str | None = None
    """Why it is incomplete (`max_output_tokens`, `max_steps`) or failed (in words)."""


@dataclass(frozen=True)
class Finished:
    outcome: Outcome


OutputEvent: TypeAlias = ItemAdded | ItemDelta | ItemDone | Finished


@dataclass
class RunSpec:
    """What a request asks for, in the agent's terms."""

    messages: list[Message]
    instructions: str | None
    client_tools: ClientTools
    builtins: frozenset[str]
    """The built-in tools ("python", "browser") this request may use."""
    effort: str
    sampling: Sampling
    max_output_tokens: int | None
    session: str
    """The conversation's name: its built-in tools' state (the python kernel) is kept under it."""
    param: str = "input"
    """The request field that holds the conversation, for errors."""
    tool_choice: str = "auto"
    """As `Agent.tool_choice`."""
    stop: tuple[str, ...] = ()
    """Texts that end the response where the model writes one for the user (not included)."""


class CountingModel:
    """A model that counts the prompt tokens it reads, how many of them were cached, and the
    tokens it generates (one per response here: its real usage)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.output_tokens = 0
        if isinstance(limit := getattr(model, "max_context", None), int):
            self.max_context = limit

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass
    ) -> Iterator[int]:
        self.prompt_tokens += len(prompt)
        tokens = self.model.generate(
            prompt, stop_tokens=stop_tokens, max_tokens=max_tokens, sampling=sampling
        )
        return self._count(tokens)

    def _count(self, tokens: Iterator[int]) -> Iterator[int]:
        try:
            for token in tokens:
                self.output_tokens += 1
                yield token
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()  # a client that left ends its generation in the engine
            self.cached_tokens += getattr(tokens, "cached_tokens", 0)


@dataclass
class _ServerAgent(Agent):
    """An agent whose developer message also declares the client's functions."""

    client: ClientTools = field(default_factory=ClientTools)

    def preamble(self, toolbox: Toolbox | None = None) -> list[Message]:
        toolbox = toolbox or self._toolbox()
        system = super().preamble(toolbox)[0]
        own = toolbox.functions()
        if (name := self.client.clash([f.name for f in own])) is not None:
            raise bad_request("tools", f"the server has its own function named {name!r}")
        functions = [*own, *self.client.functions]
        if not (self.instructions or functions or self.client.namespaces):
            return [system]
        content = DeveloperContent.new()
        if self.instructions:
            content = content.with_instructions(self.instructions)
        if functions:
            content = content.with_function_tools(functions)
        for namespace in self.client.namespaces:
            content = content.with_tools(namespace)
        return [system, Message.from_role_and_content(Role.DEVELOPER, content)]


class Runner:
    """Runs requests on the server's model and tools."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.encoding = harmony_encoding()
        self.sessions = ToolSessions(config.builtins, config.max_tool_sessions)

    def prepare(self, spec: RunSpec) -> PreparedRun:
        """Check the request against the model; raise `ApiError` (400) when it cannot run."""
        config = self.config
        limit = config.max_output_tokens
        budget = (
            spec.max_output_tokens if limit is None else min(spec.max_output_tokens or limit, limit)
        )
        lease = self.sessions.acquire(spec.session, spec.builtins)
        try:
            counter = CountingModel(config.model)
            agent = _ServerAgent(
                counter,  # type: ignore[arg-type]
                tools=[*config.tools, *lease.tools],
                instructions=spec.instructions,
                reasoning_effort=spec.effort,  # type: ignore[arg-type]
                sampling=spec.sampling,
                max_steps=config.max_steps,
                max_turn_tokens=min(config.max_turn_tokens, budget or config.max_turn_tokens),
                max_total_tokens=budget,
                tool_choice=spec.tool_choice,
                client=spec.client_tools,
                **config.agent_options,
            )
            self._check_prompt(agent, spec)
        except BaseException:
            lease.release()
            raise
        return PreparedRun(self, spec, agent, counter, lease)

    def _check_prompt(self, agent: Agent, spec: RunSpec) -> None:
        """Render the prompt as the run will (one render: the run loop's `Prompt` does two), so
        that what harmony cannot render, or the context cannot hold, is a 400 now."""
        messages = [*agent.preamble(), *drop_finished_analysis(spec.messages)]
        try:
            prompt = self.encoding.render_conversation_for_completion(
                Conversation.from_messages(messages), Role.ASSISTANT, _RENDER
            )
        except (HarmonyError, ValueError, TypeError) as e:
            message = f"the conversation cannot be rendered in harmony: {e}"
            raise bad_request(spec.param, message) from None
        limit = getattr(self.config.model, "max_context", None)
        if isinstance(limit, int) and len(prompt) >= limit:
            raise ApiError(
                400,
                f"the conversation is {len(prompt)} tokens; the model's context holds {limit}",
                param=spec.param,
                code="context_length_exceeded",
            )

    def reasoning_tokens(self, items: Sequence[Item]) -> int:
        return sum(
            len(self.encoding.encode(item.text, disallowed_special=()))
            for item in items
            if item.kind == "reasoning"
        )


class PreparedRun:
    """A request ready to run: `events()` streams its items, then `Finished`."""

    def __init__(
        self, runner: Runner, spec: RunSpec, agent: Agent, counter: CountingModel, lease: Lease
    ) -> None:
        self.runner, self.spec, self.agent, self.counter = runner, spec, agent, counter
        self.release = lease.release
        """Give the conversation's tools back; `events()` does it when it ends."""

    async def events(self) -> AsyncIterator[OutputEvent]:
        tracker = _Tracker(self.spec.client_tools, self.spec.builtins, self.spec.stop)
        result: RunResult | None = None
        called = False
        try:
            stream = self.agent.astream(None, history=self.spec.messages)
            async with aclosing(stream) as events:
                async for event in events:
                    if isinstance(event, RunDone):
                        result = event.result
                        break
                    if isinstance(event, ToolCalled) and self.spec.client_tools.resolve(
                        event.call.recipient
                    ):
                        called = True
                        break  # the client runs it: the response ends with the call
                    for out in tracker.feed(event):
                        yield out
                    if tracker.stopped:
                        break  # a stop text: closing the stream ends the generation
        finally:
            self.release()
        if tracker.open is not None:  # cut off by a stop text, or by a limit mid-message
            tracker.open.complete = tracker.stopped
            yield ItemDone(tracker.open)
        yield Finished(self._outcome(tracker, result, called))

    def _outcome(self, tracker: _Tracker, result: RunResult | None, called: bool) -> Outcome:
        usage = Usage(
            input_tokens=self.counter.prompt_tokens,
            cached_tokens=self.counter.cached_tokens,
            output_tokens=self.counter.output_tokens,
            reasoning_tokens=self.runner.reasoning_tokens(tracker.items),
        )
        messages = [*self.spec.messages, *tracker.messages]
        if tracker.stopped:
            return Outcome("completed", tracker.items, messages, usage)
        if result is None:
            status = "function_call" if called else "failed"
            return Outcome(status, tracker.items, messages, usage)  # type: ignore[arg-type]
        if result.status == "completed":
            return Outcome("completed", tracker.items, messages, usage)
        if result.status == "invalid_output":
            return Outcome("failed", tracker.items, messages, usage, reason=result.detail)
        reason = "max_steps" if result.status == "max_steps" else "max_output_tokens"
        return Outcome("incomplete", tracker.items, messages, usage, reason=reason)


class _Tracker:
    """Turns the agent's events into output items, one per harmony message (a built-in call
    and its result make one item)."""

    def __init__(self, client: ClientTools, builtins: Collection[str], stop: Sequence[str]) -> None:
        self.client = client
        self.builtins = builtins
        self.items: list[Item] = []
        self.messages: list[Message] = []
        self.open: Item | None = None
        self.stop = [s for s in stop if s]
        self.held = ""
        """The end of the open message's text that may begin a stop text: not sent yet."""
        self.stopped = False

    def feed(self, event: AgentEvent) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        if isinstance(event, ReasoningDelta):
            item = self._ensure("reasoning", None, out)
            item.text += event.text
            out.append(ItemDelta(item, event.text))
        elif isinstance(event, CommentaryDelta | FinalDelta):
            kind: ItemKind = "final" if isinstance(event, FinalDelta) else "commentary"
            item = self._ensure(kind, None, out)
            self._text(item, event.text, out)
        elif isinstance(event, ToolCallDelta):
            item = self._ensure(self._call_kind(event.recipient), event.recipient, out)
            item.text += event.text
            out.append(ItemDelta(item, event.text))
        elif isinstance(event, MessageAdded):
            self.messages.append(event.message)
            self._message(event.message, out)
        return out

    def _text(self, item: Item, text: str, out: list[OutputEvent]) -> None:
        """Send the text for the user up to a stop text; hold back an end that may begin one."""
        held = self.held + text
        found = [i for i in (held.find(s) for s in self.stop) if i >= 0]
        if found:
            send, self.held, self.stopped = held[: min(found)], "", True
        else:
            keep = max(
                (n for s in self.stop for n in range(1, len(s)) if held.endswith(s[:n])), default=0
            )
            send, self.held = held[: len(held) - keep], held[len(held) - keep :]
        if send:
            item.text += send
            out.append(ItemDelta(item, send))

    def _message(self, message: Message, out: list[OutputEvent]) -> None:
        if message.author.role == Role.ASSISTANT:
            recipient = message.recipient if message.recipient not in (None, "assistant") else None
            if recipient is not None:
                kind = self._call_kind(recipient)
            elif message.channel == "analysis":
                kind = "reasoning"
            else:
                kind = "commentary" if message.channel == "commentary" else "final"
            item = self._ensure(kind, recipient, out)
            if self.held:  # the message ended: what was held back was no stop text
                out.append(ItemDelta(item, self.held))
                self.held = ""
            item.text = text_of(message)
            item.messages.append(message)
            if kind not in SERVER_CALLS:
                self._close(out)
        elif message.author.role == Role.TOOL and self.open is not None:
            self.open.messages.append(message)
            self.open.output = text_of(message)
            self._close(out)

    def _call_kind(self, recipient: str) -> ItemKind:
        if self.client.resolve(recipient) is not None:
            return "function_call"
        name = recipient.strip().removeprefix("functions.")
        if name == "python" and "python" in self.builtins:
            return "python"
        if name.startswith("browser") and "browser" in self.builtins:
            return "browser"
        return "hidden"

    def _ensure(self, kind: ItemKind, recipient: str | None, out: list[OutputEvent]) -> Item:
        if self.open is not None and self.open.kind == kind:
            return self.open
        if self.open is not None:
            self._close(out)
        prefix = {
            "reasoning": "rs",
            "function_call": "fc",
            "python": "ci",
            "browser": "ws",
            "hidden": "rs",
        }.get(kind, "msg")
        item = Item(kind, new_id(prefix), recipient=recipient)
        if kind == "function_call" and recipient is not None:
            item.function = self.client.resolve(recipient)
            item.call_id = new_id("call")
        self.items.append(item)
        self.open = item
        out.append(ItemAdded(item))
        return item

    def _close(self, out: list[OutputEvent]) -> None:
        assert self.open is not None
        out.append(ItemDone(self.open))
        self.open = None

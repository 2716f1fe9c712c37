"""`POST /v1/chat/completions`: what OpenCode, Kilo Code and most OpenAI-compatible clients speak.

The answer (and any text the model wrote for the user before a call) is `content`; the analysis
channel is `reasoning_content`; a call of a client's function is a `tool_calls` entry, never
text in `content`. Clients send the reasoning back on the assistant message (`reasoning_content`
or `reasoning`): it is rendered as that turn's analysis, so the model reads its reasoning again
after a tool call. The built-in tools the server was started with run here, unseen.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .client_tools import ClientTools, tool_choice_of
from .errors import ApiError, bad_request, from_validation
from .formats import format_section
from .items import chat_messages
from .responses import effort_of, joined_instructions, model_not_found, sampling_of
from .runs import (
    Finished,
    Item,
    ItemAdded,
    ItemDelta,
    ItemDone,
    Outcome,
    PreparedRun,
    Runner,
    RunSpec,
    Usage,
    new_id,
)

FINISH = {"completed": "stop", "function_call": "tool_calls", "incomplete": "length"}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """The fields this server reads; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Any]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    prompt_cache_key: str | None = None
    stop: str | list[str] | None = None
    response_format: Any = None


@dataclass
class _Request:
    body: ChatRequest
    id: str
    created: int


class ChatCompletions:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.config = runner.config

    def prepare(self, raw: dict[str, Any]) -> tuple[_Request, PreparedRun]:
        """Parse and check a request; raise `ApiError` (4xx) for anything wrong with it."""
        try:
            body = ChatRequest.model_validate(raw)
        except ValidationError as e:
            raise from_validation(e) from None
        if body.model != self.config.model_name:
            raise model_not_found(body.model, self.config.model_name)
        if body.n not in (None, 1):
            raise bad_request("n", "this server makes one choice per request")
        conversation = chat_messages(body.messages)
        conversation.check_answered("messages")
        if not conversation.messages:
            raise bad_request("messages", "the conversation is empty: give at least one message")
        client = ClientTools()
        builtins: frozenset[str] = frozenset(self.runner.sessions.factories)
        if body.tool_choice == "none":
            builtins = frozenset()
        else:
            for i, tool in enumerate(body.tools or []):
                if tool.get("type", "function") != "function":
                    continue  # not a kind of tool this API can call here
                function = tool.get("function")
                if not isinstance(function, dict):
                    raise bad_request(f"tools[{i}].function", "expected a function object")
                client.add(f"tools[{i}].function", function)
        key = body.prompt_cache_key
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        if len(stop) > 4:
            raise bad_request("stop", "at most 4 stop sequences")
        spec = RunSpec(
            messages=conversation.messages,
            instructions=joined_instructions(
                self.config.instructions,
                *conversation.instructions,
                format_section(body.response_format, "response_format"),
            ),
            client_tools=client,
            builtins=builtins,
            effort=effort_of(
                body.reasoning_effort, self.config.reasoning_effort, "reasoning_effort"
            ),
            sampling=sampling_of(self.config, body.temperature, body.top_p),
            max_output_tokens=body.max_completion_tokens or body.max_tokens,
            session=f"key:{key}" if key else conversation.key(),
            param="messages",
            tool_choice=tool_choice_of(body.tool_choice, client, builtins),
            stop=tuple(stop),
        )
        request = _Request(body, new_id("chatcmpl").replace("_", "-", 1), int(time.time()))
        return request, self.runner.prepare(spec)

    async def stream(self, request: _Request, run: PreparedRun) -> AsyncIterator[dict[str, Any]]:
        """`chat.completion.chunk` objects; an error that breaks the run comes as `{"error"}`."""
        state = _Choice()
        yield self._chunk(request, {"role": "assistant", "content": ""})
        try:
            async for event in run.events():
                if isinstance(event, Finished):
                    outcome = event.outcome
                    if outcome.status == "failed":
                        yield failure(outcome.reason).body()
                        return
                    yield self._chunk(request, {}, FINISH[outcome.status])
                    options = request.body.stream_options
                    if options is not None and options.include_usage:
                        yield {
                            **self._chunk(request, {}),
                            "choices": [],
                            "usage": _usage(outcome.usage),
                        }
                elif (delta := state.on(event)) is not None:
                    yield self._chunk(request, delta)
        except Exception as e:  # the model failed, a scripted model ran out
            yield failure(f"{type(e).__name__}: {e}").body()

    async def complete(self, request: _Request, run: PreparedRun) -> dict[str, Any]:
        state = _Choice()
        outcome: Outcome | None = None
        try:
            async for event in run.events():
                if isinstance(event, Finished):
                    outcome = event.outcome
                else:
                    state.on(event)
        except Exception as e:
            raise failure(f"{type(e).__name__}: {e}") from e
        assert outcome is not None
        if outcome.status == "failed":
            raise failure(outcome.reason)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": state.content or None,
            "reasoning_content": state.reasoning or None,
        }
        if state.calls:
            message["tool_calls"] = state.calls
        return {
            "id": request.id,
            "object": "chat.completion",
            "created": request.created,
            "model": self.config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": FINISH[outcome.status],
                }
            ],
            "usage": _usage(outcome.usage),
        }

    def _chunk(
        self, request: _Request, delta: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": request.id,
            "object": "chat.completion.chunk",
            "created": request.created,
            "model": self.config.model_name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }


def failure(reason: str | None) -> ApiError:
    message = f"the run failed: {reason or 'the model gave no answer'}"
    return ApiError(500, message, code="server_error")


@dataclass
class _Choice:
    """The one choice's message as it grows, and its deltas."""

    content: str = ""
    reasoning: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    _started: set[str] = field(default_factory=set)

    def on(self, event: object) -> dict[str, Any] | None:
        """The delta an event makes, if any."""
        if isinstance(event, ItemAdded) and event.item.kind == "function_call":
            item = event.item
            assert item.function is not None
            self.calls.append(
                {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.function.name, "arguments": ""},
                }
            )
            return {
                "tool_calls": [
                    {
                        "index": len(self.calls) - 1,
                        **self.calls[-1],
                        "function": {"name": item.function.name, "arguments": ""},
                    }
                ]
            }
        if isinstance(event, ItemDelta):
            return self._delta(event.item, event.text)
        if isinstance(event, ItemDone) and event.item.kind == "function_call":
            # Deltas already carry the arguments; the parsed message is the authority.
            self.calls[-1]["function"]["arguments"] = event.item.text
        return None

    def _delta(self, item: Item, text: str) -> dict[str, Any] | None:
        if item.kind == "function_call":
            self.calls[-1]["function"]["arguments"] += text
            return {"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": text}}]}
        field_name = {"reasoning": "reasoning", "commentary": "content", "final": "content"}.get(
            item.kind
        )
        if field_name is None:
            return None  # the built-in tools' calls run here, unseen
        if item.id not in self._started:
            self._started.add(item.id)
            if getattr(self, field_name):  # a second message: keep them apart
                text = "\n\n" + text
        setattr(self, field_name, getattr(self, field_name) + text)
        return {"reasoning_content" if field_name == "reasoning" else "content": text}


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }

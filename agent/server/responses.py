"""`POST /v1/responses`, `GET /v1/responses/{id}`: the Responses API (what Codex CLI speaks).

A response's output items are the model's harmony messages: `reasoning` (the analysis channel,
its exact messages sealed in `encrypted_content` when the client asks for it), `message` (with
`phase` `commentary` or `final_answer`), `function_call` for a client's function (the response
ends there), and `code_interpreter_call` / `web_search_call` for the built-in tools run here.
With `store`, the conversation stays here for `previous_response_id`, function calls included.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harmony_agent.model import Sampling

from .client_tools import WEB_SEARCH, ClientTools, tool_choice_of
from .config import ServerConfig
from .errors import ApiError, bad_request, from_validation
from .formats import format_section
from .items import Conversation, responses_input
from .runs import (
    Finished,
    Item,
    ItemAdded,
    ItemDelta,
    ItemDone,
    Outcome,
    OutputEvent,
    PreparedRun,
    Runner,
    RunSpec,
    Usage,
    new_id,
)
from .sealing import Sealer
from .store import ResponseStore, StoredResponse

ENCRYPTED = "reasoning.encrypted_content"
EFFORTS = {
    "minimal": "low",
    "none": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}
"""Reasoning efforts of OpenAI's models, as the nearest of gpt-oss's three."""


class _Reasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(BaseModel):
    """The fields this server reads; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning: _Reasoning | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool | None = False
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None


def effort_of(value: str | None, default: str, param: str) -> str:
    if value is None:
        return default
    if value not in EFFORTS:
        raise bad_request(param, f"expected one of {', '.join(EFFORTS)}, got {value!r}")
    return EFFORTS[value]


def sampling_of(config: ServerConfig, temperature: float | None, top_p: float | None) -> Sampling:
    base = config.sampling
    return Sampling(
        temperature=base.temperature if temperature is None else temperature,
        top_p=base.top_p if top_p is None else top_p,
        seed=base.seed,
    )


def joined_instructions(*parts: str | None) -> str | None:
    return "\n\n".join(p for p in parts if p) or None


@dataclass
class _Request:
    """One request being answered."""

    body: ResponsesRequest
    id: str
    created: int
    effort: str
    encrypted: bool
    conversation: Conversation
    session: str
    container: str | None


class Responses:
    """The Responses endpoint's state: the runner, stored responses, the sealing key."""

    def __init__(self, runner: Runner, store: ResponseStore, sealer: Sealer) -> None:
        self.runner, self.store, self.sealer = runner, store, sealer
        self.config = runner.config

    # -- request -----------------------------------------------------------------------------

    def prepare(self, raw: dict[str, Any]) -> tuple[_Request, PreparedRun]:
        """Parse and check a request; raise `ApiError` (4xx) for anything wrong with it."""
        try:
            body = ResponsesRequest.model_validate(raw)
        except ValidationError as e:
            raise from_validation(e) from None
        if body.model != self.config.model_name:
            raise model_not_found(body.model, self.config.model_name)
        client, builtins, container = self._tools(body)
        conversation, session = self._conversation(body)
        if container is not None and (known := self.runner.sessions.key_of_container(container)):
            session = known
        if not conversation.messages:
            raise bad_request("input", "the conversation is empty: give at least one message")
        request = _Request(
            body=body,
            id=new_id("resp"),
            created=int(time.time()),
            effort=effort_of(
                body.reasoning and body.reasoning.effort,
                self.config.reasoning_effort,
                "reasoning.effort",
            ),
            encrypted=ENCRYPTED in (body.include or []),
            conversation=conversation,
            session=session,
            container=self.runner.sessions.container_id(session) if "python" in builtins else None,
        )
        spec = RunSpec(
            messages=conversation.messages,
            instructions=joined_instructions(
                self.config.instructions,
                body.instructions,
                *conversation.instructions,
                format_section((body.text or {}).get("format"), "text.format"),
            ),
            client_tools=client,
            builtins=frozenset(builtins),
            effort=request.effort,
            sampling=sampling_of(self.config, body.temperature, body.top_p),
            max_output_tokens=body.max_output_tokens,
            session=session,
            tool_choice=tool_choice_of(body.tool_choice, client, frozenset(builtins)),
        )
        return request, self.runner.prepare(spec)

    def _tools(self, body: ResponsesRequest) -> tuple[ClientTools, set[str], str | None]:
        client, builtins, container = ClientTools(), set(), None
        if body.tool_choice == "none":
            return client, builtins, container
        for i, tool in enumerate(body.tools or []):
            kind = tool.get("type")
            if not isinstance(kind, str):
                raise bad_request(f"tools[{i}].type", "expected a tool type")
            if kind == "function":
                client.add(f"tools[{i}]", tool)
            elif kind == "namespace":
                client.add_namespace(f"tools[{i}]", tool)
            elif kind in WEB_SEARCH:
                builtins.add("browser")
            elif kind == "code_interpreter":
                builtins.add("python")
                if isinstance(tool.get("container"), str):
                    container = tool["container"]
            # Other hosted tools (file search, image generation, ...) do not exist here: the
            # model is not told of them, as a client that sends them by habit expects.
        return client, builtins & set(self.runner.sessions.factories), container

    def _conversation(self, body: ResponsesRequest) -> tuple[Conversation, str]:
        previous: Conversation | None = None
        session: str | None = None
        if body.previous_response_id is not None:
            stored = self.store.get(body.previous_response_id)
            if stored is None:
                raise ApiError(
                    404,
                    f"no stored response with id {body.previous_response_id!r}",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            previous = Conversation(
                list(stored.messages),
                instructions=list(stored.instructions),
                calls=dict(stored.calls),
                pending=dict(stored.pending),
            )
            session = stored.session
        conversation = responses_input(body.input or [], self.sealer, previous)
        conversation.check_answered("input")
        if session is None:
            known = (self.runner.sessions.key_of_container(c) for c in conversation.containers)
            session = next((k for k in known if k is not None), None)
        if session is None:
            session = (
                f"key:{body.prompt_cache_key}" if body.prompt_cache_key else conversation.key()
            )
        return conversation, session

    # -- response ----------------------------------------------------------------------------

    async def stream(self, request: _Request, run: PreparedRun) -> AsyncIterator[dict[str, Any]]:
        """The Responses event sequence (without sequence numbers: the transport adds them)."""
        writer = _Writer(self, request)
        yield {"type": "response.created", "response": writer.body("in_progress")}
        yield {"type": "response.in_progress", "response": writer.body("in_progress")}
        async for event in _guarded(run.events()):
            for out in writer.on(event):
                yield out

    async def complete(self, request: _Request, run: PreparedRun) -> dict[str, Any]:
        """The response object, once the run has ended."""
        writer = _Writer(self, request)
        async for event in _guarded(run.events()):
            writer.on(event)
        assert writer.final is not None
        return writer.final

    def get(self, response_id: str) -> dict[str, Any]:
        stored = self.store.get(response_id)
        if stored is None:
            raise ApiError(
                404,
                f"no stored response with id {response_id!r}",
                param="response_id",
                code="not_found",
            )
        return stored.body

    def delete(self, response_id: str) -> dict[str, Any]:
        if not self.store.delete(response_id):
            raise ApiError(
                404,
                f"no stored response with id {response_id!r}",
                param="response_id",
                code="not_found",
            )
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def keep(self, request: _Request, body: dict[str, Any], outcome: Outcome) -> None:
        calls = dict(request.conversation.calls)
        pending = {}
        for item in outcome.items:
            if item.kind == "function_call" and item.function and item.call_id:
                calls[item.call_id] = item.function.recipient
        last = outcome.items[-1] if outcome.items else None
        if outcome.status == "function_call" and last is not None and last.call_id:
            pending[last.call_id] = len(outcome.messages) - 1
        stored = StoredResponse(
            body,
            outcome.messages,
            calls,
            pending,
            request.session,
            request.conversation.instructions,
        )
        self.store.put(request.id, stored)


async def _guarded(events: AsyncIterator[OutputEvent]) -> AsyncIterator[OutputEvent | Exception]:
    """The run's events; an error that breaks the run comes last, as a value."""
    try:
        async for event in events:
            yield event
    except Exception as e:  # the model failed, a scripted model ran out: the run is over
        yield e


def model_not_found(asked: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"the model {asked!r} does not exist; this server serves {served!r}",
        param="model",
        code="model_not_found",
    )


class _Writer:
    """One response's items and events, in the Responses wire format."""

    def __init__(self, endpoint: Responses, request: _Request) -> None:
        self.endpoint, self.request = endpoint, request
        self.output: list[dict[str, Any]] = []
        self.where: dict[str, int] = {}
        """Item id -> its index in `output`."""
        self.final: dict[str, Any] | None = None

    def body(
        self,
        status: str,
        usage: Usage | None = None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        request = self.request.body
        return {
            "id": self.request.id,
            "object": "response",
            "created_at": self.request.created,
            "status": status,
            "model": self.endpoint.config.model_name,
            "output": [dict(item) for item in self.output],
            "usage": _usage(usage) if usage is not None else None,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": request.instructions,
            "tools": request.tools or [],
            "tool_choice": request.tool_choice or "auto",
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_output_tokens": request.max_output_tokens,
            "previous_response_id": request.previous_response_id,
            "reasoning": {"effort": self.request.effort, "summary": None},
            "store": request.store is not False,
            "text": request.text or {"format": {"type": "text"}},
            "truncation": "disabled",
            "metadata": request.metadata or {},
            "background": False,
        }

    def on(self, event: OutputEvent | Exception) -> list[dict[str, Any]]:
        if isinstance(event, ItemAdded):
            return self._added(event.item)
        if isinstance(event, ItemDelta):
            return self._delta(event.item, event.text)
        if isinstance(event, ItemDone):
            return self._done(event.item)
        if isinstance(event, Finished):
            return self._finished(event.outcome)
        message = f"the run failed: {type(event).__name__}: {event}"
        self.final = self.body("failed", error={"code": "server_error", "message": message})
        return [{"type": "response.failed", "response": self.final}]

    # -- items -------------------------------------------------------------------------------

    def _open(self, item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.where[item["id"]] = index = len(self.output)
        self.output.append(item)
        return index, {
            "type": "response.output_item.added",
            "output_index": index,
            "item": dict(item),
        }

    def _close(self, item: dict[str, Any]) -> dict[str, Any]:
        index = self.where[item["id"]]
        self.output[index] = item
        return {"type": "response.output_item.done", "output_index": index, "item": item}

    def _added(self, item: Item) -> list[dict[str, Any]]:
        if item.kind == "hidden":
            return []
        index, added = self._open(self._shape(item, done=False))
        part = _PARTS.get(item.kind)
        events = [added]
        if part is not None:
            events.append(
                {
                    "type": "response.content_part.added",
                    "item_id": item.id,
                    "output_index": index,
                    "content_index": 0,
                    "part": _part(part, ""),
                }
            )
        if item.kind == "python":
            events.append(_at(item, index, "response.code_interpreter_call.in_progress"))
        elif item.kind == "browser":
            events.append(_at(item, index, "response.web_search_call.in_progress"))
            events.append(_at(item, index, "response.web_search_call.searching"))
        return events

    def _delta(self, item: Item, text: str) -> list[dict[str, Any]]:
        kind = _DELTAS.get(item.kind)
        if kind is None:
            return []
        index = self.where[item.id]
        event = {"type": kind, "item_id": item.id, "output_index": index, "delta": text}
        if item.kind in _PARTS:
            event["content_index"] = 0
        if item.kind in ("commentary", "final"):
            event["logprobs"] = []
        return [event]

    def _done(self, item: Item) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if item.kind != "hidden":
            index = self.where[item.id]
            part = _PARTS.get(item.kind)
            if part is not None:
                text_done = (
                    "response.reasoning_text.done"
                    if item.kind == "reasoning"
                    else "response.output_text.done"
                )
                events.append(
                    {
                        "type": text_done,
                        "item_id": item.id,
                        "output_index": index,
                        "content_index": 0,
                        "text": item.text,
                    }
                )
                events.append(
                    {
                        "type": "response.content_part.done",
                        "item_id": item.id,
                        "output_index": index,
                        "content_index": 0,
                        "part": _part(part, item.text),
                    }
                )
            elif item.kind == "function_call":
                events.append(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": item.id,
                        "output_index": index,
                        "arguments": item.text,
                    }
                )
            elif item.kind == "python":
                events.append(
                    {
                        "type": "response.code_interpreter_call_code.done",
                        "item_id": item.id,
                        "output_index": index,
                        "code": item.text,
                    }
                )
                events.append(_at(item, index, "response.code_interpreter_call.interpreting"))
                events.append(_at(item, index, "response.code_interpreter_call.completed"))
            elif item.kind == "browser":
                events.append(_at(item, index, "response.web_search_call.completed"))
            events.append(self._close(self._shape(item, done=True)))
        if item.kind in ("python", "browser", "hidden") and self.request.encrypted:
            # What the tool answered reaches the model again only if the client sends it
            # back: sealed in a reasoning item next to the call.
            covers = item.id if item.kind != "hidden" else None
            sealed = {
                "type": "reasoning",
                "id": new_id("rs"),
                "summary": [],
                "content": [],
                "encrypted_content": self.endpoint.sealer.seal(item.messages, covers),
            }
            _, added = self._open(sealed)
            events += [added, self._close(sealed)]
        return events

    def _shape(self, item: Item, *, done: bool) -> dict[str, Any]:
        """The item as the wire shows it, in progress or done."""
        status = "completed" if done and item.complete else "incomplete" if done else "in_progress"
        text = item.text if done else ""
        if item.kind == "reasoning":
            sealed = self.request.encrypted and done and item.complete
            return {
                "type": "reasoning",
                "id": item.id,
                "summary": [],
                "content": [_part("reasoning_text", text)] if done else [],
                "encrypted_content": self.endpoint.sealer.seal(item.messages) if sealed else None,
            }
        if item.kind in ("commentary", "final"):
            return {
                "type": "message",
                "id": item.id,
                "role": "assistant",
                "status": status,
                "phase": "commentary" if item.kind == "commentary" else "final_answer",
                "content": [_part("output_text", text)] if done else [],
            }
        if item.kind == "function_call":
            assert item.function is not None
            shown = {
                "type": "function_call",
                "id": item.id,
                "call_id": item.call_id,
                "name": item.function.name,
                "arguments": text,
                "status": status,
            }
            if item.function.namespace is not None:
                shown["namespace"] = item.function.namespace
            return shown
        if item.kind == "python":
            outputs = [{"type": "logs", "logs": item.output}] if done and item.output else None
            return {
                "type": "code_interpreter_call",
                "id": item.id,
                "code": text,
                "container_id": self.request.container,
                "outputs": outputs,
                "status": status,
            }
        return {
            "type": "web_search_call",
            "id": item.id,
            "status": status,
            "action": _browser_action(item),
        }

    # -- the end -----------------------------------------------------------------------------

    def _finished(self, outcome: Outcome) -> list[dict[str, Any]]:
        if outcome.status == "failed":
            error = {"code": "server_error", "message": outcome.reason or "the run failed"}
            self.final = self.body("failed", outcome.usage, error=error)
            kind = "response.failed"
        elif outcome.status == "incomplete":
            self.final = self.body("incomplete", outcome.usage, incomplete=outcome.reason)
            kind = "response.incomplete"
        else:
            self.final = self.body("completed", outcome.usage)
            kind = "response.completed"
        if self.request.body.store is not False:
            self.endpoint.keep(self.request, self.final, outcome)
        return [{"type": kind, "response": self.final}]


_PARTS = {"reasoning": "reasoning_text", "commentary": "output_text", "final": "output_text"}
_DELTAS = {
    "reasoning": "response.reasoning_text.delta",
    "commentary": "response.output_text.delta",
    "final": "response.output_text.delta",
    "function_call": "response.function_call_arguments.delta",
    "python": "response.code_interpreter_call_code.delta",
}


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": kind, "text": text}


def _at(item: Item, index: int, kind: str) -> dict[str, Any]:
    return {"type": kind, "item_id": item.id, "output_index": index}


def _browser_action(item: Item) -> dict[str, Any]:
    try:
        args = json.loads(item.text) if item.text.strip() else {}
    except json.JSONDecodeError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    method = (item.recipient or "").rpartition(".")[2]
    if method == "open":
        url = args.get("id")
        return {"type": "open_page", "url": url if isinstance(url, str) else None}
    if method == "find":
        return {"type": "find_in_page", "pattern": args.get("pattern"), "url": None}
    return {"type": "search", "query": args.get("query")}


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }

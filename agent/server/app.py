"""The ASGI app: routes, authentication, limits, errors, and the event streams.

Every error is OpenAI's error JSON with the status a client acts on: 400 naming the field at
fault, 401, 404 (unknown route, model or response id), 413, 429 (too many requests waiting);
never a 500 for a bad request. A client that disconnects cancels its generation, whether it
streams or waits for the whole response.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .chat_completions import ChatCompletions
from .config import ServerConfig
from .errors import ApiError, bad_request
from .responses import Responses
from .runs import Runner
from .sealing import Sealer
from .store import ResponseStore

Handler = Callable[[Request], Awaitable[Response]]


class Gate:
    """At most `running` responses generate at once and `waiting` more wait their turn; a
    request beyond those is refused (429) rather than queued without end."""

    def __init__(self, running: int, waiting: int) -> None:
        self.capacity, self.limit = running, running + waiting
        self.admitted = 0
        self.running = 0
        self._slots: asyncio.Semaphore | None = None

    def admit(self) -> Ticket:
        if self.admitted >= self.limit:
            raise ApiError(
                429,
                f"the server is full: {self.running} responses running, "
                f"{self.admitted - self.running} waiting; retry shortly",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        return Ticket(self)


class Ticket:
    """An admitted request: `turn()` waits for a slot and holds it; `release()` (at the end,
    whatever happened) gives the admission back."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._released = False

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        gate = self.gate
        if gate._slots is None:
            gate._slots = asyncio.Semaphore(gate.capacity)
        async with gate._slots:
            gate.running += 1
            try:
                yield
            finally:
                gate.running -= 1

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.gate.admitted -= 1


class EventStream(StreamingResponse):
    """A streamed response that stops its generator as soon as the client disconnects, even
    while nothing is being written (a long prompt, a tool at work), and then runs `cleanup`
    (also when the client left before the first event)."""

    def __init__(self, content: AsyncIterator[str], cleanup: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def until_done(work: Callable[[], Awaitable[None]]) -> None:
                    with contextlib.suppress(OSError):  # the connection broke under a write
                        await work()
                    group.cancel_scope.cancel()

                group.start_soon(until_done, partial(self.stream_response, send))
                await until_done(partial(self.listen_for_disconnect, receive))
        finally:
            self.cleanup()


def create_app(config: ServerConfig) -> Starlette:
    """The server's ASGI app (run it with uvicorn)."""
    runner = Runner(config)
    responses = Responses(runner, ResponseStore(config.max_stored), Sealer(config.seal_key))
    chat = ChatCompletions(runner)
    gate = Gate(config.max_running, config.max_waiting)
    started = int(time.time())

    def authorized(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            if config.api_key is not None:
                given = request.headers.get("authorization", "")
                scheme, _, key = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    key.strip().encode(), config.api_key.encode()
                ):
                    raise ApiError(
                        401,
                        "missing or wrong API key: send Authorization: Bearer KEY",
                        code="invalid_api_key",
                    )
            return await handler(request)

        return check

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": config.model_name,
                "running": gate.running,
                "waiting": gate.admitted - gate.running,
            }
        )

    def model_card() -> dict[str, Any]:
        return {
            "id": config.model_name,
            "object": "model",
            "created": started,
            "owned_by": "harmony-agent",
        }

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request) -> Response:
        if request.path_params["model"] != config.model_name:
            raise ApiError(
                404,
                f"the model {request.path_params['model']!r} does not exist",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(model_card())

    async def create_response(request: Request) -> Response:
        return await serve(request, responses, named_events=True)

    async def create_chat_completion(request: Request) -> Response:
        return await serve(request, chat, named_events=False)

    async def get_response(request: Request) -> Response:
        return JSONResponse(responses.get(request.path_params["response_id"]))

    async def delete_response(request: Request) -> Response:
        return JSONResponse(responses.delete(request.path_params["response_id"]))

    async def serve(
        request: Request, endpoint: Responses | ChatCompletions, named_events: bool
    ) -> Response:
        raw = await read_json(request, config.max_request_bytes)
        try:
            state, run = endpoint.prepare(raw)
        except RecursionError:
            raise bad_request("", "the request is nested too deeply") from None
        try:
            ticket = gate.admit()
        except ApiError:
            run.release()
            raise

        def cleanup() -> None:
            ticket.release()
            run.release()

        if state.body.stream:
            events = endpoint.stream(state, run)  # type: ignore[arg-type]
            return EventStream(sse(ticket, events, named_events), cleanup)

        async def complete() -> dict[str, Any]:
            async with ticket.turn():
                return await endpoint.complete(state, run)  # type: ignore[arg-type]

        try:
            body = await until_disconnected(request, complete)
        finally:
            cleanup()
        return JSONResponse(body) if body is not None else Response(status_code=499)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await runner.sessions.aclose()

    routes = [
        Route("/health", health),
        Route("/v1/models", authorized(list_models)),
        Route("/v1/models/{model:path}", authorized(get_model)),
        Route("/v1/responses", authorized(create_response), methods=["POST"]),
        Route("/v1/responses/{response_id}", authorized(get_response), methods=["GET"]),
        Route("/v1/responses/{response_id}", authorized(delete_response), methods=["DELETE"]),
        Route("/v1/chat/completions", authorized(create_chat_completion), methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refused (413) past `limit` bytes before it is all read."""
    too_large = ApiError(
        413, f"the request body is larger than {limit} bytes", code="request_too_large"
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ApiError(415, "send the request body uncompressed", code="unsupported_encoding")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(raw):  # a `\ud800` alone is JSON, but no text: refuse it
            json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, NaN, too deep
        raise bad_request("", f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad_request("", "the body must be a JSON object")
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def sse(
    ticket: Ticket, events: AsyncIterator[dict[str, Any]], named: bool
) -> AsyncIterator[str]:
    """Server-sent events: `event:` + `data:` lines with sequence numbers (Responses), or
    `data:` lines ending with `[DONE]` (Chat Completions)."""
    async with ticket.turn():
        number = 0
        async for event in events:
            if named:
                event["sequence_number"] = number
                number += 1
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            else:
                yield f"data: {json.dumps(event)}\n\n"
        if not named:
            yield "data: [DONE]\n\n"


async def until_disconnected(request: Request, work: Callable[[], Awaitable[Any]]) -> Any:
    """`work()`'s result, or None (and `work` cancelled) if the client disconnects first."""
    result: Any = None
    error: Exception | None = None

    async with anyio.create_task_group() as group:

        async def run() -> None:
            nonlocal result, error
            try:
                result = await work()
            except Exception as e:  # raised below as itself, not in a task group's group
                error = e
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if error is not None:
        raise error
    return result


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, f"no route {request.method} {request.url.path}", code="not_found")
    elif exc.status_code == 405:
        error = ApiError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
        )
    else:
        error = ApiError(exc.status_code, str(exc.detail))
    return await api_error(request, error)


async def server_error(request: Request, exc: Exception) -> Response:
    error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="server_error")
    return await api_error(request, error)

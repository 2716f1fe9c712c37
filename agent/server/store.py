"""What the server keeps between requests: stored responses, and each conversation's tools."""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import Message

from harmony_agent.tools import BuiltinTool

from .errors import ApiError


@dataclass
class StoredResponse:
    """A response kept for `previous_response_id` and `GET /v1/responses/{id}`."""

    body: dict[str, Any]
    """The response object, as it was returned."""
    messages: list[Message]
    """The whole conversation after the preamble, the response's own messages included, its
    function calls among them: what the next response continues."""
    calls: dict[str, str]
    """Every function call of the conversation: call_id -> recipient."""
    pending: dict[str, int]
    """The calls the response ended with, waiting for the client's output."""
    session: str
    """The conversation's name for its built-in tools."""
    instructions: list[str]
    """The texts of the system and developer messages among the inputs: they stay part of the
    conversation (unlike a request's `instructions`, which apply to that request only)."""


class ResponseStore:
    """The last `limit` stored responses (least recently used dropped first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._responses[response_id] = stored
        self._responses.move_to_end(response_id)
        while len(self._responses) > self.limit:
            self._responses.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._responses.get(response_id)
        if stored is not None:
            self._responses.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        return self._responses.pop(response_id, None) is not None


class Lease:
    """A request's use of its conversation's tools."""

    def __init__(self, tools: list[BuiltinTool], release: Callable[[], None] | None = None):
        self.tools = tools
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass
class _Session:
    tools: dict[str, BuiltinTool] = field(default_factory=dict)
    users: int = 0


class ToolSessions:
    """Each conversation's built-in tools, made on first use: its python kernel keeps the
    conversation's variables, its browser the conversation's pages. Beyond `limit`
    conversations, the least recently used one that no request is using is closed."""

    def __init__(self, factories: Mapping[str, Callable[[], BuiltinTool]], limit: int) -> None:
        self.factories = dict(factories)
        self.limit = limit
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def acquire(self, key: str, names: Collection[str]) -> Lease:
        """The tools `names` of conversation `key`, until the lease is released."""
        names = sorted(n for n in names if n in self.factories)
        if not names:
            return Lease([])
        session = self._sessions.setdefault(key, _Session())
        self._sessions.move_to_end(key)
        session.users += 1
        lease = Lease([], lambda: self._release(session))
        try:
            for name in names:
                if name not in session.tools:
                    session.tools[name] = self.factories[name]()
        except Exception as e:  # the sandbox or Chromium is gone since the server started
            lease.release()
            raise ApiError(503, f"the built-in tool could not start: {e}") from e
        lease.tools = [session.tools[n] for n in names]
        self._evict()
        return lease

    def _release(self, session: _Session) -> None:
        session.users -= 1
        self._evict()

    @staticmethod
    def container_id(key: str) -> str:
        """The id the Responses API shows for the conversation's python kernel."""
        return "cntr_" + hashlib.sha256(key.encode()).hexdigest()[:24]

    def key_of_container(self, container_id: str) -> str | None:
        return next((k for k in self._sessions if self.container_id(k) == container_id), None)

    def _evict(self) -> None:
        while len(self._sessions) > self.limit:
            idle = next((k for k, s in self._sessions.items() if s.users <= 0), None)
            if idle is None:
                return  # every one is in use: close them as their requests end
            session = self._sessions.pop(idle)
            task = asyncio.get_running_loop().create_task(_close(session))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        await asyncio.gather(*(_close(s) for s in sessions), *self._closing)


async def _close(session: _Session) -> None:
    await asyncio.gather(*(t.aclose() for t in session.tools.values()), return_exceptions=True)
